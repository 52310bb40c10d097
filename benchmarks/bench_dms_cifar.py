"""DMS, AutoSlim and the uniformly narrowed network side by side on CIFAR-10: equal measured latency, equal
training budget, search time for each.

    python benchmarks/bench_dms_cifar.py        # ~50 min on 2 cores -> docs/dms_cifar.md/.json

Protocol: ResNet-20 x2 for 32 x 32 inputs, trained from random init. From the CIFAR-10 training set in
../shared/data: 2,000 images per class to train, the next 500 per class held out (AutoSlim scores candidates on
them); top-1 on the 10,000 test images. Every method gets the same training budget, ``--epochs`` passes over the
training images (optimizer steps of batch 128):

- uniform: the widest width multiplier measured under the budget, trained from scratch for all the epochs;
- DMS (``pipeline="scratch"``): ``--dms-search`` epochs of search (weights and structure together) from random
  init, then the extracted subnet trained for the rest;
- AutoSlim: a slimmable supernet (sandwich rule, 4 subnets per step, inplace distillation) for all but
  ``--autoslim-finetune`` epochs, shared by the budgets; greedy search; the chosen subnet fine-tuned for the rest,
  distilled from the supernet.

Equal steps is not equal compute: a sandwich step runs four subnets, a DMS search step the masked full network.
Wall-clock seconds of every phase are reported next to the accuracy. The three exported ONNX files of a budget are
timed interleaved, so their latencies compare free of machine drift, and every closed loop shares one timer whose
reference is pinned at the full model's latency: a candidate passes when its ratio to the full model is under the
budget fraction, whatever the host's speed at that minute. Finished rows are kept in the JSON and skipped
when the benchmark is run again (interrupt and resume).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import compress  # noqa: E402
from bench_autoslim_budget import interleaved_ms  # noqa: E402
from compress.baselines import uniform_path  # noqa: E402
from compress.checkpoint import save_json  # noqa: E402
from compress.closed_loop import closed_loop  # noqa: E402
from compress.data import TensorLoader, load_image_folder  # noqa: E402
from compress.dms import DMSSettings  # noqa: E402
from compress.evaluate import evaluate  # noqa: E402
from compress.finetune import finetune  # noqa: E402
from compress.models import cifar_resnet  # noqa: E402
from compress.objectives import LatencyCost, fit_latency_predictor  # noqa: E402
from compress.timing import ReferenceTimer  # noqa: E402
from devices import get_device  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
METHODS = ("uniform", "dms", "autoslim", "autoslim-alpha")  # autoslim: KL inplace distillation


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--train-per-class", type=int, default=2000)
    ap.add_argument("--epochs", type=float, default=4.0, help="training budget of every method (epochs)")
    ap.add_argument("--dms-search", type=float, default=1.0, help="DMS search epochs (part of the budget)")
    ap.add_argument("--autoslim-finetune", type=float, default=1.0, help="AutoSlim fine-tune epochs (part of it)")
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.35])
    ap.add_argument("--methods", nargs="+", default=list(METHODS[:3]), choices=METHODS)
    ap.add_argument("--work", default="out/bench_dms_cifar")
    ap.add_argument("--out", default="docs/dms_cifar")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    work = Path(args.work)
    out_json = Path(args.out).with_suffix(".json")
    command = "python benchmarks/bench_dms_cifar.py " + " ".join(argv if argv is not None else sys.argv[1:])
    state = json.loads(out_json.read_text()) if out_json.exists() else {}
    if state.get("command") != command:
        state = {}
    rows: dict = state.get("rows", {})
    t_start = time.perf_counter()

    all_train, test = load_image_folder(args.data, "train"), load_image_folder(args.data, "test")
    n = args.train_per_class
    train = TensorLoader(all_train.subset(n), 128, train=True)
    held = TensorLoader(all_train.subset(500, offset=n), 256)
    test_loader = TensorLoader(test, 500)
    print(f"data: {len(train.data)} train, {len(held.data)} held-out, {len(test)} test images")
    dev = get_device("cpu", threads=1)
    x = torch.zeros(1, 3, 32, 32)
    probe = compress.SlimmableNetwork(cifar_resnet(width=2.0), x)
    full = compress.extract_subnet(probe, None)
    # budgets are fractions of the full model: one timer with the reference pinned at the full model's latency
    # (kept from an earlier run when resuming) judges every candidate of every method by its ratio alone
    full_ms = state.get("full_ms") or ReferenceTimer(dev, full, (x,)).reference_ms
    timer = ReferenceTimer(dev, full, (x,), reference_ms=full_ms)
    predictor = fit_latency_predictor(probe, dev, "model", work / "latency")

    def save() -> None:
        save_json({"command": command, "full_ms": full_ms, "rows": rows, "fingerprint": dev.fingerprint(),
                   "seconds_this_run": time.perf_counter() - t_start, "args": vars(args)}, out_json)

    supernets: dict[str, tuple] = {}  # distillation loss -> (supernet, training seconds)
    for frac in args.budgets:
        budget = frac * full_ms
        tag = f"b{int(round(frac * 100))}"
        for method in args.methods:
            key = f"{tag}_{method}"
            if key in rows:
                print(f"{key}: done in an earlier run, skipped")
                continue
            onnx = work / f"{key}.onnx"
            torch.manual_seed(0)
            t0 = time.perf_counter()
            if method == "uniform":
                net = compress.SlimmableNetwork(cifar_resnet(width=2.0), x)
                path = uniform_path(net, LatencyCost(net, predictor, "model"))
                index, _ = closed_loop(net, path, budget, dev, timer=timer)
                cfg = path[index]["config"]
                subnet = compress.extract_subnet(net, cfg)
                search_s = time.perf_counter() - t0
                t1 = time.perf_counter()
                finetune(subnet, None, train, args.epochs, lr=0.1)
                row = {"config": cfg, "width": path[index]["ratio"], "search_s": search_s,
                       "train_s": time.perf_counter() - t1, "removed_blocks": []}
            elif method == "dms":
                res = compress.dms(cifar_resnet(width=2.0), latency_ms=budget, device=dev, train_loader=train,
                                   val_loader=held, pipeline="scratch", train_epochs=args.epochs - args.dms_search,
                                   predictor=predictor, settings=DMSSettings(epochs=args.dms_search, lr=0.1),
                                   work_dir=work / key, timer=timer)
                subnet = res.subnet
                row = {"config": res.config, "removed_blocks": res.removed_blocks, "notes": res.notes,
                       "seconds": res.seconds, "search_and_train_s": time.perf_counter() - t0}
            else:
                distill = "alpha" if method.endswith("alpha") else "kl"
                if distill not in supernets:
                    supernet = compress.SlimmableNetwork(cifar_resnet(width=2.0), x)
                    t1 = time.perf_counter()
                    compress.train_supernet(supernet, train, compress.TrainSettings(
                        epochs=args.epochs - args.autoslim_finetune, distill=distill),
                        checkpoint=work / f"supernet_{distill}.pt")
                    supernets[distill] = (supernet, time.perf_counter() - t1)
                supernet, supernet_s = supernets[distill]
                t1 = time.perf_counter()
                settings = compress.AutoSlimSettings(finetune_epochs=args.autoslim_finetune, finetune_lr=0.02)
                res = compress.autoslim(supernet, latency_ms=budget, device=dev, train_loader=train,
                                        val_loader=held, predictor=predictor, settings=settings,
                                        work_dir=work / key, train=False, timer=timer)
                subnet = res.subnet
                row = {"config": res.config, "removed_blocks": [], "supernet_s": supernet_s, "distill": distill,
                       "seconds": res.seconds, "search_and_finetune_s": time.perf_counter() - t1}
            compress.export_onnx(subnet, (x,), onnx)
            row.update({"method": method, "budget_fraction": frac, "budget_ms": budget, "onnx": str(onnx),
                        "flops": int(compress.count_flops(subnet, (x,)).total),
                        "test_top1": evaluate(subnet, test_loader)["top1"], "wall_s": time.perf_counter() - t0})
            rows[key] = row
            print(json.dumps({k: v for k, v in row.items() if k != "config"}))
            save()
        done = [m for m in METHODS if f"{tag}_{m}" in rows]
        if done:  # the subnets and the full model timed interleaved: ratios free of machine drift
            full_onnx = work / "full.onnx"
            if not full_onnx.exists():
                compress.export_onnx(full, (x,), full_onnx)
            full_t, *times = interleaved_ms([full_onnx] + [Path(rows[f"{tag}_{m}"]["onnx"]) for m in done])
            for m, t in zip(done, times):
                rows[f"{tag}_{m}"].update({"interleaved_ms": t, "interleaved_full_ms": full_t, "ratio": t / full_t})
            save()
    write_markdown(rows, full_ms, command, Path(args.out).with_suffix(".md"), args)
    return 0


def search_seconds(row: dict) -> str:
    """Seconds spent choosing the architecture: the uniform width's closed loop; DMS / AutoSlim search plus their
    closed loop (training of weights during the DMS search included; AutoSlim's supernet training not)."""
    if "search_s" in row:
        return f"{row['search_s']:.0f}"
    sec = row.get("seconds") or {}
    return f"{sec.get('search', 0) + sec.get('closed_loop', 0):.0f}" if "search" in sec else "n/a"


def write_markdown(rows: dict, full_ms: float, command: str, path: Path, args) -> None:
    lines = ["# DMS vs AutoSlim vs uniform width on CIFAR-10 (equal measured latency, equal training steps)", "",
             f"Command: `{command.strip()}`", "",
             f"ResNet-20 x2 from random init; {args.train_per_class} training images per class, 500 per class held "
             f"out, 10,000 test images. Every method gets {args.epochs:g} epochs of optimizer steps: uniform trains "
             f"the narrowed net for all of them; DMS searches {args.dms_search:g} and trains the subnet for the rest; "
             f"AutoSlim trains the supernet {args.epochs - args.autoslim_finetune:g} (4 subnets per step) and "
             f"fine-tunes the chosen subnet {args.autoslim_finetune:g}. Full model {full_ms:.3f} ms (onnxruntime CPU, "
             "1 thread). `latency / full model`: each budget's subnets and the full model timed interleaved in one "
             "run (drift-free); the budget is that fraction.", "",
             "| budget | method | latency / full model | MFLOPs | blocks removed | test top-1 | vs uniform | search s | "
             "wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for frac in args.budgets:
        tag = f"b{int(round(frac * 100))}"
        uni = rows.get(f"{tag}_uniform")
        for m in METHODS:
            r = rows.get(f"{tag}_{m}")
            if r is None:
                continue
            ms = f"{r['ratio']:.3f}" if "ratio" in r else "n/a"
            gain = f"{r['test_top1'] - uni['test_top1']:+.2f}" if uni and m != "uniform" else ""
            lines.append(f"| {frac:.0%} | {m} | {ms} | {r['flops'] / 1e6:.1f} | "
                         f"{len(r['removed_blocks'])} | {r['test_top1']:.2f} | {gain} | {search_seconds(r)} | "
                         f"{r['wall_s']:.0f} |")
    sups = {r["distill"]: r["supernet_s"] for r in rows.values() if r.get("supernet_s")}
    if sups:
        lines += ["", "AutoSlim's supernet training is shared by the budgets and not in its wall s: " +
                  ", ".join(f"{d} {s:.0f} s" for d, s in sups.items()) + ". `autoslim` distils in place with KL, "
                  "`autoslim-alpha` with the adaptive alpha-divergence (same schedule otherwise)."]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
