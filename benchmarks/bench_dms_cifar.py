"""DMS, AutoSlim and the uniformly narrowed network side by side on CIFAR-10: equal measured latency, equal
training of the final network, search cost for each.

    python benchmarks/bench_dms_cifar.py        # ~70 min on 2 cores -> docs/dms_cifar.md/.json
    make bench-search-cifar   # torchvision ResNet-18, full data (~2 h) -> docs/dms_cifar_resnet18.md/.json, and
                              # DMS with a 6-epoch search at 50% -> docs/dms_cifar_resnet18_dms6.md/.json

Protocol (the one NAS papers use, AutoSlim's and DMS's included): each method chooses an *architecture* under the
budget; then every architecture is built from the same freshly initialised network (``--model``, seed 0; the first k
channels of each group, removed blocks replaced by their skip) and trained from scratch with one recipe
(``--epochs`` passes, SGD lr 0.1, cosine, batch 128). Top-1 on the 10,000 test images then compares architectures
only. What choosing cost is reported beside it:

- uniform: the widest width multiplier measured under the budget (widths rounded to 8, the usual
  ``make_divisible``); ``uniform-aligned``: the same with widths rounded to the device's channel block (16 on
  AVX-512 hosts), to show how much of a gain is alignment alone;
- DMS (``pipeline="scratch"``): ``--dms-search`` epochs of search (weights and structure together) from random
  init, widths in multiples of the channel block;
- AutoSlim: a slimmable supernet (sandwich rule, 4 subnets per step, inplace distillation, ``--supernet-epochs``,
  shared by the budgets), then greedy slimming against the latency predictor in multiples of the channel block.

Data: 2,000 training images per class from ../shared/data, the next 500 per class held out (AutoSlim scores its
candidates on them). The ONNX files of a budget are timed interleaved with the full model, so their latencies
compare free of machine drift, and every closed loop shares one timer whose reference is pinned at the full
model's latency: a candidate passes when its ratio to the full model is under the budget fraction. Finished rows
are kept in the JSON and skipped when the benchmark is run again (interrupt and resume); a supernet checkpoint in
the work directory is resumed, not retrained.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import compress  # noqa: E402
from bench_autoslim_budget import interleaved_ms  # noqa: E402
from compress.search.baselines import uniform_path  # noqa: E402
from compress.io import save_json, save_text  # noqa: E402
from compress.deploy.closed_loop import closed_loop  # noqa: E402
from compress.train.data import TensorLoader, load_image_folder  # noqa: E402
from compress.search.dms.masked import extract_with_depth  # noqa: E402
from compress.dms import DMSSettings  # noqa: E402
from compress.train.evaluate import evaluate  # noqa: E402
from compress.train.finetune import finetune  # noqa: E402
from compress.train.models import cifar_resnet  # noqa: E402
from compress.search.objectives import LatencyCost, fit_latency_predictor  # noqa: E402
from compress.deploy.timing import ReferenceTimer  # noqa: E402
from devices import get_device  # noqa: E402

PROTOCOL = "retrain"  # every chosen architecture trained from scratch with one recipe
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
# autoslim distils in place with KL, autoslim-alpha with the adaptive alpha-divergence; autoslim-per-ms: the KL
# supernet searched by held-out damage per millisecond saved, scored on 8 held-out batches instead of 2
METHODS = ("uniform", "autoslim", "dms", "uniform-aligned", "autoslim-alpha", "autoslim-per-ms")
PER_MS = {"criterion": "score_per_cost", "eval_batches": 8}
# the networks every method slims: the CIFAR ResNet-20 x2 (well proportioned for 32 x 32 inputs), and torchvision's
# ImageNet ResNet-18 as a user would take it from the zoo (7x7 stride-2 stem and max-pool, 512 channels at 1 x 1 in
# the last stage: latency dominated by weights, a cost FLOPs do not see)
MODELS = {"resnet20x2": ("ResNet-20 x2", lambda: cifar_resnet(width=2.0)),
          "resnet18": ("torchvision ResNet-18 (ImageNet layout)", lambda: torchvision.models.resnet18(num_classes=10))}


def fresh_subnet(build, arch: dict, x: torch.Tensor, seed: int = 0) -> torch.nn.Module:
    """The architecture ``arch`` (config + removed blocks) cut from a freshly initialised full model."""
    torch.manual_seed(seed)
    net = compress.SlimmableNetwork(build(), x)
    return extract_with_depth(net, arch["config"], arch["removed_blocks"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20x2", choices=sorted(MODELS))
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--train-per-class", type=int, default=2000)
    ap.add_argument("--epochs", type=float, default=6.0, help="training of every final architecture (epochs)")
    ap.add_argument("--dms-search", type=float, default=1.0, help="DMS search epochs")
    ap.add_argument("--supernet-epochs", type=float, default=3.0, help="AutoSlim supernet epochs")
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.35])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0],
                    help="train every chosen architecture once per seed (init and data order); top-1 is the mean")
    ap.add_argument("--methods", nargs="+", default=list(METHODS[:4]), choices=METHODS)
    ap.add_argument("--full", action="store_true", help="also train the full model with the same recipe (headroom)")
    ap.add_argument("--work", default=None, help="default out/bench_dms_cifar[_MODEL]")
    ap.add_argument("--out", default=None, help="default docs/dms_cifar[_MODEL] (.md and .json)")
    args = ap.parse_args(argv)
    suffix = "" if args.model == "resnet20x2" else f"_{args.model}"
    args.work = args.work or f"out/bench_dms_cifar{suffix}"
    args.out = args.out or f"docs/dms_cifar{suffix}"
    build = MODELS[args.model][1]
    torch.set_num_threads(2)
    work = Path(args.work)
    out_json = Path(args.out).with_suffix(".json")
    command = "python benchmarks/bench_dms_cifar.py " + " ".join(argv if argv is not None else sys.argv[1:])
    state = json.loads(out_json.read_text()) if out_json.exists() else {}
    state.get("args", {}).setdefault("model", "resnet20x2")  # files written before --model existed
    old = state.get("args", {})
    if state.get("protocol") != PROTOCOL or any(old.get(k) != getattr(args, k) for k in
                                                ("model", "train_per_class", "epochs")):
        state = {}
    rows: dict = state.get("rows", {})
    for r in rows.values():  # rows written before --seeds existed: their one training was seed 0
        r.setdefault("seeds", {"0": r["test_top1"]})
    for method, arg in (("dms", "dms_search"), ("autoslim", "supernet_epochs")):  # rows another search made
        if old.get(arg) != getattr(args, arg):
            rows = {k: r for k, r in rows.items() if not r.get("method", "").startswith(method)}
    t_start = time.perf_counter()

    all_train, test = load_image_folder(args.data, "train"), load_image_folder(args.data, "test")
    n = args.train_per_class
    train = TensorLoader(all_train.subset(n), 128, train=True)
    held = TensorLoader(all_train.subset(500, offset=n), 256)
    test_loader = TensorLoader(test, 500)
    print(f"data: {len(train.data)} train, {len(held.data)} held-out, {len(test)} test images")
    dev = get_device("cpu", threads=1)
    block = dev.channel_block
    x = torch.zeros(1, 3, 32, 32)
    probe = compress.SlimmableNetwork(build(), x)
    full = compress.extract_subnet(probe, None)
    # budgets are fractions of the full model: one timer with the reference pinned at the full model's latency
    # (kept from an earlier run when resuming) judges every candidate of every method by its ratio alone
    full_ms = state.get("full_ms") or ReferenceTimer(dev, full, (x,)).reference_ms
    timer = ReferenceTimer(dev, full, (x,), reference_ms=full_ms)
    predictor = fit_latency_predictor(probe, dev, "model", work / "latency")

    def save() -> None:
        save_json({"command": command, "protocol": PROTOCOL, "full_ms": full_ms, "rows": rows,
                   "fingerprint": dev.fingerprint(), "channel_block": block,
                   "seconds_this_run": time.perf_counter() - t_start, "args": vars(args)}, out_json)

    def uniform(budget: float, key: str, divisor: int) -> dict:
        net = compress.SlimmableNetwork(build(), x, divisor=divisor)
        path = uniform_path(net, LatencyCost(net, predictor, "model"))
        index, _ = closed_loop(net, path, budget, dev, timer=timer)
        return {"config": path[index]["config"], "removed_blocks": [], "width": path[index]["ratio"],
                "divisor": divisor}

    def dms(budget: float, key: str) -> dict:
        torch.manual_seed(0)
        res = compress.dms(build(), latency_ms=budget, device=dev, train_loader=train, val_loader=held,
                           predictor=predictor,
                           settings=DMSSettings(epochs=args.dms_search, lr=0.1, pipeline="scratch", divisor=block),
                           work_dir=work / key, timer=timer)
        return {"config": res.config, "removed_blocks": res.removed_blocks, "notes": res.notes,
                "seconds": res.seconds, "divisor": block}

    supernets: dict[str, tuple] = {}  # distillation loss -> (supernet, training seconds)

    def autoslim(budget: float, key: str, distill: str, search: dict | None = None) -> dict:
        if distill not in supernets:
            torch.manual_seed(0)
            supernet = compress.SlimmableNetwork(build(), x, divisor=block)
            history = compress.train_supernet(
                supernet, train, compress.TrainSettings(epochs=args.supernet_epochs, distill=distill),
                checkpoint=work / f"supernet_{distill}_e{args.supernet_epochs:g}.pt")
            supernets[distill] = (supernet, history["seconds"])  # training time over all runs, resumed or not
        supernet, supernet_s = supernets[distill]
        settings = compress.AutoSlimSettings(search=compress.SearchSettings(**(search or {})))
        res = compress.autoslim(supernet, latency_ms=budget, device=dev, train_loader=train, val_loader=held,
                                settings=settings,
                                predictor=predictor, work_dir=work / key, train=False, timer=timer)
        return {"config": res.config, "removed_blocks": [], "supernet_s": supernet_s, "distill": distill,
                "seconds": res.seconds, "divisor": block, "supernet_subnet_top1": res.top1}

    choose = {"uniform": lambda b, k: uniform(b, k, 8), "uniform-aligned": lambda b, k: uniform(b, k, block),
              "dms": dms, "autoslim": lambda b, k: autoslim(b, k, "kl"),
              "autoslim-alpha": lambda b, k: autoslim(b, k, "alpha"),
              "autoslim-per-ms": lambda b, k: autoslim(b, k, "kl", PER_MS)}

    def train_and_score(row: dict) -> torch.nn.Module | None:
        """The row's architecture from fresh weights, trained by the one recipe once per seed it lacks; sets
        ``seeds`` (seed -> top-1), ``test_top1`` (their mean), train_s, flops. Returns the last network trained."""
        seeds = row.setdefault("seeds", {})
        subnet = None
        for seed in args.seeds:
            if str(seed) in seeds:
                continue
            subnet = fresh_subnet(build, row, x, seed)
            loader = TensorLoader(train.data, 128, train=True, seed=seed)
            t1 = time.perf_counter()
            finetune(subnet, None, loader, args.epochs, lr=0.1)
            seeds[str(seed)] = evaluate(subnet, test_loader)["top1"]
            row.update({"train_s": time.perf_counter() - t1, "flops": int(compress.count_flops(subnet, (x,)).total)})
        row["test_top1"] = statistics.mean(seeds.values())
        return subnet

    def complete(key: str) -> bool:
        return key in rows and all(str(s) in rows[key]["seeds"] for s in args.seeds)

    if args.full and not complete("full"):  # what the budgets give up: the full model trained the same way
        row = rows.get("full") or {"config": probe.space.max_config(), "removed_blocks": [], "method": "full"}
        train_and_score(row)
        rows["full"] = row
        save()
    for frac in args.budgets:
        budget = frac * full_ms
        tag = f"b{int(round(frac * 100))}"
        for method in args.methods:
            key = f"{tag}_{method}"
            if complete(key):
                print(f"{key}: done in an earlier run, skipped")
                continue
            if key in rows:  # chosen in an earlier run; train the seeds it lacks
                train_and_score(rows[key])
                save()
                continue
            t0 = time.perf_counter()
            row = choose[method](budget, key)
            row["choose_s"] = time.perf_counter() - t0
            subnet = train_and_score(row)
            onnx = work / f"{key}.onnx"
            compress.export_onnx(subnet, (x,), onnx)
            row.update({"method": method, "budget_fraction": frac, "budget_ms": budget, "onnx": str(onnx)})
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


def per_seed(row: dict) -> str:
    return " / ".join(f"{v:.2f}" for v in row["seeds"].values())


def write_markdown(rows: dict, full_ms: float, command: str, path: Path, args) -> None:
    lines = ["# DMS vs AutoSlim vs uniform width on CIFAR-10 (equal measured latency, equal training)", "",
             f"Command: `{command.strip()}`", "",
             f"{MODELS[args.model][0]}; {args.train_per_class} training images per class, 500 per class held out, "
             "10,000 test images. Each method chooses an architecture under the budget; every architecture is then "
             f"cut from the same freshly initialised full model and trained from scratch for {args.epochs:g} epochs "
             "with one recipe, so top-1 compares architectures (mean over the seeds in `per seed`: initialisation "
             f"and data order). Choosing cost: DMS {args.dms_search:g} epoch(s) of search from random init; AutoSlim a supernet of {args.supernet_epochs:g} epochs (4 subnets per step, shared "
             f"by the budgets) plus greedy search. Full model {full_ms:.3f} ms (onnxruntime CPU, 1 thread). "
             "`latency / full model`: each budget's subnets and the full model timed interleaved in one run "
             "(drift-free); the budget is that fraction. Widths: every channel group's width, in group order.", "",
             "| budget | method | latency / full model | MFLOPs | blocks removed | widths | test top-1 | per seed | "
             "vs uniform | choose s | train s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for frac in args.budgets:
        tag = f"b{int(round(frac * 100))}"
        uni = rows.get(f"{tag}_uniform")
        for m in METHODS:
            r = rows.get(f"{tag}_{m}")
            if r is None:
                continue
            ms = f"{r['ratio']:.3f}" if "ratio" in r else "n/a"
            gain = f"{r['test_top1'] - uni['test_top1']:+.2f}" if uni and m != "uniform" else ""
            widths = "/".join(str(w) for w in r["config"].values())
            lines.append(f"| {frac:.0%} | {m} | {ms} | {r['flops'] / 1e6:.1f} | {len(r['removed_blocks'])} | "
                         f"{widths} | {r['test_top1']:.2f} | {per_seed(r)} | {gain} | {r['choose_s']:.0f} | "
                         f"{r['train_s']:.0f} |")
    if "full" in rows:
        r = rows["full"]
        lines += ["", f"The full model trained with the same recipe: {r['test_top1']:.2f}% test top-1 "
                  f"({r['flops'] / 1e6:.1f} MFLOPs, latency 1.0)."]
    sups = {r["distill"]: r["supernet_s"] for r in rows.values() if r.get("supernet_s")}
    if sups:
        lines += ["", "AutoSlim supernet training, shared by the budgets (seconds, summed over the runs that trained "
                  "it): " + ", ".join(f"{d} {s:.0f} s" for d, s in sups.items()) +
                  ". `autoslim` distils in place with KL, `autoslim-alpha` with the adaptive alpha-divergence; "
                  "`autoslim-per-ms` searches the KL supernet by held-out damage per millisecond saved, scored on "
                  "8 held-out batches (AutoSlim's rule: least damage, 2 batches)."]
    save_text("\n".join(lines) + "\n", path)


if __name__ == "__main__":
    sys.exit(main())
