"""Channel-space speed: trace time, in-place config switch, FLOPs queries per second, narrow forward cost.

Run: python benchmarks/bench_channel_space.py [--out docs/benchmarks.md]
Everything runs on one thread; times are medians, and forward costs are ratios
measured in the same run (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

import compress
from compress.io import save_json, save_text


def _median_s(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_model(name: str, resolution: int) -> dict:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name).eval()
    x = torch.randn(1, 3, resolution, resolution)
    trace_s = _median_s(lambda: compress.SlimmableNetwork(model, x), 3)
    net = compress.SlimmableNetwork(model, x)
    t = time.perf_counter()
    fm = net.flops_model()
    flops_model_s = time.perf_counter() - t
    configs = [net.space.random_config(s) for s in range(200)]
    it = iter(configs * 10)
    switch_s = _median_s(lambda: net.set_config(next(it)), 200)
    # FLOPs queries
    big = [net.space.random_config(s) for s in range(2000)]
    widths = fm.widths_matrix(big)
    widths = np.concatenate([widths] * 5)  # 10,000 configs
    fast_s = _median_s(lambda: fm.flops_widths(widths), 5)
    dict_s = _median_s(lambda: fm.flops_batch(big), 3)
    single_s = _median_s(lambda: [net.flops(c) for c in big[:500]], 3)
    # forward cost: in-place narrow vs extracted narrow vs full, same run
    half = net.space.uniform_config(0.5)
    sub = compress.extract_subnet(net, half)
    xb = torch.randn(8, 3, resolution, resolution)
    with torch.no_grad():
        net.set_config(None)
        full_fwd = _median_s(lambda: net(xb), 7)
        net.set_config(half)
        dyn_fwd = _median_s(lambda: net(xb), 7)
        sub_fwd = _median_s(lambda: sub(xb), 7)
    net.set_config(None)
    return {
        "model": name, "resolution": resolution, "groups": len(net.space), "frozen": len(net.space.frozen),
        "trace_s": round(trace_s, 3), "flops_model_build_s": round(flops_model_s, 3),
        "config_switch_ms": round(switch_s * 1e3, 3),
        "flops_qps_batched_widths": int(len(widths) / fast_s),
        "flops_qps_batched_dicts": int(len(big) / dict_s),
        "flops_qps_single": int(500 / single_s),
        "forward_half_inplace_over_full": round(dyn_fwd / full_fwd, 3),
        "forward_half_extracted_over_full": round(sub_fwd / full_fwd, 3),
        "flops_half_over_full": round(net.flops(half) / net.flops(None), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs/benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [bench_model(n, 224) for n in ("resnet50", "mobilenet_v2")]
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    lines = [
        "# Channel-space benchmark",
        "",
        "Command: `python benchmarks/bench_channel_space.py` (one thread, input 1x3x224x224, random init).",
        f"Machine: {cpu}, torch {torch.__version__}. Times are medians.",
        "",
        "| metric | " + " | ".join(r["model"] for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    labels = {
        "groups": "slimmable groups", "frozen": "frozen groups",
        "trace_s": "build SlimmableNetwork (trace + couple + rewrite), s",
        "flops_model_build_s": "build analytic FLOPs model (one fvcore run), s",
        "config_switch_ms": "in-place config switch (set_config), ms",
        "flops_qps_batched_widths": "FLOPs queries/s, batch of 10,000 width vectors (target >= 10,000)",
        "flops_qps_batched_dicts": "FLOPs queries/s, batch of validated config dicts",
        "flops_qps_single": "FLOPs queries/s, one config dict per call",
        "forward_half_inplace_over_full": "forward time at width 0.5 in place / full (batch 8)",
        "forward_half_extracted_over_full": "forward time of extracted width-0.5 subnet / full",
        "flops_half_over_full": "FLOPs at width 0.5 / full",
    }
    for key, label in labels.items():
        lines.append(f"| {label} | " + " | ".join(str(r[key]) for r in rows) + " |")
    text = "\n".join(lines) + "\n"
    save_text(text, args.out)
    save_json(rows, Path(args.out).with_suffix(".json"))
    print(text)


if __name__ == "__main__":
    main()
