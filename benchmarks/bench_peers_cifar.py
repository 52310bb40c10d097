"""AutoSlim and DMS against Torch-Pruning (DepGraph) and the uniformly narrowed network, at equal MEASURED latency,
starting from a converged CIFAR-10 model, with equal training.

    make -j2 bench-peers                               # both models side by side, 2 seeds (hours; resumable)
    python benchmarks/bench_peers_cifar.py --model cifar_resnet20_w1.5 --seeds 0 1
    python benchmarks/bench_peers_cifar.py --smoke     # tiny everything, end to end in minutes (out/ only)

Starting points: the presets of benchmarks/pretrain_cifar.py (``make bench-peers``: ``cifar_resnet20_w1.5`` and
``cifar_mobilenet_v2_w1``, whose smallest subnets measure under 35% of the full latency), weights from
``data/weights/<preset>.pt`` (or ``--weights``; a state_dict, loaded with ``weights_only=True``).
Data: ``--train-per-class`` (4,500) training images per class for every training and search, the next
``--held-per-class`` (500) per class held out (AutoSlim scores candidates on them), the 10,000 test images for every
reported top-1.

Budgets: fractions (50%, 35%) of the full model's latency measured with onnxruntime on the CPU, 1 thread. One
``ReferenceTimer`` pinned at the full model judges every candidate of every method by its drift-free ratio to the
full model (timed interleaved), under the closed-loop rule of ``compress.deploy.closed_loop``: a point is under
the budget only with ``HEADROOM`` (2%) to spare, and the search aims at >= 95% of the budget.

Methods (row keys ``b<percent>_<method>``):

- ``uniform``: the pretrained network, channels ordered by BN |gamma| (``reorder_channels_(net, "bn")``), narrowed
  by one width multiplier found by ``closed_loop`` on the uniform path. ``w<percent>_uniform`` rows
  (``--uniform-widths``) are fixed width multipliers for the capacity check.
- ``tp-<criterion>-<global|local>``: Torch-Pruning's MetaPruner (DepGraph, Fang et al., CVPR 2023) with the
  importance criteria of ``TP_CRITERIA``, global or per-layer ranking, the final classifier ignored, channels
  rounded to ``--divisor`` as ours are, pruned in ``--tp-steps`` iterative steps. The pruning ratio is found by
  bisection on the measured latency: each probe deep-copies the pretrained model, prunes it to the ratio, exports
  and times it with the shared timer; the smallest ratio measured under the budget wins.
- ``autoslim``: AutoSlim (Yu & Huang, 2019) from the pretrained model, what ``autoslim(..., pretrained=True)``
  does: channels reordered by BN importance, a slimmable supernet fine-tuned ``--supernet-epochs`` (sandwich rule,
  inplace distillation), then greedy slimming + closed loop (``autoslim(supernet, train=False)``). The supernet is
  trained once and shared by the budgets (the one-call ``autoslim`` would train it again for each budget); each
  budget's row is charged its whole cost. The greedy path is shared too: a deeper budget resumes the path a
  shallower one saved; each row's ``search s`` still counts the whole path from full width to its budget (the
  path's own clock), as if it had searched alone.
- ``dms``: DMS (differentiable model scaling) with ``DMSSettings(pipeline="pretrained")``, ``--dms-search`` epochs
  of search from the pretrained weights, then its closed loop.

Every chosen subnet then has its BN statistics recalibrated on 16 training batches and is fine-tuned with one
recipe (SGD, Nesterov momentum 0.9, lr ``--lr`` cosine to 0, weight decay 5e-4, batch 128, labels only), once per
seed (``--seeds``: data order and augmentation). Training budget: ``--epochs`` passes over the training images at
full-width cost per row. Torch-Pruning and uniform rows fine-tune all of it; AutoSlim and DMS rows fine-tune what
their search left: ``epochs - search images / training images``, where search images count every image passed
forward and backward weighted by the FLOPs of the network it passed through relative to the full model (sandwich
steps: each subnet by its FLOPs; the DMS search: the masked full network, weight 1). Forward-only work (greedy
scoring, BN recalibration, Torch-Pruning's Taylor batches, closed loops) is reported in seconds, not deducted.

Precondition (printed and written): the full model, evaluated as pretrained, is above every subnet, and the
uniform network's top-1 falls with its width (full > widths > 50% budget > 35% budget). A run that breaks it is
reported as "not capacity-bound" instead of a ranking: the budgets do not cost enough accuracy to rank methods.

Final latency check: every exported file of a budget is timed interleaved with the full model (``FINAL_REPEATS``
calls ``FINAL_PAUSE_S`` apart, each the median of per-round ratios; the median over calls is the file's ratio, the
lowest and highest are kept) when its row is new; ``--retime`` times them all again and rewrites the report (run
it on a quiet machine after a run that shared the cores with other jobs). A file's ratio to the full model moves by
about 2% RMS between timings some seconds apart on this shared host (docs/measurement_noise.md), as much as the
closed loops' headroom: one call is not enough to say whether a file chosen at 98% of its budget is under it.

On a machine other jobs share, latency ratios can read a few % low (ResNet-20 x1.5 files chosen at 0.475-0.49 of
the full model with three jobs on two cores measured 0.50-0.51 quiet; a guess at why: the full model's 2.4 MB of
weights do not fit the 2 MB L2 cache, so it slows more under contention than a subnet): a subnet chosen there can
measure over its budget when the machine is quiet, and under load a file can read a few % high too (MobileNetV2's
TP L1 row at 50% read 0.421, then 0.462, the same pruning ratio minutes apart): it was given less budget. Then,
with the machine quiet: ``--retime`` (the final check again), ``--rechoose-over-budget --rechoose-under-use 0.85
--choose-only`` (the rows over the budget, or using under 85% of it, chosen again and timed, nothing else
running), and a plain rerun (their fine-tunes; both models side by side is fine; a row chosen again with the same
architecture and starting weights keeps its fine-tunes, which are deterministic).

Files: this script runs the rows; ``peers_tp.py`` prunes with Torch-Pruning and bisects its ratio on measured
latency; ``peers_report.py`` writes the page (verdicts, precondition, plot); ``peers_summary.py`` joins models.

Resumable: the JSON (``--out``.json) is written after every step; a row's architecture and pruned weights are saved
(``<work>/<key>.pt`` + the row's ``arch``) before its fine-tune, each seed's top-1 when that fine-tune is done; the
supernet checkpoint is resumed. A run stopped in the middle of a fine-tune repeats that one fine-tune. A fresh clone
(the committed JSON, no ``--work`` files) rebuilds each row's ONNX file from its recorded architecture for the
latency checks, and makes a row's pruned weights again where they follow from the pretrained model alone (uniform,
Torch-Pruning at its recorded ratio: kept only if they score the recorded top-1 before fine-tuning), so its seeds
left can be fine-tuned; other rows with seeds left are chosen again.

Devices: every row records the CPU it was chosen on (``chosen_on``) and every final check the CPU it ran on
(``ratio_cpu``). Latency ratios are device-specific, so a run refuses to choose a row on a CPU other than the one
the table's rows were chosen on, or where the full model measures more than ``SPEED_TOLERANCE`` times faster or
slower than the table's ``full_ms`` (another host with the same CPU name, or a loaded one): ``PeerBenchmarkError``.
Fine-tunes and ``--retime`` run anywhere.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import compress  # noqa: E402
from pretrain_cifar import PRESETS, build_preset  # noqa: E402
from compress.deploy.closed_loop import HEADROOM, closed_loop  # noqa: E402
from compress.deploy.timing import ReferenceTimer, measure_module  # noqa: E402
from compress.io import load_checkpoint, save_checkpoint, save_json, weights_digest  # noqa: E402
from compress.search.baselines import uniform_path  # noqa: E402
from compress.search.dms.masked import extract_with_depth  # noqa: E402
from compress.search.objectives import LatencyCost, fit_latency_predictor  # noqa: E402
from compress.train.data import SHIPPED_CIFAR, TensorLoader, load_image_folder  # noqa: E402
from compress.train.evaluate import evaluate, take_batches  # noqa: E402
from compress.train.finetune import finetune  # noqa: E402
from compress.train.supernet import sandwich_configs  # noqa: E402
from devices import get_device  # noqa: E402
from devices.profile_device import round_ratio  # noqa: E402
from peers_report import rows_over_budget, rows_under_use, write_report  # noqa: E402
from peers_tp import (TP_CRITERIA, TP_MODES, PeerBenchmarkError, bisect_ratio, budget_floor,  # noqa: E402
                      module_shapes, tp_prune, with_shapes)

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
FINAL_REPEATS = 9       # interleaved calls of the final latency check, median kept (and the range)
FINAL_PAUSE_S = 10.0    # between them: the host's speed drifts over tens of seconds (docs/measurement_noise.md)
BATCH = 128
SMOKE_SEARCH = {"eval_batches": 1, "calib_batches": 1}  # the greedy search's scoring, cut down in a smoke run
SMOKE_DMS = {"structure_lr": 0.1}  # a 4-step smoke search moves the pruning ratios far enough to reach the budgets
CALIB_BATCHES = 16
# Choosing rows needs the machine the table's budgets were set on: the same CPU name, and the full model measuring
# within this factor of the table's full_ms. Two hosts named "AMD EPYC" measured it at 0.90 and 2.25 ms, and their
# latency ratios differed too (one Torch-Pruning subnet: 0.341 vs 0.301 of the full model); a loaded machine reads
# ratios a few % off as well. On the host the ResNet-20 h5 table was chosen on, later final checks (some beside
# other jobs) read the full model at 0.98-1.11 ms against its 0.90 ms: within this factor.
SPEED_TOLERANCE = 1.25


def flops_images(net, configs_per_step: list[list[dict]], batch: int) -> float:
    """Training images at full-width cost: every step's batch once per config, weighted by its FLOPs / full."""
    fm = net.flops_model()
    full = float(fm.flops_batch([net.space.max_config()])[0])
    total = 0.0
    for cfgs in configs_per_step:
        total += batch * float(sum(fm.flops_batch(cfgs))) / full
    return total


