"""Kernel features: one row per executed kernel, from a profile record or from a channel config.

Both sources must give the same numbers for the same kernel: a profiled
onnxruntime kernel is described by its shapes, a layer of a slimmable network by
its channel counts at a config; ``conv_rows`` / ``gemm_rows`` turn either into
the regressor's feature matrix.
"""

from __future__ import annotations

import math
import re

import numpy as np

CONV_OPS = {"Conv", "FusedConv", "NchwcConv"}
GEMM_OPS = {"Gemm", "MatMul", "FusedMatMul", "FusedGemm"}

CONV_RAW = ("cin", "cout", "hin", "win", "hout", "wout", "kh", "kw", "groups", "has_sum", "activation")

# Activation fused into a conv kernel -> code. onnxruntime runs the same conv 1.4-1.8x slower with Clip (ReLU6)
# fused than with Relu fused (measured: mobilenet_v2's depthwise convs vs mnasnet's of the same shapes).
ACTIVATIONS = {"Relu": 1, "LeakyRelu": 1, "Clip": 2, "HardSigmoid": 3, "Sigmoid": 3, "HardSwish": 4}
_FUSED_OP = re.compile(r"/([A-Za-z]+)_output_\d+(?:_nchwc)?$")
GEMM_RAW = ("rows", "in_features", "out_features")


def _log2(x: np.ndarray) -> np.ndarray:
    return np.log2(np.maximum(x, 1.0))


def conv_rows(raw: np.ndarray) -> np.ndarray:
    """Regressor features of conv kernels from raw (n, 11) columns in ``CONV_RAW`` order."""
    cin, cout, hin, win, hout, wout, kh, kw, groups, has_sum, act = (raw[:, i].astype(np.float64) for i in range(11))
    stride = np.maximum(1.0, np.round(hin / np.maximum(hout, 1)))
    cin_g = cin / np.maximum(groups, 1)
    flops = hout * wout * cout * cin_g * kh * kw
    mem = cin * hin * win + cout * hout * wout + cout * cin_g * kh * kw
    depthwise = ((groups == cin) & (cin_g == 1)).astype(np.float64)
    return np.column_stack([
        _log2(cin), _log2(cout), _log2(hout * wout), kh, kw, stride, _log2(groups), depthwise,
        (cin % 8 == 0), (cout % 8 == 0), (cin % 16 == 0), (cout % 16 == 0), (cout % 32 == 0),
        _log2(flops), _log2(mem), has_sum, _log2(cin_g), act == 1, act == 2, act == 3, act == 4,
        # grouped convs: each group's width against the vector block (group width 24 runs slower per MAC than 16)
        (cin_g % 8 == 0), (cin_g % 16 == 0),
    ]).astype(np.float64)


def gemm_rows(raw: np.ndarray) -> np.ndarray:
    rows, fin, fout = (raw[:, i].astype(np.float64) for i in range(3))
    return np.column_stack([_log2(rows), _log2(fin), _log2(fout), _log2(rows * fin * fout),
                            (fin % 8 == 0), (fout % 8 == 0), (fout % 16 == 0)]).astype(np.float64)


FAMILIES = {"conv": (CONV_RAW, conv_rows), "gemm": (GEMM_RAW, gemm_rows)}


def fused_activation(kernel_name: str, default: str | None = None) -> int:
    """Code of the activation onnxruntime fused into a conv, read off the kernel's name (the fused node is named
    after its last op: ".../Clip_output_0_nchwc"); ``default`` when the name is the graph's output."""
    m = _FUSED_OP.search(kernel_name)
    op = m.group(1) if m else default
    return ACTIVATIONS.get(op or "", 0)


def raw_from_kernel(k: dict, activation: str | None = None) -> tuple[str, tuple[int, ...]] | None:
    """(family, raw tuple) of a profiled kernel, or None for kernels outside the families. ``activation``: the
    op fused into a conv whose name does not tell (a single-layer model's output)."""
    op, ins, outs = k["op"], k["inputs"], k["outputs"]
    if op in CONV_OPS and len(ins) >= 2 and len(ins[0]) == 4 and len(ins[1]) == 4 and outs and len(outs[0]) == 4:
        n, cin, hin, win = ins[0]
        cout, cin_g, kh, kw = ins[1]
        _, _, hout, wout = outs[0]
        groups = max(1, cin // max(1, cin_g))
        has_sum = int(any(len(s) == 4 for s in ins[2:]))
        act = ACTIVATIONS.get(k["activation"], 0) if "activation" in k else \
            fused_activation(k.get("name", ""), activation)
        return "conv", (cin, cout, hin, win, hout, wout, kh, kw, groups, has_sum, act)
    if op in GEMM_OPS and ins and outs and len(ins[0]) >= 2:
        rows = math.prod(outs[0][:-1])
        return "gemm", (rows, ins[0][-1], outs[0][-1])
    return None
