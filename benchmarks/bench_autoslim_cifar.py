"""AutoSlim against the uniformly narrowed network on full CIFAR-10, at equal measured latency and equal training.

    python benchmarks/bench_autoslim_cifar.py             # ~70 min on 2 cores -> docs/autoslim_cifar.md/.json

Protocol: ResNet-20 (x2 width) for 32 x 32 inputs. The training set is split into 45,000 training and 5,000 held-out
images (the search scores candidates on the held-out part); accuracy is reported on the 10,000 test images. One
slimmable supernet per distillation loss (KL and adaptive alpha-divergence), same schedule. For each latency budget
(a fraction of the full model's measured latency on onnxruntime CPU, 1 thread), AutoSlim searches on that supernet
and the uniform baseline is the widest width multiplier measured under the same budget; both subnets inherit the
supernet's weights, get BN recalibrated, and are then fine-tuned with the same schedule (distilled from the
supernet at full width): equal training budget, equal latency budget. Both exported ONNX files are timed
interleaved so their latencies compare free of machine drift.
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
from compress.search.baselines import uniform_baseline  # noqa: E402
from compress.io import save_json, save_text  # noqa: E402
from compress.deploy.closed_loop import measure_module  # noqa: E402
from compress.train.data import TensorLoader, load_image_folder  # noqa: E402
from compress.train.evaluate import evaluate, take_batches  # noqa: E402
from compress.train.finetune import finetune  # noqa: E402
from compress.train.models import cifar_resnet  # noqa: E402
from compress.search.objectives import LatencyCost, fit_latency_predictor  # noqa: E402
from devices import get_device  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_autoslim_budget import interleaved_ms  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--epochs", type=float, default=1.5, help="supernet epochs (over 45,000 images)")
    ap.add_argument("--finetune", type=float, default=0.5, help="fine-tuning epochs of each chosen subnet")
    ap.add_argument("--distill", nargs="+", default=["kl", "alpha"])
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.35])
    ap.add_argument("--work", default="out/bench_cifar")
    ap.add_argument("--out", default="docs/autoslim_cifar")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    work = Path(args.work)
    t_start = time.perf_counter()
    train_all, test = load_image_folder(args.data, "train"), load_image_folder(args.data, "test")
    train_set, held_set = train_all.subset(4500), train_all.subset(500, offset=4500)
    train = TensorLoader(train_set, 128, train=True)
    held = TensorLoader(held_set, 256)
    test_loader = TensorLoader(test, 500)
    print(f"data: {len(train_set)} train, {len(held_set)} held-out, {len(test)} test images")
    dev = get_device("cpu", threads=1)
    x = torch.zeros(1, 3, 32, 32)
    full_ms = measure_module(dev, cifar_resnet(width=2.0).eval(), (x,)).median_ms
    probe = compress.SlimmableNetwork(cifar_resnet(width=2.0), x)
    predictor = fit_latency_predictor(probe, dev, "model", work / "latency")
    calib = take_batches(train, 16, "train")
    rows, supernets = [], {}
    out_json = Path(args.out).with_suffix(".json")
    command = "python benchmarks/bench_autoslim_cifar.py " + " ".join(argv if argv is not None else sys.argv[1:])

    def save() -> None:
        save_json({"command": command, "full_ms": full_ms, "supernets": supernets, "rows": rows,
                   "fingerprint": dev.fingerprint(), "seconds": time.perf_counter() - t_start}, out_json)

    for distill in args.distill:
        torch.manual_seed(0)
        net = compress.SlimmableNetwork(cifar_resnet(width=2.0), x)
        t0 = time.perf_counter()
        hist = compress.train_supernet(net, train, compress.TrainSettings(epochs=args.epochs, distill=distill),
                                       checkpoint=work / f"supernet_{distill}.pt")
        compress.recalibrate_bn(net, calib)
        supernets[distill] = {"train_s": hist["seconds"], "steps": hist["steps"], "wall_s": time.perf_counter() - t0,
                              "full_width_test_top1": evaluate(net, test_loader)["top1"]}
        print(distill, supernets[distill])
        save()
        for frac in args.budgets:
            budget = frac * full_ms
            tag = f"{distill}_b{int(frac * 100)}"
            t0 = time.perf_counter()
            res = compress.autoslim(net, latency_ms=budget, device=dev, train_loader=train, val_loader=held,
                                    predictor=predictor, work_dir=work / tag, train=False)
            search_s = time.perf_counter() - t0
            cost = LatencyCost(net, predictor, "model")
            t0 = time.perf_counter()
            uni = uniform_baseline(net, budget, cost, calib, held, dev)
            uniform_s = time.perf_counter() - t0
            net.set_config(None)
            compress.recalibrate_bn(net, calib)
            teacher = net
            entry = {"distill": distill, "budget_fraction": frac, "budget_ms": budget, "full_ms": full_ms,
                     "search_s": search_s, "uniform_search_s": uniform_s}
            onnx = {}
            for name, subnet, meta in (("autoslim", res.subnet, {"config": res.config, "flops": res.flops,
                                                                 "predicted_ms": res.predicted_ms,
                                                                 "closed_loop_ms": res.measured_ms}),
                                       ("uniform", uni["subnet"], {"config": uni["config"], "flops": uni["flops"],
                                                                   "predicted_ms": uni["cost"], "ratio": uni["ratio"],
                                                                   "closed_loop_ms": uni["measured_ms"]})):
                inherited = evaluate(subnet, test_loader)["top1"]
                tuned = copy.deepcopy(subnet)
                t0 = time.perf_counter()
                finetune(tuned, teacher, train, args.finetune, lr=0.02)
                compress.recalibrate_bn(tuned, calib)
                ft_s = time.perf_counter() - t0
                path = work / f"{tag}_{name}.onnx"
                compress.export_onnx(tuned, (x,), path)
                onnx[name] = path
                entry[name] = {**meta, "top1_inherited": inherited, "top1_finetuned": evaluate(tuned, test_loader)["top1"],
                               "finetune_s": ft_s}
            a_ms, u_ms = interleaved_ms([onnx["autoslim"], onnx["uniform"]])
            entry["autoslim"]["interleaved_ms"], entry["uniform"]["interleaved_ms"] = a_ms, u_ms
            entry["gain_finetuned"] = entry["autoslim"]["top1_finetuned"] - entry["uniform"]["top1_finetuned"]
            entry["gain_inherited"] = entry["autoslim"]["top1_inherited"] - entry["uniform"]["top1_inherited"]
            rows.append(entry)
            print(json.dumps({k: v for k, v in entry.items()}, default=str)[:2000])
            save()
    write_markdown(rows, supernets, full_ms, command, Path(args.out).with_suffix(".md"), args)
    return 0


def write_markdown(rows, supernets, full_ms, command, path: Path, args) -> None:
    lines = ["# AutoSlim vs uniform width on CIFAR-10 (equal measured latency, equal training)", "",
             f"Command: `{command.strip()}`", "",
             f"ResNet-20 x2 (32/64/128 channels), 45,000 training / 5,000 held-out (search) / 10,000 test images. "
             f"Supernet: {args.epochs} epochs, sandwich rule (4 subnets), inplace distillation. Each chosen subnet "
             f"and its uniform counterpart inherit the supernet weights, BN recalibrated, then {args.finetune} "
             f"epochs of fine-tuning distilled from the supernet. Full model: {full_ms:.3f} ms (onnxruntime CPU, "
             "1 thread). Latencies of the two subnets are timed interleaved.", "",
             "| distill | supernet s | full-width test top-1 |", "|---|---|---|"]
    for d, s in supernets.items():
        lines.append(f"| {d} | {s['train_s']:.0f} | {s['full_width_test_top1']:.2f} |")
    lines += ["", "| distill | budget | budget ms | AutoSlim ms | uniform ms (width) | AutoSlim MFLOPs | uniform MFLOPs | "
              "AutoSlim top-1 inherited / fine-tuned | uniform top-1 inherited / fine-tuned | gain (fine-tuned) | "
              "search s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, u = r["autoslim"], r["uniform"]
        lines.append(f"| {r['distill']} | {r['budget_fraction']:.0%} | {r['budget_ms']:.3f} | {a['interleaved_ms']:.3f} | "
                     f"{u['interleaved_ms']:.3f} (x{u['ratio']:.2f}) | {a['flops'] / 1e6:.1f} | {u['flops'] / 1e6:.1f} | "
                     f"{a['top1_inherited']:.2f} / {a['top1_finetuned']:.2f} | {u['top1_inherited']:.2f} / "
                     f"{u['top1_finetuned']:.2f} | {r['gain_finetuned']:+.2f} | {r['search_s']:.0f} |")
    save_text("\n".join(lines) + "\n", path)


if __name__ == "__main__":
    sys.exit(main())