def final_ratios(full_onnx: Path, files: list[Path], repeats: int = FINAL_REPEATS,
                 pause_s: float = FINAL_PAUSE_S) -> list[dict]:
    """Each file's latency as a ratio to the full model's: timed interleaved with it (onnxruntime CPU, 1 thread,
    >= 100 runs each), the median over rounds of per-round ratios (what ``ReferenceTimer`` does), then the median
    over ``repeats`` such calls ``pause_s`` apart. Returns per file ``ratio``, ``ratio_min``, ``ratio_max`` (over
    the calls), ``interleaved_ms`` and ``interleaved_full_ms``."""
    dev = get_device("cpu", threads=1)
    ratios: list[list[float]] = [[] for _ in files]
    times: list[list[float]] = [[] for _ in files]
    fulls: list[float] = []
    for call in range(repeats):
        if call:
            time.sleep(pause_s)
        full, *runs = dev.measure_interleaved([full_onnx, *files], min_runs=100)
        fulls.append(full.median_ms)
        for k, m in enumerate(runs):
            ratios[k].append(round_ratio(m.to_dict(), full.to_dict()))
            times[k].append(m.median_ms)
    return [{"ratio": statistics.median(r), "ratio_min": min(r), "ratio_max": max(r),
             "interleaved_ms": statistics.median(t),
             "interleaved_full_ms": statistics.median(fulls)} for r, t in zip(ratios, times)]


