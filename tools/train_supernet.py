"""Train a slimmable supernet of a built-in CIFAR model, on one process or under torchrun (DDP, gloo on CPU).

    python tools/train_supernet.py --model cifar_resnet20 --epochs 5 --out out/supernet.pt
    torchrun --nproc_per_node 2 tools/train_supernet.py --epochs 5 --out out/supernet.pt

The checkpoint (written atomically by rank 0) doubles as the resume point: rerun the same command after an
interruption and training continues from the last finished step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compress import SlimmableNetwork, TrainSettings, train_supernet  # noqa: E402
from compress.train.data import SHIPPED_CIFAR, TensorLoader, load_image_folder  # noqa: E402
from compress.train.models import build_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cifar_resnet20")
    ap.add_argument("--depth", type=int, default=20, help="ResNet depth (cifar_resnet20 only)")
    ap.add_argument("--data", default=str(SHIPPED_CIFAR))
    ap.add_argument("--per-class", type=int, default=None, help="use only this many training images per class")
    ap.add_argument("--batch-size", type=int, default=128, help="per process")
    ap.add_argument("--settings", default=None, help="TrainSettings as a JSON file (overrides the flags below)")
    ap.add_argument("--epochs", type=float, default=5.0)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--distill", default="kl", choices=["kl", "alpha", "none"])
    ap.add_argument("--out", required=True, help="checkpoint file (resumed when it exists)")
    ap.add_argument("--rank-weights", default=None, help="folder: every rank writes its final weights here")
    args = ap.parse_args(argv)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = 0
    if world > 1:
        torch.distributed.init_process_group("gloo")
        rank = torch.distributed.get_rank()
        torch.set_num_threads(1)
    settings = (TrainSettings.from_json(Path(args.settings).read_text()) if args.settings else
                TrainSettings(epochs=args.epochs, lr=args.lr, distill=args.distill))
    data = load_image_folder(args.data, "train")
    if args.per_class:
        data = data.subset(args.per_class)
    loader = TensorLoader(data, args.batch_size, train=True, seed=settings.seed, rank=rank, world_size=world)
    kwargs = {"depth": args.depth} if args.model == "cifar_resnet20" else {}
    torch.manual_seed(settings.seed)  # identical initial weights on every rank
    net = SlimmableNetwork(build_model(args.model, **kwargs), torch.zeros(1, 3, 32, 32))
    history = train_supernet(net, loader, settings, checkpoint=args.out, progress=rank == 0)
    if args.rank_weights:
        Path(args.rank_weights).mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), Path(args.rank_weights) / f"rank{rank}.pt")
    if rank == 0:
        print(json.dumps({"steps": history["steps"], "seconds": round(history["seconds"], 1),
                          "last_epoch": history["epochs"][-1] if history["epochs"] else None}))
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
