"""The op table: how channels flow through each op.

One handler per op kind, registered in ``MODULE_HANDLERS`` (by layer class),
``FUNCTION_HANDLERS`` (by callable) and ``METHOD_HANDLERS`` (by tensor method
name). A handler receives the propagator, the fx node, the node's concrete
argument values and its output value, and returns the output's meta (see
``coupling.TMeta``). An op with no handler freezes every channel it touches and
is listed in the space's report: it is never cut wrongly.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from compress.space.atoms import FlopOp, IdMeta, PassState, TMeta
from compress.space.concrete import contains_tensor
from compress.errors import CompressError, UnsupportedOpError, check_parameter
from compress.space.sizes import broadcast_count_dim, check_size_consumers, counts_channels, size_arith, size_read
from compress.space.trace import EXTRA_LEAF_MODULES, class_key

ModuleHandler = Callable[[PassState, fx.Node, nn.Module, tuple, dict, Any], Any]
FunctionHandler = Callable[[PassState, fx.Node, tuple, dict, Any], Any]


# ---- helpers -------------------------------------------------------------------------
def untracked(value: Any, why: str | None = None) -> Any:
    """Meta of a value whose dims are all at full width (``why`` says what made it so)."""
    if isinstance(value, torch.Tensor):
        return TMeta(tuple(value.shape), why=why)
    if isinstance(value, (list, tuple)):
        return [untracked(v, why) for v in value]
    return None


def _norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _arg(n: fx.Node, args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _node_arg(n: fx.Node, i: int, name: str) -> Any:
    if len(n.args) > i:
        return n.args[i]
    return n.kwargs.get(name)


def freeze_all(p: PassState, n: fx.Node, reason: str) -> None:
    for a in list(n.args) + list(n.kwargs.values()):
        p.ctx.freeze_meta(p.meta_of(a), reason)


def unknown(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any, why: str = "") -> Any:
    """Freeze every channel the node touches and record it as not understood."""
    reason = f"{_op_name(n)} at node {n.name!r} is not understood{why}"
    p.ctx.unknown_ops[n.name] = reason
    freeze_all(p, n, reason)
    return untracked(value, f"reads the output of {reason}")


def _op_name(n: fx.Node) -> str:
    if n.op == "call_function":
        return getattr(n.target, "__name__", str(n.target))
    return f"{n.op} {n.target}"


def _flop(p: PassState, kind: str, n: fx.Node, inputs: list[Any], out: Any, **params: Any) -> None:
    if isinstance(out, TMeta) and all(isinstance(m, TMeta) for m in inputs):
        p.ctx.flop_ops.append(FlopOp(kind, n, list(inputs), out, params))


# ---- generic op families ---------------------------------------------------------------
def passthrough(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """Element-wise unary ops: the output keeps the input's channels."""
    m = p.meta_of(n.args[0]) if n.args else None
    if isinstance(m, IdMeta):  # a channel shuffle is rewritten as one gather: no value op may sit inside it
        if n.op == "call_method" and n.target in _COPY_METHODS:
            return _replay(p, n, args, kwargs, value, m)
        m = _radix_meta(p, n.args[0], m)  # a value op on radix-split channels (split attention)
        if m is None:
            return unknown(p, n, args, kwargs, value, " (on a channel-split tensor)")
    if isinstance(m, TMeta) and isinstance(value, torch.Tensor) and tuple(value.shape) == m.shape:
        return TMeta(m.shape, m.cdim, m.atoms)
    return unknown(p, n, args, kwargs, value, " (shape changed)")


# methods that only copy or re-lay a tensor: replayed on the channel ids of a channel shuffle
_COPY_METHODS = frozenset({"contiguous", "clone", "detach", "to", "float", "type_as"})