def same_start(row: dict, old: dict) -> dict | None:
    """``old`` (a replaced row) when ``row`` starts its fine-tunes where it did: the same architecture and the same
    top-1 before fine-tuning (the same pruned weights), and ``old`` has fine-tunes to keep; else None."""
    if old.get("seeds") and old.get("arch") == row.get("arch") and old.get("pre_ft_top1") == row.get("pre_ft_top1"):
        return old
    return None


def greedy_seconds(path_file: Path) -> float:
    """Wall time of the greedy path saved in ``path_file`` from full width to its last point (also the part an
    earlier run or another budget's row searched: the path is resumed, its cost is not)."""
    points = json.loads(path_file.read_text())["path"] if path_file.exists() else []
    return float(points[-1]["seconds"]) if points else 0.0


def cpu_of(fingerprint: dict) -> str:
    """The CPU a device fingerprint names (latency ratios hold for that CPU only)."""
    return str(fingerprint.get("cpu", "an unknown CPU"))


def benchmark_data(args):
    """(every training image, the ``--train-per-class`` training subset, the test set) of a run's arguments."""
    all_train = load_image_folder(args.data, "train")
    test_set = load_image_folder(args.data, "test")
    if args.test_per_class:
        test_set = test_set.subset(args.test_per_class)
    return all_train, all_train.subset(args.train_per_class), test_set


def rebuild_row(model: str, row: dict, x: torch.Tensor, divisor: int) -> nn.Module:
    """A row's subnet from its recorded architecture (``arch``) and, where ``row["weights"]`` is not None, its saved
    weights (before fine-tuning); in eval mode."""
    arch = row["arch"]
    if arch["kind"] == "slim":
        net = compress.SlimmableNetwork(build_preset(model), x, divisor=divisor)
        sub = extract_with_depth(net, arch["config"], arch["removed_blocks"])
    else:
        sub = with_shapes(build_preset(model), arch["shapes"])
    if row["weights"] is not None:
        sub.load_state_dict(load_checkpoint(row["weights"]))
    return sub.eval()


def fine_tune_row(sub: nn.Module, train_set, seed: int, epochs: float, lr: float,
                  teacher: nn.Module | None = None) -> None:
    """The benchmark's one fine-tune recipe, in place: SGD with Nesterov momentum, lr cosine to 0, ``epochs`` passes
    over ``train_set`` in batches of BATCH, data order and augmentation from ``seed``; labels only, or with a
    ``teacher`` labels plus KL to its output (``compress.train.finetune``)."""
    torch.manual_seed(seed)
    if epochs > 0:
        finetune(sub, teacher, TensorLoader(train_set, BATCH, train=True, seed=seed), epochs, lr=lr)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---- the benchmark --------------------------------------------------------------------------------------------

