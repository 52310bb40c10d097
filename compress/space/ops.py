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
from compress.errors import CompressError, UnsupportedOpError, check_parameter
from compress.space.sizes import check_size_consumers, size_arith, size_read
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


def _contains_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return any(_contains_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_tensor(v) for v in value.values())
    return False


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
        if isinstance(m, IdMeta) or not isinstance(m, TMeta):
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


def getitem(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    obj, idx = args[0], args[1]
    m = p.meta_of(n.args[0])
    if not isinstance(obj, torch.Tensor):
        if isinstance(m, list) and isinstance(idx, int):
            return m[idx]
        if isinstance(m, list) and isinstance(idx, slice):
            return m[idx]
        if _contains_tensor(value):
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
        return unknown(p, n, args, kwargs, value, " (on a channel-split tensor)")
    if isinstance(m, TMeta) and m.cdim is not None and dim is not None and _norm_dim(dim, len(m.shape)) == m.cdim:
        return unknown(p, n, args, kwargs, value, " (normalises over channels)")
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
    m = p.meta_of(n.args[0])
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
    in_atoms = p.ctx.module_atoms(name, "in", p.ctx.atoms_along(x, 1, name))
    g = mod.groups
    gs_in, gs_out = mod.in_channels // g, mod.out_channels // g
    prev_out = p.ctx.module_dims[name].get("out")
    if g == 1:
        out_atoms = prev_out if prev_out is not None else p.ctx.new_atoms(mod.out_channels, name)
    elif gs_in == gs_out:  # depthwise (gs 1) or grouped with equal group widths: out channel i reads in group i // gs
        out_atoms = in_atoms
        if gs_in > 1:
            p.ctx.require_divisor(in_atoms, gs_in)
            p.ctx.grouped_convs.append((name, gs_in, in_atoms))
    else:
        reason = f"{name}: grouped conv with {gs_in} in and {gs_out} out channels per group"
        p.ctx.freeze(in_atoms, reason)
        out_atoms = prev_out if prev_out is not None else p.ctx.new_atoms(mod.out_channels, name, reason)
    out_atoms = p.ctx.module_atoms(name, "out", out_atoms)
    out = TMeta(tuple(value.shape), 1, out_atoms)
    in_meta = TMeta(x.shape, 1, in_atoms) if isinstance(x, (TMeta, IdMeta)) else None
    if in_meta is not None:
        _flop(p, "conv", n, [in_meta], out, kernel=math.prod(mod.kernel_size), gs=gs_in if g > 1 else None,
              kernel_size=tuple(mod.kernel_size), gs_out=gs_out, groups=g)
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


def functional_batch_norm(p: PassState, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """``F.batch_norm(x, running_mean, running_var, weight, bias, ...)`` called in a forward with the module's
    own parameters and buffers: each per-channel tensor read from the graph is sliced with x's channels."""
    m = p.meta_of(n.args[0])
    if not isinstance(m, TMeta) or m.cdim != 1 or not isinstance(value, torch.Tensor):
        return unknown(p, n, args, kwargs, value, " (channels not on dim 1)")
    names = ("running_mean", "running_var", "weight", "bias")
    for i, name in enumerate(names, start=1):
        node = _node_arg(n, i, name)
        pm = p.meta_of(node) if isinstance(node, fx.Node) else None
        if pm is None:
            continue
        if isinstance(pm, TMeta) and pm.attr is not None and pm.attr_axes is None and len(pm.shape) == 1:
            _attr_follower(p, pm.attr, 0, m.atoms)
        else:
            p.ctx.freeze(m.atoms, f"{n.name}: batch_norm with a computed {name}")
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
    for i, name in ((2, "weight"), (3, "bias")):
        node = _node_arg(n, i, name)
        pm = p.meta_of(node) if isinstance(node, fx.Node) else None
        if pm is None:
            continue
        if isinstance(pm, TMeta) and pm.attr is not None and pm.attr_axes is None and len(pm.shape) == 1:
            _attr_follower(p, pm.attr, 0, m.atoms)
        else:
            p.ctx.freeze(m.atoms, f"{n.name}: layer_norm with a computed {name}")
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
    operator.getitem: getitem,
    torch.flatten: flatten,
    torch.reshape: reshape,
    torch.permute: permute,
    torch.transpose: transpose,
    torch.mean: reduction(True),
    torch.softmax: softmax, F.softmax: softmax, F.log_softmax: softmax,
    torch.unsqueeze: unsqueeze,
    F.adaptive_avg_pool2d: channel1_op("adaptive_avg_pool"),
    F.max_pool2d: channel1_op("pool"), F.avg_pool2d: channel1_op("pool"),
    F.interpolate: channel1_op("upsample"),
    F.batch_norm: functional_batch_norm, F.layer_norm: functional_layer_norm,
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
    "mean": reduction(True),
    "softmax": softmax, "log_softmax": softmax,
    "unsqueeze": unsqueeze,
    "expand": expand,
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
            return unknown(p, n, args, kwargs, value, " (ignored by the user)")
        h = module_handler(mod)
        if h is None:
            return unknown(p, n, args, kwargs, value, f" ({type(mod).__name__} has no channel handler)")
        return h(p, n, mod, args, kwargs, value)
    table_handler = FUNCTION_HANDLERS.get(n.target) if n.op == "call_function" else METHOD_HANDLERS.get(n.target)
    if table_handler is not None:
        return table_handler(p, n, args, kwargs, value)
    if not _contains_tensor(value) and not _contains_tensor(args) and not _contains_tensor(kwargs):
        return size_arith(p, n, args, kwargs, value)
    if not _contains_tensor(value) and n.op == "call_method" and n.target in ("size", "dim", "numel"):
        return size_read(p, n, args, kwargs, value)
    if not _contains_tensor(value) and n.op == "call_function" and n.target is getattr:
        return size_read(p, n, args, kwargs, value)
    return unknown(p, n, args, kwargs, value)
