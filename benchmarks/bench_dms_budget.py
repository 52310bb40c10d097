"""DMS budgets: for two families and three latency budgets (70%, 50%, 35% of the full model), is the exported
ONNX's measured latency under the budget and at least 85% of it, and does depth change (blocks removed, fewer ONNX
nodes)?

    python benchmarks/bench_dms_budget.py --epochs 3     # ~40 min on 2 cores -> docs/dms_budget.md/.json

Each family is trained once (shipped CIFAR-10 subset, plain training: the "pretrained" pipeline starts from a
trained model) and its latency predictor profiled once; then `compress.dms` runs per budget on a fresh copy of the
trained model (search with weights and structure, no fine-tuning: the check is about latency). The result is
exported and timed again, interleaved with the full model so the ratio is free of machine drift.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import compress  # noqa: E402
from bench_autoslim_budget import BUDGETS, FAMILIES, budget_timer, interleaved_ms, judge, verdict_line  # noqa: E402
from compress.io import atomic_write, save_json, save_text  # noqa: E402
from compress.train.data import SHIPPED_CIFAR, cifar10_loaders  # noqa: E402
from compress.dms import DMSSettings  # noqa: E402
from compress.train.evaluate import evaluate  # noqa: E402
from compress.train.finetune import finetune  # noqa: E402
from compress.train.models import build_model  # noqa: E402
from compress.search.objectives import fit_latency_predictor  # noqa: E402
from devices import get_device  # noqa: E402


def trained_model(name: str, kwargs: dict, train, epochs: float, path: Path) -> tuple[torch.nn.Module, float]:
    """The family's model trained ``epochs`` on ``train`` (cached at ``path``); returns (model, seconds spent)."""
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), 0.0
    t0 = time.perf_counter()
    finetune(model, None, train, epochs, lr=0.1)
    atomic_write(path, lambda tmp: torch.save(model.state_dict(), tmp))
    return model.eval(), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS))
    ap.add_argument("--epochs", type=float, default=3.0, help="training epochs of the starting model")
    ap.add_argument("--search-epochs", type=float, default=1.0)
    ap.add_argument("--work", default="out/bench_dms_budget")
    ap.add_argument("--out", default="docs/dms_budget")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    dev = get_device("cpu", threads=1)
    train, val = cifar10_loaders(SHIPPED_CIFAR)
    rows = []
    for fam in args.families:
        name, kwargs = FAMILIES[fam]
        work = Path(args.work) / fam
        work.mkdir(parents=True, exist_ok=True)
        model, train_s = trained_model(name, kwargs, train, args.epochs, work / "trained.pt")
        net = compress.SlimmableNetwork(copy.deepcopy(model), torch.zeros(1, 3, 32, 32))
        t0 = time.perf_counter()
        predictor = fit_latency_predictor(net, dev, "model", work / "latency")
        profile_s = time.perf_counter() - t0
        full_onnx = work / "full.onnx"
        full_report = compress.export_onnx(model, net.example_inputs, full_onnx)
        timer, full_ms = budget_timer(dev, net)
        full_top1 = evaluate(model, val)["top1"]
        for frac in args.budgets:
            budget = frac * full_ms
            tag = f"budget{int(round(frac * 100))}"
            t0 = time.perf_counter()
            res = compress.dms(copy.deepcopy(model), latency_ms=budget, device=dev, train_loader=train,
                               val_loader=val, predictor=predictor,
                               settings=DMSSettings(epochs=args.search_epochs, lr=0.01, pipeline="pretrained"),
                               work_dir=work / tag, timer=timer)
            search_s = time.perf_counter() - t0
            onnx_path = work / f"{tag}.onnx"
            report = res.export_onnx(onnx_path)
            re_ms = dev.measure(onnx_path, {"input": [1, 3, 32, 32]}).median_ms
            full_i, sub_i = interleaved_ms([full_onnx, onnx_path])
            row = {"family": fam, "budget_fraction": frac, "budget_ms": budget, "full_ms": full_ms,
                   "predicted_ms": res.predicted_ms, "closed_loop_ms": res.measured_ms, "remeasured_ms": re_ms,
                   "interleaved_ratio": sub_i / full_i, "under_budget": re_ms <= budget,
                   "flops": res.flops, "full_flops": res.full["flops"], "top1_subset": res.top1,
                   "full_top1_subset": full_top1, "rounds": len(res.measurements), "search_s": search_s,
                   "train_s": train_s, "profile_s": profile_s, "onnx_nodes": report.num_nodes,
                   "full_onnx_nodes": full_report.num_nodes, "removed_blocks": res.removed_blocks,
                   "notes": res.notes, "config": res.config}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("config", "notes")}))
            save_json({"rows": rows, "command": "python benchmarks/bench_dms_budget.py " + " ".join(argv or sys.argv[1:]),
                       "fingerprint": dev.fingerprint()}, Path(args.out).with_suffix(".json"))
    write_markdown(rows, Path(args.out).with_suffix(".md"), dev.fingerprint(), argv or sys.argv[1:])
    return 0


def write_markdown(rows: list[dict], path: Path, fingerprint: dict, argv: list[str]) -> None:
    lines = ["# DMS: measured latency against the budget, and depth", "",
             f"Command: `python benchmarks/bench_dms_budget.py {' '.join(argv)}` (onnxruntime CPU, 1 thread; budgets "
             "are fractions of the full model's measured latency; starting models trained briefly on the shipped "
             "subset, pipeline `pretrained` without fine-tuning: the check is about latency and depth, not "
             "accuracy).", "",
             "- `closed-loop ms`: what dms measured for the returned subnet; `re-measured ms`: a fresh measurement of "
             "the exported ONNX.",
             "- `ratio`: subnet / full model timed interleaved in one run, free of machine drift; judged against the "
             "budget fraction (`under`: ratio <= fraction; `>= 85%`: ratio >= 0.85 x fraction).",
             "- `blocks removed` and `ONNX nodes (full)`: depth search at work; each removed residual block takes its "
             "convolutions and its Add out of the graph.", "",
             f"Device: {fingerprint.get('cpu', '?')}, onnxruntime {fingerprint.get('runtime_version', '?')}, "
             f"{fingerprint.get('threads', '?')} thread(s)", "",
             "| family | budget | budget ms | closed-loop ms | re-measured ms | ratio | under | >= 85% | rounds | "
             "blocks removed | ONNX nodes (full) | MFLOPs (full) | search s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        frac, ratio = r["budget_fraction"], r["interleaved_ratio"]
        under, used = judge(r)
        lines.append(f"| {r['family']} | {frac:.0%} | {r['budget_ms']:.3f} | {r['closed_loop_ms']:.3f} | "
                     f"{r['remeasured_ms']:.3f} | {ratio:.3f} | {'yes' if under else 'NO'} | "
                     f"{'yes' if used else 'NO'} | {r['rounds']} | {len(r['removed_blocks'])} | "
                     f"{r['onnx_nodes']} ({r['full_onnx_nodes']}) | {r['flops'] / 1e6:.1f} "
                     f"({r['full_flops'] / 1e6:.1f}) | {r['search_s']:.0f} |")
    lines += ["", verdict_line(rows) + ".", "", "Removed blocks per run:", ""]
    lines += [f"- {r['family']} {r['budget_fraction']:.0%}: {', '.join(r['removed_blocks']) or 'none'}" for r in rows]
    save_text("\n".join(lines) + "\n", path)


if __name__ == "__main__":
    sys.exit(main())
