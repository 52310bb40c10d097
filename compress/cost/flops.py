"""FLOPs: fvcore's count, and a fast analytic count per channel config.

Convention (fvcore's): one fused multiply-add is one FLOP; convolution and
linear count multiplies only (no bias); BatchNorm in eval counts 2 per element
(1 without affine), LayerNorm / GroupNorm 5 per element (4 without affine).
fvcore skips element-wise and pooling ops; we add handlers for the ones that
matter in CNNs:

- add / sub / mul / div (tensor or scalar operand): 1 per output element;
- max_pool2d / avg_pool2d: one per element read, i.e. output elements x kernel area;
- adaptive_avg_pool2d (fvcore's own), adaptive_max_pool2d, mean: 1 per input element.

Activations (ReLU, SiLU, Hardswish, GELU, sigmoid, ...) count 0, as in fvcore.
Ops fvcore does not know are listed in ``FlopReport.unsupported``, never hidden.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from compress.cost.counts import SpecCounter
from compress.errors import FlopsMismatchError
from compress.space.atoms import FlopOp, TMeta
from compress.space.trace import as_input_tuple, run_graph, run_on_inputs


# ---- fvcore with our extra handlers ------------------------------------------------------
def _shape(v: Any) -> list[int] | None:
    t = v.type()
    if hasattr(t, "sizes"):
        s = t.sizes()
        return list(s) if s is not None else None
    return None


def _numel(v: Any) -> int:
    s = _shape(v)
    return math.prod(s) if s is not None else 1


def _out_elements(inputs: list, outputs: list) -> int:
    return _numel(outputs[0])


def _in_elements(inputs: list, outputs: list) -> int:
    return _numel(inputs[0])


def _ivalue(v: Any) -> Any:
    """A constant jit value, looking through prim::ListConstruct."""
    val = v.toIValue()
    if val is None and v.node().kind() == "prim::ListConstruct":
        val = [i.toIValue() for i in v.node().inputs()]
    return val


def _pool(inputs: list, outputs: list) -> int:
    kernel = _ivalue(inputs[1])
    kernel = [kernel] * 2 if isinstance(kernel, int) else list(kernel)
    if len(kernel) == 1:
        kernel = kernel * 2
    return _numel(outputs[0]) * math.prod(kernel)


EXTRA_FLOP_HANDLERS = {
    **{f"aten::{op}": _out_elements for op in ("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_")},
    "aten::max_pool2d": _pool,
    "aten::avg_pool2d": _pool,
    "aten::adaptive_max_pool2d": _in_elements,
    "aten::mean": _in_elements,
}


@dataclass
class FlopReport:
    """Result of :func:`count_flops`. FLOPs follow fvcore's convention: one fused multiply-add is one FLOP.

    Attributes:
        total: FLOPs of one forward pass on the example inputs (batch included: N images cost N times one).
        by_operator: FLOPs per operator kind (fvcore's names, e.g. "conv", "linear", "aten::add").
        unsupported: operators fvcore (and our handlers) could not count -> how many times each occurred; their
            FLOPs are not in ``total``.
        by_module: FLOPs per module path ("" is the whole model), each including its submodules.
    """

    total: int
    by_operator: dict[str, int]
    unsupported: dict[str, int]
    by_module: dict[str, int] = field(default_factory=dict)  # module path -> FLOPs (its submodules included)

    def __int__(self) -> int:
        return self.total


def count_flops(model: nn.Module, example_inputs: Any) -> FlopReport:
    """Count FLOPs of ``model`` on ``example_inputs`` in eval mode with fvcore (+ our handlers).

    FLOPs follow fvcore's convention: one fused multiply-add is one FLOP (a conv counts N x C_out x H_out x W_out x
    C_in / groups x kH x kW); element-wise adds/muls/divs and pooling count per element (see the module
    docstring); activations count 0. The model's train/eval mode is restored afterwards (in ``finally``).

    Args:
        model: the network; run once under ``torch.no_grad`` in eval mode.
        example_inputs: a tensor (e.g. N x C x H x W) or a tuple of tensors, the model's positional inputs.

    Returns:
        A :class:`FlopReport`; ``int(report)`` is the total. Ops nothing could count are listed in
        ``report.unsupported``, never silently counted as 0.

    Raises:
        InputShapeError: ``example_inputs`` is not a tensor or a sequence of tensors.

    Example:
        >>> count_flops(torchvision.models.resnet18(), torch.randn(1, 3, 224, 224)).total
        1819066368
    """
    inputs = as_input_tuple(example_inputs)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        run_on_inputs(model, inputs, "count_flops")  # a named error before fvcore's trace fails deep inside
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # jit tracer warnings about Python values in the graph
            analysis = FlopCountAnalysis(model, inputs)
            for name, handler in EXTRA_FLOP_HANDLERS.items():
                analysis.set_op_handle(name, handler)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            total = int(analysis.total())
            by_op = {k: int(v) for k, v in analysis.by_operator().items()}
            unsupported = dict(Counter(analysis.unsupported_ops()))
            by_module = {k: int(v) for k, v in analysis.by_module().items()}
    finally:
        for m, mode in modes.items():
            m.training = mode
    return FlopReport(total, by_op, unsupported, by_module)


# ---- analytic count per config -----------------------------------------------------------
class Poly:
    """A polynomial of degree <= 2 over channel-count variables, integer coefficients."""

    def __init__(self, terms: Mapping[tuple[int, ...], int] | None = None) -> None:
        self.terms: dict[tuple[int, ...], int] = dict(terms or {})

    @staticmethod
    def const(c: int) -> "Poly":
        return Poly({(): int(c)})

    @staticmethod
    def var(v: int, coef: int = 1) -> "Poly":
        return Poly({(v,): int(coef)})

    def __add__(self, other: "Poly") -> "Poly":
        out = dict(self.terms)
        for k, c in other.terms.items():
            out[k] = out.get(k, 0) + c
        return Poly(out)

    def __mul__(self, other: "Poly | int") -> "Poly":
        if isinstance(other, int):
            return Poly({k: c * other for k, c in self.terms.items()})
        out: dict[tuple[int, ...], int] = {}
        for k1, c1 in self.terms.items():
            for k2, c2 in other.terms.items():
                k = tuple(sorted(k1 + k2))
                if len(k) > 2:
                    raise AssertionError("FLOPs polynomial of degree > 2")
                out[k] = out.get(k, 0) + c1 * c2
        return Poly(out)


def numel_poly(meta: TMeta, spec_of) -> Poly:
    """Element count of a tensor as a polynomial in the live count of its channel dim."""
    if meta.cdim is None:
        return Poly.const(math.prod(meta.shape))
    rest = math.prod(meta.shape) // meta.shape[meta.cdim] if meta.shape[meta.cdim] else 0
    return Poly.var(spec_of(meta.atoms), rest)


def _count(spec_of, meta: TMeta) -> Poly:
    return Poly.var(spec_of(meta.atoms))


# kind -> FLOPs polynomial of one op (see the module docstring for the convention)
FLOP_FORMULAS = {
    "conv": lambda op, s: numel_poly(op.output, s) * op.params["kernel"]
    * (Poly.const(op.params["gs"]) if op.params["gs"] else _count(s, op.inputs[0])),
    # fvcore: batch x prod(weight shape) x input spatial size = input elements x kernel x outputs per group
    "conv_transpose": lambda op, s: numel_poly(op.inputs[0], s) * op.params["kernel"]
    * (Poly.const(op.params["gs_out"]) if op.params["gs_out"] else _count(s, op.output)),
    "linear": lambda op, s: numel_poly(op.inputs[0], s) * _count(s, op.output),
    # fvcore: 2 / 1 per element with running statistics, 5 / 4 (a norm layer's) with batch statistics
    "batch_norm": lambda op, s: numel_poly(op.inputs[0], s) * ((5 if op.params["affine"] else 4)
                                                                 if op.params.get("batch_stats")
                                                                 else (2 if op.params["affine"] else 1)),
    "layer_norm": lambda op, s: numel_poly(op.inputs[0], s) * (5 if op.params["affine"] else 4),
    "group_norm": lambda op, s: numel_poly(op.inputs[0], s) * (5 if op.params["affine"] else 4),
    # timm's weight-standardised convs: batch_norm (batch statistics) over the (out, in/groups * k) weight, 4 per
    # element, 5 with the gain as its affine weight, plus the gain * scale multiply (out elements)
    "weight_std": lambda op, s: _count(s, op.output) * op.params["kernel"]
    * (Poly.const(op.params["gs"]) if op.params["gs"] else _count(s, op.inputs[0])) * (5 if op.params["gain"] else 4)
    + (_count(s, op.output) if op.params["gain"] else Poly()),
    "elementwise": lambda op, s: numel_poly(op.output, s),
    "prelu": lambda op, s: Poly(),  # aten::prelu: fvcore does not count it (listed in FlopReport.unsupported)
    "adaptive_avg_pool": lambda op, s: numel_poly(op.inputs[0], s),
    "mean": lambda op, s: numel_poly(op.inputs[0], s),
    "pool": lambda op, s: numel_poly(op.output, s) * op.params["area"],
    "upsample": lambda op, s: numel_poly(op.output if op.params["on"] == "out" else op.inputs[0], s)
    * op.params["scale"],
}


class FlopsModel:
    """FLOPs of any config of a slimmable network, in microseconds per config.

    Every op whose cost depends on channel widths has a formula in
    ``FLOP_FORMULAS``; channel counts are sums of clipped group widths
    (``counts.SpecCounter``), so a batch of configs is a handful of numpy
    operations. The part that no config changes is taken once from fvcore on the
    full-width subnet, so the total equals :func:`count_flops` of the extracted
    subnet at every config.

    Raises:
        UnsupportedOpError: the network does not run at its smallest config (names the node that fails).
        FlopsMismatchError: the analytic count differs from fvcore's at the smallest config (names the op).
    """

    def __init__(self, net) -> None:
        self.net = net
        self.space = net.space
        self.counter = SpecCounter(net.assignment.atom_group, net.assignment.atom_index)
        total = Poly()
        self.op_polys = [FLOP_FORMULAS[op.kind](op, self.counter.spec) for op in net.coupling.flop_ops]
        for poly in self.op_polys:
            total = total + poly
        self._const0 = total.terms.get((), 0)
        lin = [(k[0], c) for k, c in total.terms.items() if len(k) == 1 and c]
        bil = [(k[0], k[1], c) for k, c in total.terms.items() if len(k) == 2 and c]
        self._lin_var = np.array([v for v, _ in lin], dtype=np.int64)
        self._lin_coef = np.array([c for _, c in lin], dtype=np.int64)
        self._bil_u = np.array([u for u, _, _ in bil], dtype=np.int64)
        self._bil_v = np.array([v for _, v, _ in bil], dtype=np.int64)
        self._bil_coef = np.array([c for _, _, c in bil], dtype=np.int64)
        full = self._variable(self.space.full_widths[None, :])[0]
        saved = dict(net.config)  # the full-width network counts what its extracted copy does (tested)
        try:
            net.set_config(None)
            reference = count_flops(net, net.example_inputs).total
        finally:
            net.set_config(saved)
        self.constant = int(reference - full)
        self._check_smallest(net)

    def _check_smallest(self, net) -> None:
        """The analytic count must equal fvcore's at the smallest config too (the max config fixed the
        constant); a formula that drifts is a named error naming the op, never a silent difference."""
        smallest = self.space.min_config()
        widths = self.space.widths(smallest)[None, :]
        analytic = int(self.flops_widths(widths)[0])
        saved = dict(net.config)
        try:
            net.set_config(smallest)
            run_graph(net.graph_module, net.example_inputs, "At the smallest config")  # names a failing op
            report = count_flops(net, net.example_inputs)
        finally:
            net.set_config(saved)
        if analytic == report.total:
            return
        counts = self.counter.counts(widths)[0]
        culprits = []
        for op, poly in zip(net.coupling.flop_ops, self.op_polys):
            mine = sum(c * math.prod(int(counts[v]) for v in key) for key, c in poly.terms.items())
            if op.node.op == "call_module":
                theirs = report.by_module.get(f"graph_module.{op.node.target}")
                if theirs is not None and theirs != mine:
                    culprits.append(f"{op.kind} {op.node.target!r} ({mine:,} vs fvcore's {theirs:,})")
        if not culprits:
            culprits = [f"one of the functional ops {sorted({f'{op.kind} {op.node.name}' for op in net.coupling.flop_ops if op.node.op != 'call_module'})}"]
        raise FlopsMismatchError(
            f"The analytic FLOPs at the smallest config ({analytic:,}) differ from fvcore's count of the same network "
            f"({report.total:,}): the formula of {', '.join(culprits)} does not count what fvcore counts. Please "
            f"report it with the model; until then name that layer in `ignore=` (it stays at full width).")

    def _variable(self, widths: np.ndarray) -> np.ndarray:
        counts = self.counter.counts(widths)
        out = np.full(widths.shape[0], self._const0, dtype=np.int64)
        if len(self._lin_var):
            out += counts[:, self._lin_var] @ self._lin_coef
        if len(self._bil_u):
            out += (counts[:, self._bil_u] * counts[:, self._bil_v]) @ self._bil_coef
        return out

    def widths_matrix(self, configs: Sequence[Mapping[str, int]]) -> np.ndarray:
        """Validate configs and stack their group widths into an (n, groups) int array."""
        return np.stack([self.space.widths(c) for c in configs]) if configs else \
            np.zeros((0, len(self.space.groups)), np.int64)

    def flops_widths(self, widths: np.ndarray) -> np.ndarray:
        """FLOPs for an (n, groups) array of group widths (no validation: the fast path)."""
        return self._variable(np.asarray(widths, dtype=np.int64)) + self.constant

    def flops_batch(self, configs: Sequence[Mapping[str, int]]) -> np.ndarray:
        """FLOPs of each config (validated)."""
        return self.flops_widths(self.widths_matrix(configs))


__all__ = ["count_flops", "FlopReport", "FlopsModel", "EXTRA_FLOP_HANDLERS", "FlopOp"]
