"""One table over the peer benchmark's models: the README's lead result (docs/peers_cifar.md).

    python benchmarks/peers_summary.py docs/peers_cifar_cifar_resnet20_w1.5.json docs/peers_cifar_cifar_mobilenet_v2_w1.json

Reads the JSON files ``bench_peers_cifar.py`` writes (finished or not) and writes ``--out`` (.md): per model and
budget, the mean test top-1 over seeds (per-seed values in brackets) and the measured latency ratio of uniform,
AutoSlim, DMS and the best Torch-Pruning row, ours minus the best peer against the issue's target, and each model's
precondition. Unfinished rows show as "-"; a model that is not capacity-bound gets no margins.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peers_report import (TARGETS, devices_text, mean_top1, over_budget_earlier, precondition,  # noqa: E402
                          replaced_text, rows_over_budget)
from compress.io import save_text  # noqa: E402

OURS = ("autoslim", "dms")


def cell(row: dict | None) -> str:
    """'85.39 (85.39 / 85.22) @0.486' : mean top-1 (per seed) at the measured latency ratio; '-' if unfinished."""
    if row is None or mean_top1(row) is None:
        return "-"
    seeds = " / ".join(f"{v:.2f}" for v in row["seeds"].values())
    ratio = f" @{row['ratio']:.3f}" if "ratio" in row else ""
    return f"{mean_top1(row):.2f} ({seeds}){ratio}"


def best(rows: dict, keys: list[str]) -> tuple[str | None, dict | None]:
    done = [(mean_top1(rows[k]), k) for k in keys if k in rows and mean_top1(rows[k]) is not None]
    if not done:
        return None, None
    _, k = max(done)
    return k, rows[k]


def summary_lines(states: dict[str, dict]) -> list[str]:
    """``states``: model name -> the JSON state of ``bench_peers_cifar.py``. Returns the markdown lines."""
    lines = ["| model | budget | uniform | AutoSlim | DMS | best Torch-Pruning | ours - best TP (target) |",
             "|---|---|---|---|---|---|---|"]
    notes = []
    for model, state in states.items():
        rows = state.get("rows", {})
        bound, pre = precondition(rows, state["full_top1"], state.get("args", {}).get("budgets", (0.5, 0.35)))
        timed = [(k, r) for k, r in rows.items() if r.get("budget_fraction") and "ratio" in r]
        over = [f"{k} ({rows[k]['ratio']:.3f})" for k in rows_over_budget(rows)]
        earlier = over_budget_earlier(rows)
        again = []
        for k, olds in state.get("replaced", {}).items():
            again.append(f"{k} ({'; '.join(replaced_text(o) for o in olds)})")
        notes.append(f"**{model}** (full model {state['full_top1']:.2f}%, {state['full_ms']:.3f} ms): "
                     + ("capacity-bound" if bound else "NOT capacity-bound (no ranking)") + "; "
                     + "; ".join(p.lstrip("- ") for p in pre)
                     + f"; {len(timed) - len(over)} of {len(timed)} exported files measure <= their budget"
                     + (f" (over: {', '.join(over)})" if over else "") + devices_text(rows)
                     + (f"; over in an earlier final check: {', '.join(earlier)}" if earlier else "")
                     + (f"; chosen again: {', '.join(again)}" if again else ""))
        budgets = sorted({r["budget_fraction"] for r in rows.values() if r.get("budget_fraction")}, reverse=True)
        for frac in budgets:
            tag = f"b{round(frac * 100)}"
            ok, ours = best(rows, [f"{tag}_{m}" for m in OURS])
            pk, peer = best(rows, [k for k in rows if k.startswith(f"{tag}_tp-")])
            margin = "-"
            if bound and ours is not None and peer is not None:
                d = mean_top1(ours) - mean_top1(peer)
                target = TARGETS.get(round(frac, 2))
                verdict = "" if target is None else f" ({target:+.1f}: {'met' if round(d, 2) >= target else 'NOT met'})"
                margin = f"{d:+.2f}{verdict}"
            peer_cell = "-" if peer is None else f"{pk.split('_tp-', 1)[1]}: {cell(peer)}"
            lines.append(f"| {model} | {frac:.0%} | {cell(rows.get(f'{tag}_uniform'))} | "
                         f"{cell(rows.get(f'{tag}_autoslim'))} | {cell(rows.get(f'{tag}_dms'))} | {peer_cell} | "
                         f"{margin} |")
    return lines + [""] + [f"- {n}" for n in notes]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="docs/peers_cifar_<model>.json files")
    ap.add_argument("--out", default="docs/peers_cifar.md")
    args = ap.parse_args(argv)
    states = {}
    for f in args.files:
        try:
            state = json.loads(Path(f).read_text())
            states[state["identity"]["model"]] = state
        except (OSError, ValueError, KeyError, TypeError) as e:
            sys.exit(f"error: {f} is not a peer benchmark result ({type(e).__name__}: {e}); pass the .json files "
                     "benchmarks/bench_peers_cifar.py writes")
    lines = ["# AutoSlim and DMS vs Torch-Pruning at equal measured latency, from converged CIFAR-10 models", "",
             "Command: `python benchmarks/peers_summary.py " + " ".join(args.files) + "` (after the runs that wrote them)."
             " Cells: mean test top-1 over seeds (per seed) @ measured latency / full model (interleaved, "
             "onnxruntime CPU, 1 thread). Per-model reports with every row, FLOPs, parameters and search cost: "
             + ", ".join(f"`{Path(f).name.removesuffix('.json')}.md`" for f in args.files) + ".", ""]
    lines += summary_lines(states)
    save_text("\n".join(lines) + "\n", args.out)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
