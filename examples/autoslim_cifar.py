"""AutoSlim end to end on a built-in default: the converged CIFAR-10 ResNet-20 x1.5 shipped in data/weights/, the
CIFAR-10 subset shipped in data/.

    python examples/autoslim_cifar.py                      # pretrained pipeline from the shipped model
    python examples/autoslim_cifar.py --budget 0.35 --data ../shared/data/cifar10-jpg.tar.gz
    python examples/autoslim_cifar.py --weights none --width 2 --epochs 3   # from scratch: a ResNet-20 x2

Fine-tunes a slimmable supernet from the trained weights after reordering channels by BN importance (the pretrained
pipeline; with --weights none it trains one from random init instead), profiles latency in context on onnxruntime
CPU (1 thread), searches greedily against predicted latency, confirms the budget by measurement, and compares with
the same network uniformly narrowed to the same measured latency; both subnets are then fine-tuned alike for
--finetune-epochs (1; distilled from the supernet), and their top-1 is printed before and after. The supernet
trains on 900 of the 1,000 training images per class, the search scores candidates on all the other 100, and every
reported top-1 is on the 2,000 test images. The frontier plot has one latency axis: measured, with the path's
predicted latencies calibrated by the full model's measured / predicted ratio (said in the legend). Writes out/autoslim_demo/: the ONNX file, result.json, the search path, a frontier plot.
Rerunning resumes (supernet checkpoint, latency table, search path are kept in the work directory).
"""

from __future__ import annotations

import argparse
import json

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import compress  # noqa: E402
from compress.search.baselines import uniform_baseline  # noqa: E402
from compress.io import save_json  # noqa: E402
from compress.deploy.closed_loop import measure_module  # noqa: E402
from compress.train.data import SHIPPED_CIFAR, TensorLoader, load_image_folder  # noqa: E402
from compress.train.finetune import finetune  # noqa: E402
from compress.train.evaluate import CalibratedScorer, evaluate, take_batches  # noqa: E402
from compress.train.models import build_model  # noqa: E402
from compress.train.pretrained import load_pretrained  # noqa: E402

# the converged ResNet-20 x1.5 (benchmarks/pretrain_cifar.py, recipe and test top-1 in the .json beside it)
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "data" / "weights" / "cifar_resnet20_w1.5.pt"
FINETUNE_LR = 0.01  # the fine-tune after the search (--finetune-epochs), of both subnets
from compress.search.objectives import LatencyCost, fit_latency_predictor  # noqa: E402
from devices import get_device  # noqa: E402


def demo_loaders(source: str | Path, held_per_class: int) -> tuple[TensorLoader, TensorLoader, TensorLoader]:
    """Train (shuffled, augmented), held-out and test loaders. The greedy search scores its candidates on
    ``held_per_class`` training images per class that the supernet never trains on, never on the test images whose
    top-1 the demo reports (scoring on them would pick the subnet that fits the test set)."""
    train, test = load_image_folder(source, "train"), load_image_folder(source, "test")
    per_class = int((train.labels == 0).sum())
    if not 0 < held_per_class < per_class:
        raise SystemExit(f"error: --held-per-class must be in 1..{per_class - 1} ({source} has {per_class} training "
                         f"images per class); got {held_per_class}")
    kept = per_class - held_per_class
    return (TensorLoader(train.subset(kept), 128, train=True, seed=0),
            TensorLoader(train.subset(held_per_class, offset=kept), 256), TensorLoader(test, 256))


def search_settings(text: str, held_batches: int) -> compress.SearchSettings:
    """The greedy search's settings from ``--search`` JSON; unless it sets ``eval_batches``, candidates are scored
    on every held-out image (4 batches of 256 by default: the 2-batch default let 512 images choose among hundreds
    of candidates, and the choice fit them, 3-4 points above the uniform width there, about 1 on the test images)."""
    settings = compress.SearchSettings.from_json(text)
    if "eval_batches" not in json.loads(text):
        settings = compress.SearchSettings.from_dict({**settings.to_dict(), "eval_batches": held_batches})
    return settings


def supernet_top1(net, config: dict, calib: list, loader) -> float:
    """Top-1 of ``config`` with the supernet's weights (extracted, BN recalibrated on ``calib``), as before any
    fine-tune; the supernet is left at full width."""
    net.set_config(config)
    compress.recalibrate_bn(net, calib)
    top1 = evaluate(compress.extract_subnet(net, config), loader)["top1"]
    net.set_config(net.space.max_config())
    return top1


