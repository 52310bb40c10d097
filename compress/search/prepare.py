"""What every search does first: check the budget, device, loaders and model; measure the full and the smallest
subnet; refuse impossible budgets and return the full model when it already fits."""

from __future__ import annotations

import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from compress.errors import (BudgetUnreachableError, InputShapeError, InvalidParameterError, MislabelledDataError,
                             NothingToSlimError, is_finite_number)
from compress.space.trace import run_on_inputs
from devices import device_options, get_device
from compress.io import make_work_dir
from compress.train.evaluate import take_batches
from compress.subnet.extract import extract_subnet
from compress.result import SlimResult, finish, path_point
from compress.slim.network import SlimmableNetwork
from compress.search.work_record import check_work_dir
from compress.deploy.timing import ReferenceTimer, can_measure


MIN_SLIMMABLE_SHARE = 0.5  # warn below: most of the network's cost cannot be removed


@dataclass
class Prepared:
    """The checked inputs of a search."""

    net: SlimmableNetwork
    x1: tuple
    device: Any
    budget: float
    latency: bool
    work: Path
    measurable: bool
    floor_cfg: dict
    full: dict = field(default_factory=dict)
    floor_ms: float | None = None
    full_result: SlimResult | None = None   # set when the budget already fits the full model
    timer: ReferenceTimer | None = None      # times candidates interleaved with the full model (drift-free)


def check_images(x: torch.Tensor, what: str) -> None:
    """The first batch's images: floating point and finite (raw uint8 pixels or NaNs would train on garbage).

    Raises:
        InputShapeError: names the loader, the dtype or the count of non-finite values, and what to do.
    """
    if not torch.is_floating_point(x):
        raise InputShapeError(f"The {what} loader's images are {x.dtype}, not floating point. Convert them in the "
                              "loader (e.g. torchvision.transforms.ToTensor(), or x.float() / 255 and normalise).")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise InputShapeError(f"The {what} loader's first batch has {bad} NaN or infinite values (images of shape "
                              f"{tuple(x.shape)}). Fix the data or its transforms before searching.")


