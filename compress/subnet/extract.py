"""Extract a physically smaller, standalone network from a slimmable one.

Extraction is the in-place narrowing made permanent: a deep copy of the traced graph is narrowed through the
same per-site-kind table as ``SlimmableNetwork.set_config`` (``compress.slim.network.SITE_KINDS``), then each
site's ``make_permanent`` turns it into ordinary layers (a weight layer is cut by its layer kind's ``slice``,
``compress.slim.layers.LAYER_KINDS``; a sliced graph parameter is cut and its ``AttrSlice`` dropped).
"""

from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import fx

from compress.slim.network import SITE_KINDS, SlimmableNetwork


def extract_subnet(net: SlimmableNetwork, config: Mapping[str, int] | None = None) -> fx.GraphModule:
    """Return a standalone, physically smaller copy of ``net`` at ``config``.

    The supernet is untouched. The result is an ``fx.GraphModule`` made of
    ordinary torch layers (Conv2d, BatchNorm2d, ...) with sliced weights, in eval
    mode if ``net`` is.

    Args:
        net: the slimmable network.
        config: group name -> width in channels; groups left out stay at full width; None means the network's
            current config.

    Returns:
        An ``fx.GraphModule`` of ordinary layers whose weights are the slices of ``net``'s weights kept at
        ``config`` (conv weights C_out' x C_in' / groups x kH x kW); it computes what ``net`` computes at ``config``.

    Raises:
        InvalidConfigError: unknown group names or widths the group cannot take.

    Example:
        >>> sub = extract_subnet(net, net.space.uniform_config(0.5))
        >>> compress.export_onnx(sub, torch.randn(1, 3, 64, 64), "sub.onnx")
    """
    masks = net.live_masks(net.config if config is None else config)
    gm = copy.deepcopy(net.graph_module)
    net.apply_masks(masks, gm)
    with torch.no_grad():
        for kind, name in dict.fromkeys((site.kind, site.module) for site in net.sites):
            SITE_KINDS[kind].make_permanent(gm, name)
    gm.recompile()
    gm.train(net.training)
    return gm


__all__ = ["extract_subnet"]
