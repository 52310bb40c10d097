"""Layers that run on a slice of their full-width weights.

Slimming swaps the class of each sliced layer for a subclass whose ``forward``
cuts the weights to the current selection (``narrow`` for a prefix, which is a
view, so gradients land in the shared full-width weights; ``index_select``
otherwise). The parameters, their names and the state dict do not change. A
selection is ``None`` (full), an ``int`` n (the first n channels) or a
LongTensor of channel positions.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

Selection = Union[None, int, torch.Tensor]


def take(t: torch.Tensor | None, dim: int, sel: Selection) -> torch.Tensor | None:
    """Select channels of ``t`` along ``dim``."""
    if t is None or sel is None:
        return t
    if isinstance(sel, int):
        return t.narrow(dim, 0, sel)
    return t.index_select(dim, sel)


def selection_size(sel: Selection, full: int) -> int:
    if sel is None:
        return full
    if isinstance(sel, int):
        return sel
    return int(sel.numel())


_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class _SlimConv:
    _slim: dict[str, Selection]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s_in, s_out = self._slim.get("in"), self._slim.get("out")
        weight = take(self.weight, 0, s_out)
        if self.groups == 1:
            weight, groups = take(weight, 1, s_in), 1
        else:
            groups = weight.shape[0] // (self.out_channels // self.groups)
        bias = take(self.bias, 0, s_out)
        conv = _CONV_FN[len(self.kernel_size)]
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv(x, weight, bias, self.stride, 0, self.dilation, groups)
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, groups)


class _SlimLinear:
    _slim: dict[str, Selection]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s_in, s_out = self._slim.get("in"), self._slim.get("out")
        return F.linear(x, take(take(self.weight, 0, s_out), 1, s_in), take(self.bias, 0, s_out))


class _SlimBatchNorm:
    """BatchNorm on a channel subset; running statistics are written back when the
    subset is not a prefix (a prefix is a view and updates in place)."""

    _slim: dict[str, Selection]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sel = self._slim.get("feat")
        if sel is None:
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        mean = take(self.running_mean, 0, sel) if track else None
        var = take(self.running_var, 0, sel) if track else None
        out = F.batch_norm(x, mean, var, take(self.weight, 0, sel), take(self.bias, 0, sel),
                           use_batch_stats, factor, self.eps)
        if isinstance(sel, torch.Tensor) and use_batch_stats and mean is not None:
            with torch.no_grad():
                self.running_mean.index_copy_(0, sel, mean)
                self.running_var.index_copy_(0, sel, var)
        return out


class _SlimLayerNorm:
    """LayerNorm over the last dim, normalising over the channels kept."""

    _slim: dict[str, Selection]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sel = self._slim.get("feat")
        return F.layer_norm(x, (x.shape[-1],), take(self.weight, 0, sel), take(self.bias, 0, sel), self.eps)


class _SlimLayerNorm2d:
    """LayerNorm over the channel dim of an NCHW tensor (torchvision's LayerNorm2d)."""

    _slim: dict[str, Selection]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sel = self._slim.get("feat")
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, (x.shape[-1],), take(self.weight, 0, sel), take(self.bias, 0, sel), self.eps)
        return x.permute(0, 3, 1, 2)


# Which mixin slices which layer kind, and which attributes describe its widths.
SLIM_MIXINS: dict[str, type] = {
    "conv": _SlimConv,
    "linear": _SlimLinear,
    "batch_norm": _SlimBatchNorm,
    "layer_norm": _SlimLayerNorm,
    "layer_norm2d": _SlimLayerNorm2d,
}
_SLIM_CLASS_CACHE: dict[tuple[type, type], type] = {}


def layer_kind(mod: nn.Module) -> str | None:
    """The mixin key for a layer, or None if it has no weights to slice."""
    if isinstance(mod, nn.modules.conv._ConvNd) and not mod.transposed:
        return "conv"
    if isinstance(mod, nn.Linear):
        return "linear"
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        return "batch_norm"
    if isinstance(mod, nn.LayerNorm):
        return "layer_norm2d" if type(mod).__name__ == "LayerNorm2d" else "layer_norm"
    return None


def make_slimmable(mod: nn.Module) -> None:
    """Swap ``mod``'s class for its slimmable subclass (in place; parameters untouched)."""
    kind = layer_kind(mod)
    if kind is None or hasattr(mod, "_slim"):
        return
    base = type(mod)
    key = (SLIM_MIXINS[kind], base)
    if key not in _SLIM_CLASS_CACHE:
        _SLIM_CLASS_CACHE[key] = type(f"Slim{base.__name__}", (SLIM_MIXINS[kind], base), {"_slim_base": base})
    mod.__class__ = _SLIM_CLASS_CACHE[key]
    mod._slim = {}


def unmake_slimmable(mod: nn.Module) -> None:
    """Restore the original class of a slimmable layer."""
    if hasattr(mod, "_slim"):
        mod.__class__ = mod._slim_base
        del mod._slim


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


class AttrSlice(nn.Module):
    """Slices a parameter read straight from the graph (e.g. ConvNeXt's layer scale)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.sel: Selection = None

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return take(t, self.dim, self.sel)
