"""The one call: ``autoslim(model, latency_ms=5, device="cpu", train_loader=..., val_loader=...)``.

model -> channel space -> slimmable supernet training -> cost model (FLOPs, or a latency predictor profiled on the
device) -> greedy slimming path -> closed loop on the device (measured latency under the budget) -> subnet with BN
recalibrated (optionally fine-tuned) -> SlimResult (export_onnx gives a verified ONNX file).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .bn import recalibrate_bn
from .closed_loop import can_measure, closed_loop, measure_module
from .errors import CompressError, InvalidParameterError
from .evaluate import CalibratedScorer, evaluate, take_batches
from .extract import extract_subnet
from .finetune import finetune
from .greedy import first_within, greedy_slim
from .objectives import FlopsCost, LatencyCost, fit_latency_predictor
from .reorder import reorder_channels_
from .result import SlimResult
from .settings import AutoSlimSettings
from .slimmable import SlimmableNetwork
from .supernet import train_supernet


class BudgetUnreachableError(CompressError, ValueError):
    """The budget is below what the smallest subnet of the space reaches."""


class NothingToSlimError(CompressError, ValueError):
    """The model has no channel group that can be narrowed."""


class MislabelledDataError(InvalidParameterError):
    """Loader labels do not fit the model's outputs (wrong dtype, shape or range)."""


