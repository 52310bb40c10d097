"""Slimmable execution: a traced network whose channel groups are narrowed in place by weight slicing."""

from compress.slim.layers import LAYER_KINDS, LayerKind, register_layer_kind
from compress.slim.network import SITE_KINDS, Site, SlimmableNetwork
from compress.slim.reorder import permutable_groups, permute_groups_, reorder_channels_

__all__ = ["LAYER_KINDS", "LayerKind", "SITE_KINDS", "Site", "SlimmableNetwork", "permutable_groups",
           "permute_groups_", "reorder_channels_", "register_layer_kind"]
