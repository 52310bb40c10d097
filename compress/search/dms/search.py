"""DMS search: train weights and pruning ratios together, with a resource loss that pulls the soft cost to a target.

loss = task loss + lambda_resource * max(0, log(r / r_t)) (or |log(r / r_t)|, two-sided, the default: Adam moves a
ratio by about its learning rate whatever the gradient's size, so with a one-sided penalty the cost drifts below the
target), r the soft cost under the current masks and r_t the target, annealed linearly from the full cost to the budget over the first ``anneal`` fraction of the search.
Importances (Taylor) are updated after each backward, outside the optimizer. Pruning ratios use Adam; weights SGD
(or are frozen in the search-only pipeline).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F

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


def dms_search(dms: DMSNetwork, train_loader: Iterable, soft_cost: Callable[[], torch.Tensor], target: float,
               settings: DMSSettings | None = None, progress: bool = True) -> list[dict]:
    """Run the DMS search in place; returns a log of (step, task loss, soft cost, target) every few steps."""
    settings = settings or DMSSettings()
    torch.manual_seed(settings.seed)
    steps = max(1, int(round(settings.epochs * len(train_loader))))
    anneal_steps = max(1, int(settings.anneal * steps))
    with torch.no_grad():
        full = float(soft_cost())
    final = max(float(target), 1e-9)
    struct = torch.optim.Adam(dms.structure_parameters(), lr=settings.structure_lr)
    weights = None
    if not settings.search_only:
        weights = torch.optim.SGD(dms.weight_parameters(), lr=settings.lr, momentum=0.9, nesterov=True,
                                  weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(weights, cosine_lambda(steps))
    else:
        for p in dms.weight_parameters():
            p.requires_grad_(False)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="DMS search", unit="step")
    log: list[dict] = []
    step, epoch = 0, 0
    try:
        dms.train()
        while step < steps:
            set_loader_epoch(train_loader, 20_000 + epoch)
            for x, y in train_loader:
                if step >= steps:
                    break
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
            epoch += 1
    finally:
        if settings.search_only:
            for p in dms.weight_parameters():
                p.requires_grad_(True)
        dms.eval()
        if bar is not None:
            bar.close()
    return log
