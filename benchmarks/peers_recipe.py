"""Fine-tune rows of a peer-benchmark run again under other recipes, side by side: does the recipe move the margin?

    python benchmarks/peers_recipe.py --run out/probe35/peers --keys b35_dms b35_tp-group_norm-global \
        --seeds 0 --recipes labels kd --out docs/peers_recipe_r20_35

``--run`` names the output of ``bench_peers_cifar.py`` (its ``--out``, without ``.json``); every row in ``--keys``
must have been chosen there, with its pruned weights still in the run's ``--work``. Each row starts from those
weights (BN recalibrated, before any fine-tune) and is fine-tuned with the run's recipe (``fine_tune_row``: the
run's learning rate, the row's fine-tune epochs, the seed's data order), under each recipe of ``RECIPES``:

- ``labels``: cross-entropy on the labels, what the run itself does. Where the run fine-tuned that seed too, the
  top-1 must come out the same (the fine-tune is deterministic on one machine), and the page says whether it did.
- ``kd``: labels plus KL divergence to the pretrained full model's output, equal weights (knowledge distillation,
  Hinton et al. 2015; the teacher is the model every row was pruned from). Every row pays the same teacher
  forward passes, so the comparison between rows stays like-for-like.

Writes ``--out``.json (resumable: saved after every fine-tune, one top-1 per row, recipe and seed) and ``--out``.md
(top-1 per row and recipe, and each recipe's margin of the first row over the best of the others).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_peers_cifar import benchmark_data, fine_tune_row, load_pretrained, rebuild_row  # noqa: E402
from peers_tp import PeerBenchmarkError  # noqa: E402
from compress.io import save_json, save_text  # noqa: E402
from compress.train.data import TensorLoader  # noqa: E402
from compress.train.evaluate import evaluate  # noqa: E402

RECIPES = {  # name -> (uses the pretrained model as teacher, what the page says)
    "labels": (False, "labels only (the run's recipe)"),
    "kd": (True, "labels + KL to the pretrained full model, equal weights"),
}


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="the peer run's --out (its .json is read)")
    ap.add_argument("--keys", nargs="+", required=True,
                    help="row keys, ours first: the margin is the first row minus the best of the others")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, help="writes <out>.json and <out>.md")
    return ap.parse_args(argv)


def load_run(run: str, keys: list[str]) -> dict:
    """The run's JSON, checked to hold every key as a chosen row whose weights exist."""
    path = Path(f"{run}.json")
    if not path.exists():
        raise PeerBenchmarkError(f"no peer-benchmark result at {path}: pass --run as the run's --out, without .json")
    state = json.loads(path.read_text())
    if "rows" not in state or "args" not in state:
        raise PeerBenchmarkError(f"{path} is not a peer-benchmark result (no 'rows' or 'args')")
    for key in keys:
        row = state["rows"].get(key)
        if row is None or "weights" not in row:
            raise PeerBenchmarkError(f"{path} has no chosen row {key!r}; chosen rows: "
                                     f"{sorted(k for k, r in state['rows'].items() if 'weights' in r)}")
        if not Path(row["weights"]).exists():
            raise PeerBenchmarkError(f"row {key}'s pruned weights {row['weights']} are missing: this works on the "
                                     "machine that chose the row (its --work), not on a fresh clone")
    return state


def page(results: dict, state: dict, args, command: str) -> list[str]:
    """The markdown page: one line per row, one column per recipe (mean, per seed), then the margins."""
    lines = [f"# Fine-tune recipes on the rows of `{args.run}`", "", f"Command: `{command}`", "",
             f"Model {state['args']['model']}, full model {state['full_top1']:.2f}% test top-1; every row fine-tuned "
             f"from its pruned weights with lr {state['args']['lr']:g} cosine for its own fine-tune epochs. Recipes: "
             + "; ".join(f"`{r}`: {RECIPES[r][1]}" for r in args.recipes) + f". The rows, their latency and how "
             f"they were chosen: `{args.run}.md`.", "",
             "| row | ft ep. | " + " | ".join(args.recipes) + " | the run's own top-1 |",
             "|---|---|" + "---|" * len(args.recipes) + "---|"]

    def mean(key, recipe):
        vals = list(results.get(key, {}).get(recipe, {}).values())
        return statistics.fmean(vals) if vals else None

    for key in args.keys:
        row = state["rows"][key]
        cells = []
        for recipe in args.recipes:
            per = results.get(key, {}).get(recipe, {})
            cells.append("-" if not per else f"{mean(key, recipe):.2f} ("
                         + " / ".join(f"{per[s]:.2f}" for s in sorted(per)) + ")")
        own = row.get("seeds") or {}
        lines.append(f"| {key} | {row['ft_epochs']:.2f} | " + " | ".join(cells) + " | "
                     + (" / ".join(f"{own[s]:.2f}" for s in sorted(own)) or "-") + " |")
    lines.append("")
    first, others = args.keys[0], args.keys[1:]
    for recipe in args.recipes:
        ours = mean(first, recipe)
        peers = [(mean(k, recipe), k) for k in others if mean(k, recipe) is not None]
        if ours is not None and peers:
            best, best_key = max(peers)
            lines.append(f"- {recipe}: {first} minus the best other row ({best_key}) = {ours - best:+.2f} points")
    for key in args.keys:
        own = state["rows"][key].get("seeds") or {}
        same = {s: v for s, v in results.get(key, {}).get("labels", {}).items() if s in own}
        if same:
            ok = all(v == own[s] for s, v in same.items())
            lines.append(f"- {key}, labels: {'equals' if ok else 'DIFFERS from'} the run's own top-1 for seeds "
                         f"{sorted(same)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/peers_recipe.py " + " ".join(argv if argv is not None else sys.argv[1:])
    state = load_run(args.run, args.keys)
    run_args = argparse.Namespace(**state["args"])
    teacher, _ = load_pretrained(run_args)
    _, train_set, test_set = benchmark_data(run_args)
    test = TensorLoader(test_set, 500)
    x = torch.zeros(1, 3, 32, 32)
    out_json = Path(f"{args.out}.json")
    saved = json.loads(out_json.read_text()) if out_json.exists() else {}
    if saved and saved.get("run") != args.run:
        raise PeerBenchmarkError(f"{out_json} holds results of run {saved.get('run')!r}, not {args.run!r}: pass "
                                 "another --out")
    results: dict = saved.get("results", {})
    seconds: dict = saved.get("seconds", {})
    for key in args.keys:
        row = state["rows"][key]
        for recipe in args.recipes:
            for seed in map(str, args.seeds):
                if seed in results.get(key, {}).get(recipe, {}):
                    continue
                sub = rebuild_row(run_args.model, row, x, run_args.divisor)
                t0 = time.perf_counter()
                fine_tune_row(sub, train_set, int(seed), row["ft_epochs"], run_args.lr,
                              teacher if RECIPES[recipe][0] else None)
                top1 = evaluate(sub, test)["top1"]
                results.setdefault(key, {}).setdefault(recipe, {})[seed] = top1
                seconds.setdefault(key, {}).setdefault(recipe, {})[seed] = time.perf_counter() - t0
                print(f"{key} {recipe} seed {seed}: test top-1 {top1:.2f}%")
                save_json({"run": args.run, "command": command, "results": results, "seconds": seconds}, out_json)
    lines = page(results, state, args, command)
    save_text("\n".join(lines) + "\n", Path(f"{args.out}.md"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PeerBenchmarkError as e:
        sys.exit(f"error: {e}")
