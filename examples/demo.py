"""The main job on a built-in default: trace a torchvision CNN into its channel space,
show its groups and FLOPs at a few widths, extract a slimmed subnet and export it
to a verified ONNX file, and plot FLOPs against parameters for many configs.

    python examples/demo.py [--model mobilenet_v2] [--resolution 224] [--out out/demo]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

import compress
from compress.io import save_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenet_v2", help="any torchvision classification model name")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--ratio", type=float, default=0.5, help="uniform width of the exported subnet")
    ap.add_argument("--out", default="out/demo")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    model = torchvision.models.get_model(args.model).eval()
    x = torch.randn(1, 3, args.resolution, args.resolution)
    t = time.perf_counter()
    net = compress.SlimmableNetwork(model, x)
    print(f"Traced {args.model} in {time.perf_counter() - t:.2f} s")
    print(net.space.summary(max_rows=12))

    full = compress.count_flops(model, x).total
    print(f"\nFLOPs (fvcore + element-wise/pooling handlers, 1 multiply-add = 1 FLOP): {full / 1e6:.1f} M")
    print(f"{'width':>8} {'MFLOPs':>10} {'of full':>8}")
    for ratio in (1.0, 0.75, 0.5, 0.35):
        f = net.flops(net.space.uniform_config(ratio))
        print(f"{ratio:>8.2f} {f / 1e6:>10.1f} {f / full:>8.1%}")

    compress.reorder_channels_(net, "bn")  # keep the most important channels first
    cfg = net.space.uniform_config(args.ratio)
    sub = compress.extract_subnet(net, cfg)
    sub_flops = compress.count_flops(sub, x).total
    assert sub_flops == net.flops(cfg), "analytic FLOPs disagree with fvcore"
    params = sum(p.numel() for p in sub.parameters())
    print(f"\nSubnet at width {args.ratio}: {params / 1e6:.2f} M parameters, {sub_flops / 1e6:.1f} MFLOPs "
          f"(fvcore on the extracted subnet = analytic count)")
    save_json(cfg, out / "subnet_config.json")
    report = compress.export_onnx(sub, x, out / "subnet.onnx")
    print(f"ONNX written to {report.path} ({report.exporter} exporter, opset {report.opset}, {report.num_nodes} nodes); "
          f"onnxruntime matches torch at batch sizes {report.batch_sizes_checked}, "
          f"max |diff| = {report.max_abs_diff:.2e}")

    # measured on this CPU with onnxruntime, 1 thread; both models timed in interleaved bursts so that the
    # machine's slow phases hit them alike (compare the ratio, not absolute times across runs)
    full_report = compress.export_onnx(model, x, out / "full.onnx")
    shapes = {"input": list(x.shape)}
    import onnxruntime as ort
    from devices import profile_device as pd

    sessions = [ort.InferenceSession(str(p), pd.session_options(1, "all"), providers=["CPUExecutionProvider"])
                for p in (full_report.path, report.path)]
    feeds = [pd.random_feeds(s, shapes) for s in sessions]
    full_ms, sub_ms = (m["median_ms"] for m in pd.measure_interleaved(
        [lambda s=s, f=f: s.run(None, f) for s, f in zip(sessions, feeds)]))
    print(f"Measured latency (onnxruntime CPU, 1 thread, median of >= 50 runs): full {full_ms:.2f} ms, "
          f"subnet {sub_ms:.2f} ms ({sub_ms / full_ms:.0%} of full; FLOPs {sub_flops / full:.0%} of full)")

    fm = net.flops_model()
    configs = [net.space.random_config(s) for s in range(400)]
    t = time.perf_counter()
    flops = fm.flops_batch(configs)
    print(f"\nFLOPs of {len(configs)} random configs in {1e3 * (time.perf_counter() - t):.1f} ms")
    _plot(net, configs, flops, full, out / "flops_vs_width.png")
    print(f"Plot written to {out / 'flops_vs_width.png'}")


def _plot(net: compress.SlimmableNetwork, configs: list, flops: np.ndarray, full: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean_ratio = [np.mean([c[g.name] / g.width for g in net.space.free]) for c in configs]
    ratios = np.linspace(0.1, 1.0, 19)
    uniform = [net.flops(net.space.uniform_config(float(r))) for r in ratios]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(mean_ratio, np.asarray(flops) / full, s=8, alpha=0.5, label="random configs")
    ax.plot(ratios, np.asarray(uniform) / full, color="k", label="uniform width")
    ax.set_xlabel("mean width ratio over slimmable groups")
    ax.set_ylabel("FLOPs / full model")
    ax.set_title(f"{type(net.graph_module).__name__}: {len(net.space)} slimmable groups")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
