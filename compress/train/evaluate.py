"""Scoring subnets: accuracy and loss on held-out batches, after BN recalibration on fixed calibration batches."""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from compress.subnet.bn import recalibrate_bn
from compress.errors import InvalidParameterError


def take_batches(loader: Iterable, n: int, what: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` (inputs, labels) batches of ``loader`` as a list (reused for every candidate).

    Raises:
        InvalidParameterError: ``loader`` is not iterable, yields something other than (inputs, labels) pairs, or
            yields nothing (a generator is read once: pass a DataLoader or a list).
    """
    if loader is None or not hasattr(loader, "__iter__") or isinstance(loader, (str, bytes, torch.Tensor)):
        raise InvalidParameterError(f"The {what} loader must be an iterable of (inputs, labels) batches, e.g. a "
                                    f"torch DataLoader. Got {type(loader).__name__}.")
    out = []
    for batch in loader:
        if not (isinstance(batch, (list, tuple)) and len(batch) >= 2 and isinstance(batch[0], torch.Tensor)):
            raise InvalidParameterError(
                f"The {what} loader must yield (inputs, labels) pairs of tensors. Got {type(batch).__name__}.")
        out.append((batch[0], batch[1]))
        if len(out) >= n:
            break
    if not out:
        raise InvalidParameterError(f"The {what} loader yielded no batch; pass a loader with data (a generator is "
                                    "used up after one pass: pass a DataLoader or a list).")
    return out


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable) -> dict:
    """Top-1 accuracy (%), mean cross-entropy and sample count of ``model`` (in eval mode) on ``batches``."""
    was = model.training
    model.eval()
    correct, loss, n = 0, 0.0, 0
    try:
        for x, y in batches:
            out = model(x)
            loss += float(F.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            n += int(y.numel())
    finally:
        model.train(was)
    if n == 0:
        raise InvalidParameterError("evaluate got no batch; pass a loader with data.")
    return {"top1": 100.0 * correct / n, "loss": loss / n, "n": n}


class CalibratedScorer:
    """Score = top-1 on fixed held-out batches after BN recalibration on fixed training batches."""

    def __init__(self, net, calib_batches: list, eval_batches: list) -> None:
        self.net, self.calib, self.eval = net, calib_batches, eval_batches

    def __call__(self, config: Mapping[str, int]) -> dict:
        self.net.set_config(config)
        recalibrate_bn(self.net, self.calib)
        return evaluate(self.net, self.eval)
