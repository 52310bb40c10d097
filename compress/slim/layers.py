"""Layers that run on a slice of their full-width weights, and the table of slimmable layer kinds.

Everything slimming needs to know about one kind of weight layer (Conv, Linear, BatchNorm, ...) is one
:class:`LayerKind` entry of ``LAYER_KINDS``: which modules it matches, the channel roles its weights have
("in"/"out" for conv and linear, "feat" for per-channel layers), the forward that runs on the current selection,
the permanent slicing used by :func:`compress.extract_subnet` and the permutation used by
:func:`compress.reorder_channels_`. :func:`register_layer_kind` adds a kind of your own.

Slimming swaps the class of each sliced layer for a subclass whose ``forward`` is the kind's forward, which
cuts the weights to the current selection (``narrow`` for a prefix, which is a view, so gradients land in the
shared full-width weights; ``index_select`` otherwise). The parameters, their names and the state dict do not
change. A selection is ``None`` (full), an ``int`` n (the first n channels) or a LongTensor of channel positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import check_parameter

Selection = Union[None, int, torch.Tensor]
# forward(module, selection per role, *inputs) -> output, running the layer on the selected channels
SlimForward = Callable[..., Any]
# slice(module, selection per role): make the module's weights and size attributes the selected ones, for good
PermanentSlicer = Callable[[nn.Module, Mapping[str, Selection]], None]
# permute(module, role, index): reorder the module's tensors along the role's dim, position j <- old index[j]
Permuter = Callable[[nn.Module, str, torch.Tensor], None]


# ---- selections ------------------------------------------------------------------------------------
def take(t: torch.Tensor | None, dim: int, sel: Selection) -> torch.Tensor | None:
    """Select channels of ``t`` along ``dim`` (a view for a prefix); ``None`` passes through."""
    if t is None or sel is None:
        return t
    if isinstance(sel, int):
        return t.narrow(dim, 0, sel)
    return t.index_select(dim, sel)


def selection_size(sel: Selection, full: int) -> int:
    """Number of channels a selection keeps out of ``full``."""
    if sel is None:
        return full
    if isinstance(sel, int):
        return sel
    return int(sel.numel())


def selection_of(live: np.ndarray) -> Selection:
    """The cheapest selection of the positions where a (n,) bool mask is True.

    ``None`` when all are live, ``int`` k when the live ones are the first k, else a LongTensor of positions.
    """
    n = int(live.sum())
    if n == len(live):
        return None
    if live[:n].all():
        return n
    return torch.from_numpy(np.flatnonzero(live).astype(np.int64))


def slice_tensor_(mod: nn.Module, name: str, dim: int, sel: Selection) -> None:
    """Replace ``mod.<name>`` by its selected channels along ``dim``, for good (a helper for permanent slicers).

    A parameter stays a parameter (same ``requires_grad``), a buffer a buffer; a missing or None attribute is
    left alone.
    """
    t = getattr(mod, name, None)
    if t is None or sel is None:
        return
    new = take(t, dim, sel).detach().clone()
    setattr(mod, name, nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else new)


def permute_tensors_(mod: nn.Module, names: tuple[str, ...], dim: int, idx: torch.Tensor) -> None:
    """Reorder ``mod.<name>`` along ``dim`` for each name present: position j takes old position ``idx[j]``."""
    for name in names:
        t = getattr(mod, name, None)
        if t is not None:
            t.data = t.data.index_select(dim, idx)


# ---- the layer kinds -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerKind:
    """Everything slimming needs about one kind of weight layer: one entry of ``LAYER_KINDS``.

    Attributes:
        name: the kind's key in ``LAYER_KINDS`` (e.g. "conv").
        matches: which modules are of this kind: a layer class, a tuple of classes (``isinstance``), or a
            predicate ``module -> bool``.
        roles: the channel roles of its weights, as the op handler that tracks the layer names them
            (``compress.space.ops``: conv / linear write "in" and "out", ``per_channel_layer`` writes "feat").
        forward: ``forward(module, selection, *inputs) -> output``, the layer's forward on the selected
            channels; ``selection`` maps role -> :data:`Selection`, a missing role is at full width.
        slice: ``slice(module, selection)``, the permanent slicing used by extraction: replace the weights by
            their selected channels and update the size attributes (``out_channels``, ``num_features``, ...) so
            that the module is an ordinary layer of the smaller width.
        permute: ``permute(module, role, index)``, reorder the tensors along the role's dim (position j takes
            old position ``index[j]``, a LongTensor); used by channel reordering.
    """

    name: str
    matches: type | tuple[type, ...] | Callable[[nn.Module], bool]
    roles: tuple[str, ...]
    forward: SlimForward
    slice: PermanentSlicer
    permute: Permuter

    def match(self, mod: nn.Module) -> bool:
        """Whether ``mod`` is a layer of this kind."""
        if isinstance(self.matches, type) or isinstance(self.matches, tuple):
            return isinstance(mod, self.matches)
        return bool(self.matches(mod))


_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _fixed_groups(mod: nn.Module) -> bool:
    """Whether a grouped conv keeps its group count when slimmed: groups with different in and out widths
    (split attention's radix conv). The op handler ties every group's channels, so each group keeps the same
    ones and each narrows. Grouped convs with equal widths (and depthwise ones) lose whole groups instead."""
    g = mod.groups
    return g > 1 and mod.in_channels // g > 1 and mod.in_channels // g != mod.out_channels // g


def _in_per_group(mod: nn.Module, s_in: Selection) -> Selection:
    """The selection within one group of a fixed-group conv, from the selection over all its in channels
    (every group keeps the same positions; the first group's are the ones below the group width)."""
    if s_in is None:
        return None
    gs = mod.in_channels // mod.groups
    if isinstance(s_in, int):
        s_in = torch.arange(s_in)
    return s_in[s_in < gs]


def _conv_forward(mod: nn.Module, sel: Mapping[str, Selection], x: torch.Tensor) -> torch.Tensor:
    s_in, s_out = sel.get("in"), sel.get("out")
    weight = take(mod.weight, 0, s_out)
    if mod.groups == 1:
        weight, groups = take(weight, 1, s_in), 1
    elif _fixed_groups(mod):
        weight, groups = take(weight, 1, _in_per_group(mod, s_in)), mod.groups
    else:
        groups = weight.shape[0] // (mod.out_channels // mod.groups)
    bias = take(mod.bias, 0, s_out)
    conv = _CONV_FN[len(mod.kernel_size)]
    if mod.padding_mode != "zeros":
        x = F.pad(x, mod._reversed_padding_repeated_twice, mode=mod.padding_mode)
        return conv(x, weight, bias, mod.stride, 0, mod.dilation, groups)
    return conv(x, weight, bias, mod.stride, mod.padding, mod.dilation, groups)


def _conv_slice(mod: nn.Module, sel: Mapping[str, Selection]) -> None:
    s_out = sel.get("out")
    if mod.groups == 1:
        slice_tensor_(mod, "weight", 1, sel.get("in"))
        slice_tensor_(mod, "weight", 0, s_out)
        mod.in_channels = mod.weight.shape[1]
    elif _fixed_groups(mod):  # the group count stays, each group narrows
        slice_tensor_(mod, "weight", 1, _in_per_group(mod, sel.get("in")))
        slice_tensor_(mod, "weight", 0, s_out)
        mod.in_channels = mod.groups * mod.weight.shape[1]
    else:  # grouped / depthwise: the in channels are the out channels, cut with "out"
        per_group_out = mod.out_channels // mod.groups
        per_group_in = mod.in_channels // mod.groups
        slice_tensor_(mod, "weight", 0, s_out)
        mod.groups = mod.weight.shape[0] // per_group_out
        mod.in_channels = mod.groups * per_group_in
    mod.out_channels = mod.weight.shape[0]
    slice_tensor_(mod, "bias", 0, s_out)


def _conv_permute(mod: nn.Module, role: str, idx: torch.Tensor) -> None:
    if role == "in":
        if mod.groups == 1:
            permute_tensors_(mod, ("weight",), 1, idx)
        elif _fixed_groups(mod):  # every group is permuted alike: the first group's order
            permute_tensors_(mod, ("weight",), 1, idx[:mod.in_channels // mod.groups])
        return  # grouped / depthwise convs: the in dim is the out dim, permuted with "out"
    permute_tensors_(mod, ("weight", "bias"), 0, idx)
    if _fixed_groups(mod):
        return
    gs = mod.in_channels // mod.groups
    if mod.groups > 1 and gs > 1:  # grouped conv (in and out are the same channels): a block-preserving
        # permutation also reorders each block's input channels, dim 1 of the weight, by its order within the block
        within = (idx.view(-1, gs) % gs).repeat_interleave(gs, dim=0)  # (out channels, gs): one order per block
        w = mod.weight.data
        mod.weight.data = torch.gather(w, 1, within.view(w.shape[0], gs, *([1] * (w.ndim - 2))).expand_as(w))


def _is_conv_transpose(mod: nn.Module) -> bool:
    return isinstance(mod, nn.modules.conv._ConvTransposeNd)


_CONV_TRANSPOSE_FN = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv_transpose_forward(mod: nn.Module, sel: Mapping[str, Selection], x: torch.Tensor,
                            output_size: list[int] | None = None) -> torch.Tensor:
    """A transposed conv on the selected channels. Its weight is (in, out / groups, *kernel): "in" cuts dim 0;
    "out" cuts dim 1 of an ungrouped one, while a grouped one keeps whole groups (its outputs are tied to its
    inputs by the op handler, so the "in" selection picks them)."""
    s_in, s_out = sel.get("in"), sel.get("out")
    if s_in is None and s_out is None:
        return base_forward(mod, x, output_size)
    weight = take(mod.weight, 0, s_in)
    if mod.groups == 1:
        weight, groups = take(weight, 1, s_out), 1
    else:
        groups = weight.shape[0] // (mod.in_channels // mod.groups)
    nd = len(mod.kernel_size)
    output_padding = mod._output_padding(x, output_size, mod.stride, mod.padding, mod.kernel_size, nd,
                                         mod.dilation)
    return _CONV_TRANSPOSE_FN[nd](x, weight, take(mod.bias, 0, s_out), mod.stride, mod.padding, output_padding,
                                  groups, mod.dilation)


def _conv_transpose_slice(mod: nn.Module, sel: Mapping[str, Selection]) -> None:
    per_group_in, per_group_out = mod.in_channels // mod.groups, mod.out_channels // mod.groups
    slice_tensor_(mod, "weight", 0, sel.get("in"))
    if mod.groups == 1:
        slice_tensor_(mod, "weight", 1, sel.get("out"))
        mod.out_channels = mod.weight.shape[1]
    else:  # whole groups kept
        mod.groups = mod.weight.shape[0] // per_group_in
        mod.out_channels = mod.groups * per_group_out
    mod.in_channels = mod.weight.shape[0]
    slice_tensor_(mod, "bias", 0, sel.get("out"))


def _conv_transpose_permute(mod: nn.Module, role: str, idx: torch.Tensor) -> None:
    if role == "out":
        if mod.groups == 1:
            permute_tensors_(mod, ("weight",), 1, idx)
        permute_tensors_(mod, ("bias",), 0, idx)  # a grouped one: its outputs move with their inputs ("in")
        return
    permute_tensors_(mod, ("weight",), 0, idx)
    gs = mod.in_channels // mod.groups
    if mod.groups > 1 and gs > 1 and mod.out_channels // mod.groups == gs:  # grouped with in = out channels: a
        # block-preserving permutation also reorders each block's outputs, dim 1 of the weight, by its order
        within = (idx.view(-1, gs) % gs).repeat_interleave(gs, dim=0)  # (in channels, gs): one order per block
        w = mod.weight.data
        mod.weight.data = torch.gather(w, 1, within.view(w.shape[0], gs, *([1] * (w.ndim - 2))).expand_as(w))


def _linear_forward(mod: nn.Module, sel: Mapping[str, Selection], x: torch.Tensor) -> torch.Tensor:
    s_in, s_out = sel.get("in"), sel.get("out")
    return F.linear(x, take(take(mod.weight, 0, s_out), 1, s_in), take(mod.bias, 0, s_out))


def _linear_slice(mod: nn.Module, sel: Mapping[str, Selection]) -> None:
    slice_tensor_(mod, "weight", 0, sel.get("out"))
    slice_tensor_(mod, "weight", 1, sel.get("in"))
    slice_tensor_(mod, "bias", 0, sel.get("out"))
    mod.out_features, mod.in_features = mod.weight.shape


def _linear_permute(mod: nn.Module, role: str, idx: torch.Tensor) -> None:
    if role == "in":
        permute_tensors_(mod, ("weight",), 1, idx)
    else:
        permute_tensors_(mod, ("weight", "bias"), 0, idx)


_PER_CHANNEL = ("weight", "bias", "running_mean", "running_var")


def _batch_norm_forward(mod: nn.Module, sel: Mapping[str, Selection], x: torch.Tensor) -> torch.Tensor:
    """BatchNorm on a channel subset; running statistics are written back when the subset is not a prefix
    (a prefix is a view and updates in place)."""
    s = sel.get("feat")
    if s is None:
        return base_forward(mod, x)
    mod._check_input_dim(x)
    factor = 0.0 if mod.momentum is None else mod.momentum
    if mod.training and mod.track_running_stats and mod.num_batches_tracked is not None:
        mod.num_batches_tracked.add_(1)
        factor = 1.0 / float(mod.num_batches_tracked) if mod.momentum is None else mod.momentum
    use_batch_stats = mod.training or (mod.running_mean is None and mod.running_var is None)
    track = not mod.training or mod.track_running_stats
    mean = take(mod.running_mean, 0, s) if track else None
    var = take(mod.running_var, 0, s) if track else None
    out = F.batch_norm(x, mean, var, take(mod.weight, 0, s), take(mod.bias, 0, s), use_batch_stats, factor, mod.eps)
    if isinstance(s, torch.Tensor) and use_batch_stats and mean is not None:
        with torch.no_grad():
            mod.running_mean.index_copy_(0, s, mean)
            mod.running_var.index_copy_(0, s, var)
    return out


def _batch_norm_slice(mod: nn.Module, sel: Mapping[str, Selection]) -> None:
    for name in _PER_CHANNEL:
        slice_tensor_(mod, name, 0, sel.get("feat"))
    if getattr(mod, "weight", None) is not None:
        mod.num_features = mod.weight.shape[0]
    elif getattr(mod, "running_mean", None) is not None:
        mod.num_features = mod.running_mean.shape[0]


def _per_channel_permute(mod: nn.Module, role: str, idx: torch.Tensor) -> None:
    permute_tensors_(mod, _PER_CHANNEL, 0, idx)


def _is_channel_prelu(mod: nn.Module) -> bool:
    return isinstance(mod, nn.PReLU) and mod.num_parameters > 1


def _prelu_forward(mod: nn.Module, sel: Mapping[str, Selection], x: torch.Tensor) -> torch.Tensor:
    return F.prelu(x, take(mod.weight, 0, sel.get("feat")))


def _prelu_slice(mod: nn.Module, sel: Mapping[str, Selection]) -> None:
    slice_tensor_(mod, "weight", 0, sel.get("feat"))
    mod.num_parameters = mod.weight.shape[0]


def _prelu_permute(mod: nn.Module, role: str, idx: torch.Tensor) -> None:
    permute_tensors_(mod, ("weight",), 0, idx)


def _layer_norm_forward(mod: nn.Module, sel: Mapping[str, Selection], x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dim, normalising over the channels kept."""
    s = sel.get("feat")
    return F.layer_norm(x, (x.shape[-1],), take(mod.weight, 0, s), take(mod.bias, 0, s), mod.eps)


def _layer_norm2d_forward(mod: nn.Module, sel: Mapping[str, Selection], x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channel dim of an NCHW tensor (torchvision's LayerNorm2d)."""
    s = sel.get("feat")
    x = x.permute(0, 2, 3, 1)
    x = F.layer_norm(x, (x.shape[-1],), take(mod.weight, 0, s), take(mod.bias, 0, s), mod.eps)
    return x.permute(0, 3, 1, 2)


def _layer_norm_slice(mod: nn.Module, sel: Mapping[str, Selection]) -> None:
    s = sel.get("feat")
    slice_tensor_(mod, "weight", 0, s)
    slice_tensor_(mod, "bias", 0, s)
    if getattr(mod, "weight", None) is not None:
        mod.normalized_shape = (mod.weight.shape[0],)
    elif s is not None:
        mod.normalized_shape = (selection_size(s, mod.normalized_shape[0]),)


def _is_layer_norm2d(mod: nn.Module) -> bool:
    return isinstance(mod, nn.LayerNorm) and type(mod).__name__ in ("LayerNorm2d", "LayerNormAct2d")


def _group_norm_groups(mod: nn.Module, kept: int) -> int:
    """Groups of a GroupNorm cut to ``kept`` channels: channels per group stay fixed (the op handler makes
    widths multiples of it); a single group stays one group."""
    return 1 if mod.num_groups == 1 else kept // (mod.num_channels // mod.num_groups)


def _group_norm_forward(mod: nn.Module, sel: Mapping[str, Selection], x: torch.Tensor) -> torch.Tensor:
    s = sel.get("feat")
    if s is None:
        return base_forward(mod, x)
    groups = _group_norm_groups(mod, selection_size(s, mod.num_channels))
    return F.group_norm(x, groups, take(mod.weight, 0, s), take(mod.bias, 0, s), mod.eps)


def _group_norm_slice(mod: nn.Module, sel: Mapping[str, Selection]) -> None:
    s = sel.get("feat")
    if s is None:
        return
    kept = selection_size(s, mod.num_channels)
    mod.num_groups = _group_norm_groups(mod, kept)
    slice_tensor_(mod, "weight", 0, s)
    slice_tensor_(mod, "bias", 0, s)
    mod.num_channels = kept


# timm's norm layers with their activation inside (BatchNormAct2d, GroupNormAct, LayerNormAct2d, ...): the
# norm of the selected channels, then the layer's own ``drop`` and ``act`` (element-wise, checked by the op
# handler); at full width the layer's own forward runs
_NORM_ACT = ("BatchNormAct2d", "GroupNormAct", "GroupNorm1Act", "LayerNormAct2d", "LayerNormAct")


def _is_norm_act(mod: nn.Module) -> bool:
    return type(mod).__module__.startswith("timm.") and type(mod).__name__ in _NORM_ACT


def _with_act(norm_forward: SlimForward) -> SlimForward:
    def forward(mod: nn.Module, sel: Mapping[str, Selection], x: torch.Tensor) -> torch.Tensor:
        if sel.get("feat") is None:
            return base_forward(mod, x)
        return mod.act(mod.drop(norm_forward(mod, sel, x)))

    return forward


def _is_kind_with_act(base: Callable[[nn.Module], bool]) -> Callable[[nn.Module], bool]:
    return lambda m: _is_norm_act(m) and base(m)


def _is_conv(mod: nn.Module) -> bool:
    return isinstance(mod, nn.modules.conv._ConvNd) and not mod.transposed


# timm's convs with their own forward (same padding, weight standardisation): the layer's own forward runs on
# the selected weights, swapped in for the call with the size attributes it reads, and restored after
_OWN_FORWARD_CONVS = ("Conv2dSame", "StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame")


def _is_own_forward_conv(mod: nn.Module) -> bool:
    return _is_conv(mod) and type(mod).__module__.startswith("timm.") and type(mod).__name__ in _OWN_FORWARD_CONVS


def _own_forward_conv_forward(mod: nn.Module, sel: Mapping[str, Selection], x: torch.Tensor) -> torch.Tensor:
    s_in, s_out = sel.get("in"), sel.get("out")
    if s_in is None and s_out is None:
        return base_forward(mod, x)
    weight = take(mod.weight, 0, s_out)
    per_group_out, per_group_in = mod.out_channels // mod.groups, mod.in_channels // mod.groups
    groups = 1 if mod.groups == 1 else weight.shape[0] // per_group_out
    if mod.groups == 1:
        weight = take(weight, 1, s_in)
    elif _fixed_groups(mod):
        weight, groups = take(weight, 1, _in_per_group(mod, s_in)), mod.groups
        per_group_in = weight.shape[1]
    swapped = {"weight": weight, "bias": take(mod.bias, 0, s_out)}
    if getattr(mod, "gain", None) is not None:
        swapped["gain"] = take(mod.gain, 0, s_out)
    sizes = {"out_channels": weight.shape[0], "groups": groups,
             "in_channels": weight.shape[1] if groups == 1 else groups * per_group_in}
    saved_params = {k: mod._parameters[k] for k in swapped}
    saved_sizes = {k: getattr(mod, k) for k in sizes}
    try:
        mod._parameters.update(swapped)
        for k, v in sizes.items():
            setattr(mod, k, v)
        return base_forward(mod, x)
    finally:
        mod._parameters.update(saved_params)
        for k, v in saved_sizes.items():
            setattr(mod, k, v)


def _own_forward_conv_slice(mod: nn.Module, sel: Mapping[str, Selection]) -> None:
    _conv_slice(mod, sel)
    slice_tensor_(mod, "gain", 0, sel.get("out"))


def _own_forward_conv_permute(mod: nn.Module, role: str, idx: torch.Tensor) -> None:
    _conv_permute(mod, role, idx)
    if role == "out":
        permute_tensors_(mod, ("gain",), 0, idx)


# timm's BlurPool2d with one filter per channel (``channels`` given): pad, then a depthwise conv with the buffer
# ``filt`` (C, 1, k, k); the filters of the selected channels, as many groups as channels
def _is_blur_pool(mod: nn.Module) -> bool:
    cls = type(mod)
    return cls.__module__.startswith("timm.") and cls.__name__ == "BlurPool2d" and \
        getattr(mod, "channels", None) is not None


def _blur_pool_forward(mod: nn.Module, sel: Mapping[str, Selection], x: torch.Tensor) -> torch.Tensor:
    s = sel.get("feat")
    if s is None:
        return base_forward(mod, x)
    weight = take(mod.filt, 0, s)
    x = F.pad(x, mod.padding, mode=mod.pad_mode)
    return F.conv2d(x, weight, stride=mod.stride, groups=weight.shape[0])


def _blur_pool_slice(mod: nn.Module, sel: Mapping[str, Selection]) -> None:
    slice_tensor_(mod, "filt", 0, sel.get("feat"))
    mod.channels = mod.filt.shape[0]


def _blur_pool_permute(mod: nn.Module, role: str, idx: torch.Tensor) -> None:
    permute_tensors_(mod, ("filt",), 0, idx)


# name -> entry; looked up newest first, so a kind registered later wins over the built-in ones
LAYER_KINDS: dict[str, LayerKind] = {}


def register_layer_kind(kind: LayerKind, *, replace: bool = False) -> LayerKind:
    """Teach slimming a weight layer of your own: how to run, cut and permute it (one entry, one place).

    The layer also needs an op handler that tells the channel space how channels flow through it and names its
    roles: ``compress.space.register_module(cls, compress.space.ops.per_channel_layer(1, "batch_norm"))`` for
    a layer with one parameter per channel along dim 1 (role "feat"), ``conv`` / ``linear`` for roles "in" and
    "out". The op kind given to ``per_channel_layer`` picks the FLOPs formula (``compress.cost.flops.
    FLOP_FORMULAS``); add a formula there if none of the existing ones counts your layer.

    Args:
        kind: the entry (see :class:`LayerKind` for what each field receives).
        replace: allow replacing an entry of the same name (otherwise that is an error).

    Returns:
        ``kind``. Kinds registered later are matched first, so an entry for a subclass of a built-in layer
        (say a BatchNorm with its own forward) takes precedence over the built-in one.

    Raises:
        InvalidParameterError: ``kind`` is not a LayerKind, has no roles, a field that should be callable is
            not, or its name is taken and ``replace`` is False.

    Example:
        >>> register_layer_kind(LayerKind("channel_scale", ChannelScale, ("feat",), scale_forward,
        ...                               scale_slice, scale_permute))
    """
    check_parameter(isinstance(kind, LayerKind), "kind", "register_layer_kind", "a LayerKind", kind)
    check_parameter(isinstance(kind.name, str) and bool(kind.name), "kind.name", "register_layer_kind",
                    "a non-empty string", kind.name)
    check_parameter(isinstance(kind.roles, tuple) and bool(kind.roles) and all(isinstance(r, str) for r in kind.roles),
                    "kind.roles", "register_layer_kind", "a non-empty tuple of role names such as ('feat',)",
                    kind.roles)
    matches_ok = (isinstance(kind.matches, type) or callable(kind.matches)
                  or isinstance(kind.matches, tuple) and all(isinstance(c, type) for c in kind.matches))
    check_parameter(matches_ok, "kind.matches", "register_layer_kind",
                    "a layer class, a tuple of classes or a predicate module -> bool", kind.matches)
    for field_name in ("forward", "slice", "permute"):
        check_parameter(callable(getattr(kind, field_name)), f"kind.{field_name}", "register_layer_kind",
                        "a callable (see LayerKind)", getattr(kind, field_name))
    check_parameter(replace or kind.name not in LAYER_KINDS, "kind.name", "register_layer_kind",
                    "a name without an entry (pass replace=True to replace it)", kind.name)
    LAYER_KINDS.pop(kind.name, None)  # a replaced kind moves to the newest (first matched) place
    LAYER_KINDS[kind.name] = kind
    return kind


for _kind in (
    LayerKind("conv", _is_conv, ("in", "out"), _conv_forward, _conv_slice, _conv_permute),
    LayerKind("linear", nn.Linear, ("in", "out"), _linear_forward, _linear_slice, _linear_permute),
    LayerKind("conv_transpose", _is_conv_transpose, ("in", "out"), _conv_transpose_forward, _conv_transpose_slice,
              _conv_transpose_permute),
    LayerKind("batch_norm", nn.modules.batchnorm._BatchNorm, ("feat",), _batch_norm_forward, _batch_norm_slice,
              _per_channel_permute),
    LayerKind("layer_norm", lambda m: isinstance(m, nn.LayerNorm) and not _is_layer_norm2d(m), ("feat",),
              _layer_norm_forward, _layer_norm_slice, _per_channel_permute),
    LayerKind("layer_norm2d", _is_layer_norm2d, ("feat",), _layer_norm2d_forward, _layer_norm_slice,
              _per_channel_permute),
    LayerKind("prelu", _is_channel_prelu, ("feat",), _prelu_forward, _prelu_slice, _prelu_permute),
    LayerKind("own_forward_conv", _is_own_forward_conv, ("in", "out"), _own_forward_conv_forward,
              _own_forward_conv_slice, _own_forward_conv_permute),
    LayerKind("group_norm", nn.GroupNorm, ("feat",), _group_norm_forward, _group_norm_slice, _per_channel_permute),
    LayerKind("batch_norm_act", _is_kind_with_act(lambda m: isinstance(m, nn.modules.batchnorm._BatchNorm)),
              ("feat",), _with_act(_batch_norm_forward), _batch_norm_slice, _per_channel_permute),
    LayerKind("group_norm_act", _is_kind_with_act(lambda m: isinstance(m, nn.GroupNorm)), ("feat",),
              _with_act(_group_norm_forward), _group_norm_slice, _per_channel_permute),
    LayerKind("layer_norm_act", _is_kind_with_act(lambda m: isinstance(m, nn.LayerNorm) and not _is_layer_norm2d(m)),
              ("feat",), _with_act(_layer_norm_forward), _layer_norm_slice, _per_channel_permute),
    LayerKind("layer_norm2d_act", _is_kind_with_act(_is_layer_norm2d), ("feat",), _with_act(_layer_norm2d_forward),
              _layer_norm_slice, _per_channel_permute),
    LayerKind("blur_pool", _is_blur_pool, ("feat",), _blur_pool_forward, _blur_pool_slice, _blur_pool_permute),
):
    register_layer_kind(_kind)


def find_layer_kind(mod: nn.Module) -> LayerKind | None:
    """The entry of ``LAYER_KINDS`` that matches a layer (newest first), or None if no kind slices it."""
    for kind in reversed(list(LAYER_KINDS.values())):
        if kind.match(mod):
            return kind
    return None


def layer_kind(mod: nn.Module) -> str | None:
    """The name of the layer kind of ``mod``, or None if it has no weights to slice."""
    kind = slim_kind(mod) or find_layer_kind(mod)
    return kind.name if kind is not None else None


# ---- slimmable layers ----------------------------------------------------------------------------------
_SLIM_CLASS_CACHE: dict[tuple[str, type], type] = {}


def _slim_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    return self._slim_kind.forward(self, self._slim, *args, **kwargs)


def make_slimmable(mod: nn.Module) -> LayerKind | None:
    """Swap ``mod``'s class for its slimmable subclass (in place; parameters untouched).

    Returns the layer kind, or None (nothing done) if no entry of ``LAYER_KINDS`` matches ``mod``.
    """
    if is_slimmable(mod):
        return mod._slim_kind
    kind = find_layer_kind(mod)
    if kind is None:
        return None
    base = type(mod)
    cls = _SLIM_CLASS_CACHE.get((kind.name, base))
    if cls is None or cls._slim_kind is not kind:
        cls = type(f"Slim{base.__name__}", (base,),
                   {"forward": _slim_forward, "_slim_base": base, "_slim_kind": kind})
        _SLIM_CLASS_CACHE[(kind.name, base)] = cls
    mod.__class__ = cls
    mod._slim = {}
    return kind


def unmake_slimmable(mod: nn.Module) -> None:
    """Restore the original class of a slimmable layer (its current weights are kept)."""
    if is_slimmable(mod):
        mod.__class__ = mod._slim_base
        del mod._slim


def is_slimmable(mod: nn.Module) -> bool:
    """Whether ``mod`` was made slimmable by :func:`make_slimmable`."""
    return "_slim" in mod.__dict__


def slim_kind(mod: nn.Module) -> LayerKind | None:
    """The layer kind a slimmable layer runs with, or None for a layer that is not slimmable."""
    return mod._slim_kind if is_slimmable(mod) else None


def slim_selection(mod: nn.Module) -> dict[str, Selection]:
    """A copy of a slimmable layer's current selection: role -> :data:`Selection` (a missing role is full).

    Raises:
        InvalidParameterError: ``mod`` is not a slimmable layer.
    """
    check_parameter(is_slimmable(mod), "mod", "slim_selection", "a slimmable layer (see make_slimmable)",
                    type(mod).__name__)
    return dict(mod._slim)


def set_slim_selection(mod: nn.Module, role: str, sel: Selection) -> None:
    """Set which channels of one role a slimmable layer keeps (``None``: all).

    Raises:
        InvalidParameterError: ``mod`` is not slimmable, or ``role`` is not one of its kind's roles.
    """
    check_parameter(is_slimmable(mod), "mod", "set_slim_selection", "a slimmable layer (see make_slimmable)",
                    type(mod).__name__)
    roles = mod._slim_kind.roles
    if role not in roles:  # set_config calls this for every site: no message built on the fast path
        check_parameter(False, "role", "set_slim_selection", f"one of {list(roles)}", role)
    mod._slim[role] = sel


def base_forward(mod: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """Run a slimmable layer's original (full-width) forward; for a kind's forward when nothing is cut."""
    cls = mod._slim_base if is_slimmable(mod) else type(mod)
    return cls.forward(mod, *args, **kwargs)


# ---- ops rewritten in the traced graph -------------------------------------------------------------------
class ChannelSplit(nn.Module):
    """``torch.split`` along the channel dim with sizes that follow the config.

    It replaces ``chunk``/``split`` calls, whose part sizes would otherwise be
    computed from the slimmed tensor and cut in the wrong place.
    """

    def __init__(self, dim: int, sizes: list[int]) -> None:
        super().__init__()
        self.dim = dim
        self.sizes = list(sizes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(x, self.sizes, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, sizes={self.sizes}"


class ChannelSlice(nn.Module):
    """``x[:, a:b]`` along the channel dim with bounds that follow the config.

    It replaces a fixed channel slice (a dual-path or partial residual), whose literal bounds would cut the
    slimmed tensor in the wrong place: ``start``/``stop`` are the slimmed positions of full-width channels a
    and b.
    """

    def __init__(self, dim: int, start: int, stop: int) -> None:
        super().__init__()
        self.dim = dim
        self.start = start
        self.stop = stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.narrow(self.dim, self.start, self.stop - self.start)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, start={self.start}, stop={self.stop}"


class ChannelPermute(nn.Module):
    """A fixed permutation of channels (what a channel shuffle does), as one gather.

    It replaces the view/transpose/view chain of a channel shuffle, which only
    works when every shuffled group keeps the same width.
    """

    def __init__(self, dim: int, index: torch.Tensor) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("index", index.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(self.dim, self.index)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, channels={self.index.numel()}"


class NormShape(nn.Module):
    """The ``normalized_shape`` ``(C,)`` of a functional layer norm over channels, with C following the config.

    It replaces the literal shape of ``F.layer_norm(x, (C,), weight, bias)`` in the traced graph (which would not
    fit a narrower x); called with no inputs, it returns a tuple of ints, which exporters see as a constant.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self) -> tuple[int]:
        return (self.size,)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class AttrSlice(nn.Module):
    """Slices a parameter read straight from the graph (e.g. ConvNeXt's layer scale)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.sel: Selection = None

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return take(t, self.dim, self.sel)
