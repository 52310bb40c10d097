"""The data of channel coupling: atoms, tensor metas, the union-find context the op handlers write into.

Every channel a layer produces is an *atom*. We run the traced graph once on the
example inputs and, node by node, let an op handler (``handlers.py``) say how
atoms flow through that op: a residual add or a gating multiply unifies the atoms
of its operands position by position, a concat lays them side by side, a
depthwise conv passes them through, an op we do not understand freezes them.
Atoms that end up in one union-find class must be kept or cut together. The
grouping of classes into slimmable channel groups happens in ``groups.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

import numpy as np
import torch
from torch import fx, nn


@dataclass
class TMeta:
    """What we know of a tensor: its shape and the atoms along its channel dim.

    ``cdim`` is None for a tensor with no tracked channel dim (then every dim is
    at full width). ``attr`` is set for a tensor read straight from a parameter
    or buffer (a ``get_attr`` node), which may become a follower of a channel dim.
    """

    shape: tuple[int, ...]
    cdim: int | None = None
    atoms: np.ndarray | None = None
    attr: fx.Node | None = None
    why: str | None = None  # for an untracked tensor: why its channels are not tracked
    # for a tensor reshaped from a parameter (``attr``) by adding or dropping size-1 dims, e.g. a layer scale
    # ``gamma.reshape(1, -1, 1, 1)``: the parameter dim each dim comes from (None for an added size-1 dim);
    # None means the parameter itself (dim i is parameter dim i)
    attr_axes: tuple[int | None, ...] | None = None


@dataclass
class IdMeta:
    """A tensor whose channel dim was split by a reshape (e.g. channel shuffle).

    ``ids`` has the tensor's shape and holds, for every element, its flat position in
    ``origin``'s tensor (its channel is ``id // stride % channels``, stride the
    product of origin's dims after the channel dim); shape ops are replayed on it until
    the channels come back together as one dim (see ``handlers.shape_op``).
    """

    shape: tuple[int, ...]
    origin: fx.Node
    origin_atoms: np.ndarray
    ids: torch.Tensor


@dataclass
class SizeMeta:
    """An int the graph computed from the size of a tracked channel dim (``B, C, H, W = x.shape``; ``C // 2``).

    Its value follows the config at run time, so every op that takes it must size a dim holding the same
    channels (``compress.space.sizes``). ``scale``: the value is ``scale`` x the width of ``atoms`` (a size read,
    or one multiplied or divided by constants); None when it was computed otherwise (an offset, a product of two
    channel counts). ``source`` names the node that read the size.
    """

    atoms: np.ndarray
    scale: Fraction | None
    source: str


@dataclass
class Source:
    label: str
    atoms: np.ndarray


@dataclass
class FlopOp:
    """An op whose FLOPs depend on channel widths (see ``flops.py``)."""

    kind: str
    node: fx.Node
    inputs: list[TMeta]
    output: TMeta
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class CouplingResult:
    """Everything the propagation pass learned about a traced graph."""

    parent: np.ndarray
    frozen_reason: dict[int, str]
    divisor_of: dict[int, int]
    sources: list[Source]
    module_dims: dict[str, dict[str, np.ndarray]]
    attr_dims: dict[str, tuple[int, np.ndarray]]
    splits: dict[str, tuple[int, list[np.ndarray]]]
    permutes: list[tuple[fx.Node, fx.Node, int, np.ndarray, np.ndarray]]
    grouped_convs: list[tuple[str, int, np.ndarray]]
    flop_ops: list[FlopOp]
    unknown_ops: dict[str, str]
    # getitem node name -> (dim, start, stop, atoms of the input): a fixed channel slice ``x[:, a:b]`` that
    # becomes a ChannelSlice following the config; group boundaries are put at a and b
    channel_slices: dict[str, tuple[int, int, int, np.ndarray]] = field(default_factory=dict)
    # (layer or node, block size, atoms): runs of ``block`` channels read as one unit in a fixed order (a
    # PixelShuffle's r*r sub-pixels, the H*W features a view turns into one channel): cut whole (widths are
    # multiples of the block, blocks aligned with the group) and moved whole, without reordering inside
    tied_blocks: list[tuple[str, int, np.ndarray]] = field(default_factory=list)
    # view / unflatten node name -> (dim, sizes with -1 for the channel count): a (B, C*H*W) -> (B, C, H, W)
    # reshape, rewritten as ``x.unflatten(dim, sizes)`` so that a literal C in the traced graph follows the width
    unflattens: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    # atoms whose order is part of the function (a Conv1d sliding over the channel axis, as in ECA attention),
    # with the reason: they may be narrowed, but reordering them would change what the full network computes
    ordered: list[tuple[np.ndarray, str]] = field(default_factory=list)
    # F.layer_norm node name -> the atoms of the channels it normalises over (its last dim): the literal
    # normalized_shape ``(C,)`` becomes a NormShape whose size follows the config
    norm_shapes: dict[str, np.ndarray] = field(default_factory=dict)


class CouplingContext:
    """Union-find over atoms plus the records the handlers write."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self.frozen_reason: dict[int, str] = {}
        self.divisor_of: dict[int, int] = {}
        self.sources: list[Source] = []
        self.module_dims: dict[str, dict[str, np.ndarray]] = {}
        self.attr_dims: dict[str, tuple[int, np.ndarray]] = {}
        self.splits: dict[str, tuple[int, list[np.ndarray]]] = {}
        self.permutes: list[tuple[fx.Node, fx.Node, int, np.ndarray, np.ndarray]] = []
        self.grouped_convs: list[tuple[str, int, np.ndarray]] = []
        self.flop_ops: list[FlopOp] = []
        self.unknown_ops: dict[str, str] = {}
        self.channel_slices: dict[str, tuple[int, int, int, np.ndarray]] = {}
        self.tied_blocks: list[tuple[str, int, np.ndarray]] = []
        self.unflattens: dict[str, tuple[int, tuple[int, ...]]] = {}
        self.ordered: list[tuple[np.ndarray, str]] = []
        self.norm_shapes: dict[str, np.ndarray] = {}
        # nodes whose handler checked that the channel counts they take as arguments count the channels they act
        # on (a depthwise F.conv2d with groups=x.shape[1]): those sizes follow the config, nothing to freeze
        self.size_args_followed: set[str] = set()

    # ---- atoms and union-find -------------------------------------------------
    def new_atoms(self, n: int, label: str, frozen_reason: str | None = None) -> np.ndarray:
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        atoms = np.arange(start, start + n, dtype=np.int64)
        self.sources.append(Source(label, atoms))
        if frozen_reason is not None:
            for a in atoms:
                self.frozen_reason[int(a)] = frozen_reason
        return atoms

    def find(self, a: int) -> int:
        parent = self._parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if rb < ra:
            ra, rb = rb, ra
        self._parent[rb] = ra
        if rb in self.frozen_reason and ra not in self.frozen_reason:
            self.frozen_reason[ra] = self.frozen_reason[rb]
        if rb in self.divisor_of:
            self.divisor_of[ra] = math.lcm(self.divisor_of.get(ra, 1), self.divisor_of.pop(rb))

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        """Couple two atom arrays position by position (they must keep the same channels)."""
        if len(a) != len(b):
            raise AssertionError(f"unify of {len(a)} and {len(b)} atoms")
        for x, y in zip(a.tolist(), b.tolist()):
            self._union(x, y)

    def freeze(self, atoms: np.ndarray | None, reason: str) -> None:
        if atoms is None:
            return
        for a in atoms.tolist():
            r = self.find(a)
            self.frozen_reason.setdefault(r, reason)

    def require_divisor(self, atoms: np.ndarray, divisor: int) -> None:
        for a in atoms.tolist():
            r = self.find(a)
            self.divisor_of[r] = math.lcm(self.divisor_of.get(r, 1), divisor)

    # ---- metas ------------------------------------------------------------------
    def freeze_meta(self, meta: Any, reason: str) -> None:
        """Freeze every tracked atom inside ``meta`` (a TMeta, IdMeta, SizeMeta or a nest of them)."""
        if isinstance(meta, TMeta):
            self.freeze(meta.atoms, reason)
        elif isinstance(meta, IdMeta):
            self.freeze(meta.origin_atoms, reason)
        elif isinstance(meta, SizeMeta):
            self.freeze(meta.atoms, reason)
        elif isinstance(meta, (list, tuple)):
            for m in meta:
                self.freeze_meta(m, reason)
        elif isinstance(meta, dict):
            for m in meta.values():
                self.freeze_meta(m, reason)

    def atoms_along(self, meta: Any, dim: int, label: str) -> np.ndarray:
        """Atoms of ``meta`` along ``dim``; fresh frozen atoms if that dim is not tracked."""
        if isinstance(meta, TMeta) and meta.cdim == dim and meta.atoms is not None:
            return meta.atoms
        if isinstance(meta, IdMeta):
            self.freeze_meta(meta, f"{label}: reads a channel-split tensor")
            return self.new_atoms(meta.shape[dim], label, f"{label}: reads a channel-split tensor")
        shape = meta.shape if isinstance(meta, (TMeta, IdMeta)) else ()
        n = shape[dim] if shape else 0
        why = getattr(meta, "why", None) or f"{label}: input dim {dim} is not a tracked channel dim"
        return self.new_atoms(n, f"{label}:input", why)

    def module_atoms(self, name: str, role: str, atoms: np.ndarray) -> np.ndarray:
        """Record the atoms of a module's dim; a module called twice couples both calls."""
        dims = self.module_dims.setdefault(name, {})
        if role in dims:
            if len(dims[role]) == len(atoms):
                self.unify(dims[role], atoms)
            else:
                self.freeze(dims[role], f"{name}: called with different widths")
                self.freeze(atoms, f"{name}: called with different widths")
            return dims[role]
        dims[role] = atoms
        return atoms

    def result(self) -> CouplingResult:
        parent = np.array([self.find(a) for a in range(len(self._parent))], dtype=np.int64)
        frozen = {}
        for a, reason in self.frozen_reason.items():
            frozen.setdefault(int(parent[a]), reason)
        divisors = {}
        for a, d in self.divisor_of.items():
            r = int(parent[a])
            divisors[r] = math.lcm(divisors.get(r, 1), d)
        return CouplingResult(
            parent=parent,
            frozen_reason=frozen,
            divisor_of=divisors,
            sources=self.sources,
            module_dims=self.module_dims,
            attr_dims=self.attr_dims,
            splits=self.splits,
            permutes=self.permutes,
            grouped_convs=self.grouped_convs,
            flop_ops=self.flop_ops,
            unknown_ops=self.unknown_ops,
            channel_slices=self.channel_slices,
            tied_blocks=self.tied_blocks,
            unflattens=self.unflattens,
            ordered=self.ordered,
            norm_shapes=self.norm_shapes,
        )



class PassState(Protocol):
    """What an op handler sees of the propagation pass (``propagate.Propagator`` implements it)."""

    ctx: CouplingContext
    metas: dict[fx.Node, Any]
    modules: dict[str, nn.Module]
    frozen_modules: dict[str, str]  # module name -> why it is kept whole (ignored by the user, not traceable)

    def meta_of(self, arg: Any) -> Any:
        """Meta of a node argument (recursing into lists); None for constants."""


__all__ = ["PassState", "TMeta", "IdMeta", "SizeMeta", "Source", "FlopOp", "CouplingResult", "CouplingContext"]
