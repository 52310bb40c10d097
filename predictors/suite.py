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

from compress.export import export_onnx
from devices import profile_device as pd
from devices.board import write_bundle

from .reference import export_reference, reference_input
from .table import LatencyTable

_CHANNELS = (8, 16, 24, 32, 40, 48, 64, 72, 96, 120, 144, 160, 192, 240, 256, 320, 384, 480, 512, 640, 960)


# layer kind -> the activation onnxruntime fuses into it (the kernel is the graph's output, so its name does not say)
SUITE_ACTIVATIONS = {"conv": "Relu", "depthwise": "Clip", "pointwise": "Relu", "linear": None}


def suite_layers(n: int = 120, seed: int = 0) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """(name, module, input shape) for conv kxk, depthwise, pointwise and linear layers."""
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(n):
        kind = ["conv", "depthwise", "pointwise", "pointwise", "linear"][i % 5]
        res = int(rng.choice([7, 14, 28, 56, 112]))
        cin, cout = int(rng.choice(_CHANNELS)), int(rng.choice(_CHANNELS))
        stride = int(rng.choice([1, 1, 2]))
        if kind == "conv":
            k = int(rng.choice([3, 3, 5, 7]))
            m = nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2), nn.ReLU())
        elif kind == "depthwise":
            k = int(rng.choice([3, 5]))
            m = nn.Sequential(nn.Conv2d(cin, cin, k, stride, k // 2, groups=cin), nn.ReLU6())
        elif kind == "pointwise":
            m = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.ReLU())
        else:
            m, res = nn.Linear(cin, cout), 0
        shape = (1, cin) if kind == "linear" else (1, cin, res, res)
        layers.append((f"suite/{i:04d}_{kind}", m.eval(), shape))
    return layers


def profile_suite(out: str | os.PathLike, n: int = 120, threads: int = 1, min_runs: int = 30,
                  quiet: bool = True, reference: str = "resnet18-112") -> LatencyTable:
    """Profile the suite into ``out`` (resumable through profile_device's table)."""
    with tempfile.TemporaryDirectory() as tmp:
        paths, shapes_by = {}, {}
        for name, m, shape in suite_layers(n):
            p = Path(tmp) / (name.replace("/", "_") + ".onnx")
            export_onnx(m, torch.randn(*shape), p)
            paths[name], shapes_by[name] = str(p), list(shape)
        meta = {k: {"kind": "suite", "activation": SUITE_ACTIVATIONS[k.rsplit("_", 1)[1]]} for k in paths}
        bundle = write_bundle(paths, {}, Path(tmp) / "suite.zip", meta=meta,
                              model_inputs={k: {"input": v} for k, v in shapes_by.items()},
                              reference=export_reference(Path(tmp) / "reference.onnx", reference),
                              reference_inputs={"input": reference_input(reference)}, reference_name=reference)
        pd.run(str(bundle), str(out), threads, "all", quiet=quiet, min_runs=min_runs)
    return LatencyTable.load(out)