def channel1_op(kind: str | None) -> FunctionHandler:
    """Ops that act per channel on dim 1 (pooling, resizing): channels pass through."""

    def handler(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
        m = p.meta_of(n.args[0])
        if not isinstance(value, torch.Tensor) or not isinstance(m, TMeta) or value.ndim < 3:
            return unknown(p, n, args, kwargs, value)
        if m.cdim is None:
            out = TMeta(tuple(value.shape))
        elif m.cdim == 1 and value.shape[1] == m.shape[1]:
            out = TMeta(tuple(value.shape), 1, m.atoms)
        else:
            return unknown(p, n, args, kwargs, value, " (channels not on dim 1)")
        if kind is not None:
            _flop(p, kind, n, [m], out, **_pool_params(p, n, args, kwargs, kind))
        return out

    return handler


# F.interpolate / nn.Upsample: (mode, input rank) -> (which tensor's elements are counted, FLOPs per element), as
# fvcore counts them: it knows upsample_nearest2d (1 per output element), upsample_bilinear2d (4 per output element)
# and adaptive_avg_pool2d ("area": 1 per input element); every other resize (bicubic, nearest-exact, 1-d, 3-d,
# antialiased) is an op it does not count (listed in FlopReport.unsupported), so it costs 0 here too.
RESIZE_FLOPS: dict[tuple[str, int], tuple[str, int]] = {
    ("nearest", 4): ("out", 1),
    ("bilinear", 4): ("out", 4),
    ("area", 4): ("in", 1),
}


def _resize_flops(p: PassState, n: fx.Node, args: tuple, kwargs: dict) -> dict:
    if n.op == "call_module":
        mod = p.modules.get(n.target)
        mode, antialias = getattr(mod, "mode", "nearest"), False
    else:
        mode = _arg(n, args, kwargs, 3, "mode", "nearest")
        antialias = bool(_arg(n, args, kwargs, 6, "antialias", False))
    x = args[0] if args else kwargs.get("input")
    rank = x.ndim if isinstance(x, torch.Tensor) else 0
    on, scale = RESIZE_FLOPS.get((str(mode), rank), ("out", 0)) if not antialias else ("out", 0)
    return {"scale": scale, "on": on}


def _pool_params(p: PassState, n: fx.Node, args: tuple, kwargs: dict, kind: str) -> dict:
    if kind != "pool":
        if kind == "upsample":
            return _resize_flops(p, n, args, kwargs)
        return {}
    if n.op == "call_module":
        k = p.modules[n.target].kernel_size
    else:
        k = _arg(n, args, kwargs, 1, "kernel_size")
    k = (k,) * 2 if isinstance(k, int) else tuple(k)
    return {"area": math.prod(k)}


def binary(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """Add, subtract, multiply, divide with broadcasting: operands' channels are coupled."""
    if not isinstance(value, torch.Tensor):
        return size_arith(p, n, args, kwargs, value)  # arithmetic on ints: carries a channel count on
    out_nd = value.ndim
    nodes = list(n.args[:2]) + ([n.kwargs["other"]] if "other" in n.kwargs else [])
    vals = list(args[:2]) + ([kwargs["other"]] if "other" in kwargs else [])
    tracked, others = [], []
    for a, v in zip(nodes, vals):
        if not isinstance(v, torch.Tensor):
            continue
        m = p.meta_of(a)
        if isinstance(m, IdMeta):  # split attention's radix-split operands: the radix blocks are one channel set
            m = _radix_meta(p, a, m)
        if not isinstance(m, TMeta):
            return unknown(p, n, args, kwargs, value, " (operand with split channels)")
        if m.cdim is None:
            others.append((m, v))
            continue
        d = m.cdim + out_nd - v.ndim
        if v.shape[m.cdim] == value.shape[d]:
            tracked.append((d, m))
        else:  # a 1-channel tensor broadcast over many channels: keep it whole
            p.ctx.freeze(m.atoms, f"{n.name}: broadcast over channels")
    if not tracked:
        out = TMeta(tuple(value.shape))
        _flop(p, "elementwise", n, [], out)
        return out
    if len({d for d, _ in tracked}) > 1:
        return unknown(p, n, args, kwargs, value, " (operands have channels on different dims)")
    d, first = tracked[0]
    for _, m in tracked[1:]:
        p.ctx.unify(first.atoms, m.atoms)
    for m, v in others:
        od = d - (out_nd - v.ndim)
        if od < 0 or v.shape[od] == 1:
            continue  # broadcast along the channel dim: nothing to slice
        if m.attr is not None and (m.attr_axes is None or m.attr_axes[od] is not None):
            _attr_follower(p, m.attr, od if m.attr_axes is None else m.attr_axes[od], first.atoms)
        else:
            p.ctx.freeze(first.atoms, f"{n.name}: combined with a tensor whose channels are not tracked")
    out = TMeta(tuple(value.shape), d, first.atoms)
    _flop(p, "elementwise", n, [], out)
    return out


def power(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """``x ** k`` / ``torch.pow(x, k)`` (timm's StarReLU, SquaredReLU): element-wise for a number ``k``; a tensor
    exponent is a binary op (channels coupled)."""
    exponent = _arg(n, args, kwargs, 1, "exponent")
    if isinstance(exponent, (int, float)) and isinstance(args[0], torch.Tensor):
        return passthrough(p, n, args, kwargs, value)
    return binary(p, n, args, kwargs, value)


def _attr_follower(p: PassState, attr: fx.Node, dim: int, atoms: np.ndarray) -> None:
    key = str(attr.target)
    prev = p.ctx.attr_dims.get(key)
    if prev is None:
        p.ctx.attr_dims[key] = (dim, atoms)
    elif prev[0] == dim and len(prev[1]) == len(atoms):
        p.ctx.unify(prev[1], atoms)
    else:
        p.ctx.freeze(prev[1], f"parameter {key} used along two dims")
        p.ctx.freeze(atoms, f"parameter {key} used along two dims")


# ---- shape ops -----------------------------------------------------------------------
def _replay(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any, m: IdMeta) -> Any:
    """Replay a shape op on the element ids of a channel-split tensor (channel shuffle).

    The op runs on the (integer) ids; one that cannot (a float-only op such as softmax) or that does not
    keep the ids' shape freezes the channels with the reason instead of failing the build.
    """
    try:
        if n.op == "call_method":
            ids = getattr(m.ids, n.target)(*args[1:], **kwargs)
        elif n.op == "call_function":
            ids = n.target(m.ids, *args[1:], **kwargs)
        else:
            ids = p.modules[n.target](m.ids)
    except Exception as exc:  # noqa: BLE001 - any failure of the op on ids means: not a pure shape op
        return unknown(p, n, args, kwargs, value,
                       f" (on a channel-split tensor; replaying it on channel ids failed: {type(exc).__name__})")
    if not isinstance(ids, torch.Tensor) or not isinstance(value, torch.Tensor) or ids.shape != value.shape \
            or ids.dtype != m.ids.dtype:
        return unknown(p, n, args, kwargs, value, " (on a channel-split tensor, not a shape op)")
    origin_meta = p.metas[m.origin]
    shape, cdim = origin_meta.shape, origin_meta.cdim
    if tuple(ids.shape) == shape:
        stride = math.prod(shape[cdim + 1:])
        base = torch.arange(math.prod(shape)).view(shape)
        first = ids.movedim(cdim, 0).reshape(shape[cdim], -1)[:, 0]
        perm = (first // stride) % shape[cdim]
        if torch.equal(ids, base.index_select(cdim, perm)):
            perm_np = perm.numpy().astype(np.int64)
            p.ctx.permutes.append((m.origin, n, cdim, perm_np, m.origin_atoms))
            return TMeta(shape, cdim, m.origin_atoms[perm_np])
    return IdMeta(tuple(ids.shape), m.origin, m.origin_atoms, ids)


def _radix_meta(p: PassState, node: Any, m: IdMeta) -> TMeta | None:
    """Read a channel-split tensor as radix blocks of one channel set (split attention), or None.

    ResNeSt and SK attention reshape C = r x C' channels to (r, C') (or stack r branches) and then compute per
    radix block: a softmax over r, a multiply, a sum over r. That works at any width only if every block keeps
    the same channels, so the r blocks of the split channel dim are tied position by position and the tensor
    is tracked along the dim of the within-block index. It applies when some dim d of the tensor holds
    positions ``block * C' + i`` with i running along d (C' = its size); a reshape on the way with a literal size
    for that index (it could not follow a narrower width) freezes the channels with the reason.
    """
    origin = p.metas[m.origin]
    total = len(m.origin_atoms)
    ids = (m.ids // math.prod(origin.shape[origin.cdim + 1:])) % total  # element -> its channel in the origin
    best: tuple[int, int] | None = None
    for d in range(ids.ndim):
        size = ids.shape[d]
        if size <= 1 or total % size or (best is not None and size <= best[1]):
            continue
        moved = ids.movedim(d, -1)
        within, block = moved % size, moved // size
        if torch.equal(within, torch.arange(size).expand_as(moved)) and torch.equal(block, block[..., :1].expand_as(block)):
            best = (d, size)
    if best is None:
        return None
    d, size = best
    blocks = m.origin_atoms.reshape(-1, size)
    for b in blocks[1:]:
        p.ctx.unify(blocks[0], b)
    cur = node
    while isinstance(cur, fx.Node) and cur is not m.origin and isinstance(p.metas.get(cur), IdMeta):
        if (cur.op == "call_method" and cur.target in ("view", "reshape")) or cur.target is torch.reshape:
            within = (p.metas[cur].ids // math.prod(origin.shape[origin.cdim + 1:])) % size
            for j, a in enumerate(_shape_args(cur)):
                if _literal(a) and a > 1 and j < within.ndim and bool((within != within.narrow(j, 0, 1)).any()):
                    p.ctx.freeze(blocks[0], f"{cur.name}: reshape with a literal size {a} for radix-split channels")
        cur = cur.args[0] if cur.args else None
    return TMeta(tuple(ids.shape), d, blocks[0])


def _shape_args(n: fx.Node) -> list[Any]:
    rest = list(n.args[1:]) if len(n.args) > 1 else list(n.kwargs.get("shape", n.kwargs.get("size", [])))
    if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
        rest = list(rest[0])
    return rest


def _literal(a: Any) -> bool:
    return isinstance(a, int) and a != -1


def _attr_reshaped(m: TMeta, out: tuple[int, ...], literal_dims: set[int]) -> TMeta:
    """A parameter reshaped by adding or dropping size-1 dims (a layer scale ``gamma.view(1, -1, 1, 1)``)
    stays a parameter whose dims are known, so that a multiply can slice it with the channels; any other
    reshape, or a literal size for a dim of the parameter (it could not follow a narrower width), does not."""
    axes = m.attr_axes if m.attr_axes is not None else tuple(range(len(m.shape)))
    src = [(size, ax) for size, ax in zip(m.shape, axes) if size != 1]
    dst = [j for j, size in enumerate(out) if size != 1]
    if [size for size, _ in src] != [out[j] for j in dst] or literal_dims & set(dst):
        return TMeta(out)
    new_axes: list[int | None] = [None] * len(out)
    for j, (_, ax) in zip(dst, src):
        new_axes[j] = ax
    return TMeta(out, attr=m.attr, attr_axes=tuple(new_axes))


def reshape(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """view / reshape: channels stay a dim, merge into a flattened dim, or split (shuffle)."""
    m = p.meta_of(n.args[0])
    if isinstance(m, IdMeta):
        return _replay(p, n, args, kwargs, value, m)
    if not isinstance(m, TMeta) or not isinstance(value, torch.Tensor):
        return unknown(p, n, args, kwargs, value)
    out = tuple(value.shape)
    if m.cdim is None:
        if m.attr is not None:
            sargs = _shape_args(n)
            return _attr_reshaped(m, out, {j for j, a in enumerate(sargs) if _literal(a) and a != 1})
        return TMeta(out)
    c, shape = m.cdim, m.shape
    size = shape[c]
    p0 = math.prod(shape[:c])
    p1 = p0 * size
    q = [math.prod(out[:j]) for j in range(len(out) + 1)]
    sargs = _shape_args(n)
    for j in range(len(out)):
        if q[j] == p0 and out[j] == size:  # channel dim kept whole
            if j < len(sargs) and _literal(sargs[j]):
                p.ctx.freeze(m.atoms, f"{n.name}: reshape with a literal channel count {sargs[j]}")
            return TMeta(out, j, m.atoms)
    for j in range(len(out)):
        if q[j] <= p0 and q[j + 1] >= p1 and p0 % q[j] == 0 and q[j + 1] % p1 == 0:
            if j < len(sargs) and _literal(sargs[j]):
                p.ctx.freeze(m.atoms, f"{n.name}: reshape with a literal size {sargs[j]}")
            outer, inner = p0 // q[j], q[j + 1] // p1
            return TMeta(out, j, np.tile(np.repeat(m.atoms, inner), outer))
    blocked = features_to_channels(p, n, m, out)
    if blocked is not None:
        return blocked
    ids = torch.arange(math.prod(shape)).view(shape)
    return _replay(p, n, (ids,) + tuple(args[1:]), kwargs, value, IdMeta(shape, n.args[0], m.atoms, ids))


def flatten(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    m = p.meta_of(n.args[0])
    if isinstance(m, IdMeta):
        return _replay(p, n, args, kwargs, value, m)
    if n.op == "call_module":
        mod = p.modules[n.target]
        start, end = mod.start_dim, mod.end_dim
    else:
        start, end = _arg(n, args, kwargs, 1, "start_dim", 0), _arg(n, args, kwargs, 2, "end_dim", -1)
    if not isinstance(m, TMeta) or m.cdim is None:
        return untracked(value)
    nd = len(m.shape)
    start, end = _norm_dim(start, nd), _norm_dim(end, nd)
    c = m.cdim
    if c < start:
        return TMeta(tuple(value.shape), c, m.atoms)
    if c > end:
        return TMeta(tuple(value.shape), c - (end - start), m.atoms)
    outer = math.prod(m.shape[start:c])
    inner = math.prod(m.shape[c + 1:end + 1])
    return TMeta(tuple(value.shape), start, np.tile(np.repeat(m.atoms, inner), outer))


def permute(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    m = p.meta_of(n.args[0])
    if isinstance(m, IdMeta):
        return _replay(p, n, args, kwargs, value, m)
    if not isinstance(m, TMeta) or m.cdim is None:
        return untracked(value)
    dims = list(args[1:]) if len(args) > 1 else list(kwargs.get("dims", []))
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = list(dims[0])
    dims = [_norm_dim(d, len(m.shape)) for d in dims]
    return TMeta(tuple(value.shape), dims.index(m.cdim), m.atoms)


def transpose(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    m = p.meta_of(n.args[0])
    if isinstance(m, IdMeta):
        return _replay(p, n, args, kwargs, value, m)
    if not isinstance(m, TMeta) or m.cdim is None:
        return untracked(value)
    nd = len(m.shape)
    d0, d1 = _norm_dim(_arg(n, args, kwargs, 1, "dim0"), nd), _norm_dim(_arg(n, args, kwargs, 2, "dim1"), nd)
    c = {d0: d1, d1: d0}.get(m.cdim, m.cdim)
    return TMeta(tuple(value.shape), c, m.atoms)


def cat(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    metas = p.meta_of(_node_arg(n, 0, "tensors"))
    dim = _norm_dim(_arg(n, args, kwargs, 1, "dim", 0), value.ndim)
    if not isinstance(metas, list) or any(not isinstance(m, TMeta) for m in metas):
        return unknown(p, n, args, kwargs, value, " (inputs with split channels)")
    tracked = [m for m in metas if m.cdim is not None]
    if not tracked:
        return TMeta(tuple(value.shape))
    if all(m.cdim == dim for m in tracked):  # concatenation of channels
        parts = [p.ctx.atoms_along(m, dim, f"{n.name}[input]") for m in metas]
        return TMeta(tuple(value.shape), dim, np.concatenate(parts))
    cd = tracked[0].cdim
    if len(tracked) == len(metas) and all(m.cdim == cd and len(m.atoms) == len(tracked[0].atoms) for m in metas):
        for m in metas[1:]:  # concatenation along another dim: same channels everywhere
            p.ctx.unify(metas[0].atoms, m.atoms)
        return TMeta(tuple(value.shape), cd, metas[0].atoms)
    return unknown(p, n, args, kwargs, value, " (mixes tracked and untracked channels)")


def stack(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """torch.stack: a new dim in front of, between or after the channels, never a concatenation of channels;
    every input must keep the same channels (SK attention stacks its branches and sums them), so they are tied."""
    metas = p.meta_of(_node_arg(n, 0, "tensors"))
    if not isinstance(metas, list) or not isinstance(value, torch.Tensor):
        return unknown(p, n, args, kwargs, value)
    metas = [_radix_meta(p, a, m) if isinstance(m, IdMeta) else m for a, m in zip(_node_arg(n, 0, "tensors"), metas)]
    if any(not isinstance(m, TMeta) for m in metas):
        return unknown(p, n, args, kwargs, value, " (inputs with split channels)")
    tracked = [m for m in metas if m.cdim is not None]
    if not tracked:
        return TMeta(tuple(value.shape))
    first = tracked[0]
    if len(tracked) < len(metas) or any(m.cdim != first.cdim or len(m.atoms) != len(first.atoms) for m in tracked):
        return unknown(p, n, args, kwargs, value, " (stacks tensors whose channels differ)")
    for m in tracked[1:]:
        p.ctx.unify(first.atoms, m.atoms)
    dim = _norm_dim(_arg(n, args, kwargs, 1, "dim", 0), value.ndim)
    return TMeta(tuple(value.shape), first.cdim + (dim <= first.cdim), first.atoms)


def split(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """chunk / split: a split along the channel dim becomes a ChannelSplit layer."""
    m = p.meta_of(n.args[0])
    if not isinstance(m, TMeta) or not isinstance(value, (list, tuple)):
        return unknown(p, n, args, kwargs, value)
    dim = _norm_dim(_arg(n, args, kwargs, 2, "dim", 0), len(m.shape))
    if m.cdim is None:
        return untracked(value)
    if dim != m.cdim:
        return [TMeta(tuple(v.shape), m.cdim, m.atoms) for v in value]
    parts, start = [], 0
    for v in value:
        parts.append(m.atoms[start:start + v.shape[dim]])
        start += v.shape[dim]
    p.ctx.splits[n.name] = (dim, parts)
    return [TMeta(tuple(v.shape), dim, a) for v, a in zip(value, parts)]


def unbind(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """unbind along another dim than the channels: every part keeps the channels (one dim fewer before them)."""
    m = p.meta_of(n.args[0])
    if not isinstance(m, TMeta) or not isinstance(value, (list, tuple)):
        return unknown(p, n, args, kwargs, value)
    if m.cdim is None:
        return untracked(value)
    dim = _norm_dim(_arg(n, args, kwargs, 1, "dim", 0), len(m.shape))
    if dim == m.cdim:
        return unknown(p, n, args, kwargs, value, " (along the channel dim)")
    return [TMeta(tuple(v.shape), m.cdim - (dim < m.cdim), m.atoms) for v in value]


def getitem(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    obj, idx = args[0], args[1]
    m = p.meta_of(n.args[0])
    if not isinstance(obj, torch.Tensor):
        if isinstance(m, list) and isinstance(idx, int):
            return m[idx]
        if isinstance(m, list) and isinstance(idx, slice):
            return m[idx]
        if contains_tensor(value):
            return unknown(p, n, args, kwargs, value)
        return None
    if isinstance(m, IdMeta):
        return unknown(p, n, args, kwargs, value)
    if not isinstance(m, TMeta) or m.cdim is None:
        return untracked(value)
    items = idx if isinstance(idx, tuple) else (idx,)
    if any(not isinstance(i, (int, slice)) for i in items):
        return unknown(p, n, args, kwargs, value, " (advanced indexing)")
    out_dim = 0
    for i, size in enumerate(m.shape):
        item = items[i] if i < len(items) else slice(None)
        if i == m.cdim:
            full = isinstance(item, slice) and item.step in (None, 1) and (item.start in (None, 0)) \
                and (item.stop is None or item.stop >= size)
            if full:
                return TMeta(tuple(value.shape), out_dim, m.atoms)
            return _channel_slice(p, n, args, kwargs, value, m, items)
        if isinstance(item, slice):
            out_dim += 1
    return untracked(value)


def _channel_slice(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any, m: TMeta,
                   items: tuple) -> Any:
    """``x[:, a:b]``: a contiguous run of channels, every other dim whole. The output holds the input's atoms
    a..b-1; the network replaces the getitem by a ChannelSlice whose bounds follow the config."""
    c = m.cdim
    item = items[c]
    others_whole = all(it == slice(None) for j, it in enumerate(items) if j != c)
    if not isinstance(item, slice) or item.step not in (None, 1) or not others_whole:
        return unknown(p, n, args, kwargs, value, " (indexes the channel dim with a step or an int)")
    start, stop, _ = item.indices(m.shape[c])
    if stop <= start:
        return unknown(p, n, args, kwargs, value, " (empty channel slice)")
    p.ctx.channel_slices[n.name] = (c, start, stop, m.atoms)
    return TMeta(tuple(value.shape), c, m.atoms[start:stop])


def reduction(counted: bool) -> FunctionHandler:
    """mean / sum / amax: fine over spatial dims, freezes channels if it reduces them."""

    def handler(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
        m = p.meta_of(n.args[0])
        if isinstance(m, IdMeta):  # a sum over the radix of split channels (split attention)
            m = _radix_meta(p, n.args[0], m)
        if not isinstance(m, TMeta) or not isinstance(value, torch.Tensor):
            return unknown(p, n, args, kwargs, value)
        if m.cdim is None:
            return untracked(value)
        dims = _arg(n, args, kwargs, 1, "dim", None)
        keep = _arg(n, args, kwargs, 2, "keepdim", False)
        nd = len(m.shape)
        dims = list(range(nd)) if dims is None else ([dims] if isinstance(dims, int) else list(dims))
        dims = [_norm_dim(d, nd) for d in dims]
        if m.cdim in dims:
            return unknown(p, n, args, kwargs, value, " (reduces the channel dim)")
        c = m.cdim if keep else m.cdim - sum(d < m.cdim for d in dims)
        out = TMeta(tuple(value.shape), c, m.atoms)
        if counted:
            _flop(p, "mean", n, [m], out)
        return out

    return handler


def softmax(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    m = p.meta_of(n.args[0])
    dim = p.modules[n.target].dim if n.op == "call_module" else _arg(n, args, kwargs, 1, "dim")
    if isinstance(m, IdMeta):  # split attention's radix softmax; a shuffle's gather may not skip a value op
        m = _radix_meta(p, n.args[0], m)
        if m is None:
            return unknown(p, n, args, kwargs, value, " (on a channel-split tensor)")
    if isinstance(m, TMeta) and m.cdim is not None and dim is not None and _norm_dim(dim, len(m.shape)) == m.cdim:
        return unknown(p, n, args, kwargs, value, " (normalises over channels)")
    if isinstance(m, TMeta) and isinstance(value, torch.Tensor) and tuple(value.shape) == m.shape:
        return TMeta(m.shape, m.cdim, m.atoms)
    return passthrough(p, n, args, kwargs, value)


def unsqueeze(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    m = p.meta_of(n.args[0])
    if isinstance(m, TMeta) and m.cdim is None and m.attr is not None and isinstance(value, torch.Tensor):
        return _attr_reshaped(m, tuple(value.shape), set())
    if not isinstance(m, TMeta) or m.cdim is None:
        return untracked(value) if not isinstance(m, IdMeta) else unknown(p, n, args, kwargs, value)
    d = _norm_dim(_arg(n, args, kwargs, 1, "dim"), value.ndim)
    return TMeta(tuple(value.shape), m.cdim + (d <= m.cdim), m.atoms)


def expand(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """``x.expand(...)`` / ``expand_as``: the channels stay on their dim (moved by the dims added in front). A
    size-1 dim expanded to a channel count read from a shape (``filt.expand(C, 1, k, k)``) becomes those
    channels: one copy each, at any config."""
    m = p.meta_of(n.args[0])
    if isinstance(m, TMeta) and m.cdim is None and isinstance(value, torch.Tensor):
        counted = broadcast_count_dim(p, n, args, kwargs, m.shape)
        if counted is not None:
            p.ctx.size_args_followed.add(n.name)
            return TMeta(tuple(value.shape), counted[0], counted[1].atoms)
    if not isinstance(m, TMeta) or m.cdim is None:
        return untracked(value) if not isinstance(m, IdMeta) else unknown(p, n, args, kwargs, value)
    c = m.cdim + value.ndim - len(m.shape)
    if value.shape[c] != m.shape[m.cdim]:
        return unknown(p, n, args, kwargs, value)
    return TMeta(tuple(value.shape), c, m.atoms)


# ---- layers ---------------------------------------------------------------------------
def conv(p: PassState, n: fx.Node, mod: nn.Module, args: tuple, kwargs: dict, value: Any) -> Any:
    name = str(n.target)
    x = p.meta_of(n.args[0])
    if isinstance(x, TMeta) and x.cdim is not None and x.cdim >= 2:
        return _conv_over_channels(p, n, mod, args, kwargs, value, x)
    in_atoms = p.ctx.module_atoms(name, "in", p.ctx.atoms_along(x, 1, name))
    g = mod.groups
    gs_in, gs_out = mod.in_channels // g, mod.out_channels // g
    out_atoms = p.ctx.module_atoms(name, "out", conv_out_atoms(p, name, mod, in_atoms, keep_groups=True))
    out = TMeta(tuple(value.shape), 1, out_atoms)
    in_meta = TMeta(x.shape, 1, in_atoms) if isinstance(x, (TMeta, IdMeta)) else None
    if in_meta is not None and g > 1 and gs_in > 1 and gs_in != gs_out:  # per output: the live channels of one group
        in_meta, gs_in, g = TMeta((x.shape[0], gs_in, *x.shape[2:]), 1, in_atoms[:gs_in]), None, 1
    if in_meta is not None:
        _flop(p, "conv", n, [in_meta], out, kernel=math.prod(mod.kernel_size), gs=gs_in if g > 1 else None,
              kernel_size=tuple(mod.kernel_size), gs_out=gs_out, groups=mod.groups)
    return out


def _conv_over_channels(p: PassState, n: fx.Node, mod: nn.Module, args: tuple, kwargs: dict, value: Any,
                        x: TMeta) -> Any:
    """A conv whose input holds the network's channels along a spatial dim (ECA attention: a Conv1d over the
    channel axis of a (B, 1, C) tensor). Its weights do not depend on that dim, so nothing is sliced or tied:
    the output keeps the channels where they were, provided the conv keeps that dim's length, and the layer
    itself stays whole (its own in/out channels are not the network's). The conv mixes neighbouring channels,
    so their order is part of the function: the channels are recorded as ordered (narrowed, never
    reordered)."""
    d = x.cdim
    stride = mod.stride[d - 2] if d - 2 < len(mod.stride) else 0
    if not isinstance(value, torch.Tensor) or value.ndim != len(x.shape) or stride != 1 \
            or value.shape[d] != x.shape[d]:
        return unknown(p, n, args, kwargs, value, " (slides over the channel axis and changes its length)")
    p.ctx.ordered.append((x.atoms, f"{n.target}: a {type(mod).__name__} slides over these channels"))
    out = TMeta(tuple(value.shape), d, x.atoms)
    g = mod.groups  # every output reads in_channels / groups of its own (fixed) channels: a constant count
    _flop(p, "conv", n, [x], out, kernel=math.prod(mod.kernel_size), gs=mod.in_channels // g,
          kernel_size=tuple(mod.kernel_size), gs_out=mod.out_channels // g, groups=g)
    return out


def conv_out_atoms(p: PassState, name: str, mod: nn.Module, in_atoms: np.ndarray,
                   keep_groups: bool = False) -> np.ndarray:
    """The output channels of a conv or transposed conv (``in_channels``, ``out_channels``, ``groups``) reading
    ``in_atoms``: new channels for an ordinary conv; for a grouped one, output block i (``out_channels / groups``
    channels) reads input block i only, so the outputs are tied to their inputs: the input channels themselves
    (depthwise, or equal group widths: widths then move in whole groups) or, with one input channel per group and
    k outputs (a depthwise conv with channel multiplier k), input channel i repeated k times (its k outputs are
    kept or cut with it). Other grouped shapes (``keep_groups``: a conv, e.g. split attention's radix conv) keep
    their group count, every group narrowed the same way (group i's channels tied to group 0's); otherwise they
    freeze with the reason."""
    g = mod.groups
    gs_in, gs_out = mod.in_channels // g, mod.out_channels // g
    prev_out = p.ctx.module_dims[name].get("out")
    if g == 1:
        return prev_out if prev_out is not None else p.ctx.new_atoms(mod.out_channels, name)
    if gs_in == gs_out:  # depthwise (gs 1) or grouped with equal group widths: out channel i reads in group i // gs
        if gs_in > 1:
            p.ctx.require_divisor(in_atoms, gs_in)
            p.ctx.grouped_convs.append((name, gs_in, in_atoms))
        return in_atoms
    if gs_in == 1:  # depthwise with a channel multiplier: outputs i*k .. i*k+k-1 read input channel i
        return np.repeat(in_atoms, gs_out)
    if keep_groups:
        blocks = in_atoms.reshape(g, gs_in)
        for b in blocks[1:]:
            p.ctx.unify(blocks[0], b)
        return prev_out if prev_out is not None else np.tile(p.ctx.new_atoms(gs_out, name), g)
    reason = f"{name}: grouped conv with {gs_in} in and {gs_out} out channels per group"
    p.ctx.freeze(in_atoms, reason)
    return prev_out if prev_out is not None else p.ctx.new_atoms(mod.out_channels, name, reason)


def conv_transpose(p: PassState, n: fx.Node, mod: nn.Module, args: tuple, kwargs: dict, value: Any) -> Any:
    """ConvTranspose1d/2d/3d: channels flow as through a conv (roles "in" and "out", grouped and depthwise ones
    tied the same way); its FLOPs are fvcore's for a transposed conv, input elements x kernel x outputs per group."""
    name = str(n.target)
    x = p.meta_of(n.args[0])
    in_atoms = p.ctx.module_atoms(name, "in", p.ctx.atoms_along(x, 1, name))
    out_atoms = p.ctx.module_atoms(name, "out", conv_out_atoms(p, name, mod, in_atoms))
    out = TMeta(tuple(value.shape), 1, out_atoms)
    if isinstance(x, (TMeta, IdMeta)):
        g = mod.groups
        _flop(p, "conv_transpose", n, [TMeta(x.shape, 1, in_atoms)], out, kernel=math.prod(mod.kernel_size),
              gs_out=mod.out_channels // g if g > 1 else None)
    return out


def linear(p: PassState, n: fx.Node, mod: nn.Module, args: tuple, kwargs: dict, value: Any) -> Any:
    name = str(n.target)
    x = p.meta_of(n.args[0])
    nd = value.ndim
    in_atoms = p.ctx.module_atoms(name, "in", p.ctx.atoms_along(x, nd - 1, name))
    prev_out = p.ctx.module_dims[name].get("out")
    out_atoms = p.ctx.module_atoms(name, "out", prev_out if prev_out is not None else p.ctx.new_atoms(mod.out_features, name))
    out = TMeta(tuple(value.shape), nd - 1, out_atoms)
    in_meta = TMeta(x.shape, nd - 1, in_atoms)
    _flop(p, "linear", n, [in_meta], out)
    return out


def per_channel_layer(channel_dim: int | None, kind: str) -> ModuleHandler:
    """Norm layers with one parameter per channel (BatchNorm, LayerNorm over channels)."""

    def handler(p: PassState, n: fx.Node, mod: nn.Module, args: tuple, kwargs: dict, value: Any) -> Any:
        name = str(n.target)
        x = p.meta_of(n.args[0])
        if kind == "layer_norm" and len(mod.normalized_shape) != 1:
            return unknown(p, n, args, kwargs, value, " (normalises over several dims)")
        d = value.ndim - 1 if channel_dim is None else channel_dim
        atoms = p.ctx.module_atoms(name, "feat", p.ctx.atoms_along(x, d, name))
        out = TMeta(tuple(value.shape), d, atoms)
        affine = getattr(mod, "weight", None) is not None
        # counted in eval mode: a BatchNorm without running statistics normalises with batch statistics
        batch_stats = isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is None
        _flop(p, kind, n, [TMeta(x.shape, d, atoms)], out, affine=affine, batch_stats=batch_stats)
        return out

    return handler


def per_channel_tensors(mod: nn.Module, channels: int) -> list[str]:
    """Names of the module's own parameters and buffers with more than one element whose size matches
    ``channels`` along some dim: tensors a channel cut would have to slice."""
    if channels <= 1:
        return []
    own = [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]
    return [name for name, t in own if t is not None and t.numel() > 1 and channels in tuple(t.shape)]


def group_norm_layer(p: PassState, n: fx.Node, mod: nn.Module, args: tuple, kwargs: dict, value: Any) -> Any:
    """GroupNorm: channels are cut in whole groups of ``num_channels / num_groups`` (channels per group fixed,
    the group count follows the width), so every kept group is normalised over the same channels as at full
    width. One group stays one group at any width (it normalises over all channels kept)."""
    name = str(n.target)
    x = p.meta_of(n.args[0])
    atoms = p.ctx.module_atoms(name, "feat", p.ctx.atoms_along(x, 1, name))
    per_group = mod.num_channels // mod.num_groups
    if mod.num_groups > 1 and per_group > 1:
        p.ctx.require_divisor(atoms, per_group)
        p.ctx.grouped_convs.append((name, per_group, atoms))  # channel blocks that must stay aligned
    out = TMeta(tuple(value.shape), 1, atoms)
    _flop(p, "group_norm", n, [TMeta(x.shape, 1, atoms)], out, affine=getattr(mod, "weight", None) is not None)
    return out


def norm_act_layer(norm: ModuleHandler) -> ModuleHandler:
    """A norm layer followed by its own ``drop`` and ``act`` sub-layers in one module (timm's BatchNormAct2d,
    GroupNormAct, LayerNormAct2d, ...): the norm's handler, provided both sub-layers are element-wise."""

    def handler(p: PassState, n: fx.Node, mod: nn.Module, args: tuple, kwargs: dict, value: Any) -> Any:
        for child in ("drop", "act"):
            sub = getattr(mod, child, None)
            if sub is not None and module_handler(sub) is not module_passthrough:
                return unknown(p, n, args, kwargs, value, f" (its {child} {type(sub).__name__} is not element-wise)")
        return norm(p, n, mod, args, kwargs, value)

    return handler


def std_conv(p: PassState, n: fx.Node, mod: nn.Module, args: tuple, kwargs: dict, value: Any) -> Any:
    """A conv whose forward pads "same" and/or standardises its weight first (timm's Conv2dSame, StdConv2d,
    ScaledStdConv2d): channels flow as through a conv; the standardisation is a batch_norm over the weight,
    4 FLOPs per weight element (5 with the gain, plus the gain * scale multiply), as fvcore counts it."""
    out = conv(p, n, mod, args, kwargs, value)
    if type(mod).__name__.startswith(("StdConv", "ScaledStdConv")):
        x = p.meta_of(n.args[0])
        name = str(n.target)
        dims = p.ctx.module_dims[name]
        in_meta = TMeta(x.shape, 1, dims["in"]) if isinstance(x, (TMeta, IdMeta)) else None
        if in_meta is not None:
            g = mod.groups
            _flop(p, "weight_std", n, [in_meta], out, kernel=math.prod(mod.kernel_size),
                  gs=mod.in_channels // g if g > 1 else None, gain=getattr(mod, "gain", None) is not None)
    return out


def _norm_parameters_follow(p: PassState, n: fx.Node, atoms: np.ndarray, op: str, positions) -> None:
    """The per-channel tensors a functional norm takes (``positions``: (argument index, name)): each read from a
    module's parameter or buffer is sliced with ``atoms``; one computed in the graph freezes them, with the reason."""
    for i, name in positions:
        node = _node_arg(n, i, name)
        pm = p.meta_of(node) if isinstance(node, fx.Node) else None
        if pm is None:
            continue
        if isinstance(pm, TMeta) and pm.attr is not None and pm.attr_axes is None and len(pm.shape) == 1:
            _attr_follower(p, pm.attr, 0, atoms)
        else:
            p.ctx.freeze(atoms, f"{n.name}: {op} with a computed {name}")


def functional_batch_norm(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """``F.batch_norm(x, running_mean, running_var, weight, bias, ...)`` called in a forward with the module's
    own parameters and buffers: each per-channel tensor read from the graph is sliced with x's channels."""
    m = p.meta_of(n.args[0])
    if not isinstance(m, TMeta) or m.cdim != 1 or not isinstance(value, torch.Tensor):
        return unknown(p, n, args, kwargs, value, " (channels not on dim 1)")
    _norm_parameters_follow(p, n, m.atoms, "batch_norm", enumerate(("running_mean", "running_var", "weight",
                                                                    "bias"), start=1))
    out = TMeta(tuple(value.shape), 1, m.atoms)
    affine = _arg(n, args, kwargs, 3, "weight") is not None
    training = bool(_arg(n, args, kwargs, 5, "training", False))
    _flop(p, "batch_norm", n, [m], out, affine=affine, batch_stats=training)
    return out


def functional_layer_norm(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """``F.layer_norm(x, (C,), weight, bias)`` over a last dim holding channels (a channels-last LayerNorm written
    out in a forward, timm's MetaFormer norms): channels pass through, the weight and bias read from the graph are
    sliced with them, and the network replaces the literal ``(C,)`` by a NormShape following the config."""
    m = p.meta_of(n.args[0])
    shape = _arg(n, args, kwargs, 1, "normalized_shape")
    if not isinstance(m, TMeta) or not isinstance(value, torch.Tensor):
        return unknown(p, n, args, kwargs, value)
    if m.cdim is None:
        return TMeta(tuple(value.shape))
    if len(shape) != 1 or m.cdim != len(m.shape) - 1:
        return unknown(p, n, args, kwargs, value, " (normalises over several dims, or channels not on the last dim)")
    _norm_parameters_follow(p, n, m.atoms, "layer_norm", ((2, "weight"), (3, "bias")))
    p.ctx.norm_shapes[n.name] = m.atoms
    out = TMeta(tuple(value.shape), m.cdim, m.atoms)
    _flop(p, "layer_norm", n, [m], out, affine=_arg(n, args, kwargs, 2, "weight") is not None, batch_stats=False)
    return out


_PRELU_PER_CHANNEL = per_channel_layer(1, "prelu")


def module_passthrough(p: PassState, n: fx.Node, mod: nn.Module, args: tuple, kwargs: dict, value: Any) -> Any:
    """An element-wise layer without per-channel tensors: channels in = channels out. A layer that holds
    per-channel parameters or buffers is refused (frozen, with the names): passing it through would leave them
    unsliced at every narrow config."""
    x = p.meta_of(n.args[0]) if n.args else None
    channels = x.shape[x.cdim] if isinstance(x, TMeta) and x.cdim is not None else 0
    tensors = per_channel_tensors(mod, channels)
    if tensors:
        return unknown(p, n, args, kwargs, value,
                       f" ({type(mod).__name__} holds per-channel {tensors}: give it a layer kind, "
                       f"compress.slim.layers.register_layer_kind, and a handler that slices them)")
    return passthrough(p, n, args, kwargs, value)


def prelu(p: PassState, n: fx.Node, mod: nn.Module, args: tuple, kwargs: dict, value: Any) -> Any:
    """PReLU: one shared slope passes channels through; one slope per channel is a per-channel layer."""
    if mod.num_parameters == 1:
        return passthrough(p, n, args, kwargs, value)
    return _PRELU_PER_CHANNEL(p, n, mod, args, kwargs, value)


def _module_fn(fn: FunctionHandler) -> ModuleHandler:
    return lambda p, n, mod, args, kwargs, value: fn(p, n, args, kwargs, value)


# ---- channels read in blocks ------------------------------------------------------------
def tied_block_heads(p: PassState, label: str, atoms: np.ndarray, block: int) -> np.ndarray:
    """One channel per run of ``block`` channels of ``atoms`` read as one unit in a fixed order (a PixelShuffle's
    r*r sub-pixels, the H*W features a view turns into one channel): the run's first atom, which stands for the
    whole run. Runs of one repeated atom (e.g. made by a PixelUnshuffle) need nothing more; other runs are tied
    (``ctx.tied_blocks``): widths become multiples of ``block``, runs that a channel group would cut through are
    frozen (``groups.misaligned_tied_blocks``) and reordering moves runs whole, in their order."""
    runs = atoms.reshape(-1, block)
    if block > 1 and not (runs == runs[:, :1]).all():
        p.ctx.require_divisor(atoms, block)
        p.ctx.tied_blocks.append((label, block, atoms))
    return runs[:, 0].copy()


def features_to_channels(p: PassState, n: fx.Node, m: TMeta, out: tuple[int, ...]) -> TMeta | None:
    """``(B, C*H*W) -> (B, C, H, W)``: a Linear's features turned into a feature map (a generator's first layer).
    Output channel c is the run of H*W features c*H*W .. (c+1)*H*W - 1 in a fixed order, so the features are cut
    and reordered in whole runs (:func:`tied_block_heads`); the node is recorded to be rewritten as
    ``x.unflatten(1, (-1, H, W))``, so that a channel count written as a literal follows the width. None for any
    other reshape (a 2-d input with its features on dim 1, split into the channel dim and one or more dims)."""
    if len(m.shape) != 2 or m.cdim != 1 or len(out) < 3 or out[0] != m.shape[0]:
        return None
    block = math.prod(out[2:])
    if block < 1 or out[1] * block != m.shape[1]:
        return None
    p.ctx.unflattens[n.name] = (1, (-1, *out[2:]))
    return TMeta(tuple(out), 1, tied_block_heads(p, n.name, m.atoms, block))


def unflatten(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """``x.unflatten(dim, sizes)`` / ``torch.unflatten`` / ``nn.Unflatten``: a dim other than the channels' keeps
    them; the features of a 2-d input split into (C, H, W) as in :func:`features_to_channels`; any other split of
    the channel dim is followed as a channel shuffle (replayed on channel ids, see ``reshape``)."""
    m = p.meta_of(n.args[0])
    if isinstance(m, IdMeta):
        return _replay(p, n, args, kwargs, value, m)
    if not isinstance(m, TMeta) or not isinstance(value, torch.Tensor):
        return unknown(p, n, args, kwargs, value)
    if m.cdim is None:
        return untracked(value)
    dim = p.modules[n.target].dim if n.op == "call_module" else _arg(n, args, kwargs, 1, "dim")
    dim, out = _norm_dim(dim, len(m.shape)), tuple(value.shape)
    if dim != m.cdim:
        return TMeta(out, m.cdim + (len(out) - len(m.shape) if dim < m.cdim else 0), m.atoms)
    blocked = features_to_channels(p, n, m, out)
    if blocked is not None:
        return blocked
    ids = torch.arange(math.prod(m.shape)).view(m.shape)
    return _replay(p, n, (ids,) + tuple(args[1:]), kwargs, value, IdMeta(m.shape, n.args[0], m.atoms, ids))


def _pixel_op(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any, up: bool) -> Any:
    m = p.meta_of(n.args[0])
    if not isinstance(m, TMeta) or not isinstance(value, torch.Tensor):
        return unknown(p, n, args, kwargs, value)
    if m.cdim is None:
        return untracked(value)
    if m.cdim != len(m.shape) - 3:
        return unknown(p, n, args, kwargs, value, " (channels not on dim -3)")
    if n.op == "call_module":
        mod = p.modules[n.target]
        r = mod.upscale_factor if up else mod.downscale_factor
    else:
        r = _arg(n, args, kwargs, 1, "upscale_factor" if up else "downscale_factor")
    if up:
        label = str(n.target) if n.op == "call_module" else n.name
        return TMeta(tuple(value.shape), m.cdim, tied_block_heads(p, label, m.atoms, r * r))
    return TMeta(tuple(value.shape), m.cdim, np.repeat(m.atoms, r * r))


def pixel_shuffle(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """PixelShuffle(r) (``nn.PixelShuffle``, ``F.pixel_shuffle``): output channel c is the r*r input channels
    c*r*r .. (c+1)*r*r - 1 in a fixed order (its sub-pixels), so the input channels are cut and reordered in whole
    runs of r*r (:func:`tied_block_heads`). No FLOPs (fvcore does not count it either)."""
    return _pixel_op(p, n, args, kwargs, value, up=True)


def pixel_unshuffle(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """PixelUnshuffle(r) (``nn.PixelUnshuffle``, ``F.pixel_unshuffle``): input channel c becomes the r*r output
    channels c*r*r .., which are kept or cut with it (its atom repeated r*r times). No FLOPs."""
    return _pixel_op(p, n, args, kwargs, value, up=False)


# ---- functional depthwise convs, blur pooling, padding -----------------------------------------------
def _expanded_from_one(p: PassState, node: Any, dim: int) -> bool:
    """Whether ``node`` is ``t.expand(...)`` of a size-1 dim ``dim`` to a size computed in the graph (e.g.
    ``filt.expand(x.shape[1], 1, k, k)``): it follows any width and holds nothing to slice."""
    if not (isinstance(node, fx.Node) and node.op == "call_method" and node.target == "expand"):
        return False
    base = p.meta_of(node.args[0])
    sizes = _shape_args(node)
    return isinstance(base, TMeta) and len(base.shape) == len(sizes) and base.shape[dim] == 1 \
        and isinstance(sizes[dim], fx.Node)


def functional_conv(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """``F.conv1d/2d/3d(x, weight, bias, stride, padding, dilation, groups)`` called in a forward: understood when
    depthwise (one filter per channel, ``groups`` = the channels, a blur or smoothing filter held in a buffer).
    Channels pass through; a filter read from a parameter or buffer is sliced with them, one expanded from a
    single filter follows any width. ``groups`` must be computed in the graph (``x.shape[1]``): a literal
    count cannot run at a narrower width, so the channels are frozen with that reason."""
    x = p.meta_of(n.args[0])
    weight, groups = _arg(n, args, kwargs, 1, "weight"), _arg(n, args, kwargs, 6, "groups", 1)
    if not isinstance(x, TMeta) or x.cdim != 1 or not isinstance(value, torch.Tensor) \
            or not isinstance(weight, torch.Tensor):
        return unknown(p, n, args, kwargs, value, " (channels not on dim 1)")
    channels = x.shape[1]
    if groups != channels or weight.shape[0] != channels or weight.shape[1] != 1:
        return unknown(p, n, args, kwargs, value, f" (only a depthwise conv is understood: groups={groups}, "
                                                  f"weight {tuple(weight.shape)}, {channels} input channels)")
    out = TMeta(tuple(value.shape), 1, x.atoms)
    _flop(p, "conv", n, [x], out, kernel=math.prod(weight.shape[2:]), gs=1, kernel_size=tuple(weight.shape[2:]),
          gs_out=1, groups=channels)
    if x.atoms is None:
        return out
    groups_node = _node_arg(n, 6, "groups")
    if counts_channels(p, groups_node, x.atoms):
        p.ctx.size_args_followed.add(n.name)
    if not isinstance(groups_node, fx.Node):
        p.ctx.freeze(x.atoms, f"{n.name}: depthwise {_op_name(n)} with a literal groups={groups} (a narrower "
                              "input cannot run; compute it as x.shape[1], or give the layer a handler)")
    for i, what in ((1, "weight"), (2, "bias")):
        node = _node_arg(n, i, what)
        pm = p.meta_of(node) if isinstance(node, fx.Node) else None
        if pm is None or (i == 1 and _expanded_from_one(p, node, 0)):
            continue
        if isinstance(pm, TMeta) and pm.attr is not None and pm.attr_axes is None:
            _attr_follower(p, pm.attr, 0, x.atoms)
        else:
            p.ctx.freeze(x.atoms, f"{n.name}: depthwise {_op_name(n)} with a computed {what}")
    return out


def blur_pool(p: PassState, n: fx.Node, mod: nn.Module, args: tuple, kwargs: dict, value: Any) -> Any:
    """timm's BlurPool2d: pad, then a depthwise conv with a fixed binomial filter. Channels pass through; a
    filter held per channel (``channels`` given: the buffer ``filt`` is (C, 1, k, k) and ``groups`` = C) is
    sliced with them (layer kind "blur_pool", role "feat"); a single expanded filter follows any width."""
    x = p.meta_of(n.args[0])
    if not isinstance(x, TMeta) or x.cdim != 1 or not isinstance(value, torch.Tensor):
        return unknown(p, n, args, kwargs, value, " (channels not on dim 1)")
    atoms = x.atoms
    if mod.channels is not None and atoms is not None:
        atoms = p.ctx.module_atoms(str(n.target), "feat", atoms)
    out = TMeta(tuple(value.shape), 1, atoms)
    k = tuple(mod.filt.shape[2:])
    _flop(p, "conv", n, [TMeta(x.shape, 1, atoms)], out, kernel=math.prod(k), gs=1, kernel_size=k, gs_out=1,
          groups=x.shape[1])
    return out


def _padded_dims(pad: Any, ndim: int) -> list[int]:
    """Dims a ``F.pad``-style padding (last dim first, two numbers per dim) pads by a non-zero amount."""
    pad = list(pad) if isinstance(pad, (list, tuple)) else [pad] * 2
    return [ndim - 1 - i // 2 for i, amount in enumerate(pad) if amount]


def _pad_meta(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any, pad: Any) -> Any:
    m = p.meta_of(n.args[0])
    if not isinstance(m, TMeta) or not isinstance(value, torch.Tensor):
        return unknown(p, n, args, kwargs, value)
    if m.cdim is None:
        return untracked(value)
    if m.cdim in _padded_dims(pad, len(m.shape)):  # new channels made of the padding value: not a pass-through
        return unknown(p, n, args, kwargs, value, " (pads the channel dim)")
    return TMeta(tuple(value.shape), m.cdim, m.atoms)


def pad(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """``F.pad``: padding spatial dims passes channels through (any mode and value); padding the channel dim
    adds channels that are not the input's, which is not understood (frozen)."""
    return _pad_meta(p, n, args, kwargs, value, _arg(n, args, kwargs, 1, "pad"))


def pad_layer(p: PassState, n: fx.Node, mod: nn.Module, args: tuple, kwargs: dict, value: Any) -> Any:
    """``nn.ConstantPad2d``, ``nn.ZeroPad2d``, ``nn.ReflectionPad2d``, ... : as ``F.pad`` with the layer's
    ``padding`` (a tuple, two numbers per padded dim, last dim first)."""
    return _pad_meta(p, n, args, kwargs, value, mod.padding)


# ---- the tables -----------------------------------------------------------------------
_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.GELU, nn.LeakyReLU,
    nn.ELU, nn.Mish, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.Hardtanh,
)
MODULE_HANDLERS: dict[Any, ModuleHandler] = {
    nn.Conv1d: conv, nn.Conv2d: conv, nn.Conv3d: conv,
    nn.Linear: linear,
    nn.BatchNorm1d: per_channel_layer(1, "batch_norm"),
    nn.BatchNorm2d: per_channel_layer(1, "batch_norm"),
    nn.BatchNorm3d: per_channel_layer(1, "batch_norm"),
    nn.LayerNorm: per_channel_layer(None, "layer_norm"),
    nn.GroupNorm: group_norm_layer,
    "torchvision.models.convnext.LayerNorm2d": per_channel_layer(1, "layer_norm"),
    "torchvision.ops.stochastic_depth.StochasticDepth": module_passthrough,
    nn.MaxPool1d: _module_fn(channel1_op(None)), nn.MaxPool2d: _module_fn(channel1_op("pool")),
    nn.AvgPool2d: _module_fn(channel1_op("pool")),
    nn.AdaptiveAvgPool2d: _module_fn(channel1_op("adaptive_avg_pool")),
    nn.AdaptiveMaxPool2d: _module_fn(channel1_op("mean")),
    nn.Upsample: _module_fn(channel1_op("upsample")),
    nn.Flatten: _module_fn(flatten),
    nn.Softmax: _module_fn(softmax), nn.LogSoftmax: _module_fn(softmax),
    **{cls: module_passthrough for cls in _ACTIVATIONS},
    nn.PReLU: prelu,
    nn.ConvTranspose1d: conv_transpose, nn.ConvTranspose2d: conv_transpose, nn.ConvTranspose3d: conv_transpose,
    nn.PixelShuffle: _module_fn(pixel_shuffle), nn.PixelUnshuffle: _module_fn(pixel_unshuffle),
    nn.Unflatten: _module_fn(unflatten),
    **{cls: pad_layer for cls in (getattr(nn, f"{kind}Pad{d}d", None) for kind in (
        "Constant", "Zero", "Reflection", "Replication", "Circular") for d in (1, 2, 3)) if cls is not None},
}

# timm's layers whose forward calls F.batch_norm / F.layer_norm / F.group_norm with their own parameters (keyed
# by "module.qualname", so timm stays optional): traced as single layers and sliced as the norm they are
# (compress.slim.layers has their LayerKind entries); its element-wise activations pass channels through.
_TIMM = "timm.layers."
TIMM_MODULE_HANDLERS: dict[str, ModuleHandler] = {
    _TIMM + "norm_act.BatchNormAct2d": norm_act_layer(per_channel_layer(1, "batch_norm")),
    _TIMM + "norm_act.GroupNormAct": norm_act_layer(group_norm_layer),
    _TIMM + "norm_act.GroupNorm1Act": norm_act_layer(group_norm_layer),
    _TIMM + "norm_act.LayerNormAct2d": norm_act_layer(per_channel_layer(1, "layer_norm")),
    _TIMM + "norm_act.LayerNormAct": norm_act_layer(per_channel_layer(None, "layer_norm")),
    _TIMM + "norm.LayerNorm2d": per_channel_layer(1, "layer_norm"),
    _TIMM + "norm.LayerNorm": per_channel_layer(None, "layer_norm"),
    _TIMM + "norm.GroupNorm": group_norm_layer,
    _TIMM + "norm.GroupNorm1": group_norm_layer,
    _TIMM + "linear.Linear": linear,  # nn.Linear whose forward calls F.linear with its own weight (AMP casting)
    _TIMM + "blur_pool.BlurPool2d": blur_pool,
    **{_TIMM + conv_cls: std_conv for conv_cls in (
        "conv2d_same.Conv2dSame", "std_conv.StdConv2d", "std_conv.StdConv2dSame", "std_conv.ScaledStdConv2d",
        "std_conv.ScaledStdConv2dSame")},
    **{_TIMM + "activations." + act: module_passthrough for act in (
        "Swish", "Mish", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "HardMish", "GELU", "GELUTanh",
        "QuickGELU", "SiLU")},
}
MODULE_HANDLERS.update(TIMM_MODULE_HANDLERS)
EXTRA_LEAF_MODULES.update(TIMM_MODULE_HANDLERS)

_UNARY_FUNCTIONS = (
    torch.relu, torch.relu_, F.relu, F.relu6, F.silu, F.hardswish, F.hardsigmoid, F.gelu, F.leaky_relu,
    torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.dropout, F.dropout2d, F.elu, F.mish, F.hardtanh,
    torch.nn.functional.softplus,
    torch.sigmoid_, torch.tanh_, F.relu_, F.elu_, F.leaky_relu_, F.hardtanh_,  # in-place forms
)
FUNCTION_HANDLERS: dict[Any, FunctionHandler] = {
    **{f: passthrough for f in _UNARY_FUNCTIONS},
    operator.add: binary, operator.iadd: binary, operator.sub: binary, operator.isub: binary,
    operator.mul: binary, operator.imul: binary, operator.truediv: binary, operator.itruediv: binary,
    torch.add: binary, torch.sub: binary, torch.mul: binary, torch.div: binary,
    operator.pow: power, torch.pow: power, torch.square: passthrough,
    torch.cat: cat, torch.concat: cat,
    torch.chunk: split, torch.split: split,
    torch.unbind: unbind,
    operator.getitem: getitem,
    torch.flatten: flatten,
    torch.reshape: reshape,
    torch.permute: permute,
    torch.transpose: transpose,
    torch.mean: reduction(True),
    torch.sum: reduction(False),  # fvcore counts no FLOPs for aten::sum
    torch.stack: stack,
    F.pad: pad,
    F.conv1d: functional_conv, F.conv2d: functional_conv, F.conv3d: functional_conv,
    torch.softmax: softmax, F.softmax: softmax, F.log_softmax: softmax,
    torch.unsqueeze: unsqueeze,
    F.adaptive_avg_pool2d: channel1_op("adaptive_avg_pool"),
    F.max_pool2d: channel1_op("pool"), F.avg_pool2d: channel1_op("pool"),
    F.interpolate: channel1_op("upsample"),
    F.batch_norm: functional_batch_norm, F.layer_norm: functional_layer_norm,
    F.pixel_shuffle: pixel_shuffle, F.pixel_unshuffle: pixel_unshuffle,
    torch.unflatten: unflatten,
}

METHOD_HANDLERS: dict[str, FunctionHandler] = {
    **{m: passthrough for m in (
        "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone", "float", "to", "detach",
        "type_as")},
    **{m: binary for m in ("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_")},
    "pow": power, "square": passthrough,
    "view": reshape, "reshape": reshape,
    "flatten": flatten,
    "permute": permute, "transpose": transpose,
    "chunk": split, "split": split,
    "unbind": unbind,
    "mean": reduction(True),
    "sum": reduction(False),
    "softmax": softmax, "log_softmax": softmax,
    "unsqueeze": unsqueeze,
    "expand": expand, "expand_as": expand,
    "unflatten": unflatten,
}


# ---- public registration -----------------------------------------------------------------
def _check_handler(handler: Any, where: str) -> None:
    check_parameter(callable(handler), "handler", where, "a callable (see compress.space.ops for the signature)",
                    handler)


def register_module(layer: type | str, handler: ModuleHandler, *, replace: bool = False) -> None:
    """Teach the channel space a layer class of your own: how channels flow through it.

    The layer is then traced as one node (not traced into) and ``handler(p, node, module, args, kwargs, value)``
    returns its output's meta. Ready-made handlers: ``module_passthrough`` (element-wise, no per-channel
    parameters and no FLOPs of its own as fvcore counts them: channels in = channels out; a layer that does cost
    FLOPs, e.g. ``x * sigmoid(x)``, is named by FlopsMismatchError when the network's FLOPs model is built),
    ``per_channel_layer(1, "batch_norm")`` (one parameter per channel
    along dim 1, sliced with the channel), ``conv``, ``linear``. A layer whose weights are sliced (any handler
    that names channel roles: conv, linear, per_channel_layer) also needs a slimming entry,
    ``compress.slim.layers.register_layer_kind``; without one, building a SlimmableNetwork says so.

    Args:
        layer: the ``nn.Module`` subclass, or its "module.qualname" string (so a package need not be imported to
            register it).
        handler: the module handler: ``handler(p, node, module, args, kwargs, value)`` with ``value`` the layer's
            real output on the example inputs; returns the output's meta (shape and channel atoms).
        replace: allow replacing an existing handler (otherwise that is an error).

    Raises:
        InvalidParameterError: ``layer`` is not an ``nn.Module`` subclass or a "module.qualname" string, ``handler`` is not
            callable, or the layer has a handler already and ``replace`` is False.

    Example:
        >>> compress.space.register_module(MySwish, compress.space.ops.module_passthrough)
    """
    ok = isinstance(layer, type) and issubclass(layer, nn.Module) or isinstance(layer, str) and "." in layer
    check_parameter(ok, "layer", "register_module", "an nn.Module subclass or a 'module.qualname' string", layer)
    _check_handler(handler, "register_module")
    key = layer if isinstance(layer, str) else f"{layer.__module__}.{layer.__qualname__}"
    taken = key in MODULE_HANDLERS or (not isinstance(layer, str) and layer in MODULE_HANDLERS)
    check_parameter(replace or not taken, "layer", "register_module",
                    "a layer without a handler (pass replace=True to replace it)", key)
    MODULE_HANDLERS[key] = handler
    EXTRA_LEAF_MODULES.add(key)


def register_function(fn: Callable, handler: FunctionHandler, *, replace: bool = False) -> None:
    """Register how channels flow through a function called in ``forward`` (``torch.*``, ``F.*``, your own).

    ``handler(p, node, args, kwargs, value)`` returns the output's meta; ``passthrough`` and ``binary`` are the
    common ones. A function of your own must be wrapped with ``torch.fx.wrap`` to be traced as one node.

    Args:
        fn: the function as called in ``forward`` (e.g. ``torch.flatten``, ``F.relu``, your own wrapped one).
        handler: ``handler(p, node, args, kwargs, value)`` with ``value`` the call's real output on the example
            inputs; returns the output's meta (shape and channel atoms).
        replace: allow replacing an existing handler (otherwise that is an error).

    Raises:
        InvalidParameterError: ``fn`` or ``handler`` is not callable, or ``fn`` has a handler and not ``replace``.
    """
    check_parameter(callable(fn), "fn", "register_function", "a callable", fn)
    _check_handler(handler, "register_function")
    check_parameter(replace or fn not in FUNCTION_HANDLERS, "fn", "register_function",
                    "a function without a handler (pass replace=True to replace it)", fn)
    FUNCTION_HANDLERS[fn] = handler


def register_method(name: str, handler: FunctionHandler, *, replace: bool = False) -> None:
    """Register how channels flow through a tensor method (``x.name(...)``).

    Args:
        name: the method's name, e.g. "view" or "permute".
        handler: ``handler(p, node, args, kwargs, value)`` (``args[0]`` is the tensor the method is called on,
            ``value`` the call's real output); returns the output's meta (shape and channel atoms).
        replace: allow replacing an existing handler (otherwise that is an error).

    Raises:
        InvalidParameterError: ``name`` is not a non-empty string, ``handler`` is not callable, or the method has
            a handler and not ``replace``.
    """
    check_parameter(isinstance(name, str) and bool(name), "name", "register_method", "a method name", name)
    _check_handler(handler, "register_method")
    check_parameter(replace or name not in METHOD_HANDLERS, "name", "register_method",
                    "a method without a handler (pass replace=True to replace it)", name)
    METHOD_HANDLERS[name] = handler


def module_handler(mod: nn.Module) -> ModuleHandler | None:
    """Handler of a layer: by exact class, then by class key; a subclass that overrides
    ``forward`` is not assumed to behave like its base."""
    cls = type(mod)
    h = MODULE_HANDLERS.get(cls) or MODULE_HANDLERS.get(class_key(mod))
    if h is not None:
        return h
    for base, h in MODULE_HANDLERS.items():
        if isinstance(base, type) and isinstance(mod, base) and cls.forward is base.forward:
            return h
    return None


def handle_node(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """Propagate channels through one node; the entry point the propagator calls.

    Raises:
        UnsupportedOpError: the node's handler failed on it. Its channels cannot be frozen safely then, since the
            handler may have coupled some of them already; the message names the node, the op and the handler.
    """
    try:
        meta = _handle_node(p, n, args, kwargs, value)
        check_size_consumers(p, n, args, kwargs, meta, value)  # a channel count read as a size must fit
        return meta
    except CompressError:
        raise
    except Exception as exc:
        raise UnsupportedOpError(
            f"The channel handler of {_op_name(n)} at node {n.name!r} failed: {type(exc).__name__}: {exc}. Fix "
            "the handler registered for it (compress.space.register_module/register_function/register_method), "
            "or pass the layer in `ignore=` to freeze it at full width.") from exc


def _handle_node(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    if n.op == "placeholder":
        if isinstance(value, torch.Tensor) and value.ndim >= 2:
            atoms = p.ctx.new_atoms(value.shape[1], f"input {n.name}", "network input")
            return TMeta(tuple(value.shape), 1, atoms)
        return untracked(value)
    if n.op == "get_attr":
        return TMeta(tuple(value.shape), attr=n) if isinstance(value, torch.Tensor) else None
    if n.op == "output":  # every tensor of any output structure (tuple, list, dict, nested)
        fx.node.map_arg(n.args[0], lambda node: p.ctx.freeze_meta(p.metas.get(node), "network output"))
        return None
    if n.op == "call_module":
        mod = p.modules[n.target]
        if n.target in p.frozen_modules:
            return unknown(p, n, args, kwargs, value, f" ({p.frozen_modules[n.target]})")
        h = module_handler(mod)
        if h is None:
            return unknown(p, n, args, kwargs, value, f" ({type(mod).__name__} has no channel handler)")
        return h(p, n, mod, args, kwargs, value)
    table_handler = FUNCTION_HANDLERS.get(n.target) if n.op == "call_function" else METHOD_HANDLERS.get(n.target)
    if table_handler is not None:
        return table_handler(p, n, args, kwargs, value)
    if not contains_tensor(value) and not contains_tensor(args) and not contains_tensor(kwargs):
        return size_arith(p, n, args, kwargs, value)
    if not contains_tensor(value) and n.op == "call_method" and n.target in ("size", "dim", "numel"):
        return size_read(p, n, args, kwargs, value)
    if not contains_tensor(value) and n.op == "call_function" and n.target is getattr:
        return size_read(p, n, args, kwargs, value)
    return unknown(p, n, args, kwargs, value)
