"""The peer benchmark's report: the latency verdict of every exported file, the precondition (capacity-bound), the
margins against the targets, a frontier plot and the Markdown page. Used by ``bench_peers_cifar.py`` and
``peers_summary.py``."""

from __future__ import annotations

import statistics
from pathlib import Path

from compress.io import atomic_write, save_text
from peers_tp import TP_CRITERIA

TARGETS = {0.35: 1.0, 0.5: 0.5}  # budget fraction -> top-1 points ours should lead the best Torch-Pruning row by

def rows_over_budget(rows: dict) -> list[str]:
    """Keys of the rows whose exported file measured over its budget in the last final latency check (``ratio``)."""
    return [k for k, r in rows.items()
            if r.get("budget_fraction") and "ratio" in r and r["ratio"] > r["budget_fraction"]]


def rows_under_use(rows: dict, use: float) -> list[str]:
    """Keys of the rows whose exported file used less than ``use`` of its budget in the last final latency check
    (chosen while other jobs shared the cores, a file can read several % high then: it was given less budget)."""
    return [k for k, r in rows.items()
            if r.get("budget_fraction") and "ratio" in r and r["ratio"] < use * r["budget_fraction"]]


def checks(row: dict) -> str:
    """'0.501, 0.494, 0.500': every final latency check of a row's file on record, oldest first."""
    return ", ".join(f"{v:.3f}" for v in row.get("earlier_ratios", []) + ([row["ratio"]] if "ratio" in row else []))


def replaced_text(old: dict) -> str:
    """Why a replaced row was chosen again: its ``reason`` when recorded (a choice redone by hand, e.g. after a
    closed-loop fix, before any final check), else the final checks that measured it over the budget."""
    top1 = " / ".join(f"{v:.2f}" for v in old.get("seeds", {}).values()) or "not fine-tuned"
    chosen = old.get("closed_loop_ratio")
    at = f" at {chosen:.3f} of the full model" if isinstance(chosen, (int, float)) else ""
    timed = f", measured {checks(old)} in the final checks" if checks(old) else ""
    why = f" ({old['reason']})" if "reason" in old else ""
    return f"an earlier choice{at}{timed}{why}, top-1 {top1}"


def ratio_cell(row: dict) -> str:
    """'0.493 (0.488-0.499)': the final check's median ratio to the full model (lowest-highest call)."""
    spread = f" ({row['ratio_min']:.3f}-{row['ratio_max']:.3f})" if "ratio_min" in row else ""
    return f"{row['ratio']:.3f}{spread}"


def over_budget_earlier(rows: dict) -> list[str]:
    """'key (ratio)' of the rows whose file measured over its budget in an earlier final check (``--retime``
    keeps them in ``earlier_ratios``), the highest such ratio each."""
    return [f"{k} ({max(r['earlier_ratios']):.3f})" for k, r in rows.items()
            if r.get("budget_fraction") and max(r.get("earlier_ratios") or [0.0]) > r["budget_fraction"]]


def devices_text(rows: dict) -> str:
    """Where the budget rows were chosen and where their files were last timed (latency ratios are
    device-specific)."""
    rows = {k: r for k, r in rows.items() if r.get("budget_fraction")}

    def count(field: str) -> str:
        cpus = [r[field] for r in rows.values() if field in r]
        return ", ".join(f"{cpus.count(c)} on {c}" for c in sorted(set(cpus)))
    chosen, checked = count("chosen_on"), count("ratio_cpu")
    if not chosen or not checked:
        return ""
    text = f" (rows chosen: {chosen}; final check: {checked}"
    if {r.get("chosen_on") for r in rows.values()} != {r.get("ratio_cpu") for r in rows.values() if "ratio_cpu" in r}:
        text += "; the closed-loop column is the choosing CPU's reading, latency ratios differ between CPUs"
    return text + ")"


def mean_top1(row: dict) -> float | None:
    return statistics.mean(row["seeds"].values()) if row.get("seeds") else None


def precondition(rows: dict, full_top1: float, budgets=(0.5, 0.35)) -> tuple[bool, list[str]]:
    """(capacity-bound, lines): the full model above every subnet, uniform top-1 falling with width (the uniform
    row of every budget in ``budgets`` done)."""
    done = {k: r for k, r in rows.items() if mean_top1(r) is not None}
    best = max(done.items(), key=lambda kv: mean_top1(kv[1]), default=None)
    above = best is None or full_top1 > mean_top1(best[1])
    uni = sorted((r.get("width", 1.0), k, mean_top1(r)) for k, r in done.items() if r["method"] == "uniform")
    chain = [(1.0, "full", full_top1)] + uni[::-1]
    falls = all(a[2] > b[2] for a, b in zip(chain, chain[1:]))
    has_both = {k for _, k, _ in uni} >= {f"b{round(f * 100)}_uniform" for f in budgets}
    lines = [f"- full model (as pretrained, not fine-tuned further) {full_top1:.2f}% vs the best subnet "
             + (f"{best[0]} {mean_top1(best[1]):.2f}%: {'above' if above else 'NOT above'}" if best else "(none)"),
             "- uniform width, widest first: " + ", ".join(f"{k} (width {w:.2f}) {t:.2f}%" for w, k, t in chain)
             + f": {'falls monotonically' if falls else 'does NOT fall monotonically'}"
             + ("" if has_both else " (the uniform rows of " + " and ".join(f"{f:.0%}" for f in budgets)
                                   + " are not all done)")]
    return above and falls and has_both, lines


