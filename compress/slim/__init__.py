"""Slimmable execution: a traced network whose channel groups are narrowed in place by weight slicing."""

from compress.slim.network import SlimmableNetwork
from compress.slim.reorder import permutable_groups, permute_groups_, reorder_channels_

__all__ = ["SlimmableNetwork", "permutable_groups", "permute_groups_", "reorder_channels_"]