def _check_loader(loader: Iterable, what: str, num_classes: int, net: nn.Module, x1: tuple,
                  name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The first batch of ``loader``, checked: images of the example input's size that the model runs on,
    labels that fit its outputs."""
    if loader is None:
        raise InvalidParameterError(f"autoslim needs a {what}_loader yielding (images, labels) batches. Got None.")
    x, y = take_batches(loader, 1, what)[0]
    check_images(x, what)
    example = tuple(x1[0].shape[1:])
    if tuple(x.shape[1:]) != example:
        raise InputShapeError(
            f"The {what} loader's images have shape {tuple(x.shape[1:])} (per image, batch {tuple(x.shape)}), the "
            f"model's example input {example}: latency and FLOPs are measured at the example input's size, so every "
            "loader must give that size. Resize or crop in the loader's transforms (e.g. torchvision.transforms."
            "Resize / CenterCrop), or build the SlimmableNetwork with example inputs of the loader's size.")
    run_on_inputs(net, (x,), f"the first {what} batch", name)  # in eval mode, without gradients
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or y.ndim != 1 or len(y) != len(x):
        raise MislabelledDataError(
            f"The {what} loader's labels must be a 1-D integer tensor of class indices, one per image. Got "
            f"dtype {y.dtype} and shape {tuple(y.shape)} for {len(x)} images.")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise MislabelledDataError(
            f"The {what} loader has labels in [{int(y.min())}, {int(y.max())}] but the model outputs "
            f"{num_classes} classes. Relabel the data as 0..{num_classes - 1} or give the model {num_classes} "
            "outputs matching the data.")
    return x, y


def _resolve_device(device: Any, threads: int) -> Any:
    """A device object: a registered name is created with ``threads`` when its factory takes that option."""
    if isinstance(device, str):
        takes = device_options(device)  # None: any option
        return get_device(device, **({"threads": threads} if takes is None or "threads" in takes else {}))
    return device


def full_model_result(net, full: dict, budget: float, unit: str, x1: tuple, val_loader: Iterable, work: Path,
                      log: Callable[[str], None], method: str = "autoslim") -> SlimResult:
    """The full model as the result of ``method`` (the budget already fits it), warned about; written to ``work``."""
    warnings.warn(f"The budget ({budget:.4g} {unit}) is at or above the full model "
                  f"({full.get('measured_ms', full['flops']):.4g} {unit}): returning the full model.", stacklevel=4)
    cfg = net.space.max_config()
    subnet = extract_subnet(net, cfg)
    cost = full.get("cost", full.get("measured_ms") if unit == "ms" else full["flops"])
    return finish(method, subnet, config=cfg, budget=budget, unit=unit,
                  path=[path_point(0, cost=cost, config=cfg, flops=full["flops"])], example_inputs=x1,
                  val_loader=val_loader, work_dir=work, log=log, supernet=net, flops=full["flops"],
                  measured_ms=full.get("measured_ms"), full=full,
                  notes=["budget at or above the full model: full model returned"])


def prepare(name: str, model: nn.Module, latency_ms: float | None, flops: float | None, device: Any,
            train_loader: Iterable, val_loader: Iterable, divisor: int, threads: int, min_ratio: float,
            work_dir: str | Path | None, log: Callable[[str], None], timer: ReferenceTimer | None = None) -> Prepared:
    """Validate a search call (``name`` is used in messages) and measure what budget checks need."""
    if (latency_ms is None) == (flops is None):
        raise InvalidParameterError(f"{name} needs exactly one budget: latency_ms=... or flops=... "
                                    f"Got latency_ms={latency_ms!r}, flops={flops!r}.")
    budget = latency_ms if latency_ms is not None else flops
    if not is_finite_number(budget) or not budget > 0:
        raise InvalidParameterError(f"The budget must be a positive, finite number "
                                    f"({'milliseconds' if latency_ms is not None else 'FLOPs'}). Got {budget!r}.")
    device = _resolve_device(device, threads)
    work = make_work_dir(work_dir if work_dir is not None else tempfile.mkdtemp(prefix=f"{name}-"), name)
    if work_dir is None:
        log(f"work directory (checkpoints, search path, result): {work}")

    # ---- model and data -------------------------------------------------------------------------------------
    if isinstance(model, SlimmableNetwork):
        net = model
        x1 = net.example_inputs
    else:
        x0, _ = take_batches(train_loader, 1, "train")[0]
        check_images(x0, "train")
        x1 = (x0[:1].clone(),)
        net = SlimmableNetwork(model, x1, divisor=divisor)
    with torch.no_grad():
        num_classes = int(net.eval()(*x1).shape[-1])
    _check_loader(train_loader, "train", num_classes, net, x1, type(model).__name__)  # the first batches go
    _check_loader(val_loader, "val", num_classes, net, x1, type(model).__name__)      # through the model here
    if len(net.space) == 0:
        raise NothingToSlimError(
            f"{type(model).__name__} has no channel group that can be narrowed: {net.space.summary()} "
            "Check the frozen reasons above (unsupported ops, ignore=...).")
    share = net.slimmable_share()
    if share < MIN_SLIMMABLE_SHARE:
        reasons = Counter(g.frozen_reason for g in net.space.frozen)
        top = "; ".join(f"{r} (x{c})" for r, c in reasons.most_common(3))
        warnings.warn(f"{name}: only {share:.0%} of {type(model).__name__}'s FLOPs can be slimmed away (the rest "
                      f"is in frozen channel groups), so no budget below {1 - share:.0%} of its FLOPs is reachable "
                      f"and the search has little to choose from. Most frequent frozen reasons: {top}. Register a "
                      f"handler for the layers named (compress.space.register_module) or report the model.",
                      stacklevel=3)

    check_work_dir(work, net, name)  # a work_dir of another network is refused before anything is measured

    # ---- budget checks (measured first: no predictor needed to refuse an impossible budget) ---------------------
    space = net.space
    floor_cfg = space.uniform_config(min_ratio)
    full_cfg = space.max_config()
    full = {"flops": net.flops(full_cfg)}
    measurable = can_measure(device)
    full_reaches = False
    floor_ms = None
    if latency_ms is not None and measurable:
        if timer is None:
            timer = ReferenceTimer(device, extract_subnet(net, full_cfg), x1)
        elif list(timer.example_inputs[0].shape) != list(x1[0].shape):
            raise InvalidParameterError(
                f"The timer was made for inputs of shape {list(timer.example_inputs[0].shape)}, the model runs on "
                f"{list(x1[0].shape)}. Make the ReferenceTimer with the model's example inputs.")
        floor_ms = timer(extract_subnet(net, floor_cfg)).median_ms
        full["measured_ms"] = timer.reference_ms
        log(f"measured: full model {full['measured_ms']:.3f} ms, smallest subnet (every group at "
            f"{min_ratio:.0%}) {floor_ms:.3f} ms; budget {budget:.3f} ms")
        if budget < floor_ms:
            raise BudgetUnreachableError(
                f"The budget of {budget:.3f} ms is below the smallest subnet's measured latency of {floor_ms:.3f} ms "
                f"(every group at {min_ratio:.0%} width). Raise the budget to at least "
                f"{floor_ms:.3f} ms, lower SearchSettings.min_ratio and TrainSettings.min_ratio, or use a "
                "smaller model.")
        full_reaches = full["measured_ms"] <= budget
    elif latency_ms is None:
        floor_flops = net.flops(floor_cfg)
        if budget < floor_flops:
            raise BudgetUnreachableError(
                f"The budget of {budget:.4g} FLOPs is below the smallest subnet's {floor_flops:.4g} FLOPs (every "
                f"group at {min_ratio:.0%} width). Raise the budget to at least {floor_flops:.4g}, "
                "or lower SearchSettings.min_ratio and TrainSettings.min_ratio.")
        full_reaches = full["flops"] <= budget

    prep = Prepared(net, x1, device, float(budget), latency_ms is not None, work, measurable, floor_cfg, full,
                    floor_ms, timer=timer)
    if full_reaches:
        prep.full_result = full_model_result(net, full, budget, "ms" if latency_ms is not None else "FLOPs", x1,
                                             val_loader, work, log, method=name)
    return prep

