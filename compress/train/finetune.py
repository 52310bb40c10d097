"""Fine-tuning a chosen subnet, distilled from the supernet at full width."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from compress.train.losses import kl_distill
from compress.train.schedule import cosine_lambda, set_loader_epoch


def finetune(student: nn.Module, teacher: nn.Module | None, train_loader: Iterable, epochs: float, lr: float = 0.01,
             weight_decay: float = 5e-4, progress: bool = True) -> list[float]:
    """Train ``student`` for ``epochs`` (cosine learning rate) on labels plus, with a ``teacher``, KL to its
    output (equal weights). Returns the mean loss of each epoch; both modules end in eval mode."""
    steps_per_epoch = len(train_loader)
    total = max(1, int(round(epochs * steps_per_epoch)))
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(total))
    if teacher is not None:
        teacher.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="fine-tune", unit="step")
    losses, step = [], 0
    try:
        student.train()
        epoch = 0
        while step < total:
            set_loader_epoch(train_loader, 10_000 + epoch)
            acc, n = 0.0, 0
            for x, y in train_loader:
                if step >= total:
                    break
                out = student(x)
                loss = F.cross_entropy(out, y)
                if teacher is not None:
                    with torch.no_grad():
                        t = teacher(x)
                    loss = 0.5 * loss + 0.5 * kl_distill(out, t)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                acc, n = acc + float(loss.detach()), n + 1
                if bar is not None:
                    bar.update(1)
            losses.append(acc / max(n, 1))
            epoch += 1
    finally:
        student.eval()
        if bar is not None:
            bar.close()
    return losses
