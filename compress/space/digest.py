"""What a network is, as a short digest: the identity that files of a work directory carry.

Supernet checkpoints, latency tables, predictors and the work directory's record (``network.json``) are only valid
for the network they were made from. Channel groups and parameter counts do not tell two networks apart (a ReLU
network and its Hardswish twin have the same of both), so the identity is read off the traced graph: every node's
op kind (the module class, function or method), its target, its arguments (other nodes by position, constants by
value), each module's shape-defining settings and parameter shapes, the channel groups and the input shapes.

:func:`network_identity` gives the parts (each its own digest, plus the count of each op kind, so a message can
say what differs); :func:`graph_digest` is the one digest of all of them; :func:`identity_differences` describes
two identities' differences in words.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any, Mapping

import torch
from torch import fx, nn

from compress.space.trace import class_key

IDENTITY_KEYS = ("graph", "ops", "channels", "input", "op_kinds")
# Module attributes that define what a layer computes or the shapes it produces (when the module has them). Only
# these are read: slimmable layers and the ops the channel space rewrites keep config-dependent state elsewhere.
MODULE_SETTINGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                   "padding_mode", "transposed", "output_padding", "in_features", "out_features", "num_features",
                   "eps", "affine", "normalized_shape", "elementwise_affine", "negative_slope", "min_val", "max_val",
                   "lower", "upper", "alpha", "beta", "threshold", "value", "lambd", "p", "output_size", "ceil_mode",
                   "count_include_pad", "divisor_override", "return_indices", "dim", "start_dim", "end_dim",
                   "scale_factor", "size", "mode", "align_corners", "approximate", "num_parameters",
                   "upscale_factor", "downscale_factor", "num_groups", "num_channels")


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def _module_class(mod: nn.Module) -> str:
    """The module's class key; a slimmable layer (``SlimX``, a subclass of ``X`` made by the channel space) counts
    as the class it was made from."""
    cls = type(mod)
    if cls.__name__.startswith("Slim") and len(cls.__mro__) > 1 and cls.__mro__[1].__name__ == cls.__name__[4:]:
        cls = cls.__mro__[1]
    return f"{cls.__module__}.{cls.__qualname__}"


def _plain(value: Any) -> Any:
    """A JSON-able stand-in for a setting or a constant argument (tensors by dtype and shape)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return ["tensor", str(value.dtype), list(value.shape)]
    if isinstance(value, slice):
        return ["slice", _plain(value.start), _plain(value.stop), _plain(value.step)]
    return repr(value) if isinstance(value, (torch.dtype, torch.device, torch.memory_format, type(Ellipsis))) \
        else type(value).__name__


def _function_name(target: Any) -> str:
    if isinstance(target, str):
        return target
    module = getattr(target, "__module__", None) or ""
    return f"{module}.{getattr(target, '__qualname__', getattr(target, '__name__', repr(target)))}"


def _graph_nodes(gm: fx.GraphModule) -> tuple[list, Counter]:
    """One JSON-able entry per node of the graph, and the count of each op kind. Modules that declare
    ``removed_at_export`` (search-time gates) are passed through: the network is the same with or without them."""
    modules = dict(gm.named_modules())
    index: dict[fx.Node, Any] = {}
    entries: list = []
    kinds: Counter = Counter()

    def arg(a: Any) -> Any:
        if isinstance(a, fx.Node):
            return ["node", index[a]]
        if isinstance(a, (tuple, list)):
            return [arg(v) for v in a]
        if isinstance(a, dict):
            return {str(k): arg(v) for k, v in a.items()}
        return _plain(a)

    for node in gm.graph.nodes:
        if node.op == "call_module" and getattr(modules[node.target], "removed_at_export", False) and node.args:
            first = node.args[0]
            index[node] = index[first] if isinstance(first, fx.Node) else _plain(first)
            continue
        entry: dict[str, Any] = {"op": node.op, "args": arg(node.args), "kwargs": arg(node.kwargs)}
        if node.op == "call_module":
            mod = modules[node.target]
            kind = _module_class(mod)
            entry.update(kind=kind, target=node.target,
                         settings={k: _plain(getattr(mod, k)) for k in MODULE_SETTINGS if hasattr(mod, k)},
                         tensors={n: list(t.shape) for n, t in [*mod.named_parameters(recurse=False),
                                                                 *mod.named_buffers(recurse=False)]})
            kinds[kind.rsplit(".", 1)[-1]] += 1
        elif node.op in ("call_function", "call_method"):
            kind = _function_name(node.target)
            entry["kind"] = kind
            kinds[kind.rsplit(".", 1)[-1]] += 1
        elif node.op == "get_attr":
            owner, _, leaf = node.target.rpartition(".")
            entry.update(target=node.target, value=_plain(getattr(gm.get_submodule(owner), leaf, None)))
        index[node] = len(entries)
        entries.append(entry)
    return entries, kinds