def verdicts(rows: dict, budgets: list[float]) -> list[str]:
    lines = []
    for frac in budgets:
        tag = f"b{round(frac * 100)}"
        ours = [(mean_top1(rows[k]), k) for k in (f"{tag}_autoslim", f"{tag}_dms")
                if k in rows and mean_top1(rows[k]) is not None]
        peers = [(mean_top1(r), k) for k, r in rows.items() if k.startswith(f"{tag}_tp-") and mean_top1(r) is not None]
        if not ours or not peers:
            lines.append(f"- {frac:.0%}: not enough finished rows for a verdict")
            continue
        (o, ok), (p, pk) = max(ours), max(peers)
        common = [s for s in rows[ok]["seeds"] if s in rows[pk]["seeds"]]
        per = ", ".join(f"seed {s}: {rows[ok]['seeds'][s] - rows[pk]['seeds'][s]:+.2f}" for s in common)
        target = TARGETS.get(round(frac, 2))
        met = "" if target is None else f" (target >= {target:+.1f}: {'met' if round(o - p, 2) >= target else 'NOT met'})"
        lines.append(f"- {frac:.0%}: better of AutoSlim/DMS ({ok.split('_', 1)[1]}, {o:.2f}%) minus best "
                     f"Torch-Pruning ({pk.split('_', 1)[1]}, {p:.2f}%) = {o - p:+.2f} points{met}; per seed: {per}")
    return lines


