"""A kernel suite: single-layer models over channels, resolutions, kernels and strides.

Profiling it gives a table that serves models never profiled in context.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.subnet.export import export_onnx
from devices import profile_device as pd
from devices.board import write_bundle

from .reference import export_reference, reference_input
from .table import LatencyTable

_CHANNELS = (8, 16, 24, 32, 40, 48, 64, 72, 96, 120, 144, 160, 192, 240, 256, 320, 384, 480, 512, 640, 960)


# (layer kind, activation after it), cycled through: onnxruntime fuses the activation into the conv, and the
# fused kernel's speed depends on which one (features.ACTIVATIONS); grouped convs as in RegNet/ResNeXt.
SUITE_KINDS = (("conv", "Relu"), ("depthwise", "Clip"), ("pointwise", "Relu"), ("pointwise", None), ("linear", None),
               ("depthwise", "Relu"), ("grouped", "Relu"), ("conv", None), ("pointwise", "Clip"),
               ("depthwise", None), ("pointwise", "Sigmoid"), ("grouped", None))
_ACT_MODULES = {"Relu": nn.ReLU, "Clip": nn.ReLU6, "Sigmoid": nn.Sigmoid}
MAX_MACS = 300e6  # keeps every layer under ~30 ms here, so the suite profiles in minutes


def _layer(rng, kind: str) -> tuple[nn.Module, tuple[int, ...], float]:
    res = int(rng.choice([7, 14, 28, 56, 112]))
    cin, cout = int(rng.choice(_CHANNELS)), int(rng.choice(_CHANNELS))
    stride = int(rng.choice([1, 1, 2]))
    k = int(rng.choice([3, 3, 5, 7])) if kind == "conv" else int(rng.choice([3, 5])) if kind == "depthwise" else 3
    if kind == "linear":
        return nn.Linear(cin, cout), (1, cin), cin * cout
    if kind == "depthwise":
        cout, groups = cin, cin
    elif kind == "grouped":
        width = int(rng.choice([8, 16, 24, 48]))
        cin = cout = width * int(rng.integers(2, 28))
        groups = cin // width
    else:
        groups = 1
    if kind == "pointwise":
        k, stride = 1, 1
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups)
    macs = (res // stride) ** 2 * cout * (cin // groups) * k * k
    return conv, (1, cin, res, res), macs


def suite_layers(n: int = 180, seed: int = 0) -> list[tuple[str, nn.Module, tuple[int, ...], str | None]]:
    """(name, module, input shape, fused activation) for conv kxk, depthwise, pointwise, grouped and linear
    layers, each with the activations networks put after it."""
    rng = np.random.default_rng(seed)
    layers = []
    with torch.random.fork_rng():  # the same weights every time, so a rerun resumes the same bundle
        torch.manual_seed(seed)
        for i in range(n):
            layers.append(_suite_entry(i, rng))
    return layers


def _suite_entry(i: int, rng) -> tuple[str, nn.Module, tuple[int, ...], str | None]:
    kind, act = SUITE_KINDS[i % len(SUITE_KINDS)]
    while True:
        m, shape, macs = _layer(rng, kind)
        if macs <= MAX_MACS:
            break
    if act is not None:
        m = nn.Sequential(m, _ACT_MODULES[act]())
    return f"suite/{i:04d}_{kind}_{act or 'none'}", m.eval(), shape, act


def profile_suite(out: str | os.PathLike, n: int = 180, threads: int = 1, min_runs: int = 30,
                  quiet: bool = True, reference: str = "resnet18-112") -> LatencyTable:
    """Profile the suite into ``out`` (resumable through profile_device's table)."""
    with tempfile.TemporaryDirectory() as tmp:
        paths, shapes_by = {}, {}
        acts = {}
        for name, m, shape, act in suite_layers(n):
            acts[name] = act
            p = Path(tmp) / (name.replace("/", "_") + ".onnx")
            export_onnx(m, torch.randn(*shape), p)
            paths[name], shapes_by[name] = str(p), list(shape)
        meta = {k: {"kind": "suite", "activation": acts[k]} for k in paths}
        bundle = write_bundle(paths, {}, Path(tmp) / "suite.zip", meta=meta,
                              model_inputs={k: {"input": v} for k, v in shapes_by.items()},
                              reference=export_reference(Path(tmp) / "reference.onnx", reference),
                              reference_inputs={"input": reference_input(reference)}, reference_name=reference)
        pd.run(str(bundle), str(out), threads, "all", quiet=quiet, min_runs=min_runs)
    return LatencyTable.load(out)