def network_identity(net: Any) -> dict:
    """The identity of a slimmable network, in parts.

    Args:
        net: a ``compress.SlimmableNetwork`` (its ``graph_module``, ``space`` and ``example_inputs`` are read; the
            network is not changed). The digest does not depend on the current config or on the weights' values.

    Returns:
        ``{"graph": digest of everything below, "ops": digest of the traced graph (op kinds, targets, arguments,
        module settings and parameter shapes), "channels": digest of the channel groups (names, full widths, members;
        not the divisor, a search setting), "input": the example inputs' shapes, "op_kinds": {op kind: count}}``,
        JSON-able.

    Raises:
        Nothing of its own (reads what tracing recorded).

    Example:
        >>> network_identity(net)["graph"]
        '3f2a9c0d1e4b5a67'
    """
    entries, kinds = _graph_nodes(net.graph_module)
    # the groups' divisors (and what follows from them: minimum widths, grouped convs frozen for misalignment) are
    # settings of a search, not of the network: a predictor or checkpoint made at divisor 8 fits a divisor-16 search
    groups = [[g.name, g.width, sorted(g.members)] for g in net.space.groups]
    inputs = [[str(t.dtype), list(t.shape)] for t in net.example_inputs]
    ident = {"ops": _digest(entries), "channels": _digest(groups), "input": inputs,
             "op_kinds": dict(sorted(kinds.items()))}
    return {"graph": _digest([ident["ops"], ident["channels"], inputs]), **ident}


def graph_digest(net: Any) -> str:
    """A 16-hex-digit digest of a slimmable network's traced graph, channel groups and input shapes.

    Two networks that differ in any op kind (ReLU vs Hardswish), target, connection, layer setting (stride,
    kernel) or channel group get different digests; the weights' values and the current config do not count.

    Args:
        net: a ``compress.SlimmableNetwork``.

    Returns:
        The ``"graph"`` entry of :func:`network_identity`.

    Raises:
        Nothing of its own.

    Example:
        >>> graph_digest(net) == graph_digest(compress.SlimmableNetwork(model, x))
        True
    """
    return network_identity(net)["graph"]


def identity_differences(saved: Mapping | None, now: Mapping) -> str:
    """What differs between a saved network identity and the current one, in words.

    Args:
        saved: an identity read from a file (:func:`network_identity`'s dict, possibly partial or None).
        now: the current network's identity.

    Returns:
        A phrase such as "op kinds differ (in the file: ReLU x7; now: Hardswish x7)"; "no network identity was
        recorded" for a file without one.

    Raises:
        Nothing.

    Example:
        >>> identity_differences(network_identity(relu_net), network_identity(hardswish_net))
        'op kinds differ (in the file: ReLU x7; now: Hardswish x7)'
    """
    if not isinstance(saved, Mapping) or "graph" not in saved:
        return "no network identity was recorded in it (written by an older version of compress)"
    parts = []
    if saved.get("input") != now.get("input"):
        parts.append(f"input shapes differ (in the file: {saved.get('input')}; now: {now.get('input')})")
    old, new = Counter(saved.get("op_kinds") or {}), Counter(now.get("op_kinds") or {})
    if old != new:
        only_old, only_new = old - new, new - old

        def fmt(c: Counter, sign: str = "x") -> str:
            return ", ".join(f"{k} {sign}{v}" for k, v in sorted(c.items()))
        if only_old and only_new:
            parts.append(f"op kinds differ (in the file: {fmt(only_old)}; now: {fmt(only_new)})")
        elif only_new:
            parts.append(f"the network now has more ops ({fmt(only_new, '+')})")
        else:
            parts.append(f"the network now has fewer ops ({fmt(only_old, '-')})")
    elif saved.get("ops") != now.get("ops"):
        parts.append("the traced graph differs (same op kinds, other connections, targets or layer settings)")
    if saved.get("channels") != now.get("channels"):
        parts.append("the channel groups differ")
    if not parts and saved.get("graph") != now.get("graph"):
        parts.append("the network digest differs")
    return "; ".join(parts) + f" (network digest in the file {saved.get('graph')}, now {now.get('graph')})"


__all__ = ["IDENTITY_KEYS", "MODULE_SETTINGS", "graph_digest", "identity_differences", "network_identity"]
