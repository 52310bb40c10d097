"""Slimmable supernet training: sandwich rule, inplace distillation, checkpoints and resume, DDP.

Each step trains ``num_subnets`` subnets on the same batch: the largest (on the labels), the smallest (every
group at ``min_ratio``) and random ones (each group its own width), accumulating the gradient of their mean loss,
then one optimizer step. (A sum would multiply the learning rate by ``num_subnets``; on torchvision ResNet-18 /
CIFAR-10, 2 epochs at lr 0.1, the largest subnet's first-epoch loss was 2.36 with the sum (chance: 2.30), 2.21
with the mean, and its held-out top-1 after 2 epochs 42.6% vs 45.3%.) The others learn from the largest's
detached output (KL or adaptive alpha-divergence). Under ``torch.distributed`` (e.g. ``torchrun``), the network
is wrapped in DistributedDataParallel; gradients are all-reduced once per step (``no_sync`` for all but the last
subnet), and every rank draws the same subnets.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress.io import load_checkpoint, save_checkpoint, weights_digest
from compress.errors import CheckpointMismatchError, CorruptFileError, InvalidParameterError, NewerSchemaError
from compress.space.digest import identity_differences, network_identity
from compress.train.losses import adaptive_alpha_divergence, kl_distill
from compress.train.schedule import cosine_lambda, set_loader_epoch
from compress.settings import TrainSettings

CHECKPOINT_SCHEMA = 2  # 2: the network's identity (traced graph) and the digest of the starting weights
CHECKPOINT_KEYS = ("identity", "model", "optimizer", "scheduler", "history", "step")


@contextlib.contextmanager
def deferred_interrupt():
    """Hold back SIGINT (Ctrl-C) until the block ends, then raise KeyboardInterrupt; no-op outside the main thread
    and where the process ignores SIGINT (started in the background with ``&`` or nohup: it must stay ignored)."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def sandwich_configs(space, settings: TrainSettings, step: int) -> list[dict]:
    """The subnets of one step: largest, smallest, then random ones (same on every rank for a given step)."""
    seed = settings.seed * 1_000_003 + step
    rnd = [space.random_config(seed * 16 + i, min_ratio=settings.min_ratio) for i in range(settings.num_subnets - 2)]
    return [space.max_config(), space.uniform_config(settings.min_ratio)] + rnd


def _distill_fn(settings: TrainSettings):
    if settings.distill == "kl":
        return kl_distill
    if settings.distill == "alpha":
        return lambda s, t: adaptive_alpha_divergence(s, t, settings.alpha_min, settings.alpha_max, settings.beta)
    return None


def _lr_lambda(settings: TrainSettings, steps_per_epoch: int):
    total = max(1, int(round(settings.epochs * steps_per_epoch)))
    return cosine_lambda(total, int(round(settings.warmup_epochs * steps_per_epoch))), total


def _average_buffers(net) -> None:
    """Make BN running statistics equal on every rank (DDP syncs them only at the start of each forward)."""
    dist = torch.distributed
    world = dist.get_world_size()
    for buf in net.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(world)
        else:
            dist.broadcast(buf, src=0)


def _identity(net) -> dict:
    return {"groups": {g.name: g.width for g in net.space.free}, "params": sum(p.numel() for p in net.parameters())}


def supernet_identity(net, settings: TrainSettings, steps_per_epoch: int) -> dict:
    """What a supernet checkpoint must match to be resumed: the training settings, the loader's length, the
    network (its traced graph: :func:`compress.space.digest.network_identity`) and the weights training starts from.

    Args:
        net: the slimmable network, with the weights training starts from (call before training).
        settings: the training settings.
        steps_per_epoch: the training loader's length.

    Returns:
        A JSON-able dict ("settings", "net", "steps_per_epoch", "network", "start_weights").

    Raises:
        Nothing of its own.
    """
    return {"settings": settings.to_dict(), "net": _identity(net), "steps_per_epoch": steps_per_epoch,
            "network": network_identity(net), "start_weights": weights_digest(net)}


