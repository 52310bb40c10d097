"""How repeatable is a latency measurement on this machine? Absolute medians vs ratios to a reference or anchor.

    python benchmarks/bench_measurement_noise.py [--models 5] [--passes 4] [--pause-s 20]

For resnet18 and mobilenet_v2 (224x224, onnxruntime CPU, 1 thread), exports ``--models`` random subnets
and the full model (the anchor), then measures each family ``--passes`` times, minutes apart, the way the
profiler does (``profile_device.measure_interleaved``: the subnets, the anchor and the two fixed reference
models of ``predictors.reference`` in rounds), plus once more one model after another (``measure``). Every
pair of passes is compared per subnet: how often do two estimates of the same latency agree within 2/5/10%?
A predictor cannot be judged more finely than the measurement repeats.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision

import compress
from compress.io import save_json, save_text
from devices import profile_device as pd
from predictors.reference import export_reference

FAMILIES = ("resnet18", "mobilenet_v2")

# estimate name -> f(subnet stats, anchor stats, reference stats) -> a number proportional to its latency
ESTIMATES = {
    "median, one model after another": None,  # from the sequential passes
    "median, interleaved rounds": lambda s, a, r, big: s["median_ms"],
    "median / small reference's median": lambda s, a, r, big: s["median_ms"] / r["median_ms"],
    "ratio to small reference (0.25 ms), round by round": lambda s, a, r, big: pd.round_ratio(s, r),
    "ratio to resnet18-112 reference (10 ms), round by round": lambda s, a, r, big: pd.round_ratio(s, big),
    "ratio to the full model (anchor), round by round": lambda s, a, r, big: pd.round_ratio(s, a),
}


def _session(path: str):
    sess = ort.InferenceSession(path, pd.session_options(1, "all"), providers=["CPUExecutionProvider"])
    feeds = pd.random_feeds(sess, {})
    return lambda: sess.run(None, feeds)


def compare(values: np.ndarray) -> dict:
    """values: (passes, subnets). Relative differences over every pair of passes."""
    rel = np.array([values[b] / values[a] - 1 for a, b in itertools.combinations(range(len(values)), 2)]).ravel()
    out = {f"within_{t}pct": float(np.mean(np.abs(rel) <= t / 100)) for t in (2, 5, 10)}
    out["rms"] = float(np.sqrt(np.mean(rel ** 2)))
    out["n_pairs"] = int(rel.size)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--passes", type=int, default=4)
    ap.add_argument("--pause-s", type=float, default=20.0, help="pause between passes")
    ap.add_argument("--docs", default="docs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        reference = _session(str(export_reference(Path(tmp) / "reference.onnx")))
        big = _session(str(export_reference(Path(tmp) / "big.onnx", "resnet18-112")))
        runs = {}
        for fam in FAMILIES:
            torch.manual_seed(0)
            net = compress.SlimmableNetwork(torchvision.models.get_model(fam).eval(), torch.randn(1, 3, 224, 224))
            cfgs = [net.space.max_config()] + [net.space.random_config(50_000 + s) for s in range(args.models)]
            runs[fam] = []
            for i, cfg in enumerate(cfgs):
                path = str(Path(tmp) / f"{fam}_{i}.onnx")
                compress.export_onnx(compress.extract_subnet(net, cfg), net.example_inputs, path)
                runs[fam].append(_session(path))
        values = {fam: {name: [] for name in ESTIMATES} for fam in FAMILIES}
        absolute_full = {fam: [] for fam in FAMILIES}
        for p in range(args.passes):
            for fam in FAMILIES:
                anchor, *subnets = runs[fam]
                stats = pd.measure_interleaved(subnets + [anchor, reference, big])
                *sub, a, r, b = stats
                absolute_full[fam].append(a["median_ms"])
                for name, f in ESTIMATES.items():
                    if f is None:
                        values[fam][name].append([pd.measure(run)["median_ms"] for run in subnets])
                    else:
                        values[fam][name].append([f(s, a, r, b) for s in sub])
            print(f"pass {p + 1}/{args.passes}: full models " + ", ".join(
                f"{fam} {absolute_full[fam][-1]:.2f} ms" for fam in FAMILIES), flush=True)
            if p + 1 < args.passes:
                time.sleep(args.pause_s)
    for fam in FAMILIES:
        results[fam] = {name: compare(np.array(v)) for name, v in values[fam].items()}
        results[fam]["full_model_ms_per_pass"] = absolute_full[fam]
    lines = ["# Measurement repeatability", "",
             f"Command: `python benchmarks/bench_measurement_noise.py --models {args.models} --passes {args.passes} "
             f"--pause-s {args.pause_s:g}`. {args.models} random subnets of each family (224x224, onnxruntime CPU, "
             f"1 thread) are measured in {args.passes} passes {args.pause_s:g} s apart, each pass timing a family's "
             "subnets, its full model (the anchor) and two fixed reference CNNs in interleaved rounds as the "
             "profiler does, then the subnets once more one after another. Each row compares the estimates of "
             "the same subnet from every pair of passes.", ""]
    for fam in FAMILIES:
        lines += [f"## {fam}", "", "Full model per pass (ms): " + ", ".join(
                  f"{v:.2f}" for v in results[fam]["full_model_ms_per_pass"]), "",
                  "| estimate | within 2% | within 5% | within 10% | RMS difference |", "|---|---|---|---|---|"]
        for name in ESTIMATES:
            r = results[fam][name]
            lines.append(f"| {name} | {100 * r['within_2pct']:.0f}% | {100 * r['within_5pct']:.0f}% | "
                         f"{100 * r['within_10pct']:.0f}% | {100 * r['rms']:.1f}% |")
        lines.append("")
    lines += ["Absolute medians move with the host (a shared VM whose speed changes by 10-30% over minutes); a "
              "ratio to a model timed in the same rounds cancels most of it, best when that model does the same "
              "kind of work (the full model of the family: the profiler's anchor, `devices.write_bundle(anchor=)`, "
              "and `compress.timing.ReferenceTimer`)."]
    save_text("\n".join(lines) + "\n", Path(args.docs, "measurement_noise.md"))
    save_json(results, Path(args.docs, "measurement_noise.json"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