def plot_frontier(result, auto_top1: float, uniform: dict, uniform_scores: list[tuple[float, float]],
                  budget_ms: float, path: Path, tuned: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    # one latency axis: predicted latencies are put on the measured scale by the full model's measured/predicted
    full_pred, full_meas = result.full.get("cost"), result.full.get("measured_ms")
    k = full_meas / full_pred if full_pred and full_meas else 1.0
    pts = [(p["cost"] * k, p["top1"]) for p in result.path if p["top1"] is not None and p["cost"]]
    ax.plot(*zip(*pts), "o-", ms=3, label=f"AutoSlim greedy path (predicted ms x {k:.2f}, calibrated to the "
                                          f"measured full model; held-out top-1)")
    if uniform_scores:
        # in path order (widest first): uniform ratios that differ in width but not in predicted latency show as
        # vertical steps, not as a zigzag
        ax.plot(*zip(*((c * k, t) for c, t in uniform_scores)), "s--", ms=3, color="gray",
                label="uniform width multiplier (same calibration; held-out top-1)")
    ax.axvline(budget_ms, color="red", lw=1, label=f"budget {budget_ms:.3f} ms")
    if result.measured_ms is not None:
        ax.plot([result.measured_ms], [auto_top1], "*", ms=14, color="C1",
                label=f"AutoSlim chosen: measured {result.measured_ms:.3f} ms, test top-1 {auto_top1:.1f}%{tuned}")
    if uniform.get("measured_ms") is not None:
        ax.plot([uniform["measured_ms"]], [uniform["top1"]], "P", ms=11, color="k",
                label=f"uniform x{uniform['ratio']:.2f}: measured {uniform['measured_ms']:.3f} ms, "
                      f"test top-1 {uniform['top1']:.1f}%{tuned}")
    ax.set_xlabel("measured latency (ms, onnxruntime CPU, 1 thread; path points calibrated, stars measured)")
    ax.set_ylabel("top-1 (%); lines: held-out, markers: test")
    ax.set_title("Accuracy / latency frontier (markers: every test image, after BN recalibration)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(DEFAULT_WEIGHTS),
                    help="trained weights: a state_dict .pt with the JSON record of its model beside it (default: "
                         "the shipped converged ResNet-20 x1.5); 'none': random init, the supernet trained from "
                         "scratch (then --model and --width choose the network)")
    ap.add_argument("--model", default="cifar_resnet20",
                    help="with --weights none: built-in model (cifar_resnet20, cifar_mobilenet_v2)")
    ap.add_argument("--width", type=float, default=2.0, help="with --weights none: width multiplier of the model")
    ap.add_argument("--lr", type=float, default=None, help="supernet learning rate (default 0.02 pretrained, 0.1 not)")
    ap.add_argument("--budget", type=float, default=0.5, help="latency budget as a fraction of the full model's")
    ap.add_argument("--epochs", type=float, default=None,
                    help="supernet training epochs (default 2 from trained weights, 3 from scratch)")
    ap.add_argument("--distill", default="kl", choices=["kl", "alpha", "none"])
    ap.add_argument("--data", default=str(SHIPPED_CIFAR), help="ImageFolder .tar.gz or folder with train/ and test/")
    ap.add_argument("--search", default="{}", help='greedy search settings as JSON, e.g. \'{"calib_batches": 8}\' '
                    "(fields of compress.SearchSettings; eval_batches defaults to every held-out image)")
    ap.add_argument("--finetune-epochs", type=float, default=1.0,
                    help="fine-tune the AutoSlim subnet and the uniform subnet alike for this many epochs after the "
                         "search (distilled from the supernet at full width, the same batches); 0: none")
    ap.add_argument("--held-per-class", type=int, default=100,
                    help="training images per class held out of the supernet's training to score the search on")
    ap.add_argument("--out", default="out/autoslim_demo")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads of the measurements")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    out = Path(args.out)
    train_loader, held_loader, test_loader = demo_loaders(args.data, args.held_per_class)
    print(f"data: {len(train_loader.data)} train / {len(held_loader.data)} held-out (the search scores on them) / "
          f"{len(test_loader.data)} test images from {args.data}")
    pretrained = args.weights.lower() != "none"
    if pretrained:
        model, record = load_pretrained(args.weights)
        args.model, kwargs = record["model"], record["model_kwargs"]
        print(f"weights: {args.weights}: {args.model}({kwargs}), test top-1 {record.get('test_top1')}% on the "
              f"10,000 CIFAR-10 test images after {record.get('epochs')} epochs (pretrained pipeline)")
    else:
        kwargs = {"width": args.width} if args.model == "cifar_resnet20" else {"width_mult": args.width / 2}
        model = build_model(args.model, **kwargs)
    epochs = args.epochs if args.epochs is not None else (2.0 if pretrained else 3.0)
    full_trained_top1 = evaluate(model.eval(), test_loader)["top1"] if pretrained else None
    device = get_device("cpu", threads=args.threads)
    x = torch.zeros(1, 3, 32, 32)
    full_ms = measure_module(device, model.eval(), (x,)).median_ms
    budget_ms = args.budget * full_ms
    print(f"{args.model} ({kwargs}): full model {full_ms:.3f} ms measured; budget {args.budget:.0%} = "
          f"{budget_ms:.3f} ms")

    lr = args.lr if args.lr is not None else (0.02 if pretrained else 0.1)
    settings = compress.AutoSlimSettings(train=compress.TrainSettings(epochs=epochs, distill=args.distill, lr=lr,
                                                                      warmup_epochs=0.0 if pretrained else 0.5),
                                         search=search_settings(args.search, len(held_loader)),
                                         threads=args.threads, pretrained=pretrained,
                                         finetune_epochs=args.finetune_epochs, finetune_lr=FINETUNE_LR)
    result = compress.autoslim(model, latency_ms=budget_ms, device=device, train_loader=train_loader,
                               val_loader=held_loader, settings=settings, work_dir=out / "work")
    net = result.supernet
    report = result.export_onnx(out / "autoslim.onnx")
    auto_top1 = evaluate(result.subnet.eval(), test_loader)["top1"]  # result.top1 is on the held-out images
    calib = take_batches(train_loader, 16, "train")
    auto_pre = supernet_top1(net, result.config, calib, test_loader) if args.finetune_epochs > 0 else auto_top1

    print("uniform baseline: the same supernet narrowed by one width multiplier to the same measured latency")
    predictor = fit_latency_predictor(net, device, "model", out / "work" / "latency")
    cost = LatencyCost(net, predictor, "model")
    uniform = uniform_baseline(net, budget_ms, cost, calib, test_loader, device, settings.search.min_ratio)
    uniform["top1_supernet"] = uniform["top1"]
    if args.finetune_epochs > 0:  # as autoslim fine-tuned its subnet: the same teacher, schedule and batches (the
        net.set_config(net.space.max_config())  # loader's order and crops come from its seed and the epoch)
        compress.recalibrate_bn(net, calib)
        t_ft = time.perf_counter()
        finetune(uniform["subnet"], net, train_loader, args.finetune_epochs, FINETUNE_LR)
        uniform["finetune_s"] = time.perf_counter() - t_ft
        compress.recalibrate_bn(uniform["subnet"], calib)
        uniform["top1"] = evaluate(uniform["subnet"], test_loader)["top1"]
    scorer = CalibratedScorer(net, take_batches(train_loader, settings.search.calib_batches, "train"),
                              take_batches(held_loader, settings.search.eval_batches, "held-out"))
    upath = uniform["path"][::max(1, len(uniform["path"]) // 10)]
    uniform_scores = [(p["cost"], scorer(p["config"])["top1"]) for p in upath]
    net.set_config(net.space.max_config())
    compress.recalibrate_bn(net, calib)
    full_top1 = evaluate(net, test_loader)["top1"]
    tuned = f", fine-tuned {args.finetune_epochs:g} epoch(s)" if args.finetune_epochs > 0 else ""
    plot_frontier(result, auto_top1, uniform, uniform_scores, budget_ms, out / "autoslim_frontier.png", tuned)

    rows = ([("full model (trained)", result.full["flops"], result.full["cost"], result.full.get("measured_ms"),
              full_trained_top1, None)] if pretrained else [])
    rows += [("full (supernet)", result.full["flops"], result.full["cost"], result.full.get("measured_ms"), full_top1,
              None),
             ("AutoSlim", result.flops, result.predicted_ms, result.measured_ms, auto_pre, auto_top1),
             (f"uniform x{uniform['ratio']:.2f}", uniform["flops"], uniform["cost"], uniform["measured_ms"],
              uniform["top1_supernet"], uniform["top1"])]
    nan = float("nan")
    ft_head = f" {'fine-tuned %':>13s}" if args.finetune_epochs > 0 else ""
    print(f"\n{'':18s} {'MFLOPs':>8s} {'predicted ms':>13s} {'measured ms':>12s} {'top-1 %':>8s}{ft_head}")
    for name, fl, pred, meas, top1, tuned_top1 in rows:
        ft = (f" {tuned_top1 if tuned_top1 is not None else nan:13.2f}" if args.finetune_epochs > 0 else "")
        print(f"{name:18s} {fl / 1e6:8.2f} {pred:13.3f} {meas if meas is not None else nan:12.3f} "
              f"{top1 if top1 is not None else nan:8.2f}{ft}")
    if args.finetune_epochs > 0:
        print(f"(top-1 %: the supernet's weights, BN recalibrated; fine-tuned %: after {args.finetune_epochs:g} "
              "epoch(s) of fine-tuning each subnet alike, distilled from the supernet)")
    print(f"\nbudget {budget_ms:.3f} ms: AutoSlim measured {result.measured_ms:.3f} ms "
          f"({result.measured_ms / budget_ms:.0%} of budget), test top-1{tuned} {auto_top1:.2f}% vs uniform "
          f"{uniform['top1']:.2f}% ({auto_top1 - uniform['top1']:+.2f} points)")
    print(f"ONNX: {report.path} ({report.num_nodes} nodes, max |onnxruntime - torch| = {report.max_abs_diff:.2e})")
    print(f"frontier plot: {out / 'autoslim_frontier.png'}; total {time.perf_counter() - t0:.0f} s")
    summary = {"model": args.model, "model_kwargs": kwargs, "weights": args.weights if pretrained else None,
               "budget_fraction": args.budget, "budget_ms": budget_ms, "finetune_epochs": args.finetune_epochs,
               "full_ms": full_ms, "autoslim": result.summary() | {"test_top1": auto_top1,
                                                                    "test_top1_supernet": auto_pre},
               "uniform": {k: v for k, v in uniform.items() if k not in ("subnet", "path")},
               "seconds": time.perf_counter() - t0}
    save_json(summary, out / "summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