def plot(rows: dict, full_top1: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list] = {}
    for k, r in rows.items():
        if mean_top1(r) is None or "ratio" not in r:
            continue
        name = r["method"] if r["method"] != "tp" else "TP " + k.split("_tp-", 1)[1]
        series.setdefault(name, []).append((r["ratio"], mean_top1(r), min(r["seeds"].values()),
                                            max(r["seeds"].values())))
    styles = {"uniform": ("k", "s-"), "autoslim": ("tab:blue", "o-"), "dms": ("tab:red", "D-")}
    peer_colors = iter(["tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:olive", "tab:cyan", "tab:pink",
                        "tab:gray"] * 2)  # Torch-Pruning rows: dashed, colours unused by ours
    for name, pts in sorted(series.items()):
        pts.sort()
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
        color, fmt = styles.get(name) or (next(peer_colors), "^--")
        ax.errorbar(xs, ys, yerr=err, fmt=fmt, color=color, label=name, capsize=3, alpha=0.9 if name in styles else 0.6)
    ax.plot([1.0], [full_top1], "k*", markersize=12, label="full model (pretrained)")
    for frac in sorted({r["budget_fraction"] for r in rows.values() if r.get("budget_fraction")}):
        ax.axvline(frac, color="red", lw=0.8, ls=":")  # every point must sit left of its budget line
    ax.set_xlabel("measured latency / full model (onnxruntime CPU, 1 thread, interleaved)")
    ax.set_ylabel("test top-1 (%), mean over seeds (bars: min-max)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def write_report(rows: dict, state: dict, full_ms: float, full_flops: int, full_params: int, origin: dict,
                 command: str, out: Path, args, batch: int = 128) -> list[str]:
    full_top1 = state["full_top1"]
    bound, pre_lines = precondition(rows, full_top1, args.budgets)
    png = out.parent / f"{out.name}.png"
    plot(rows, full_top1, png, f"{args.model}: AutoSlim / DMS vs Torch-Pruning vs uniform (CIFAR-10)")
    pre_top1 = origin.get("pretrain_top1")
    lines = [f"# AutoSlim and DMS vs Torch-Pruning vs uniform width: {args.model} on CIFAR-10, equal measured latency",
             "", f"Command: `{command.strip()}`", "",
             f"Starting point: {origin.get('weights') or 'RANDOM INIT (smoke run: no weights file)'}"
             + (f", pretrained {origin.get('pretrain_epochs')} epochs to {pre_top1:.2f}%" if pre_top1 else "")
             + f". Full model: {full_ms:.3f} ms (onnxruntime CPU, 1 thread), {full_flops / 1e6:.1f} MFLOPs, "
             f"{full_params / 1e3:.1f} k parameters, {full_top1:.2f}% test top-1 as evaluated here.", "",
             f"Protocol (see the script's docstring): {args.train_per_class} training images per class, "
             f"{args.held_per_class} held out, test on {args.test_per_class or 1000} per class. Budgets are "
             "fractions of the full model's measured latency; every latency is a drift-free ratio to the full model "
             f"(interleaved timing), a point counts as under only with {args.headroom:.0%} headroom. Every subnet is BN "
             f"recalibrated and fine-tuned with one recipe (SGD lr {args.lr:g} cosine, batch {batch}, labels only). "
             f"Training budget per row: {args.epochs:g} epochs at full-width cost. Torch-Pruning and uniform rows "
             "fine-tune all of it; AutoSlim and DMS rows fine-tune the budget minus what their search used "
             f"(`search ep.`: AutoSlim's supernet, {args.supernet_epochs:g} epochs of sandwich steps with each "
             f"subnet weighted by its FLOPs, shared by the budgets and charged to each; DMS {args.dms_search:g} "
             "epoch(s) of search at full cost), so `ft ep.` = budget - `search ep.`. `search s`: wall time of "
             "choosing (supernet, search, closed loop, Torch-Pruning's measured probes); `ft s`: wall time of one "
             "fine-tune (mean over seeds). Torch-Pruning: "
             f"{args.tp_steps} iterative steps, channels rounded to {args.divisor} (as every method), classifier "
             "kept, pruning ratio bisected on measured latency.", "",
             "Torch-Pruning criteria: " + "; ".join(f"`{c}`: {TP_CRITERIA[c][2]}" for c in args.tp_criteria) + ".",
             "", "## Precondition", ""] + pre_lines + [
             "", f"Result: {'capacity-bound: the ranking below holds' if bound else 'not capacity-bound'}.", "",
             "## Rows", "",
             "| budget | method | latency / full (range) | closed-loop | MFLOPs | k params | top-1 mean | per seed | "
             "before ft | search s | search ep. | ft ep. | ft s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, r in rows.items():
        budget = f"{r['budget_fraction']:.0%}" if r.get("budget_fraction") else f"width {r.get('width', 0):.2f}"
        name = k.split("_", 1)[1]
        if "failed" in r:
            lines.append(f"| {budget} | {name} | failed: {r['failed']} | | | | | | | | | | |")
            continue
        m = mean_top1(r)
        loop = f"{r['closed_loop_ratio']:.3f}" if r.get("closed_loop_ratio") else ""
        ft_s = f"{statistics.mean(r['ft_s'].values()):.0f}" if r.get("ft_s") else ""
        lines.append(
            f"| {budget} | {name} | {ratio_cell(r)} | {loop} | {r['flops'] / 1e6:.1f} | {r['params'] / 1e3:.1f} | "
            f"{m:.2f} | {' / '.join(f'{v:.2f}' for v in r['seeds'].values())} | {r['pre_ft_top1']:.2f} | "
            f"{r['search_s']:.0f} | {r['search_epochs']:.2f} | {r['ft_epochs']:.2f} | {ft_s} |"
            if m is not None and "ratio" in r else f"| {budget} | {name} | (unfinished) | | | | | | | | | | |")
    lines += ["", "## Verdict", ""]
    timed = [(k, r) for k, r in rows.items() if r.get("budget_fraction") and "ratio" in r]
    over = [f"{k} ({rows[k]['ratio']:.3f})" for k in rows_over_budget(rows)]
    lines.append(f"- latency: {len(timed) - len(over)} of {len(timed)} exported files measure <= their budget in the "
                 "final interleaved timing" + (f"; over: {', '.join(over)}" if over else "") + devices_text(rows))
    rebuilt = [k for k in rows if "onnx_rebuilt" in rows[k]]
    if rebuilt:
        lines.append(f"- {len(rebuilt)} of those files were rebuilt from the row's recorded architecture with random "
                     "weights (the run that chose them was on another machine): latency depends on the architecture")
    earlier = over_budget_earlier(rows)
    if earlier:
        lines.append(f"- earlier final checks (before `--retime`) measured over the budget: {', '.join(earlier)}")
    for k, olds in state.get("replaced", {}).items():
        lines.append(f"- {k} was chosen again: " + "; ".join(replaced_text(o) for o in olds)
                     + "; the row above is the new choice, its search wall time includes the earlier one")
    if bound:
        lines += verdicts(rows, args.budgets)
    else:
        lines += ["not capacity-bound: the precondition above fails, so no method is ranked."]
    lines += ["", f"![frontier]({png.name})"]
    save_text("\n".join(lines) + "\n", out.parent / f"{out.name}.md")
    return lines
