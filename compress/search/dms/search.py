"""DMS search: train weights and pruning ratios together, with a resource loss that pulls the soft cost to a target.

loss = task loss + lambda_resource * max(0, log(r / r_t)) (or |log(r / r_t)|, two-sided, the default: Adam moves a
ratio by about its learning rate whatever the gradient's size, so with a one-sided penalty the cost drifts below the
target), r the soft cost under the current masks and r_t the target, annealed linearly from the full cost to the budget over the first ``anneal`` fraction of the search.
Importances (Taylor) are updated after each backward, outside the optimizer. Pruning ratios use Adam; weights SGD
(or are frozen in the search-only pipeline).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from compress.errors import InvalidParameterError
from compress.io import load_checkpoint, save_checkpoint
from compress.train.supernet import deferred_interrupt

from compress.train.schedule import cosine_lambda, set_loader_epoch
from compress.settings import DMSSettings  # defined beside AutoSlimSettings; importable here too
from compress.search.dms.masked import DMSNetwork


def resource_penalty(cost: torch.Tensor, target: float, two_sided: bool = False) -> torch.Tensor:
    """log(r / r_t) when r exceeds the target, else 0; with ``two_sided``, |log(r / r_t)|."""
    gap = torch.log(cost / target)
    return gap.abs() if two_sided else torch.clamp(gap, min=0.0)


def annealed_target(full: float, final: float, step: int, anneal_steps: int) -> float:
    """The resource target at ``step``: linear from the full cost to ``final`` over ``anneal_steps``, then flat."""
    return full + (final - full) * min(1.0, (step + 1) / anneal_steps)


CHECKPOINT_EVERY = 20  # search steps between checkpoints (one is also written on Ctrl-C and at the end)

# DMSSettings fields used only after the search (the closed loop on the device, the fine-tune): a checkpoint
# written with other values is resumed (a rerun with another max_measurements restarted a finished search).
AFTER_SEARCH = ("max_measurements", "min_budget_use", "latency_headroom", "train_epochs")


def search_identity(ident: dict) -> dict:
    """``ident`` without the settings that do not change the search (:data:`AFTER_SEARCH`)."""
    settings = {k: v for k, v in (ident.get("settings") or {}).items() if k not in AFTER_SEARCH}
    return {**ident, "settings": settings}


def dms_search(dms: DMSNetwork, train_loader: Iterable, soft_cost: Callable[[], torch.Tensor], target: float,
               settings: DMSSettings | None = None, progress: bool = True,
               checkpoint: str | os.PathLike | None = None, checkpoint_every: int | None = None,
               identity: dict | None = None) -> list[dict]:
    """Run the DMS search in place; returns a log of (step, task loss, soft cost, target) every few steps.

    Args:
        dms: the masked network (weights and pruning ratios are trained in place).
        train_loader: (inputs, labels) batches; its ``set_epoch`` is called every epoch, ``start_batch`` (when it
            has one) skips the batches of an epoch already done on resume.
        soft_cost: the differentiable cost of the current masks.
        target: the budget in the cost's unit.
        settings: epochs, learning rates, lambda_resource, annealing, ...
        progress: show a progress bar.
        checkpoint: file written atomically every ``checkpoint_every`` steps, on Ctrl-C (every finished step)
            and at the end; when it exists, the search resumes from it (keeping the full cost and target it
            started with) and ends as an uninterrupted one would. A checkpoint of another search (settings,
            network, ``identity``; the settings in :data:`AFTER_SEARCH` may differ) is replaced, with a warning.
        checkpoint_every: steps between checkpoints (None: ``CHECKPOINT_EVERY``).
        identity: anything else a checkpoint must match to be resumed (JSON-able), e.g. the user's budget: a rerun
            with another budget starts afresh instead of resuming a search towards the old one.

    Returns:
        The log: dicts with step, task, cost, target.

    Raises:
        InvalidParameterError: an epoch of the loader yields no batch.
        WriteError: a checkpoint could not be written.
    """
    settings = settings or DMSSettings()
    checkpoint_every = checkpoint_every or CHECKPOINT_EVERY
    torch.manual_seed(settings.seed)
    steps_per_epoch = len(train_loader)
    steps = max(1, int(round(settings.epochs * steps_per_epoch)))
    anneal_steps = max(1, int(settings.anneal * steps))
    with torch.no_grad():
        full = float(soft_cost())
    final = max(float(target), 1e-9)
    struct = torch.optim.Adam(dms.structure_parameters(), lr=settings.structure_lr)
    weights = sched = None
    if not settings.search_only:
        weights = torch.optim.SGD(dms.weight_parameters(), lr=settings.lr, momentum=0.9, nesterov=True,
                                  weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(weights, cosine_lambda(steps))
    else:
        for p in dms.weight_parameters():
            p.requires_grad_(False)
    log: list[dict] = []
    step = 0
    # the network and settings must match; the full cost and the target are the saved ones (a latency target
    # comes from a fresh measurement on every run: the resumed search goes on towards the target it started with)
    ident = {"settings": settings.to_dict(), "steps": steps, "params": sum(p.numel() for p in dms.parameters()),
             "structure": [t.n for t in dms.structure_modules()], "identity": identity or {}}
    state = load_checkpoint(checkpoint) if checkpoint is not None and Path(checkpoint).exists() else None
    if state is not None and (not isinstance(state.get("identity"), dict)
                              or search_identity(state["identity"]) != search_identity(ident)):
        # another search's: start afresh (it is overwritten)
        warnings.warn(f"The DMS search checkpoint {str(checkpoint)!r} was written for another search (other "
                      "settings, network or budget); starting this search from its first step and replacing it.",
                      stacklevel=2)
        state = None
    if state is not None:
        dms.load_state_dict(state["model"])
        struct.load_state_dict(state["structure_optimizer"])
        if weights is not None:
            weights.load_state_dict(state["weight_optimizer"])
            sched.load_state_dict(state["scheduler"])
        log, step = state["log"], int(state["step"])
        full, final = float(state["full"]), float(state["target"])

    def save() -> None:
        if checkpoint is not None:
            save_checkpoint({"identity": ident, "model": dms.state_dict(), "structure_optimizer": struct.state_dict(),
                             "weight_optimizer": weights.state_dict() if weights is not None else None,
                             "scheduler": sched.state_dict() if sched is not None else None, "log": log,
                             "step": step, "full": full, "target": final}, checkpoint)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=step, desc="DMS search", unit="step")
    try:
        dms.train()
        while step < steps:
            epoch, first = divmod(step, steps_per_epoch)
            set_loader_epoch(train_loader, 20_000 + epoch)
            if hasattr(train_loader, "start_batch"):
                train_loader.start_batch = first
            count = 0
            for i, (x, y) in enumerate(train_loader):
                count += 1
                if not hasattr(train_loader, "start_batch") and i < first:
                    continue  # resume inside an epoch with a plain loader: skip the batches already done
                if step >= steps:
                    break
                # Ctrl-C waits for the end of the step: the forward moves BN statistics, so a step cut short would
                # leave them ahead of the weights, ratios, importances and step counter
                with deferred_interrupt():
                    current = annealed_target(full, final, step, anneal_steps)
                    out = dms(x)
                    task = F.cross_entropy(out, y)
                    cost = soft_cost()
                    loss = task + settings.lambda_resource * resource_penalty(cost, current, settings.two_sided)
                    struct.zero_grad(set_to_none=True)
                    if weights is not None:
                        weights.zero_grad(set_to_none=True)
                    loss.backward()
                    dms.update_importance()
                    struct.step()
                    dms.project_ratios_()
                    if weights is not None:
                        weights.step()
                        sched.step()
                    step += 1
                    if step % 10 == 0 or step == steps:
                        log.append({"step": step, "task": float(task.detach()), "cost": float(cost.detach()),
                                    "target": current})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(task=f"{float(task.detach()):.3f}", cost=f"{float(cost.detach()):.4g}",
                                    target=f"{current:.4g}")
                if step % checkpoint_every == 0:
                    save()
            if count == 0:  # would loop for ever
                raise InvalidParameterError("The DMS search's training loader yielded no batch in an epoch; pass a "
                                            "loader that yields the same batches every epoch.")
            if hasattr(train_loader, "start_batch"):
                train_loader.start_batch = 0
        save()
    except KeyboardInterrupt:  # Ctrl-C: keep every finished step (a resume repeats none)
        save()
        raise
    finally:
        if hasattr(train_loader, "start_batch"):
            train_loader.start_batch = 0
        if settings.search_only:
            for p in dms.weight_parameters():
                p.requires_grad_(True)
        dms.eval()
        if bar is not None:
            bar.close()
    return log
