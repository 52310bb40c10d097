"""What every training loop here shares: the epoch order of a loader and a cosine learning-rate schedule."""

from __future__ import annotations

import math
from typing import Callable, Iterable


def set_loader_epoch(loader: Iterable, epoch: int) -> None:
    """Call ``set_epoch`` on the loader or its sampler (a new shuffling order per epoch), if it has one."""
    for obj in (loader, getattr(loader, "sampler", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def cosine_lambda(total: int, warmup: int = 0) -> Callable[[int], float]:
    """LR multiplier per step for LambdaLR: linear warm-up over ``warmup`` steps, then cosine decay to 0."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return f