def _identity_mismatch(saved: dict, now: dict) -> str:
    """Why a checkpoint's identity is not ``now``'s, in words (empty when they agree)."""
    why = []
    if saved.get("network", {}).get("graph") != now["network"]["graph"] or saved.get("net") != now["net"]:
        why.append(f"it was trained for another network: {identity_differences(saved.get('network'), now['network'])}")
    elif saved.get("start_weights") != now["start_weights"]:
        why.append(f"training started from other weights (digest {saved.get('start_weights')} in the file, "
                   f"{now['start_weights']} now): the model was initialised with another seed or loaded with other "
                   "pretrained weights. Build it as before (e.g. torch.manual_seed before building it) to resume")
    old_settings, new_settings = saved.get("settings") or {}, now["settings"]
    if old_settings != new_settings:
        keys = sorted(k for k in set(old_settings) | set(new_settings) if old_settings.get(k) != new_settings.get(k))
        changes = ", ".join(f"{k}: {old_settings.get(k)!r} in the file, {new_settings.get(k)!r} now" for k in keys)
        why.append(f"the training settings differ ({changes})")
    if saved.get("steps_per_epoch") != now["steps_per_epoch"]:
        why.append(f"the training loader has another length ({saved.get('steps_per_epoch')} batches per epoch in "
                   f"the file, {now['steps_per_epoch']} now)")
    return "; ".join(why)


def read_checkpoint(path: str | os.PathLike, ident: dict) -> dict:
    """Read a supernet checkpoint written by :func:`train_supernet` and check that it was written for ``ident``.

    A checkpoint of an older schema (no network identity) is accepted, with a warning, when everything it recorded
    matches (it is rewritten with the identity at the next save); a newer one is refused and kept.

    Args:
        path: the checkpoint file.
        ident: :func:`supernet_identity` of the network about to be trained.

    Returns:
        The checkpoint's state dict ("identity", "model", "optimizer", "scheduler", "history", "step").

    Raises:
        CorruptFileError: the file cannot be read as a checkpoint, or misses entries (names the file).
        NewerSchemaError: written by a newer version of compress (the file is kept).
        CheckpointMismatchError: written for another network, starting weights, settings or loader length (says
            what differs and what to do).
    """
    path = str(path)
    redo = (f"Delete {path!r} to train the supernet from the start (or restore it from a backup), or pass another "
            "work_dir.")
    try:
        state = load_checkpoint(path)
    except Exception as exc:  # torch raises many types for a truncated or foreign file (IndexError, EOFError, ...)
        first = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:120]  # not torch's advice (weights_only)
        raise CorruptFileError(f"The supernet checkpoint {path!r} cannot be read ({type(exc).__name__}: {first}): "
                               f"it is truncated or not a checkpoint compress wrote. {redo}") from None
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CorruptFileError(f"The supernet checkpoint {path!r} is not a checkpoint train_supernet wrote (entries "
                               f"{got}; expected {list(CHECKPOINT_KEYS)}). {redo}")
    schema = state.get("schema", 1)
    if not isinstance(schema, int) or isinstance(schema, bool) or schema > CHECKPOINT_SCHEMA:
        raise NewerSchemaError(
            f"The supernet checkpoint {path!r} was written by a newer version of compress (checkpoint schema "
            f"{schema!r}; this version reads up to {CHECKPOINT_SCHEMA}). Upgrade compress to resume from it; the "
            "file is kept. Or pass another work_dir to train anew with this version.")
    saved = state["identity"] if isinstance(state["identity"], dict) else {}
    if schema < 2:  # no network identity, no starting weights: check what it recorded, say what cannot be checked
        old = {k: ident[k] for k in ("settings", "net", "steps_per_epoch")}
        if saved != old:
            why = _identity_mismatch({**saved, "network": ident["network"],
                                            "start_weights": ident["start_weights"]}, ident)
            raise CheckpointMismatchError(f"The supernet checkpoint {path!r} does not fit this run: "
                                          f"{why or 'its identity differs'}. {redo}")
        warnings.warn(f"The supernet checkpoint {path!r} was written by an older version of compress, without the "
                      "network's traced graph or the starting weights: only the channel groups, parameter count and "
                      "settings could be checked (they match). Resuming; delete it to retrain if the network changed.",
                      stacklevel=3)
        state["identity"] = ident
        return state
    why = _identity_mismatch(saved, ident)
    if why:
        raise CheckpointMismatchError(f"The supernet checkpoint {path!r} does not fit this run: {why}. {redo}")
    return state


