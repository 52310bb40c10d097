"""Sizes read from channel dims: ints in the graph that follow the config at run time.

``B, C, H, W = x.shape`` then ``y.reshape(B, N, C)``: fx records the read of ``C``, so at a narrower config the
reshape asks for the narrower count. That is right when the dim it sizes holds the same channels (they narrow
together) and wrong otherwise: EdgeNeXt's cross-covariance attention reshapes its full-width output with the
narrowed count of its input ("shape '[1, 16, 24]' is invalid"). The propagation pass tracks such ints as
:class:`SizeMeta` through arithmetic; a reshape keeps one only where the dim it sizes holds those channels, and
any other op that takes one as a size (a reshape of other channels, ``torch.zeros(B, C)``, ``expand``) freezes
the channels it counts and those the op touches, with the node named. Element-wise arithmetic that uses a count as
a number (``q * (C // heads) ** -0.5``) and ops the network rewrites so that they follow the config (a channel
split, a fixed channel slice, a channel shuffle) are left alone.
"""

from __future__ import annotations

import operator
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import fx

from compress.space.atoms import IdMeta, PassState, SizeMeta, TMeta
from compress.space.trace import flatten_tensors

RESHAPE_METHODS = frozenset({"view", "reshape"})
RESHAPE_FUNCTIONS = frozenset({torch.reshape})
# element-wise arithmetic with a number: a count used as a value (a scale ``q * (C // heads) ** -0.5``), not as a
# size; the in-place network and the extracted subnet compute the same number at every config
VALUE_FUNCTIONS = frozenset({operator.add, operator.sub, operator.mul, operator.truediv, operator.pow, torch.add,
                             torch.sub, torch.mul, torch.div, torch.pow})
VALUE_METHODS = frozenset({"add", "sub", "mul", "div", "pow"})
# int arithmetic that keeps a size proportional to the channel count: op -> scale of the result (for the size
# operand in position ``i`` and a constant ``k``), None when the result is not proportional
_SCALE_RULES = {
    operator.mul: lambda s, k, i: s * k,
    operator.floordiv: lambda s, k, i: s / k if i == 0 and k else None,
    operator.truediv: lambda s, k, i: s / k if i == 0 and k else None,
}


def _metas(p: PassState, n: fx.Node) -> list[SizeMeta]:
    """Every SizeMeta among the node's arguments (in lists, tuples, dicts and slices too)."""
    found: list[SizeMeta] = []

    def collect(m: Any) -> None:
        if isinstance(m, SizeMeta):
            found.append(m)
        elif isinstance(m, (list, tuple)):
            for x in m:
                collect(x)

    def visit(node: fx.Node) -> fx.Node:
        collect(p.metas.get(node))
        return node

    fx.node.map_arg((n.args, n.kwargs), visit)
    return found