def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cifar_resnet20", choices=sorted(PRESETS))
    ap.add_argument("--weights", default=None, help="state_dict of the pretrained model (default "
                    "data/weights/<model>.pt)")
    ap.add_argument("--data", default=None, help=f"CIFAR-10 ImageFolder .tar.gz (default {DEFAULT_DATA})")
    ap.add_argument("--train-per-class", type=int, default=4500)
    ap.add_argument("--held-per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=None, help="default: every test image")
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.35])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--epochs", type=float, default=10.0,
                    help="training budget per row, in passes over the training images at full-width cost")
    ap.add_argument("--lr", type=float, default=0.01, help="fine-tune learning rate (every row), DMS search lr")
    ap.add_argument("--supernet-epochs", type=float, default=2.0)
    ap.add_argument("--supernet-lr", type=float, default=0.02)
    ap.add_argument("--dms-search", type=float, default=1.0, help="DMS search epochs")
    ap.add_argument("--methods", nargs="+", default=["uniform", "autoslim", "dms", "tp"],
                    choices=["uniform", "autoslim", "dms", "tp"])
    ap.add_argument("--tp-criteria", nargs="+", default=list(TP_CRITERIA), choices=sorted(TP_CRITERIA))
    ap.add_argument("--tp-modes", nargs="+", default=list(TP_MODES), choices=sorted(TP_MODES))
    ap.add_argument("--tp-steps", type=int, default=5, help="Torch-Pruning iterative_steps")
    ap.add_argument("--tp-probes", type=int, default=8, help="measured pruning ratios per Torch-Pruning row")
    ap.add_argument("--taylor-batches", type=int, default=4, help="held-out batches of Taylor's gradients")
    ap.add_argument("--uniform-widths", nargs="*", type=float, default=[0.75],
                    help="fixed uniform width multipliers also fine-tuned (capacity check)")
    ap.add_argument("--min-ratio", type=float, default=0.25,
                    help="no method keeps less than this fraction of a layer's channels (TP: max_pruning_ratio = 1 - it)")
    ap.add_argument("--divisor", type=int, default=8, help="channel multiple of every method (TP: round_to)")
    ap.add_argument("--profile-configs", type=int, default=24, help="subnets profiled for the latency predictor")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training")
    ap.add_argument("--work", default=None, help="default out/bench_peers_cifar/<model>[_smoke]")
    ap.add_argument("--out", default=None, help="default docs/peers_cifar_<model> (smoke: <work>/peers_cifar)")
    ap.add_argument("--retime", action="store_true",
                    help="only time every exported file again (the final latency check, e.g. on a quiet machine "
                         "after a run that shared it) and rewrite the report; nothing is chosen or trained")
    ap.add_argument("--headroom", type=float, default=HEADROOM,
                    help="every method's closed loop: a measured latency is under the budget only this fraction "
                         "below it (and aims at >= 1 - 2 x headroom of it when that is below 95%%)")
    ap.add_argument("--final-repeats", type=int, default=FINAL_REPEATS,
                    help="interleaved calls of the final latency check (median kept)")
    ap.add_argument("--final-pause-s", type=float, default=FINAL_PAUSE_S, help="seconds between those calls")
    ap.add_argument("--rechoose-over-budget", action="store_true",
                    help="choose again (and fine-tune again) every row whose exported file measured over its budget "
                         "in the last final latency check, then time the files again; run it on a quiet machine. "
                         "The replaced rows are kept in the JSON under 'replaced' and named in the report")
    ap.add_argument("--rechoose-under-use", type=float, default=None, metavar="FRACTION",
                    help="also choose again every row whose file used less than FRACTION of its budget in the last "
                         "final check (e.g. 0.85: chosen on a busy machine, it was given less budget than the rest); "
                         "a row chosen again with the same architecture and starting weights keeps its fine-tunes")
    ap.add_argument("--choose-only", action="store_true",
                    help="choose (and time) the rows that are new, fine-tune nothing: run the latency-sensitive part "
                         "alone on a quiet machine, the fine-tunes after it (a plain rerun), side by side if you like")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny everything (shipped subset, 200/50/50 images per class, 0.05-epoch fine-tunes, one "
                         "seed, two TP rows, random init without a weights file): checks the script end to end")
    args = ap.parse_args(argv)
    if args.smoke:
        args.data = args.data or str(SHIPPED_CIFAR)
        args.train_per_class, args.held_per_class, args.test_per_class = 200, 50, 50
        args.seeds, args.epochs, args.supernet_epochs, args.dms_search = [0], 0.35, 0.05, 0.25
        args.tp_criteria, args.tp_modes, args.tp_steps, args.tp_probes = ["l1", "taylor"], ["global"], 2, 4
        args.taylor_batches, args.profile_configs = 1, 16
        args.final_repeats, args.final_pause_s = 3, 0.0
    args.data = args.data or str(DEFAULT_DATA)
    args.work = args.work or f"out/bench_peers_cifar/{args.model}{'_smoke' if args.smoke else ''}"
    args.out = args.out or (f"{args.work}/peers_cifar_{args.model}" if args.smoke else f"docs/peers_cifar_{args.model}")
    return args


