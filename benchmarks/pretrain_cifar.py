"""Train the CIFAR-10 starting points of the peer benchmark to convergence (resumable after any interruption).

    make pretrain                                                                   # both benchmark families
    python benchmarks/pretrain_cifar.py --model cifar_resnet20_w1.5 --epochs 30 --threads 1
    python benchmarks/pretrain_cifar.py --model cifar_resnet20 --epochs 40       # the shipped demo model

Recipe (the standard CIFAR one, He et al. 2016 with a cosine schedule): all 50,000 training images, random crop
after 4-pixel padding and horizontal flip, batch 128, SGD with Nesterov momentum 0.9, lr 0.1 with one warm-up
epoch then cosine decay to 0, weight decay 5e-4, cross-entropy. Presets (``PRESETS``): ResNet-20 (0.27 M
parameters, 41 MFLOPs; 40 epochs, 87.5%: the demo's shipped starting point) and, for the peer benchmark,
ResNet-20 at width 1.5 (0.61 M) and MobileNetV2 at width 1.0 with CIFAR strides (2.2 M), 30 epochs each (about
2 h of one core each). Why these sizes: the budget of 35% of the full model's latency (onnxruntime CPU, 1 thread,
batch 1) must be reachable by every method. ResNet-20's smallest subnet (a quarter of the channels) measures 40%
of its full latency and MobileNetV2 x0.5's 57%: per-layer overheads dominate such small networks. At width 1.5 /
1.0 the floors are 19% / 30%, and about 4 minutes per epoch of 50,000 images on one core still fits this 2-core machine.

State (weights, optimizer, scheduler, epoch, per-epoch history) is written atomically to ``<work>/<model>.pt``
after every ``--save-every`` steps and at the end of each epoch; a rerun continues from it, repeating at most
``--save-every`` steps after SIGKILL and none after Ctrl-C or SIGTERM. When training ends, the final weights (parameters and
BN buffers only, loaded with ``weights_only=True``) go to ``<weights>/<model>.pt`` with a JSON record of the
recipe and the test top-1 beside it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compress.io import load_checkpoint, save_checkpoint, save_json  # noqa: E402
from compress.train.data import TensorLoader, load_image_folder  # noqa: E402
from compress.train.evaluate import evaluate  # noqa: E402
from compress.train.models import build_model  # noqa: E402
from compress.train.schedule import cosine_lambda  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
# preset name -> (built-in model, its keyword arguments). The preset names the weights file.
PRESETS: dict[str, tuple[str, dict]] = {
    "cifar_resnet20": ("cifar_resnet20", {}),
    "cifar_resnet20_w1.5": ("cifar_resnet20", {"width": 1.5}),
    "cifar_mobilenet_v2": ("cifar_mobilenet_v2", {"width_mult": 0.5}),
    "cifar_mobilenet_v2_w1": ("cifar_mobilenet_v2", {"width_mult": 1.0}),
}


def build_preset(name: str) -> torch.nn.Module:
    """The (untrained) network of preset ``name`` (see ``PRESETS``)."""
    model, kwargs = PRESETS[name]
    return build_model(model, **kwargs)


def recipe(args: argparse.Namespace) -> dict:
    model, kwargs = PRESETS[args.model]
    preset = {} if args.model == model else {"preset": args.model}  # recipes written before presets had none
    return {**preset, "model": model, "model_kwargs": kwargs, "epochs": args.epochs,
            "batch_size": 128, "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
            "warmup_epochs": 1, "schedule": "cosine", "augment": "crop4+flip", "seed": args.seed,
            "train_images": 50_000}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cifar_resnet20", choices=sorted(PRESETS))
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--work", default="out/pretrain", help="resumable training state")
    ap.add_argument("--weights", default="data/weights", help="where the final weights and record go")
    ap.add_argument("--save-every", type=int, default=100, help="steps between checkpoints")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args(argv)

    def stop(signum, frame):  # SIGTERM (kill, or a run started with nohup/&, where SIGINT is ignored): save, stop
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    if args.threads:
        torch.set_num_threads(args.threads)
    rec = recipe(args)
    state_path = Path(args.work) / f"{args.model}.pt"
    train, test = load_image_folder(args.data, "train"), load_image_folder(args.data, "test")
    loader = TensorLoader(train, rec["batch_size"], train=True, seed=args.seed)
    test_loader = TensorLoader(test, 500, train=False)
    torch.manual_seed(args.seed)
    model = build_preset(args.model)
    opt = torch.optim.SGD(model.parameters(), lr=rec["lr"], momentum=rec["momentum"], nesterov=True,
                          weight_decay=rec["weight_decay"])
    steps_per_epoch = len(loader)
    total = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(total, rec["warmup_epochs"] * steps_per_epoch))
    step, history, train_s = 0, [], 0.0
    if state_path.exists():
        st = load_checkpoint(state_path)
        if json.loads(st["recipe"]) != rec:
            raise SystemExit(f"{state_path} was written with another recipe ({st['recipe']}); "
                             f"move it away or pass the same arguments.")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        step, history, train_s = int(st["step"]), json.loads(st["history"]), float(st["train_s"])
        print(f"resumed {args.model} at step {step}/{total} (epoch {step / steps_per_epoch:.2f})", flush=True)

    def save() -> None:
        save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                         "step": step, "history": json.dumps(history), "train_s": train_s,
                         "recipe": json.dumps(rec)}, state_path)

    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=step, desc=f"pretrain {args.model}", unit="step", mininterval=30)
    t_last = time.perf_counter()
    try:
        while step < total or len(history) < args.epochs:
            epoch = step // steps_per_epoch
            if len(history) < epoch:  # stopped between an epoch's last step and its evaluation
                top1 = evaluate(model, test_loader)["top1"]
                history.append({"epoch": epoch, "train_loss_tail": None, "test_top1": top1,
                                "train_s": round(train_s, 1)})
                save()
                continue
            loader.set_epoch(epoch)
            loader.start_batch = step - epoch * steps_per_epoch
            model.train()
            loss_sum, n = 0.0, 0
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                loss_sum, n = loss_sum + float(loss.detach()), n + 1
                bar.update(1)
                if step % args.save_every == 0:
                    now = time.perf_counter()
                    train_s, t_last = train_s + now - t_last, now
                    save()
            now = time.perf_counter()
            train_s, t_last = train_s + now - t_last, now
            top1 = evaluate(model, test_loader)["top1"]
            history.append({"epoch": epoch + 1, "train_loss_tail": loss_sum / max(n, 1), "test_top1": top1,
                            "train_s": round(train_s, 1)})
            print(f"epoch {epoch + 1}/{args.epochs}: test top-1 {top1:.2f}%  ({train_s / 60:.1f} min)", flush=True)
            t_last = time.perf_counter()
            save()
    except KeyboardInterrupt:
        save()
        print(f"interrupted; state saved at step {step} in {state_path}", flush=True)
        return 130
    finally:
        bar.close()
    weights = Path(args.weights)
    final = {k: v for k, v in model.state_dict().items()}
    save_checkpoint(final, weights / f"{args.model}.pt")
    save_json({**rec, "test_top1": history[-1]["test_top1"], "history": history, "train_s": round(train_s, 1),
               "torch": torch.__version__}, weights / f"{args.model}.json")
    print(f"{args.model}: test top-1 {history[-1]['test_top1']:.2f}% -> {weights / (args.model + '.pt')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
