"""Extract a physically smaller, standalone network from a slimmable one."""

from __future__ import annotations

import copy
from typing import Callable, Mapping

import numpy as np
import torch
from torch import fx, nn

from compress.slim.layers import AttrSlice, Selection, take, unmake_slimmable
from compress.slim.network import SlimmableNetwork, _selection


def _param(t: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(t.detach().clone(), requires_grad=like.requires_grad)


def _slice_conv(mod: nn.Module, sel: dict[str, Selection]) -> None:
    s_in, s_out = sel.get("in"), sel.get("out")
    w = take(mod.weight, 0, s_out)
    if mod.groups == 1:
        w = take(w, 1, s_in)
        mod.in_channels = w.shape[1]
    else:
        per_group_out = mod.out_channels // mod.groups
        per_group_in = mod.in_channels // mod.groups
        mod.groups = w.shape[0] // per_group_out
        mod.in_channels = mod.groups * per_group_in
    mod.out_channels = w.shape[0]
    mod.weight = _param(w, mod.weight)
    if mod.bias is not None:
        mod.bias = _param(take(mod.bias, 0, s_out), mod.bias)


def _slice_linear(mod: nn.Module, sel: dict[str, Selection]) -> None:
    w = take(take(mod.weight, 0, sel.get("out")), 1, sel.get("in"))
    mod.out_features, mod.in_features = w.shape
    mod.weight = _param(w, mod.weight)
    if mod.bias is not None:
        mod.bias = _param(take(mod.bias, 0, sel.get("out")), mod.bias)


def _slice_norm(mod: nn.Module, sel: dict[str, Selection]) -> None:
    s = sel.get("feat")
    for name in ("weight", "bias"):
        p = getattr(mod, name, None)
        if p is not None:
            setattr(mod, name, _param(take(p, 0, s), p))
    for name in ("running_mean", "running_var"):
        b = getattr(mod, name, None)
        if b is not None:
            setattr(mod, name, take(b, 0, s).clone())
    n = mod.weight.shape[0] if getattr(mod, "weight", None) is not None else None
    if isinstance(mod, nn.LayerNorm):
        mod.normalized_shape = (n if n is not None else mod.normalized_shape[0],)
    elif n is not None:
        mod.num_features = n
    elif getattr(mod, "running_mean", None) is not None:
        mod.num_features = mod.running_mean.shape[0]


_SLICERS: dict[str, Callable[[nn.Module, dict[str, Selection]], None]] = {
    "_SlimConv": _slice_conv,
    "_SlimLinear": _slice_linear,
    "_SlimBatchNorm": _slice_norm,
    "_SlimLayerNorm": _slice_norm,
    "_SlimLayerNorm2d": _slice_norm,
}


def _slicer(mod: nn.Module) -> Callable[[nn.Module, dict[str, Selection]], None]:
    for cls in type(mod).__mro__:
        if cls.__name__ in _SLICERS:
            return _SLICERS[cls.__name__]
    raise AssertionError(f"no slicer for {type(mod).__name__}")


def extract_subnet(net: SlimmableNetwork, config: Mapping[str, int] | None = None) -> fx.GraphModule:
    """Return a standalone, physically smaller copy of ``net`` at ``config``.

    The supernet is untouched. The result is an ``fx.GraphModule`` made of
    ordinary torch layers (Conv2d, BatchNorm2d, ...) with sliced weights, in eval
    mode if ``net`` is.

    Args:
        net: the slimmable network.
        config: group widths; None means the network's current config.

    Raises:
        InvalidConfigError: unknown group names or widths the group cannot take.

    Example:
        >>> sub = extract_subnet(net, net.space.uniform_config(0.5))
        >>> compress.export_onnx(sub, torch.randn(1, 3, 64, 64), "sub.onnx")
    """
    masks = net.live_masks(net.config if config is None else config)
    gm = copy.deepcopy(net.graph_module)
    modules = dict(gm.named_modules())
    per_module: dict[str, dict[str, Selection]] = {}
    attr_slices: dict[str, Selection] = {}
    for key, live in masks.items():
        kind, name = key[0], key[1]
        if kind == "module":
            per_module.setdefault(name, {})[key[2]] = _selection(live)
        elif kind == "split":
            modules[name].sizes[key[2]] = int(live.sum())
        elif kind == "attr":
            attr_slices[name] = _selection(live)
        elif kind == "permute":
            rank = np.cumsum(live) - 1
            perm = net._perms[name]
            modules[name].index = torch.from_numpy(rank[perm[live[perm]]].astype(np.int64))
    with torch.no_grad():
        for name, sel in per_module.items():
            mod = modules[name]
            _slicer(mod)(mod, sel)
            unmake_slimmable(mod)
        for n in list(gm.graph.nodes):
            if n.op == "call_module" and isinstance(modules.get(n.target), AttrSlice):
                attr_node = n.args[0]
                owner_name, _, leaf = str(attr_node.target).rpartition(".")
                owner = gm.get_submodule(owner_name) if owner_name else gm
                old = getattr(owner, leaf)
                new = take(old, modules[n.target].dim, attr_slices[n.target])
                setattr(owner, leaf, _param(new, old) if isinstance(old, nn.Parameter) else new.clone())
                n.replace_all_uses_with(attr_node)
                gm.graph.erase_node(n)
                gm.delete_submodule(n.target)
    gm.recompile()
    gm.train(net.training)
    return gm


__all__ = ["extract_subnet"]