def load_pretrained(args) -> tuple[nn.Module, dict]:
    """The pretrained model and what is known of it (its pretrain record, or that it is random in a smoke run)."""
    torch.manual_seed(0)
    model = build_preset(args.model)
    path = Path(args.weights or ROOT / "data" / "weights" / f"{args.model}.pt")
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        rec_path = path.with_suffix(".json")
        rec = json.loads(rec_path.read_text()) if rec_path.exists() else {}
        return model.eval(), {"weights": str(path), "pretrain_top1": rec.get("test_top1"),
                              "pretrain_epochs": rec.get("epochs")}
    if not args.smoke:
        raise PeerBenchmarkError(f"No pretrained weights at {str(path)!r}. Run `make pretrain` (or "
                                 f"benchmarks/pretrain_cifar.py --model {args.model}) first, or pass --weights.")
    print(f"smoke: no weights at {path}; the model is randomly initialised")
    return model.eval(), {"weights": None, "pretrain_top1": None, "pretrain_epochs": None}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/bench_peers_cifar.py " + " ".join(argv if argv is not None else sys.argv[1:])
    work, out_json = Path(args.work), Path(f"{args.out}.json")  # not with_suffix: "w1.5" is no suffix
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    pretrained, origin = load_pretrained(args)
    x = torch.zeros(1, 3, 32, 32)

    all_train, train_set, test_set = benchmark_data(args)
    train = TensorLoader(train_set, BATCH, train=True)
    held = TensorLoader(all_train.subset(args.held_per_class, offset=args.train_per_class), 256)
    test = TensorLoader(test_set, 500)
    n_train = len(train_set)
    calib = take_batches(TensorLoader(train_set, BATCH, train=True, seed=999), CALIB_BATCHES, "train")
    grad_batches = take_batches(TensorLoader(held.data, 64), args.taylor_batches, "held-out")
    print(f"data: {n_train} train, {len(held.data)} held-out, {len(test_set)} test images")

    identity = {"model": args.model, "weights_digest": weights_digest(pretrained), "data": Path(args.data).name,
                "train_per_class": args.train_per_class, "held_per_class": args.held_per_class,
                "test_per_class": args.test_per_class, "epochs": args.epochs, "lr": args.lr,
                "divisor": args.divisor, "min_ratio": args.min_ratio, "supernet_epochs": args.supernet_epochs,
                "supernet_lr": args.supernet_lr,
                "dms_search": args.dms_search, "tp_steps": args.tp_steps, "smoke": args.smoke}
    if args.headroom != HEADROOM:  # another headroom chooses other subnets (the default keeps older results valid)
        identity["headroom"] = args.headroom
    state = json.loads(out_json.read_text()) if out_json.exists() else {}
    if state and state.get("identity") != identity:
        raise PeerBenchmarkError(
            f"{out_json} was written by another setup ({state.get('identity')}; now {identity}). Pass another "
            "--out / --work, or move the old files away.")
    rows: dict = state.get("rows", {})
    replaced: dict = state.get("replaced", {})  # row key -> the rows it replaced (over budget in the final check)
    dev = get_device("cpu", threads=1)
    here = cpu_of(dev.fingerprint())
    saved_on = cpu_of(state["fingerprint"]) if state.get("fingerprint") else here
    for r in [*rows.values(), *(o for olds in replaced.values() for o in olds)]:
        r.setdefault("chosen_on", saved_on)  # rows recorded before chosen_on was: the last run's machine

    full_net = compress.SlimmableNetwork(copy.deepcopy(pretrained), x, divisor=args.divisor)
    full = compress.extract_subnet(full_net, None)
    now_ms = measure_module(dev, full, (x,)).median_ms
    full_ms = state.get("full_ms") or now_ms

    def ensure_chosen_here(what: str) -> None:
        """Latency is device-specific (a file's ratio to the full model moved from 0.314 to 0.255 between two
        hosts): one table must not hold subnets chosen for different CPUs, nor subnets chosen where the full model
        runs at another speed than where the budgets were set."""
        others = sorted({r["chosen_on"] for r in rows.values()} - {here})
        if others:
            raise PeerBenchmarkError(
                f"{what} on this machine ({here}), but rows of {out_json} were chosen on {', '.join(others)}: the "
                "table would compare subnets chosen for different CPUs. Fine-tunes and --retime run on any machine; "
                "to choose rows here, start a new run with another --out and --work.")
        speed = now_ms / full_ms
        if not 1 / SPEED_TOLERANCE <= speed <= SPEED_TOLERANCE:
            raise PeerBenchmarkError(
                f"{what} on this machine, but the full model measures {now_ms:.3f} ms here and measured "
                f"{full_ms:.3f} ms where {out_json}'s budgets were set ({speed:.2f}x, more than {SPEED_TOLERANCE:g}x "
                f"either way): another machine with the same CPU name ({here}), or this one under load. Latency "
                "ratios differ between such machines. Choose rows on a quiet machine of the table's kind; "
                "fine-tunes and --retime run on any machine; or start a new run with another --out and --work.")

    again = {}  # key -> why it is chosen again (the last final check only: it is the most precise one on record)
    if args.rechoose_over_budget and not args.retime:
        again |= {k: "over" for k in rows_over_budget(rows)}
    if args.rechoose_under_use is not None and not args.retime:
        again |= {k: f"under {args.rechoose_under_use:.0%} of" for k in rows_under_use(rows, args.rechoose_under_use)}
    if again:
        ensure_chosen_here(f"{', '.join(again)} would be chosen again")
    for key, why in again.items():
        old = rows.pop(key)
        print(f"== {key}: its exported file measured {old['ratio']:.3f} of the full model in the final latency "
              f"check, {why} the budget of {old['budget_fraction']:.2f}: choosing it again")
        replaced.setdefault(key, []).append({k: v for k, v in old.items() if k != "probes"})

    timer = ReferenceTimer(dev, full, (x,), reference_ms=full_ms)  # every latency below is a ratio to it
    predictor = fit_latency_predictor(full_net, dev, "model", work / "latency", args.profile_configs)
    full_flops = int(compress.count_flops(full, (x,)).total)
    full_onnx = work / "full.onnx"
    if not full_onnx.exists():
        compress.export_onnx(full, (x,), full_onnx)
    if "full_top1" not in state:
        state["full_top1"] = evaluate(pretrained, test)["top1"]
    full_top1 = state["full_top1"]
    print(f"full model: {full_ms:.3f} ms (here now: {now_ms:.3f} ms), {full_flops / 1e6:.1f} MFLOPs, test top-1 "
          f"{full_top1:.2f}% (evaluated as pretrained)")

    def save() -> None:
        save_json({"command": command, "identity": identity, "origin": origin, "full_ms": full_ms,
                   "full_top1": full_top1, "full_flops": full_flops, "full_params": n_params(pretrained),
                   "n_train": n_train, "rows": rows, "replaced": replaced, "fingerprint": dev.fingerprint(),
                   "seconds_this_run": time.perf_counter() - t_start, "args": vars(args)}, out_json)

    # -- choosers: (budget fraction, row key) -> (subnet, row fields); every subnet keeps its chosen weights ----
    def slim_net() -> compress.SlimmableNetwork:
        net = compress.SlimmableNetwork(copy.deepcopy(pretrained), x, divisor=args.divisor)
        compress.reorder_channels_(net, "bn")
        return net

    def choose_uniform(frac: float | None, key: str, width: float | None = None):
        net = slim_net()
        t0 = time.perf_counter()
        if width is None:
            path = uniform_path(net, LatencyCost(net, predictor, "model"), args.min_ratio)
            index, meas = closed_loop(net, path, frac * full_ms, dev, timer=timer, headroom=args.headroom,
                                      min_use=budget_floor(args.headroom))
            cfg, width, loop = path[index]["config"], path[index]["ratio"], meas[index].median_ms / full_ms
        else:
            cfg = net.space.uniform_config(width)
            loop = None
        sub = compress.extract_subnet(net, cfg)
        return sub, {"arch": {"kind": "slim", "config": cfg, "removed_blocks": []}, "width": width,
                     "closed_loop_ratio": loop, "search_s": time.perf_counter() - t0, "search_images": 0.0}

    def choose_tp(frac: float, key: str, criterion: str, mode: str):
        t0 = time.perf_counter()

        def measure(r: float) -> float:
            return timer(tp_prune(pretrained, x, criterion, TP_MODES[mode], r, args.tp_steps, args.divisor,
                                  grad_batches, 1 - args.min_ratio)).median_ms / full_ms

        found = bisect_ratio(measure, frac, args.tp_probes, 1 - args.min_ratio, headroom=args.headroom)
        if found["ratio"] is None:
            return None, {"failed": f"no pruning ratio up to {1 - args.min_ratio:g} measured under the budget",
                          "probes": found["probes"]}
        sub = tp_prune(pretrained, x, criterion, TP_MODES[mode], found["ratio"], args.tp_steps, args.divisor,
                       grad_batches, 1 - args.min_ratio)
        return sub, {"arch": {"kind": "shapes", "shapes": module_shapes(sub)}, "tp_ratio": found["ratio"],
                     "probes": found["probes"], "closed_loop_ratio": found["latency_ratio"],
                     "search_s": time.perf_counter() - t0, "search_images": 0.0,
                     "criterion": TP_CRITERIA[criterion][2], "global_pruning": TP_MODES[mode]}

    supernet_box: dict = {}

    def trained_supernet():
        if "net" not in supernet_box:
            net = slim_net()
            ts = compress.TrainSettings(epochs=args.supernet_epochs, lr=args.supernet_lr, warmup_epochs=0.0,
                                        min_ratio=args.min_ratio)
            hist = compress.train_supernet(net, train, ts, checkpoint=work / "supernet.pt")
            steps = max(1, int(round(ts.epochs * len(train))))
            images = flops_images(net, [sandwich_configs(net.space, ts, s) for s in range(steps)], BATCH)
            supernet_box.update(net=net, seconds=hist["seconds"], images=images)
        return supernet_box["net"], supernet_box["seconds"], supernet_box["images"]

    def choose_autoslim(frac: float, key: str):
        net, sup_s, sup_images = trained_supernet()
        # one greedy path serves every budget (its decisions do not depend on the target; greedy_slim resumes a
        # saved path and goes on from its end): start from the path another budget's row saved, as the supernet is
        own = work / key / "path.json"
        others = sorted(work.glob("b*_autoslim/path.json"), key=lambda f: f.stat().st_size, reverse=True)
        if not own.exists() and others:
            own.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(others[0], own)
            print(f"{key}: greedy path resumed from {others[0]}")
        settings = compress.AutoSlimSettings(divisor=args.divisor, pretrained=True, latency_headroom=args.headroom,
                                             min_budget_use=budget_floor(args.headroom),
                                             train=compress.TrainSettings(
            epochs=args.supernet_epochs, lr=args.supernet_lr, warmup_epochs=0.0, min_ratio=args.min_ratio),
            search=compress.SearchSettings(min_ratio=args.min_ratio, **SMOKE_SEARCH if args.smoke else {}))
        res = compress.autoslim(net, latency_ms=frac * full_ms, device=dev, train_loader=train, val_loader=held,
                                settings=settings, predictor=predictor, work_dir=work / key, train=False,
                                timer=timer)
        greedy_s = greedy_seconds(work / key / "path.json")
        return res.subnet, {"arch": {"kind": "slim", "config": res.config, "removed_blocks": []},
                            "closed_loop_ratio": res.measured_ms / full_ms,
                            "search_s": sup_s + greedy_s + res.seconds.get("closed_loop", 0.0),
                            "search_images": sup_images, "supernet_s": sup_s, "greedy_s": greedy_s}

    def choose_dms(frac: float, key: str):
        settings = compress.DMSSettings(pipeline="pretrained", epochs=args.dms_search, lr=args.lr, train_epochs=0.0,
                                        latency_headroom=args.headroom,
                                        min_budget_use=budget_floor(args.headroom),
                                        divisor=args.divisor, min_ratio=args.min_ratio,
                                        **SMOKE_DMS if args.smoke else {})
        t0 = time.perf_counter()
        res = compress.dms(copy.deepcopy(pretrained), latency_ms=frac * full_ms, device=dev, train_loader=train,
                           val_loader=held, settings=settings, predictor=predictor, work_dir=work / key,
                           timer=timer)
        steps = max(1, int(round(settings.epochs * len(train))))
        return res.subnet, {"arch": {"kind": "slim", "config": res.config, "removed_blocks": res.removed_blocks},
                            "closed_loop_ratio": res.measured_ms / full_ms, "search_s": time.perf_counter() - t0,
                            "search_images": float(steps * BATCH), "notes": res.notes}

    def rebuild(row: dict) -> nn.Module:
        return rebuild_row(args.model, row, x, args.divisor)

    def seeds_left(row: dict) -> list[str]:
        return sorted(set(map(str, args.seeds)) - set(row["seeds"]))

    def derive(key: str, row: dict) -> nn.Module | None:
        """The row's subnet before fine-tuning, made again from the pretrained model where it follows from it alone
        (uniform: the reordered network at the recorded config; Torch-Pruning: the recorded criterion and ratio),
        BN recalibrated; None for AutoSlim and DMS (their weights come from a supernet or a search)."""
        if row["method"] == "uniform":
            sub = compress.extract_subnet(slim_net(), row["arch"]["config"])
        elif row["method"] == "tp":
            criterion, mode = key.split("_tp-", 1)[1].rsplit("-", 1)
            sub = tp_prune(pretrained, x, criterion, TP_MODES[mode], row["tp_ratio"], args.tp_steps, args.divisor,
                           grad_batches, 1 - args.min_ratio)
            if json.loads(json.dumps(module_shapes(sub))) != row["arch"]["shapes"]:
                return None
        else:
            return None
        compress.recalibrate_bn(sub, calib)
        return sub.eval()

    def restore_files(key: str, row: dict) -> None:
        """A row recorded on another machine (a fresh clone has the JSON but not ``--work``): its pruned weights made
        again (``derive``) when seeds are left to fine-tune, kept only if they score the recorded top-1 before
        fine-tuning (else the row is chosen again); its ONNX file rebuilt from its architecture for the latency
        checks (latency depends on the architecture, not on the weights' values)."""
        weights, onnx = Path(row["weights"]), Path(row["onnx"])
        if seeds_left(row) and not weights.exists():
            sub = derive(key, row)
            if sub is not None and evaluate(sub, test)["top1"] == row["pre_ft_top1"]:
                save_checkpoint(sub.state_dict(), weights)
                compress.export_onnx(sub, (x,), onnx)
                print(f"== {key}: pruned weights made again from the pretrained model (top-1 before fine-tuning "
                      f"{row['pre_ft_top1']:.2f}% as recorded)")
                return
        if not onnx.exists() and weights.exists():
            compress.export_onnx(rebuild(row), (x,), onnx)
        elif not onnx.exists():
            with torch.random.fork_rng():
                torch.manual_seed(0)
                arch_only = rebuild({**row, "weights": None})
            compress.export_onnx(arch_only, (x,), onnx)
            row["onnx_rebuilt"] = "from the recorded architecture, random weights (the pruned weights are elsewhere)"
            print(f"== {key}: ONNX file rebuilt from its recorded architecture for the latency checks")

    def record(key: str, method: str, frac: float | None, chosen) -> None:
        """Save the chosen subnet (BN recalibrated) and its row before any fine-tune."""
        sub, fields = chosen
        if sub is None:
            rows[key] = {"method": method, "budget_fraction": frac, **fields, "chosen_on": here}
            print(f"{key}: {fields['failed']}")
            save()
            return
        compress.recalibrate_bn(sub, calib)
        weights = work / f"{key}.pt"
        save_checkpoint(sub.state_dict(), weights)
        onnx = work / f"{key}.onnx"
        compress.export_onnx(sub, (x,), onnx)
        search_epochs = fields["search_images"] / n_train
        ft = max(0.0, args.epochs - search_epochs)
        row = {"method": method, "budget_fraction": frac, **fields, "chosen_on": here, "weights": str(weights),
               "onnx": str(onnx),
               "flops": int(compress.count_flops(sub, (x,)).total), "params": n_params(sub),
               "search_epochs": search_epochs, "ft_epochs": ft, "pre_ft_top1": evaluate(sub, test)["top1"],
               "seeds": {}}
        if search_epochs > args.epochs:
            row["note"] = f"search used {search_epochs:.2f} epochs, more than the budget of {args.epochs:g}"
        if key in replaced:  # its first choice's wall time counts too (a DMS search is resumed, not repeated)
            row["search_s"] += sum(r.get("search_s", 0.0) for r in replaced[key])
            row["rechosen"] = len(replaced[key])
            same = same_start(row, replaced[key][-1])
            if same:  # the fine-tunes are deterministic: the same start gives the same top-1
                row["seeds"], row["ft_s"] = dict(same["seeds"]), dict(same.get("ft_s", {}))
                row["note"] = (row.get("note", "") + "; " if row.get("note") else "") + \
                    "chosen again with the same architecture and starting weights: the earlier fine-tunes kept"
        rows[key] = row
        print(json.dumps({k: v for k, v in row.items() if k not in ("arch", "probes", "notes")}))
        save()

    def fine_tune(key: str) -> None:
        row = rows[key]
        for seed in args.seeds:
            if "failed" in row or str(seed) in row["seeds"]:
                continue
            sub = rebuild(row)
            t0 = time.perf_counter()
            fine_tune_row(sub, train_set, seed, row["ft_epochs"], args.lr)
            row["seeds"][str(seed)] = evaluate(sub, test)["top1"]
            row.setdefault("ft_s", {})[str(seed)] = time.perf_counter() - t0
            print(f"{key} seed {seed}: test top-1 {row['seeds'][str(seed)]:.2f}%")
            save()

    # -- the rows, budget by budget -----------------------------------------------------------------------------
    jobs: list[tuple[str, str, float | None, Callable]] = []
    for w in args.uniform_widths:
        jobs.append((f"w{round(w * 100)}_uniform", "uniform", None, lambda f, k, w=w: choose_uniform(f, k, w)))
    for frac in args.budgets:
        tag = f"b{round(frac * 100)}"
        if "uniform" in args.methods:
            jobs.append((f"{tag}_uniform", "uniform", frac, choose_uniform))
        if "autoslim" in args.methods:
            jobs.append((f"{tag}_autoslim", "autoslim", frac, choose_autoslim))
        if "dms" in args.methods:
            jobs.append((f"{tag}_dms", "dms", frac, choose_dms))
        if "tp" in args.methods:
            for crit in args.tp_criteria:
                for mode in args.tp_modes:
                    jobs.append((f"{tag}_tp-{crit}-{mode}", "tp", frac,
                                 lambda f, k, c=crit, m=mode: choose_tp(f, k, c, m)))
    for key, row in list(rows.items()):
        if "onnx" in row and not (Path(row["onnx"]).exists() and Path(row["weights"]).exists()):
            restore_files(key, row)
    for key, method, frac, choose in ([] if args.retime else jobs):
        row = rows.get(key, {})
        if method == "autoslim" and "weights" in row and "greedy_s" not in row:  # rows recorded before greedy_s
            row["greedy_s"] = greedy_seconds(work / key / "path.json")
            row["search_s"] = max(row["search_s"], row["supernet_s"] + row["greedy_s"])
        if "weights" in row and not Path(row["weights"]).exists() and seeds_left(row):
            # e.g. a fresh clone with the committed JSON but not out/: the row's seeds must share one architecture
            print(f"== {key}: its pruned weights {row['weights']} are missing and seeds "
                  f"{seeds_left(row)} are left: choosing it again "
                  f"(finished seeds {sorted(row['seeds'])} dropped)")
            del rows[key]
        if key not in rows:
            ensure_chosen_here(f"{key} would be chosen")
            print(f"== {key}: choosing")
            try:
                chosen = choose(frac, key)
            except (compress.BudgetNotMetError, compress.BudgetUnreachableError) as e:
                chosen = (None, {"failed": f"{type(e).__name__}: {e}"})
            record(key, method, frac, chosen)  # a failed row is kept (delete it from the JSON to retry)
        if not args.choose_only:
            fine_tune(key)
    # the final latency check: every exported file of a budget timed interleaved with the full model, together
    if args.retime:  # the earlier checks stay on record: a file's ratio moves by a few % between occasions
        for r in rows.values():
            if "ratio" in r:
                r.setdefault("earlier_ratios", []).append(r.pop("ratio"))
    for group in sorted({k.split("_")[0] for k in rows}):
        keys = [k for k in rows if k.startswith(group + "_") and "onnx" in rows[k]]
        if not keys or all("ratio" in rows[k] for k in keys):
            continue
        print(f"final timing of {len(keys)} {group} files with the full model, {args.final_repeats} interleaved "
              f"calls {args.final_pause_s:g} s apart")
        for k, timing in zip(keys, final_ratios(full_onnx, [Path(rows[k]["onnx"]) for k in keys],
                                                args.final_repeats, args.final_pause_s)):
            if "ratio" in rows[k]:  # timed again with a new row of its budget: the earlier check stays on record
                rows[k].setdefault("earlier_ratios", []).append(rows[k]["ratio"])
            rows[k].update(timing, ratio_cpu=here)
        save()
    save()
    report = write_report(rows, state | {"full_top1": full_top1, "replaced": replaced}, full_ms, full_flops,
                          n_params(pretrained), origin, command, Path(args.out), args, BATCH)
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PeerBenchmarkError as e:
        sys.exit(f"error: {e}")
