"""How repeatable is a latency measurement on this machine? Sequential vs interleaved timing.

    python benchmarks/bench_measurement_noise.py [--models 12]

Exports random subnets of resnet18 (224x224), then measures all of them twice
with each protocol and reports how often the two medians agree within 2/5/10%.
A predictor cannot be judged more finely than the measurement repeats.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision

import compress
from devices import profile_device as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=12)
    ap.add_argument("--out", default="docs/measurement_noise.md")
    args = ap.parse_args()
    import onnxruntime as ort

    torch.manual_seed(0)
    net = compress.SlimmableNetwork(torchvision.models.resnet18().eval(), torch.randn(1, 3, 224, 224))
    x = {"input": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = []
        for i in range(args.models):
            p = Path(tmp) / f"m{i}.onnx"
            compress.export_onnx(compress.extract_subnet(net, net.space.random_config(i)), net.example_inputs, p)
            sessions.append(ort.InferenceSession(str(p), pd.session_options(1, "all"),
                                                 providers=["CPUExecutionProvider"]))
        runs = [lambda s=s: s.run(None, x) for s in sessions]
        seq = [[pd.measure(r)["median_ms"] for r in runs] for _ in range(2)]
        inter = [[m["median_ms"] for m in pd.measure_interleaved(runs)] for _ in range(2)]
    rows = {}
    for name, (a, b) in {"one model after another (measure)": seq,
                         "interleaved bursts (measure_interleaved)": inter}.items():
        rel = (np.array(b) - np.array(a)) / np.array(a)
        rows[name] = {f"within_{t}pct": float(np.mean(np.abs(rel) <= t / 100)) for t in (2, 5, 10)}
        rows[name]["rms"] = float(np.sqrt(np.mean(rel ** 2)))
    lines = ["# Measurement repeatability", "",
             f"Command: `python benchmarks/bench_measurement_noise.py --models {args.models}`. Each of "
             f"{args.models} random resnet18 subnets (224x224, onnxruntime CPU, 1 thread) is measured twice "
             "(median of >= 50 runs); the table compares the two medians.", "",
             "| protocol | within 2% | within 5% | within 10% | RMS difference |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {100 * r['within_2pct']:.0f}% | {100 * r['within_5pct']:.0f}% | "
                     f"{100 * r['within_10pct']:.0f}% | {100 * r['rms']:.1f}% |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