def size_read(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """Meta of ``x.shape``, ``x.size()``, ``x.size(d)`` or ``x.numel()``: a SizeMeta where the channel dim is read
    (a list with one entry per dim for a whole shape), None for other dims and any other non-tensor read.

    Args:
        p: the propagation pass.
        n: a ``getattr`` or ``size`` / ``numel`` node.
        args: its concrete arguments; ``args[0]`` is the tensor read.
        kwargs: its concrete keyword arguments.
        value: what it returned on the example inputs.

    Returns:
        The meta of the value (a SizeMeta, a list of SizeMeta / None, or None).
    """
    x = p.meta_of(n.args[0]) if n.args else None
    if not isinstance(x, TMeta) or x.cdim is None or x.atoms is None:
        return None
    whole = [SizeMeta(x.atoms, Fraction(1), n.name) if d == x.cdim else None for d in range(len(x.shape))]
    if n.op == "call_function":
        return whole if len(args) > 1 and args[1] == "shape" else None
    if n.target == "numel":
        return SizeMeta(x.atoms, Fraction(int(value), len(x.atoms)), n.name) if len(x.atoms) else None
    if n.target == "size":
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        return whole if dim is None else whole[dim]
    return None


def size_arith(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> SizeMeta | None:
    """Meta of a non-tensor result computed from sizes (``C // heads``, ``B * C``): a SizeMeta when an operand is
    one, with its scale while the result stays proportional to the channel count; None otherwise.

    Args:
        p: the propagation pass.
        n: the node (an arithmetic op on Python numbers, or any other op returning no tensor).
        args: its concrete arguments.
        kwargs: its concrete keyword arguments.
        value: what it returned on the example inputs.

    Returns:
        A SizeMeta, or None when no operand carries a channel count.
    """
    sizes = _metas(p, n)
    if not sizes:
        return None
    scale = None
    rule = _SCALE_RULES.get(n.target) if n.op == "call_function" else None
    if rule is not None and len(sizes) == 1 and len(args) == 2 and not kwargs and sizes[0].scale is not None:
        i = 0 if isinstance(n.args[0], fx.Node) and p.metas.get(n.args[0]) is sizes[0] else 1
        k = args[1 - i]
        if isinstance(k, (int, float)) and not isinstance(k, bool):
            scale = rule(sizes[0].scale, Fraction(k), i)
    return SizeMeta(np.concatenate([s.atoms for s in sizes]), scale, sizes[0].source)


def _shape_positions(p: PassState, n: fx.Node, args: tuple, kwargs: dict) -> list[Any]:
    """The meta of the size given for each output dim of a reshape (None for a constant or an untracked size)."""
    nodes = list(n.args[1:]) if len(n.args) > 1 else [n.kwargs.get("shape", n.kwargs.get("size"))]
    vals = list(args[1:]) if len(args) > 1 else [kwargs.get("shape", kwargs.get("size"))]
    if len(nodes) == 1 and isinstance(nodes[0], (list, tuple)):
        nodes, vals = list(nodes[0]), list(vals[0])
    out: list[Any] = []
    for node, v in zip(nodes, vals):
        m = p.metas.get(node) if isinstance(node, fx.Node) else None
        if isinstance(v, (list, tuple)):  # a whole shape (``x.view(y.shape)``): one entry per dim
            out.extend(m if isinstance(m, list) and len(m) == len(v) else [m] * len(v))
        else:
            out.append(m)
    return out


def _sizes_own_dim(p: PassState, out: Any, j: int, size: SizeMeta) -> bool:
    """Whether output dim ``j`` holds exactly the channels ``size`` counts (each ``scale`` times), so that both
    narrow together; a plain count of other channels couples them (they must then keep the same width)."""
    if not isinstance(out, TMeta) or out.cdim != j or out.atoms is None or size.scale is None:
        return False
    find = p.ctx.find
    if size.scale.denominator == 1 and len(out.atoms) == size.scale * len(size.atoms):
        mine = np.sort([find(a) for a in out.atoms.tolist()])
        theirs = np.sort([find(a) for a in np.repeat(size.atoms, int(size.scale)).tolist()])
        if np.array_equal(mine, theirs):
            return True
    if size.scale == 1 and len(out.atoms) == len(size.atoms):
        p.ctx.unify(out.atoms, size.atoms)
        return True
    return False


def counts_channels(p: PassState, node: Any, atoms: np.ndarray) -> bool:
    """Whether ``node`` is a channel count read from a shape that counts exactly ``atoms`` (once each), so that at
    any config it equals their width (``groups=x.shape[1]`` of a depthwise conv on ``x``).

    Args:
        p: the propagation pass.
        node: an argument of the node being handled (an fx.Node, or a constant).
        atoms: the channels the op acts on.

    Returns:
        True when the count follows those channels.
    """
    m = p.metas.get(node) if isinstance(node, fx.Node) else None
    if not isinstance(m, SizeMeta) or m.scale != 1 or len(m.atoms) != len(atoms):
        return False
    find = p.ctx.find
    return sorted(find(a) for a in m.atoms.tolist()) == sorted(find(a) for a in atoms.tolist())


def broadcast_count_dim(p: PassState, n: fx.Node, args: tuple, kwargs: dict,
                        in_shape: tuple[int, ...]) -> tuple[int, SizeMeta] | None:
    """For ``t.expand(..., C, ...)`` of a size-1 dim to a channel count read from a shape (``filt.expand(C, 1, k,
    k)``: one filter for every channel): that dim and the count. The result holds one copy per counted channel
    at any config, so it follows them; None for any other expand.

    Args:
        p: the propagation pass.
        n: the ``expand`` node.
        args: its concrete arguments (the tensor, then the sizes).
        kwargs: its concrete keyword arguments.
        in_shape: the shape of the tensor expanded.

    Returns:
        (dim of the result, the SizeMeta of the count) or None.
    """
    positions = _shape_positions(p, n, args, kwargs)
    offset = len(positions) - len(in_shape)
    found = [(j, m) for j, m in enumerate(positions) if isinstance(m, SizeMeta)]
    if len(found) != 1 or found[0][1].scale != 1:
        return None
    j, m = found[0]
    return (j, m) if j >= offset and in_shape[j - offset] == 1 else None


def _rewritten(p: PassState, n: fx.Node, out: Any) -> bool:
    """Ops the network replaces by a module whose sizes follow the config (their size arguments are unused)."""
    ctx = p.ctx
    return (n.name in ctx.splits or n.name in ctx.channel_slices or isinstance(out, IdMeta)
            or any(end is n for _, end, *_ in ctx.permutes[-1:]))


def _is_value_op(n: fx.Node) -> bool:
    return (n.op == "call_method" and n.target in VALUE_METHODS) or \
        (n.op == "call_function" and n.target in VALUE_FUNCTIONS)


def _is_reshape(n: fx.Node) -> bool:
    return (n.op == "call_method" and n.target in RESHAPE_METHODS) or \
        (n.op == "call_function" and n.target in RESHAPE_FUNCTIONS)


def check_size_consumers(p: PassState, n: fx.Node, args: tuple, kwargs: dict, out: Any, value: Any) -> None:
    """Freeze what a tensor op that takes a channel count would get wrong at a narrower config.

    A reshape may size a dim by the count of the channels that dim holds, and element-wise arithmetic may use a
    count as a number; anything else taking a count (a reshape of other channels, a new tensor, an expand) freezes the counted channels, the channels of
    every tensor the op reads and those of its output, with the node named in the reason.

    Args:
        p: the propagation pass.
        n: the node just handled.
        args: its concrete arguments.
        kwargs: its concrete keyword arguments.
        out: the meta its handler returned.
        value: what it returned on the example inputs.
    """
    if not flatten_tensors(value):
        return  # arithmetic on sizes or indexing of a shape: the result carries the count on
    sizes = _metas(p, n)
    if not sizes or _rewritten(p, n, out) or _is_value_op(n) or n.name in p.ctx.size_args_followed:
        return
    where = ""
    if _is_reshape(n):
        positions = _shape_positions(p, n, args, kwargs)
        bad = [j for j, m in enumerate(positions) if isinstance(m, SizeMeta) and not _sizes_own_dim(p, out, j, m)]
        if not bad and len(sizes) == sum(isinstance(m, SizeMeta) for m in positions):
            return
        where = f" for dim {bad[0]}, which does not hold those channels" if bad else ""
    op = n.target if n.op == "call_method" else getattr(n.target, "__name__", str(n.target))
    reason = (f"{op} at node {n.name!r} takes the channel count read at node {sizes[0].source!r} as a "
              f"size{where}: frozen, a narrower count would not fit")
    for s in sizes:
        p.ctx.freeze(s.atoms, reason)
    fx.node.map_arg((n.args, n.kwargs), lambda a: p.ctx.freeze_meta(p.metas.get(a), reason))
    p.ctx.freeze_meta(out, reason)


__all__ = ["RESHAPE_FUNCTIONS", "RESHAPE_METHODS", "VALUE_FUNCTIONS", "VALUE_METHODS", "check_size_consumers",
           "broadcast_count_dim", "counts_channels", "size_arith", "size_read"]