def _check_loader(loader: Iterable, what: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    if loader is None:
        raise InvalidParameterError(f"autoslim needs a {what}_loader yielding (images, labels) batches. Got None.")
    x, y = take_batches(loader, 1, what)[0]
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
    if isinstance(device, str):
        from devices import get_device

        return get_device(device, threads=threads) if device != "board" else get_device(device)
    return device


def _full_model_result(net, full: dict, budget: float, unit: str, x1: tuple, val_loader: Iterable, work: Path,
                       log: Callable[[str], None]) -> SlimResult:
    warnings.warn(f"The budget ({budget:.4g} {unit}) is at or above the full model "
                  f"({full.get('measured_ms', full['flops']):.4g} {unit}): returning the full model.", stacklevel=3)
    cfg = net.space.max_config()
    subnet = extract_subnet(net, cfg)
    result = SlimResult(subnet=subnet, config=cfg, flops=full["flops"], predicted_ms=None,
                        measured_ms=full.get("measured_ms"), top1=evaluate(subnet, val_loader)["top1"],
                        budget=float(budget), unit=unit, path=[{"step": 0, "config": cfg, "flops": full["flops"]}],
                        example_inputs=x1, full=full, notes=["budget at or above the full model: full model returned"],
                        supernet=net)
    result.save(work / "result.json")
    log(str(result))
    return result


def autoslim(model: nn.Module, *, latency_ms: float | None = None, flops: float | None = None,
             device: Any = "cpu", train_loader: Iterable, val_loader: Iterable,
             settings: AutoSlimSettings | None = None, predictor: Any = None, work_dir: str | Path | None = None,
             train: bool = True, progress: bool = True, log: Callable[[str], None] = print) -> SlimResult:
    """Find the most accurate slimmed network of ``model`` under a latency (or FLOPs) budget.

    Args:
        model: a CNN (or an already built ``SlimmableNetwork``, e.g. a supernet trained before with ``train=False``).
        latency_ms: budget in milliseconds, measured on ``device`` (give this or ``flops``).
        flops: budget in FLOPs (1 multiply-add = 1 FLOP).
        device: "cpu" (onnxruntime, 1 thread by default), "torch-cpu", or a device object.
        train_loader, val_loader: (images, labels) batches; val_loader scores candidates and the result.
        settings: training, search and closed-loop settings (JSON-round-tripping).
        predictor: a fitted ``predictors.LatencyPredictor`` for the device (otherwise profiled here).
        work_dir: checkpoints, latency table, search path and result are kept here; rerunning resumes.
        train: train the slimmable supernet first (False: ``model`` is a trained supernet already).

    Returns:
        A SlimResult: subnet, config, FLOPs, predicted and measured latency, top-1, path; ``export_onnx(path)``.

    Raises:
        InvalidParameterError / MislabelledDataError: bad budget, empty loaders, labels that do not fit the model.
        UnknownDeviceError: unknown device name (lists the known ones).
        NothingToSlimError: the model has no slimmable channel group.
        BudgetUnreachableError: the budget is below the smallest subnet.
        BudgetNotMetError: no subnet on the path measured under the latency budget.
    """
    settings = settings or AutoSlimSettings()
    if (latency_ms is None) == (flops is None):
        raise InvalidParameterError("autoslim needs exactly one budget: latency_ms=... or flops=... "
                                    f"Got latency_ms={latency_ms!r}, flops={flops!r}.")
    budget = latency_ms if latency_ms is not None else flops
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
        raise InvalidParameterError(f"The budget must be a positive number. Got {budget!r}.")
    device = _resolve_device(device, settings.threads)
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="autoslim-"))
    work.mkdir(parents=True, exist_ok=True)

    # ---- model and data -------------------------------------------------------------------------------------
    if isinstance(model, SlimmableNetwork):
        net = model
        x1 = net.example_inputs
    else:
        x0, _ = take_batches(train_loader, 1, "train")[0]
        x1 = (x0[:1].clone(),)
        net = SlimmableNetwork(model, x1, divisor=settings.divisor)
    with torch.no_grad():
        num_classes = int(net.eval()(*x1).shape[-1])
    _check_loader(train_loader, "train", num_classes)
    _check_loader(val_loader, "val", num_classes)
    if len(net.space) == 0:
        raise NothingToSlimError(
            f"{type(model).__name__} has no channel group that can be narrowed: {net.space.summary()} "
            "Check the frozen reasons above (unsupported ops, ignore=...).")

    # ---- budget checks (measured first: no predictor needed to refuse an impossible budget) ---------------------
    space = net.space
    floor_cfg = space.uniform_config(settings.search.min_ratio)
    full_cfg = space.max_config()
    full = {"flops": net.flops(full_cfg)}
    measurable = can_measure(device)
    full_reaches = False
    floor_ms = None
    if latency_ms is not None and measurable:
        full["measured_ms"] = measure_module(device, extract_subnet(net, full_cfg), x1).median_ms
        floor_ms = measure_module(device, extract_subnet(net, floor_cfg), x1).median_ms
        log(f"measured: full model {full['measured_ms']:.3f} ms, smallest subnet (every group at "
            f"{settings.search.min_ratio:.0%}) {floor_ms:.3f} ms; budget {budget:.3f} ms")
        if budget < floor_ms:
            raise BudgetUnreachableError(
                f"The budget of {budget:.3f} ms is below the smallest subnet's measured latency of {floor_ms:.3f} ms "
                f"(every group at {settings.search.min_ratio:.0%} width). Raise the budget to at least "
                f"{floor_ms:.3f} ms, lower SearchSettings.min_ratio and TrainSettings.min_ratio, or use a "
                "smaller model.")
        full_reaches = full["measured_ms"] <= budget
    elif latency_ms is None:
        floor_flops = net.flops(floor_cfg)
        if budget < floor_flops:
            raise BudgetUnreachableError(
                f"The budget of {budget:.4g} FLOPs is below the smallest subnet's {floor_flops:.4g} FLOPs (every "
                f"group at {settings.search.min_ratio:.0%} width). Raise the budget to at least {floor_flops:.4g}, "
                "or lower SearchSettings.min_ratio and TrainSettings.min_ratio.")
        full_reaches = full["flops"] <= budget

    if full_reaches:
        return _full_model_result(net, full, budget, "ms" if latency_ms is not None else "FLOPs", x1, val_loader,
                                  work, log)

    # ---- cost model ---------------------------------------------------------------------------------------------
    if latency_ms is not None:
        if predictor is None:
            predictor = fit_latency_predictor(net, device, "model", work / "latency", settings.profile_configs,
                                              progress)
        cost = LatencyCost(net, predictor, "model")
    else:
        cost = FlopsCost(net)
    full_cost, floor_cost = (float(c) for c in cost([full_cfg, floor_cfg]))
    full["cost"] = full_cost
    if latency_ms is not None and not measurable:
        if budget < floor_cost:
            raise BudgetUnreachableError(
                f"The budget of {budget:.3f} ms is below the smallest subnet's predicted {floor_cost:.3f} ms. Raise "
                "the budget or lower the min_ratio settings.")
        if full_cost <= budget:
            return _full_model_result(net, full, budget, "ms", x1, val_loader, work, log)

    # ---- supernet ---------------------------------------------------------------------------------------------
    if train:
        if settings.pretrained:
            reorder_channels_(net, "bn")
        train_supernet(net, train_loader, settings.train, checkpoint=work / "supernet.pt", progress=progress)
    calib = take_batches(train_loader, settings.search.calib_batches, "train")
    held = take_batches(val_loader, settings.search.eval_batches, "val")
    scorer = CalibratedScorer(net, calib, held)

    # ---- search and closed loop -------------------------------------------------------------------------------
    notes: list[str] = []
    measurements: dict = {}
    ident = {"objective": cost.name, "groups": {g.name: g.width for g in space.free}}
    search_target = budget
    if latency_ms is not None and measurable:  # the predictor may run low: search deep enough for the device
        worst = max(full["measured_ms"] / full_cost, floor_ms / floor_cost, 1.0)
        search_target = budget / worst
    path = greedy_slim(net, scorer, cost, search_target, settings.search, path_file=work / "path.json",
                       identity=ident, progress=progress)
    if latency_ms is not None and measurable:
        index, meas = closed_loop(net, path, budget, device, settings.max_measurements, settings.min_budget_use,
                                  log=log)
        measurements = {int(k): {"median_ms": v.median_ms, "p25_ms": v.p25_ms, "p75_ms": v.p75_ms}
                        for k, v in meas.items()}
    else:
        index = first_within(path, budget)
        if index is None:
            index = len(path) - 1
            notes.append(f"the search path ended above the budget (at {path[-1]['cost']:.4g} {cost.unit})")
        if latency_ms is not None:
            notes.append(f"device {getattr(device, 'name', device)!r} cannot be measured from here: "
                         "the choice rests on the predictor alone")
    config = path[index]["config"]

    # ---- the subnet ---------------------------------------------------------------------------------------------
    calib_more = take_batches(train_loader, max(settings.search.calib_batches, 16), "train")
    net.set_config(config)
    recalibrate_bn(net, calib_more)
    subnet = extract_subnet(net, config)
    if settings.finetune_epochs > 0:
        net.set_config(full_cfg)
        recalibrate_bn(net, calib_more)
        finetune(subnet, net, train_loader, settings.finetune_epochs, settings.finetune_lr, progress=progress)
        recalibrate_bn(subnet, calib_more)
    top1 = evaluate(subnet, val_loader)["top1"]
    net.set_config(full_cfg)
    predicted = float(cost([config])[0]) if latency_ms is not None else None
    if index in measurements:
        measured = measurements[index]["median_ms"]
    else:
        measured = measure_module(device, subnet, x1).median_ms if measurable else None
    result = SlimResult(subnet=subnet, config=config, flops=int(net.flops(config)), predicted_ms=predicted,
                        measured_ms=measured, top1=top1, budget=float(budget), unit=cost.unit, path=path,
                        example_inputs=x1, measurements=measurements, full=full, notes=notes, supernet=net)
    result.save(work / "result.json")
    log(str(result))
    return result
