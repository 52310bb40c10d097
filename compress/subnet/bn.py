"""BatchNorm recalibration for a slimmed network."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from compress.errors import check_parameter, InvalidParameterError, is_int
from compress.space.trace import run_on_inputs


def _batch_inputs(batch: Any) -> tuple:
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return (batch[0],)
    if isinstance(batch, dict) and "input" in batch:
        return (batch["input"],)
    raise InvalidParameterError(
        "recalibrate_bn expects batches that are a tensor, an (inputs, targets) pair or a dict with 'input'. "
        f"Got {type(batch).__name__} instead.")


def recalibrate_bn(model: nn.Module, loader: Iterable, num_batches: int | None = None,
                   progress: bool = False) -> int:
    """Re-estimate every BatchNorm's running statistics on data from ``loader``.

    Running stats are reset and re-accumulated as a cumulative average
    (momentum=None) with BN layers in train mode and every other layer in eval
    mode (dropout off), without gradients. Each layer's momentum and every
    module's train/eval mode are restored afterwards, also when an error occurs.
    No hooks are left behind (each batch's shape check removes its own).

    Args:
        model: the network (a slimmable network at its current config, or any module).
        loader: yields input tensors (N x C x H x W for an image model) or (inputs, targets) pairs.
        num_batches: how many batches to use (None: the whole loader).
        progress: show a progress bar.

    Returns:
        The number of samples (sum of batch sizes N) seen; 0 when the model has no BatchNorm layer.

    Raises:
        InvalidParameterError: bad ``num_batches``, or the loader yields no batch.
        InputShapeError: a batch the model does not run on, or an unbatched one (the statistics are restored).

    Example:
        >>> net.set_config(cfg)
        >>> recalibrate_bn(net, train_loader, num_batches=20)
    """
    check_parameter(num_batches is None or (is_int(num_batches) and num_batches > 0), "num_batches",
                    "recalibrate_bn", "a positive int or None", num_batches)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in bns}
    saved = {bn: {k: v.clone() for k, v in bn.state_dict().items()} for bn in bns}  # restored on any error
    seen, done = 0, False
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        it = iter(loader)
        if progress:
            from tqdm.auto import tqdm

            it = iter(tqdm(it, total=num_batches, desc="BN recalibration", leave=False))
        with torch.no_grad():
            for b, batch in enumerate(it):
                if num_batches is not None and b >= num_batches:
                    break
                inputs = _batch_inputs(batch)
                run_on_inputs(model, inputs, "a batch given to recalibrate_bn")
                seen += int(inputs[0].shape[0])
        if seen == 0:
            raise InvalidParameterError(
                "The loader given to recalibrate_bn yielded no batch; pass a loader with training data.")
        done = True
    finally:
        if not done:  # the caller's statistics, not mean 0 / var 1 from the reset
            for bn, state in saved.items():
                bn.load_state_dict(state)
        for bn, mom in momenta.items():
            bn.momentum = mom
        for m, mode in modes.items():
            m.training = mode
    return seen
