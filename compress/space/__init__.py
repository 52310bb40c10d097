"""The channel space: trace a model, propagate channels through the op table, group coupled channels.

Data flow: ``trace`` (torch.fx) -> ``propagate`` (runs the graph, every op's handler from ``ops`` couples or
freezes channel atoms, ``atoms``) -> ``groups`` (union-find classes -> named channel groups) -> ``space``
(configs over the groups).
"""

from compress.space.digest import graph_digest, network_identity
from compress.space.groups import ChannelGroup
from compress.space.ops import register_function, register_method, register_module
from compress.space.space import ChannelSpace, Config

__all__ = ["ChannelGroup", "ChannelSpace", "Config", "graph_digest", "network_identity", "register_function",
           "register_method", "register_module"]