def check_checkpoint(net, train_loader: Iterable, settings: TrainSettings | None, checkpoint: str | os.PathLike
                     ) -> None:
    """Check before any other work that :func:`train_supernet` can resume from ``checkpoint`` (a missing file is
    fine: training starts anew).

    Args:
        net: the slimmable network, with the weights training will start from.
        train_loader: the training loader (its length is part of the identity).
        settings: the training settings (None: the defaults).
        checkpoint: the checkpoint file.

    Returns:
        None.

    Raises:
        CorruptFileError, NewerSchemaError, CheckpointMismatchError: as :func:`read_checkpoint`.
    """
    if Path(checkpoint).exists() and hasattr(train_loader, "__len__"):
        read_checkpoint(checkpoint, supernet_identity(net, settings or TrainSettings(), len(train_loader)))


def train_supernet(net, train_loader: Iterable, settings: TrainSettings | None = None,
                   checkpoint: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Train ``net`` (a SlimmableNetwork) in place as a slimmable supernet.

    Each optimizer step follows the sandwich rule and inplace distillation of Yu & Huang 2019, "Universally
    Slimmable Networks and Improved Training Techniques": the largest subnet (trained on the labels), the
    smallest, and ``num_subnets - 2`` random ones (trained towards the largest one's output: KL, or the adaptive
    alpha-divergence of Wang et al. 2021, "AlphaNet: Improved Training of Supernets with Alpha-Divergence"); the
    gradient of their mean loss, one SGD step. Under ``torch.distributed`` it runs with DistributedDataParallel.

    Args:
        net: the slimmable network (left at its largest config, in eval mode, afterwards).
        train_loader: yields (inputs, labels): inputs N x C x H x W, labels N class indices (int64); it must have
            a length (batches per epoch); its ``set_epoch`` (or its sampler's) is called every epoch.
        settings: epochs, learning rate, sandwich size, distillation loss, ...
        checkpoint: file written atomically every ``checkpoint_every`` steps and at each epoch end; when it
            exists, training resumes from it (finished steps are not redone).
        progress: show a progress bar (rank 0 only).

    Returns:
        History: "epochs" (one dict per epoch: "epoch", "loss_largest" the mean cross-entropy of the largest
        subnet, "loss_students" the mean loss of the other subnets, "steps"), "steps" (optimizer steps done in
        total) and "seconds" (wall-clock training time, resumed runs included).

    Raises:
        CheckpointMismatchError: the checkpoint was written with other settings, for another network (its traced
            graph: op kinds, targets, channel groups) or from other starting weights (names the file and what
            differs).
        CorruptFileError: the checkpoint is truncated or not one train_supernet wrote.
        NewerSchemaError: the checkpoint was written by a newer version of compress (kept).
        InvalidParameterError: the loader has no length, or yields nothing.
        WriteError: a checkpoint could not be written.
    """
    settings = settings or TrainSettings()
    dist = torch.distributed
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    steps_per_epoch = len(train_loader) if hasattr(train_loader, "__len__") else None
    if not steps_per_epoch:
        raise InvalidParameterError(
            "train_supernet needs a loader with a length (len(loader) batches per epoch) that is not empty. "
            f"Got {type(train_loader).__name__} with length {steps_per_epoch}.")
    torch.manual_seed(settings.seed)
    model = nn.parallel.DistributedDataParallel(net) if distributed else net
    params_decay = [p for n, p in net.named_parameters() if p.ndim > 1]
    params_other = [p for n, p in net.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": params_decay, "weight_decay": settings.weight_decay},
                           {"params": params_other, "weight_decay": 0.0}],
                          lr=settings.lr, momentum=settings.momentum, nesterov=True)
    lam, total_steps = _lr_lambda(settings, steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    history = {"epochs": [], "steps": 0, "seconds": 0.0}
    step = 0
    ident = supernet_identity(net, settings, steps_per_epoch)
    if checkpoint is not None and Path(checkpoint).exists():
        state = read_checkpoint(checkpoint, ident)
        try:
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            history = dict(state["history"])
            step = int(state["step"])
            history["seconds"] = float(history["seconds"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise CorruptFileError(
                f"The supernet checkpoint {str(checkpoint)!r} has damaged entries ({type(exc).__name__}: "
                f"{str(exc)[:200]}). Delete it to train the supernet from the start, or restore it from a backup."
            ) from None

    def save() -> None:
        if checkpoint is not None and rank == 0:
            save_checkpoint({"schema": CHECKPOINT_SCHEMA, "identity": ident, "model": net.state_dict(),
                             "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "history": history,
                             "step": step}, checkpoint)

    distill = _distill_fn(settings)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=step, desc="supernet", unit="step")
    t0 = time.perf_counter() - history["seconds"]
    try:
        net.train()
        while step < total_steps:
            epoch, first = divmod(step, steps_per_epoch)
            set_loader_epoch(train_loader, epoch)
            if hasattr(train_loader, "start_batch"):
                train_loader.start_batch = first
            sums = np.zeros(2)
            count = 0
            for i, batch in enumerate(train_loader):
                if not hasattr(train_loader, "start_batch") and i < first:
                    continue  # resume inside an epoch with a plain loader: skip the batches already done
                if step >= total_steps:
                    break
                x, y = batch[0], batch[1]
                # Ctrl-C waits for the end of the step: the forward passes move BN statistics, so a step cut short
                # would leave them one partial step ahead of the weights, scheduler and step counter
                with deferred_interrupt():
                    configs = sandwich_configs(net.space, settings, step)
                    opt.zero_grad(set_to_none=True)
                    teacher = None
                    for j, cfg in enumerate(configs):
                        net.set_config(cfg)
                        last = not distributed or j == len(configs) - 1
                        with contextlib.nullcontext() if last else model.no_sync():
                            out = model(x)
                            if j == 0 or distill is None:
                                loss = F.cross_entropy(out, y)
                                if j == 0:
                                    teacher = out.detach()
                            else:
                                loss = distill(out, teacher)
                            (loss / len(configs)).backward()  # the mean: lr means what it does for one network
                        sums[min(j, 1)] += float(loss.detach()) / (1 if j == 0 else len(configs) - 1)
                    opt.step()
                    sched.step()
                    step += 1
                count += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{sums[0] / count:.3f}", distill=f"{sums[1] / count:.3f}")
                if step % settings.checkpoint_every == 0:
                    history["seconds"] = time.perf_counter() - t0
                    save()
            if count == 0 and first == 0:
                raise InvalidParameterError("The training loader yielded no batch; pass a loader with data.")
            if step % steps_per_epoch == 0 or step >= total_steps:
                history["epochs"].append({"epoch": epoch, "loss_largest": float(sums[0] / max(count, 1)),
                                          "loss_students": float(sums[1] / max(count, 1)), "steps": count})
            if distributed:
                _average_buffers(net)
            history["steps"] = step
            history["seconds"] = time.perf_counter() - t0
            save()
    except KeyboardInterrupt:  # Ctrl-C: keep every finished step (a resume repeats none)
        history["steps"] = step
        history["seconds"] = time.perf_counter() - t0
        save()
        raise
    finally:
        if hasattr(train_loader, "start_batch"):
            train_loader.start_batch = 0
        net.set_config(net.space.max_config())
        net.eval()
        if bar is not None:
            bar.close()
    return history
