"""Where latency is predicted: kernel regressors + exact table hits + a fitted per-model overhead.

Model latency = sum over its compute kernels (conv, linear) of their predicted
time + a linear overhead in that sum and in the element count of the other ops
(pooling, element-wise, layout changes), fitted per model family on measured
whole-model latencies (and globally, for families never profiled). A kernel whose
exact shape was measured uses the measured median; others use the regressor of
its family (a JSON-saved tree ensemble over log features).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from compress.cost.counts import SpecCounter
from compress.cost.flops import numel_poly
from compress.errors import check_parameter
from compress.io import save_json
from compress.space.digest import network_identity

from .errors import CorruptTableError, NotFittedError, ReferenceMismatchError
from .features import FAMILIES, raw_from_kernel
from .forest import ForestModel
from .reference import anchor_scales, corrected_ms
from .roofline import RooflineModel
from .table import LatencyTable, check_fingerprint, check_schema_version, read_json_file

PREDICTOR_KIND = "compress-latency-predictor"
PREDICTOR_SCHEMA_VERSION = 3  # 3: weights (millions) joined the overhead features
OTHER_KINDS = ("elementwise", "pool", "adaptive_avg_pool", "mean", "upsample")
# ops between a conv and an add that leave the add fusable into the conv (identities in eval mode included)
_FUSABLE_BETWEEN = ("BatchNorm", "ReLU", "ReLU6", "Hardtanh", "Identity", "StochasticDepth", "Dropout")


class NetKernels:
    """The compute kernels of a slimmable network as functions of its config.

    Lists the network's convs (channels in/out, input and output H x W, kernel kH x kW, groups, fused add and
    activation, batch N) and linear layers (rows, in/out features) with their channel counts as functions of the
    group widths, plus the element count of the other ops (pooling, element-wise, unfused activations): the
    kernel decomposition of an nn-Meter-style predictor (Zhang et al. 2021, "nn-Meter").

    Args:
        net: a ``compress.SlimmableNetwork`` (its traced graph and channel groups are read, not changed).

    Raises:
        Nothing of its own: it reads what the network's trace recorded (ops it cannot model are listed in
        ``unmodelled``, not raised).
    """

    def __init__(self, net) -> None:
        self.net = net
        self.counter = SpecCounter(net.assignment.atom_group, net.assignment.atom_index)
        spec = self.counter.spec
        modules = dict(net.graph_module.named_modules())
        self.convs, self.gemms = [], []
        other_terms: dict[tuple, int] = defaultdict(int)
        self.other_ops: list[tuple[int, int]] = []  # (spec of channels, elements per channel) of other ops
        add_of = {op.node: _feeds_add(op.node, modules) for op in net.coupling.flop_ops if op.kind == "conv"}
        fused_adds = {a for a in add_of.values() if a is not None}
        others = [op.output for op in net.coupling.flop_ops if op.kind in OTHER_KINDS and op.node not in fused_adds]
        others += [net.tensor_metas[n] for n in _unfused_activations(net, modules, fused_adds)
                   if n in net.tensor_metas]
        for op in net.coupling.flop_ops:
            if op.kind == "conv":
                i, o = op.inputs[0], op.output
                kh, kw = op.params["kernel_size"] if len(op.params["kernel_size"]) == 2 else (op.params["kernel_size"][0], 1)
                self.convs.append({"in": spec(i.atoms), "out": spec(o.atoms), "hin": i.shape[2], "win": i.shape[3] if len(i.shape) > 3 else 1,
                                   "hout": o.shape[2], "wout": o.shape[3] if len(o.shape) > 3 else 1, "kh": kh, "kw": kw,
                                   "gs_out": op.params["gs_out"] if op.params["gs"] else None,
                                   "groups": op.params["groups"], "has_sum": int(add_of[op.node] is not None),
                                   "act": _fused_activation(op.node, modules),
                                   "batch": i.shape[0]})
            elif op.kind == "linear":
                i, o = op.inputs[0], op.output
                self.gemms.append({"in": spec(i.atoms), "out": spec(o.atoms),
                                   "rows": math.prod(i.shape[:-1])})
        for meta in others:  # element-wise ops, pools, unfused activations: counted by elements
            for key, c in numel_poly(meta, spec).terms.items():
                other_terms[key] += c
                if len(key) == 1:
                    self.other_ops.append((key[0], c))
        self.other_const = other_terms.pop((), 0)
        self.other_vars = np.array([k[0] for k in other_terms], dtype=np.int64)
        self.other_coef = np.array(list(other_terms.values()), dtype=np.int64)
        self.unmodelled = Counter(r.split(" at node")[0] for r in net.coupling.unknown_ops.values())

    def raw(self, widths: np.ndarray, block: int = 1) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Raw kernel features per family, shape (n_configs, n_kernels, n_raw), the element count of the
        other ops, and the element count of those whose channels are not a multiple of ``block``.

        ``block`` is the runtime's channel block (onnxruntime's NCHWc layout pads conv channels to 8 or
        16 on x86 and runs unaligned element-wise ops separately, with layout reorders around them)."""
        counts = self.counter.counts(widths)
        n = widths.shape[0]
        out = {}

        def pad(c: np.ndarray, least: int) -> np.ndarray:
            return c if block <= 1 else np.where(c >= least, -(-c // block) * block, c)

        if self.convs:
            cols = []
            for c in self.convs:
                cin, cout = counts[:, c["in"]], counts[:, c["out"]]
                has_sum = np.full(n, c["has_sum"])
                if c["gs_out"] and c["gs_out"] > 1:
                    groups = cout // c["gs_out"]
                elif c["gs_out"] == 1:  # depthwise: padded with its channels
                    cin, cout = pad(cin, block // 2), pad(cout, block // 2)
                    groups = cout
                else:
                    # output channels are always padded (squeeze-excitation's 4 -> 16 profiled here)
                    cin, cout, groups = pad(cin, block + 1), pad(cout, 1), np.full(n, c["groups"])
                cols.append(np.stack([cin, cout, np.full(n, c["hin"]), np.full(n, c["win"]), np.full(n, c["hout"]),
                                      np.full(n, c["wout"]), np.full(n, c["kh"]), np.full(n, c["kw"]), groups,
                                      has_sum, np.full(n, c["act"])], axis=1))
            out["conv"] = np.stack(cols, axis=1)
        if self.gemms:
            out["gemm"] = np.stack([np.stack([np.full(n, g["rows"]), counts[:, g["in"]], counts[:, g["out"]]], axis=1)
                                    for g in self.gemms], axis=1)
        other = self.other_const + (counts[:, self.other_vars] @ self.other_coef if len(self.other_vars) else 0)
        unaligned = np.zeros(n)
        if block > 1:
            for sp, per in self.other_ops:
                cnt = counts[:, sp]
                unaligned += per * cnt * (cnt % block != 0)
        return out, np.asarray(other, dtype=np.float64) * np.ones(n), unaligned


def _module_kind(node, modules) -> str:
    """The class name of a call_module node's module, without the Slim prefix of slimmable layers; "Identity" for
    a module that declares ``removed_at_export`` (a search-time gate: it never reaches the device)."""
    mod = modules[node.target]
    if getattr(mod, "removed_at_export", False):
        return "Identity"
    return type(mod).__name__.replace("Slim", "")


def _conv_chain_to(node, modules):
    """The conv whose output reaches ``node`` through BN / activations only, or None."""
    cur = node
    for _ in range(4):
        if not hasattr(cur, "op"):
            return None
        if cur.op == "call_module":
            kind = _module_kind(cur, modules)
            if kind.startswith("Conv"):
                return cur
            if kind.startswith(_FUSABLE_BETWEEN) and cur.args:
                cur = cur.args[0]
                continue
        return None
    return None


# module / function after a conv (through BN) -> the activation code onnxruntime fuses into it (features.ACTIVATIONS)
_ACT_MODULES = {"ReLU": 1, "LeakyReLU": 1, "ReLU6": 2, "Hardtanh": 2, "Sigmoid": 3, "Hardsigmoid": 3,
                "Hardswish": 4}  # fused after a conv too (no kernel of its own in mobilenet_v3's profiles)
_ACT_FUNCTIONS = {"relu": 1, "relu_": 1, "leaky_relu": 1, "relu6": 2, "hardtanh": 2, "sigmoid": 3, "hardsigmoid": 3,
                  "hardswish": 4}
# activations onnxruntime runs as kernels of their own (SiLU becomes QuickGelu: 22% of efficientnet_b0's time)
_UNFUSED_ACTS = {"SiLU", "GELU", "Mish", "Tanh", "silu", "gelu", "mish", "tanh"}


def _fused_activation(node, modules) -> int:
    """The activation that follows a conv (through BN) as its only user: onnxruntime fuses it into the conv."""
    cur = node
    for _ in range(3):
        users = list(cur.users)
        if len(users) != 1:
            return 0
        u = users[0]
        if u.op == "call_module":
            kind = _module_kind(u, modules)
            if kind.startswith("BatchNorm"):
                cur = u
                continue
            return _ACT_MODULES.get(kind, 0)
        if u.op in ("call_function", "call_method"):
            return _ACT_FUNCTIONS.get(getattr(u.target, "__name__", str(u.target)), 0)
        return 0
    return 0


def _feeds_add(node, modules):
    """The residual add onnxruntime fuses into this conv, or None: the add's first operand is this conv
    (through BN / activations), or its first operand is no conv and the second one is."""
    import operator

    import torch

    cur = node
    for _ in range(4):
        users = list(cur.users)
        if len(users) != 1:
            return None
        u = users[0]
        if u.op == "call_function" and u.target in (operator.add, operator.iadd, torch.add):
            first = _conv_chain_to(u.args[0], modules)
            fused = first is node or (first is None and _conv_chain_to(u.args[1], modules) is node)
            return u if fused else None
        if u.op == "call_module" and _module_kind(u, modules).startswith(_FUSABLE_BETWEEN):
            cur = u
            continue
        return None
    return None


def _activation_kind(node, modules) -> str | None:
    """The activation a node computes (module class or function name), or None."""
    if node.op == "call_module":
        kind = _module_kind(node, modules)
        return kind if kind in _ACT_MODULES or kind in _UNFUSED_ACTS else None
    if node.op in ("call_function", "call_method"):
        name = getattr(node.target, "__name__", str(node.target))
        return name if name in _ACT_FUNCTIONS or name in _UNFUSED_ACTS else None
    return None


def _unfused_activations(net, modules, fused_adds: set) -> list:
    """Activation nodes onnxruntime runs as kernels of their own: those that do not directly follow a conv
    (through BN) or a residual add fused into a conv, and the kinds it never fuses (SiLU, Hardswish, GELU)."""
    out = []
    for n in net.graph_module.graph.nodes:
        kind = _activation_kind(n, modules)
        if kind is None or not n.args or not hasattr(n.args[0], "op"):
            continue
        src = n.args[0]
        while src.op == "call_module" and _module_kind(src, modules).startswith("BatchNorm"):
            src = src.args[0]
        after_conv = src.op == "call_module" and _module_kind(src, modules).startswith("Conv")
        if kind in _UNFUSED_ACTS or not (after_conv and len(n.args[0].users) == 1 or src in fused_adds):
            out.append(n)
    return out


class LatencyPredictor:
    """Predicts onnxruntime latency (ms) of any config of a profiled (or never profiled) model.

    Follows nn-Meter (Zhang et al. 2021, "nn-Meter: Towards Accurate Latency Prediction of Deep-Learning Model
    Inference on Diverse Edge Devices"): a model's latency is the sum of per-kernel predictions (a tree ensemble
    per kernel family, fitted on kernels profiled on the device; kernel times in microseconds), plus an overhead
    fitted per model family on whole-model latencies (ms). sklearn-style: ``__init__`` stores settings, ``fit`` learns from latency tables
    and returns self, learned state ends in ``_``; ``save``/``load`` use JSON.

    Args:
        n_trees, max_depth: size of each kernel family's tree ensemble.
        seed: random seed of the ensembles.
        residual: the trees learn the log-ratio of the measured time to a parametric kernel time
            (``RooflineModel``: fixed + per-MAC + per-byte cost by kernel class), so shapes outside the tables
            extrapolate with work and traffic; False (default): the trees learn the log time itself. Measured
            here (docs/latency_benchmark.md) the residual form was no better within a model and worse across
            families (74% vs 97% within +-10%): keep it for devices whose tables cover few shapes.
        suite_weight: weight of kernel-suite kernels (single layers) against kernels profiled inside networks
            when fitting the trees. A single layer is timed cold and its small kernels carry more noise, so the
            suite fills shapes the networks lack rather than outvoting them.

    Raises:
        Nothing in the constructor (the settings are stored as given). The methods raise:
        NotFittedError: ``predict_ms``, ``predict_widths`` or ``save`` before ``fit``; ``fit`` with no table.
        FingerprintMismatchError: ``fit`` on tables of different devices; ``load`` with another device's
            fingerprint.
        ReferenceMismatchError: ``fit`` on tables timed beside different reference models.
        InvalidConfigError: ``predict_ms`` with a config the network's space refuses.
        CorruptTableError, SchemaVersionError: ``load`` of a damaged file or an older schema version.
        NewerSchemaVersionError: ``load`` of a file written by a newer version of compress (a SchemaVersionError).
        WriteError: ``save`` could not write the file.

    Example:
        >>> pred = LatencyPredictor().fit(table, nets={"resnet18": net})
        >>> pred.predict_ms(net, [net.space.uniform_config(0.5)], family="resnet18")
    """

    OPTIONAL_FIELDS = ("reference_ms", "anchors", "networks")  # fields of a saved file that older files lack

    def __init__(self, n_trees: int = 40, max_depth: int | None = 18, seed: int = 0, residual: bool = False,
                 suite_weight: float = 0.1) -> None:
        self.n_trees = n_trees
        self.suite_weight = suite_weight
        self.max_depth = max_depth
        self.seed = seed
        self.residual = residual

    # ---- fitting ------------------------------------------------------------------------
    def fit(self, tables: LatencyTable | Sequence[LatencyTable], nets: Mapping[str, Any] | None = None) -> "LatencyPredictor":
        """Fit kernel regressors on every kernel of ``tables`` and the overhead on whole-model records.

        Records whose ``meta`` has ``family`` (a key of ``nets``) and ``config`` are
        whole-model measurements of that network at that config. Records timed beside a reference
        model are first corrected to the median reference latency (``reference_ms_``), through their anchor
        (the full model timed beside them) where they have one: ``anchors_`` holds each anchor's latency in
        reference units, pooled over every batch of every table.

        Raises:
            NotFittedError: no table given.
            InvalidParameterError: something other than LatencyTables (e.g. a file name: load it first).
            FingerprintMismatchError, ReferenceMismatchError: tables of other devices or reference models mixed.
        """
        single = isinstance(tables, (LatencyTable, str, bytes, os.PathLike)) or not hasattr(tables, "__iter__")
        tables = [tables] if single else list(tables)
        if not tables:
            raise NotFittedError("fit needs at least one latency table.")
        for t in tables:
            check_parameter(isinstance(t, LatencyTable), "tables", "LatencyPredictor.fit",
                            "a LatencyTable or a list of them (read a file with LatencyTable.load(path))", t)
        fp = tables[0].fingerprint
        for t in tables[1:]:
            check_fingerprint(fp, t.fingerprint, "A table passed to fit")
        ref_names = {r["reference"] for t in tables for r in t.records if r.get("reference")}
        if len(ref_names) > 1:
            raise ReferenceMismatchError(
                f"The tables were timed beside different reference models ({sorted(ref_names)}), so their "
                "latencies are on different scales. Profile them with one reference (profile_configs(..., "
                "reference=...)).")
        refs = [r["reference_ms"] for t in tables for r in t.records if r.get("reference_ms")]
        self.reference_ms_ = float(np.median(refs)) if refs else None
        R = self.reference_ms_
        self.anchors_ = anchor_scales(r for t in tables for r in t.records)
        rows: dict[str, list] = defaultdict(list)
        ys: dict[str, list] = defaultdict(list)
        weights: dict[str, list] = defaultdict(list)
        exact: dict[tuple, list] = defaultdict(list)
        for t in tables:
            for rec in t.records:
                scale = _kernel_scale(rec, R, self.anchors_)
                single = _is_single_layer(rec)
                for k in rec["kernels"]:
                    fr = raw_from_kernel(k, rec.get("meta", {}).get("activation"))
                    if fr is None or k["us"] <= 0:
                        continue
                    rows[fr[0]].append(fr[1])
                    ys[fr[0]].append(k["us"] * scale)
                    weights[fr[0]].append(self.suite_weight if single else 1.0)
                    if not single:
                        exact[(fr[0],) + tuple(int(v) for v in fr[1])].append(k["us"] * scale)
        self.fingerprint_ = fp
        # the networks whose overheads are fitted here: a predictor is refused for another network of that family
        self.networks_ = {fam: network_identity(net) for fam, net in (nets or {}).items()}
        self.block_ = _channel_block(rows.get("conv", []))
        # exact hits come from kernels measured inside networks only: a single layer timed alone is a cold start
        self.exact_ = {key: float(np.median(v)) for key, v in exact.items()}
        self.forests_ = {}
        raw_arr = {fam: np.asarray(raw, dtype=np.float64) for fam, raw in rows.items()}
        y_arr = {fam: np.asarray(ys[fam], dtype=np.float64) for fam in rows}
        self.roofline_ = RooflineModel.fit(raw_arr, y_arr) if self.residual else None
        for fam, raw in raw_arr.items():
            target = np.log(y_arr[fam])
            if self.roofline_ is not None:
                target = target - np.log(self.roofline_.predict(fam, raw))
            self.forests_[fam] = ForestModel.fit(FAMILIES[fam][1](raw), target, self.n_trees, self.max_depth,
                                                 seed=self.seed, sample_weight=np.asarray(weights[fam]))
        self._cache: dict[tuple, float] = {}
        self._layer_caches: dict[tuple, tuple] = {}
        self.overhead_ = {}
        samples = defaultdict(list)
        for t in tables:
            for rec in t.records:
                fam, cfg = rec.get("meta", {}).get("family"), rec.get("meta", {}).get("config")
                if nets and fam in nets and cfg is not None:
                    samples[fam].append((cfg, corrected_ms(rec, R, self.anchors_)))
        all_feats, all_y = [], []
        for fam, items in samples.items():
            nk = NetKernels(nets[fam])
            widths = np.stack([nets[fam].space.widths(c) for c, _ in items])
            feats = self._overhead_features(nk, widths)
            y = np.array([m for _, m in items])
            self.overhead_[fam] = _lstsq(feats, y).tolist()
            all_feats.append(feats)
            all_y.append(y)
        # For families never profiled the element-wise ops are costed at the per-element time measured on such
        # kernels (a free coefficient, fitted on families with few of them, blew efficientnet's SiLUs up 2x);
        # the fixed cost and the kernel factor are fitted on every profiled family together.
        element_ms = _element_ms_per_million(tables)  # per million elements; global_overhead_[2]
        if all_feats:
            F, y = np.concatenate(all_feats), np.concatenate(all_y)
            a, b = _lstsq(F[:, :2], y - element_ms * F[:, 2])
            self.global_overhead_ = [float(a), float(b), element_ms, 0.0, 0.0]
        else:
            self.global_overhead_ = [0.0, 1.0, element_ms, 0.0, 0.0]
        return self

    def _overhead_features(self, nk: NetKernels, widths: np.ndarray) -> np.ndarray:
        """Per config: 1, predicted kernel ms, elements of other ops, of unaligned ones, and weights (millions).

        Weights: kernel times measured in context carry the cache state of the table's average subnet; a subnet
        with more weights streams more of them from memory every run (mobilenet_v3_small, docs/latency_benchmark.md:
        80% of unseen subnets within +-5% with this term, 73% without)."""
        raw, other, unaligned = nk.raw(widths, self.block_)
        kernel_ms = sum(self._layer_sum_us(nk, fam, r) for fam, r in raw.items()) / 1e3
        return np.column_stack([np.ones(len(widths)), kernel_ms, other / 1e6, unaligned / 1e6,
                                weight_count(raw, len(widths)) / 1e6])

    def kernel_us(self, family: str, raw: np.ndarray) -> np.ndarray:
        """Per-config sum of predicted kernel times (us) for raw features (n_cfg, n_kernels, n_raw)."""
        if family not in self.forests_:
            raise NotFittedError(f"No {family} kernels were in the tables this predictor was fitted on; profile "
                                 "a model or kernel suite that has them.")
        n, k, d = raw.shape
        flat = raw.reshape(n * k, d).astype(np.int64)
        uniq, inv = np.unique(flat, axis=0, return_inverse=True)
        vals = np.empty(len(uniq))
        missing = []
        for j, row in enumerate(map(tuple, uniq.tolist())):
            key = (family,) + row
            v = self.exact_.get(key)
            if v is None:
                v = self._cache.get(key)
            if v is None:
                missing.append(j)
            else:
                vals[j] = v
        if missing:
            rows = uniq[missing].astype(np.float64)
            pred = np.exp(self.forests_[family].predict(FAMILIES[family][1](rows)))
            if self.roofline_ is not None:
                pred = pred * self.roofline_.predict(family, rows)
            vals[missing] = pred
            for j, v in zip(missing, pred):
                self._cache[(family,) + tuple(uniq[j].tolist())] = float(v)
        return vals[inv.reshape(-1)].reshape(n, k).sum(axis=1)

    def _layer_sum_us(self, nk: NetKernels, family: str, raw: np.ndarray) -> np.ndarray:
        """Like ``kernel_us`` but cached per layer of one network: within a layer only the channel
        counts (and so the groups) vary, so a sorted int64 key per layer turns a batch of configs into a
        few ``searchsorted`` calls; only (cin, cout) pairs never seen go through the regressor."""
        caches = self.__dict__.setdefault("_layer_caches", {})
        n, k, _ = raw.shape
        total = np.zeros(n)
        var = (0, 1, 8) if family == "conv" else (0, 1, 2)
        for j in range(k):
            keys = (raw[:, j, var[0]].astype(np.int64) << 40) | (raw[:, j, var[1]].astype(np.int64) << 20) \
                | raw[:, j, var[2]].astype(np.int64)
            ck = (id(nk), family, j)
            sk, sv = caches.get(ck, (np.zeros(0, np.int64), np.zeros(0)))
            pos = np.searchsorted(sk, keys)
            hit = (pos < len(sk)) & (sk[np.minimum(pos, len(sk) - 1)] == keys) if len(sk) else np.zeros(n, bool)
            if not hit.all():
                new_keys, first = np.unique(keys[~hit], return_index=True)
                rows = raw[:, j, :][~hit][first]
                vals = self.kernel_us(family, rows[:, None, :])
                sk = np.concatenate([sk, new_keys])
                sv = np.concatenate([sv, vals])
                order = np.argsort(sk)
                sk, sv = sk[order], sv[order]
                caches[ck] = (sk, sv)
                pos = np.searchsorted(sk, keys)
            total += sv[pos]
        return total

    # ---- prediction -----------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "forests_"):
            raise NotFittedError("This LatencyPredictor instance is not fitted yet. Call 'fit' with latency tables "
                                 "before using it, or load a saved predictor.")

    def predict_widths(self, nk: NetKernels, widths: np.ndarray, family: str | None = None) -> np.ndarray:
        """Latency (ms) for an (n, groups) width array: the fast path (no validation)."""
        self._check_fitted()
        coef = np.asarray(self.overhead_.get(family, self.global_overhead_))
        return self._overhead_features(nk, np.asarray(widths, dtype=np.int64)) @ coef

    def predict_ms(self, net, configs: Sequence[Mapping[str, int]], family: str | None = None) -> np.ndarray:
        """Predicted latency (ms) of each config of ``net``; ``family`` picks its fitted overhead."""
        self._check_fitted()
        nk = self.kernels_of(net)
        if nk.unmodelled:
            warnings.warn(f"{sum(nk.unmodelled.values())} ops have no latency predictor and are not counted: "
                          f"{dict(nk.unmodelled)}", stacklevel=2)
        widths = np.stack([net.space.widths(c) for c in configs])
        return self.predict_widths(nk, widths, family)

    def kernels_of(self, net) -> NetKernels:
        cache = self.__dict__.setdefault("_nets", {})
        if id(net) not in cache:
            cache[id(net)] = NetKernels(net)
        return cache[id(net)]

    # ---- files ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted predictor as JSON atomically (:func:`compress.io.atomic_write`).

        Raises:
            NotFittedError: ``fit`` was not called.
            WriteError: the file could not be written (the message names the path and the OS's reason).
        """
        self._check_fitted()
        save_json({
            "schema_version": PREDICTOR_SCHEMA_VERSION, "kind": PREDICTOR_KIND, "fingerprint": self.fingerprint_,
            "params": {"n_trees": self.n_trees, "max_depth": self.max_depth, "seed": self.seed,
                       "residual": self.residual, "suite_weight": self.suite_weight},
            "roofline": self.roofline_.to_dict() if self.roofline_ is not None else None,
            "block": self.block_, "reference_ms": self.reference_ms_, "anchors": self.anchors_,
            "forests": {k: f.to_dict() for k, f in self.forests_.items()},
            "exact": [[list(k), v] for k, v in self.exact_.items()],
            "overhead": self.overhead_, "global_overhead": self.global_overhead_,
            "networks": getattr(self, "networks_", {})}, path, indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike, fingerprint: dict | None = None) -> "LatencyPredictor":
        """Read a saved predictor; with ``fingerprint``, refuse one fitted on another device.

        Raises:
            MissingFileError: no file at ``path`` (a CorruptTableError and a FileNotFoundError).
            CorruptTableError: not a complete predictor file (truncated, another kind, fields missing or of the
                wrong type).
            SchemaVersionError: written with an older (or no valid) schema version: fit it again.
            NewerSchemaVersionError: written by a newer version of compress (upgrade it to read the file).
            FingerprintMismatchError: ``fingerprint`` differs from the one the predictor was fitted for.
        """
        d = read_json_file(path, "predictor file", "Fit and save it again.")
        if not isinstance(d, dict) or d.get("kind") != PREDICTOR_KIND:
            raise CorruptTableError(f"{str(path)!r} is not a latency predictor file.")
        check_schema_version(path, d.get("schema_version"), PREDICTOR_SCHEMA_VERSION, "predictor", "Fit it again")
        for key, (types, what) in PREDICTOR_FIELDS.items():
            if key not in d and key in cls.OPTIONAL_FIELDS:
                continue
            if key not in d or not isinstance(d[key], types) or isinstance(d[key], bool):
                got = f"{type(d[key]).__name__} {d[key]!r:.60}" if key in d else "nothing"
                raise CorruptTableError(f"{str(path)!r}: field {key!r} must be {what}; got {got}. Fit and save "
                                        "it again.")
        if fingerprint is not None:
            check_fingerprint(d["fingerprint"], fingerprint, "This predictor")
        try:
            p = cls(**d["params"])
            p.fingerprint_ = d["fingerprint"]
            p.block_ = int(d["block"])
            p.reference_ms_ = d.get("reference_ms")
            p.anchors_ = dict(d.get("anchors", {}))
            # a split may only read features the family has: a forest is walked on rows of exactly that many
            p.forests_ = {k: ForestModel.from_dict(v, n_features=n_features(k)) for k, v in d["forests"].items()}
            p.roofline_ = RooflineModel.from_dict(d["roofline"]) if d["roofline"] is not None else None
            p.exact_ = {tuple(k): float(v) for k, v in d["exact"]}
            p.overhead_ = {k: [float(c) for c in v] for k, v in d["overhead"].items()}
            p.global_overhead_ = [float(c) for c in d["global_overhead"]]
            p.networks_ = {str(k): dict(v) for k, v in d.get("networks", {}).items()}
            if any(not isinstance(v.get("graph"), str) for v in p.networks_.values()):
                raise ValueError("every network identity must have a 'graph' digest (a string)")
            n_coef = 5  # _overhead_features' columns
            if any(len(c) != n_coef for c in [p.global_overhead_, *p.overhead_.values()]):
                raise ValueError(f"overhead coefficients must be {n_coef} numbers each")
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise CorruptTableError(f"{str(path)!r} has a missing or damaged field ({exc!r}); fit and save it "
                                    "again.") from exc
        p._cache = {}
        return p


# Fields of a saved predictor: JSON types and what they are (for the messages of a damaged file).
PREDICTOR_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "fingerprint": ((dict,), "an object (the device fingerprint)"),
    "params": ((dict,), "an object (the constructor's settings)"),
    "roofline": ((dict, type(None)), "an object or null"),
    "block": ((int,), "an int (the channel block)"),
    "reference_ms": ((int, float, type(None)), "a number or null"),
    "anchors": ((dict,), "an object (anchor -> scale)"),
    "forests": ((dict,), "an object (kernel family -> tree ensemble)"),
    "exact": ((list,), "a list of [kernel, us] pairs"),
    "overhead": ((dict,), "an object (family -> coefficients)"),
    "global_overhead": ((list,), "a list of coefficients"),
    "networks": ((dict,), "an object (family -> network identity)"),
}


def n_features(family: str) -> int:
    """Number of regressor features of a kernel family (the columns ``FAMILIES[family][1]`` makes).

    Args:
        family: a key of ``predictors.features.FAMILIES`` ("conv", "gemm").

    Returns:
        The feature count.

    Raises:
        KeyError: an unknown family (a damaged file: ``load`` reports it as CorruptTableError).
    """
    raw_names, rows = FAMILIES[family]
    return int(rows(np.ones((1, len(raw_names)))).shape[1])



# onnxruntime kernels that stream over their tensor once (their time is about proportional to its elements)
ELEMENTWISE_KERNELS = ("Add", "Mul", "Sub", "Div", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "QuickGelu",
                       "Gelu", "Tanh", "Sum")


def weight_count(raw: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """Weights of each of ``n`` configs' conv and gemm kernels (channels as the runtime pads them), from
    ``NetKernels.raw``."""
    total = np.zeros(n)
    if "conv" in raw:
        r = raw["conv"].astype(np.float64)  # CONV_RAW: cin, cout, ..., kh, kw, groups
        total += (r[..., 1] * r[..., 0] / np.maximum(r[..., 8], 1) * r[..., 6] * r[..., 7]).sum(axis=1)
    if "gemm" in raw:
        r = raw["gemm"].astype(np.float64)  # GEMM_RAW: rows, in_features, out_features
        total += (r[..., 1] * r[..., 2]).sum(axis=1)
    return total


def _element_ms_per_million(tables) -> float:
    """Median time of element-wise kernels per million output elements (ms), over every profiled record."""
    rates = [k["us"] / 1e3 / (math.prod(k["outputs"][0]) / 1e6) for t in tables for r in t.records
             for k in r["kernels"] if k["op"] in ELEMENTWISE_KERNELS and k.get("outputs") and k["us"] > 0
             and math.prod(k["outputs"][0]) >= 1000]
    return float(np.median(rates)) if rates else 0.0


def _is_single_layer(rec: dict) -> bool:
    """A kernel-suite record: one layer timed alone (``predictors.suite``)."""
    return rec.get("meta", {}).get("kind") == "suite"


def _kernel_scale(rec: dict, reference_ms: float | None, anchors: dict) -> float:
    """Factor that puts a record's profiled kernel times on the common scale.

    Kernel times come from a profiled session and drift with the machine's load between sessions; the
    whole-model latency (>= 50 unprofiled runs, drift-corrected) is the steadier number, so a network's kernel
    times are rescaled to add up to it (they keep their shares). Not so for a single layer (a kernel-suite
    record): timed in rounds after other models its whole run is a cold start (weights and input out of cache,
    plus the run's fixed cost), 16-45% above its profiled kernels where a network's kernels add up to within a
    few % of it, so its kernel times only get the drift correction."""
    if _is_single_layer(rec):
        return corrected_ms(rec, reference_ms, anchors) / rec["median_ms"] if reference_ms else 1.0
    kernel_sum_us = sum(k["us"] for k in rec["kernels"])
    return corrected_ms(rec, reference_ms, anchors) * 1e3 / kernel_sum_us if kernel_sum_us > 0 else 1.0


def _lstsq(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with relative (per-sample 1/y) weights: we care about percentage error."""
    w = 1.0 / np.maximum(y, 1e-6)
    coef, *_ = np.linalg.lstsq(X * w[:, None], y * w, rcond=None)
    return coef


def _channel_block(conv_raw: list) -> int:
    """The channel block the runtime padded convs to (16, 8 or 1), read off the profiled dense conv shapes
    (grouped convs whose groups do not align with the block run unblocked, unpadded)."""
    couts = [r[1] for r in conv_raw if r[1] >= 8 and r[8] == 1]
    for block in (16, 8):
        if couts and all(c % block == 0 for c in couts):
            return block
    return 1
