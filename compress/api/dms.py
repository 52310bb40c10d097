"""The DMS call: ``compress.dms(model, latency_ms=... | flops=..., device="cpu", train_loader=..., ...)``.

model -> channel space -> DMS masks (a differentiable top-k per channel group and per residual stage) -> search
(weights and pruning ratios, resource loss against FLOPs or a latency surrogate of the device predictor) ->
closed loop (export, measure; over budget: tighten the target and search on) -> channels ordered by importance,
blocks removed -> subnet, BN recalibrated, trained or fine-tuned -> the same SlimResult as autoslim.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from compress.api.checks import check_call_arguments
from compress.subnet.bn import recalibrate_bn
from compress.deploy.timing import ReferenceTimer, timed_ms
from compress.errors import InvalidParameterError, check_parameter
from compress.train.evaluate import take_batches
from compress.cost.flops import count_flops
from compress.search.objectives import LatencyCost, fit_latency_predictor, verify_predictor
from compress.search.prepare import prepare
from compress.io import locks_work_dir
from compress.result import MeasurementRecord, SlimResult, finish, measurement_record, path_point
from compress.search.dms.masked import DMSNetwork, extract_with_depth
from compress.search.dms.scale import fit_scale
from compress.search.dms.search import dms_search
from compress.settings import PIPELINES, DMSSettings
from compress.search.dms.surrogate import fit_latency_surrogate


def measured_per_predicted(dmsnet: DMSNetwork, surrogate, full_ms: float, floor_ms: float, floor_cfg: dict,
                           budget_ms: float) -> float:
    """Measured / surrogate latency at the budget: known at the full model and the smallest subnet (both measured),
    interpolated in log latency between them."""
    space = dmsnet.net.space
    feats = dmsnet.features_of_widths([space.widths(space.max_config()), space.widths(floor_cfg)])
    sur_full, sur_floor = (float(v) for v in surrogate(torch.from_numpy(feats)))
    r_full, r_floor = full_ms / sur_full, floor_ms / sur_floor
    if full_ms <= floor_ms:
        return r_full
    t = min(1.0, max(0.0, math.log(budget_ms / floor_ms) / math.log(full_ms / floor_ms)))
    return r_floor * (r_full / r_floor) ** t


# the loose keyword arguments dms took before DMSSettings held them -> the setting each one now is
DEPRECATED_ARGUMENTS: dict[str, str] = {"pipeline": "pipeline", "train_epochs": "train_epochs", "threads": "threads",
                                        "divisor": "divisor", "max_measurements": "max_measurements",
                                        "min_use": "min_budget_use"}


def settings_with_deprecated(settings: DMSSettings | None, loose: dict[str, Any]) -> DMSSettings:
    """``settings`` (default DMSSettings()) with the deprecated loose keyword arguments of dms mapped into it,
    each warned about (DeprecationWarning).

    Raises:
        InvalidParameterError: a keyword dms never took, or ``settings`` that is not a DMSSettings.
    """
    check_parameter(settings is None or isinstance(settings, DMSSettings), "settings", "dms",
                    "a compress.DMSSettings or None", settings)
    settings = settings or DMSSettings()
    unknown = sorted(set(loose) - set(DEPRECATED_ARGUMENTS))
    if unknown:
        raise InvalidParameterError(
            f"dms() got unexpected keyword argument(s) {unknown}. It takes model, latency_ms / flops, device, "
            "train_loader, val_loader, settings, predictor, work_dir, progress, log, timer and check_predictor; "
            "everything else is "
            f"a field of DMSSettings ({', '.join(f.name for f in dataclasses.fields(DMSSettings))}).")
    if not loose:
        return settings
    moved = {DEPRECATED_ARGUMENTS[k]: v for k, v in loose.items()}
    warnings.warn("dms(" + ", ".join(f"{k}=..." for k in loose) + ") is deprecated: pass settings=DMSSettings("
                  + ", ".join(f"{v}=..." for v in moved) + ") instead (the loose arguments override the settings "
                  "for now).", DeprecationWarning, stacklevel=3)
    return DMSSettings.from_dict({**settings.to_dict(), **moved})


@locks_work_dir("dms")
def dms(model: nn.Module, *, latency_ms: float | None = None, flops: float | None = None, device: Any = "cpu",
        train_loader: Iterable, val_loader: Iterable, settings: DMSSettings | None = None, predictor: Any = None,
        work_dir: str | Path | None = None, progress: bool = True, log: Callable[[str], None] = print,
        timer: ReferenceTimer | None = None, check_predictor: bool = True, **deprecated: Any) -> SlimResult:
    """Search widths and depths by gradient descent under a latency (or FLOPs) budget.

    Follows DMS (Liu et al., "Differentiable Model Scaling using Differentiable Topk", ICML 2024): every channel
    group and every residual stage gets a differentiable top-k mask whose ratio is learned together with the
    weights, under a resource loss against FLOPs or a latency surrogate fitted on an nn-Meter-style kernel
    predictor of the device (Zhang et al. 2021, "nn-Meter"); a closed loop then scales the searched shape until
    its measured latency fits the budget.

    Args:
        model: a CNN; trained for the "pretrained" / "search_only" pipelines, random for "scratch".
        latency_ms / flops: the budget (exactly one), in ms measured on ``device`` or in FLOPs (1 fused
            multiply-add = 1 FLOP).
        device: "cpu" (onnxruntime), "torch-cpu", or a device object.
        train_loader, val_loader: (images, labels) batches, images N x C x H x W, labels N class indices (int64);
            val_loader gives the result's top-1.
        settings: DMSSettings: the pipeline ("pretrained": search, then fine-tune the subnet ``train_epochs``;
            "scratch": search from random weights, then train the subnet ``train_epochs``; "search_only":
            structure parameters only), search epochs, learning rates, lambda_resource, annealing, depth on/off,
            min_ratio, divisor, threads, and the closed loop: the searched shape is scaled (one factor on every
            width, removed blocks kept) until its measured latency (exact FLOPs) is within
            [min_budget_use x budget, budget], in at most max_measurements measurements.
        predictor: a fitted ``predictors.LatencyPredictor`` for the device (otherwise profiled here).
        work_dir: latency table, search checkpoint (``dms_search.pt``: a rerun resumes the search) and result
            (result.json, subnet.pt; ``SlimResult.load`` reads them) are kept here. None: a new temporary folder.
        progress: show progress bars.
        log: called with each line of progress text.
        timer: a ``compress.deploy.timing.ReferenceTimer`` of the full model to share between searches (see
            autoslim).
        check_predictor: refuse a ``predictor`` fitted on another device or for another network with
            PredictorMismatchError (see autoslim); False: use it anyway (noted in the result).
        **deprecated: the loose arguments dms took before (pipeline, train_epochs, threads, divisor,
            max_measurements, min_use): mapped into ``settings`` with a DeprecationWarning (min_use is
            min_budget_use).

    Returns:
        A SlimResult; ``notes`` lists removed blocks and the surrogate's error, ``config`` holds the group widths and
        ``removed_blocks`` the residual blocks dropped.

    Raises:
        InvalidParameterError / MislabelledDataError: no or two budgets, a non-positive budget, empty loaders,
            labels that do not fit the model's outputs, a ``timer`` made for other input shapes, ``settings`` that
            is not a DMSSettings, an unknown keyword, or a deprecated keyword with a refused value, a ``predictor``
            without ``predict_ms``, a ``log`` that is not callable, a ``work_dir`` that is not a path.
        UnknownDeviceError: unknown device name (lists the known ones).
        InputShapeError, TraceError, UnsupportedOpError: the model does not run on the loader's images or cannot
            be traced (see :class:`SlimmableNetwork`).
        NothingToSlimError: the model has no slimmable channel group.
        BudgetUnreachableError: the budget is below the smallest subnet.
        PredictorUnavailableError: a latency budget on a device that cannot be profiled here and no ``predictor``.
        PredictorMismatchError: ``predictor`` was fitted on another device or for another network.
        WorkDirMismatchError: ``work_dir`` holds the files (record, latency table or predictor) of another network.
        NewerSchemaError: a file in ``work_dir`` was written by a newer version of compress (kept).
        BudgetNotMetError: no scaling of the searched shape measured under the budget.
    """
    check_call_arguments("dms", device, settings, DMSSettings, predictor, timer, log, progress)
    settings = settings_with_deprecated(settings, deprecated)
    pipeline = settings.pipeline
    prep = prepare("dms", model, latency_ms, flops, device, train_loader, val_loader, settings.divisor,
                   settings.threads, settings.min_ratio, work_dir, log, timer)
    if prep.full_result is not None:
        return prep.full_result
    net, x1, device, budget = prep.net, prep.x1, prep.device, prep.budget
    notes: list[str] = []
    if prep.latency and predictor is not None:
        if check_predictor:
            verify_predictor(predictor, net, device, "model")
        else:
            notes.append("predictor= was not checked against the device and the network (check_predictor=False)")
    dmsnet = DMSNetwork(net, settings.min_ratio, settings.depth)
    if settings.depth and not dmsnet.stages:
        notes.append("no residual stage of x + f(x) blocks found: depth search skipped, widths searched")
        log(notes[-1])
    if prep.latency:
        if predictor is None:
            predictor = fit_latency_predictor(net, device, "model", prep.work / "latency", progress=progress)
        surrogate = fit_latency_surrogate(dmsnet, LatencyCost(net, predictor, "model"))
        notes.append(f"latency surrogate (one weight per {surrogate.tying}) vs predictor on unseen configs: "
                     f"median error {surrogate.holdout_rel_err:.1%}, max {surrogate.holdout_max_rel_err:.1%}")
        log(notes[-1])

        def soft_cost():
            return surrogate(dmsnet.soft_features())
    else:
        soft_cost = dmsnet.soft_flops
    target = budget
    if prep.latency and prep.measurable:  # the surrogate's ms are the predictor's, not the device's: rescale
        target = budget / measured_per_predicted(dmsnet, surrogate, prep.full["measured_ms"], prep.floor_ms,
                                                 prep.floor_cfg, budget)
        log(f"soft latency target {target:.3f} ms (predictor scale) for a measured budget of {budget:.3f} ms")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    history = dms_search(dmsnet, train_loader, soft_cost, target, settings, progress=progress,
                         checkpoint=prep.work / "dms_search.pt",  # resumed on a rerun with the same budget
                         identity={"budget": budget, "unit": "ms" if prep.latency else "FLOPs"})
    seconds["search"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    removed = dmsnet.removed_blocks()
    cfg, _ = dmsnet.finalize_()  # channels ordered by importance: any width keeps the most important ones
    unit = "ms" if prep.latency else "FLOPs"
    measurements: list[MeasurementRecord] = []
    fit = None
    if not (prep.latency and not prep.measurable):
        def cost(c: dict) -> float:
            candidate = extract_with_depth(net, c, removed)
            return timed_ms(prep, candidate) if prep.latency else float(count_flops(candidate, x1).total)

        fit = fit_scale(net.space, cfg, prep.floor_cfg, cost, budget, settings.min_budget_use,
                        settings.max_measurements, align=getattr(device, "channel_block", 1) if prep.latency else 1,
                        log=log, headroom=settings.latency_headroom if prep.latency else 0.0)
        measurements = [measurement_record(t["value"], unit, scale=t["scale"]) for t in fit.tried]
        if fit.config != cfg:
            notes.append(f"{fit.how} to meet the budget on the device")
        cfg = fit.config
    else:
        notes.append(f"device {getattr(device, 'name', device)!r} cannot be measured from here: the subnet rests "
                     "on the latency surrogate alone")
    seconds["closed_loop"] = time.perf_counter() - t0
    subnet = extract_with_depth(net, cfg, removed)
    calib = take_batches(train_loader, 16, "train")
    recalibrate_bn(subnet, calib)
    predicted = None
    if prep.latency:  # the predictor knows widths only; the surrogate (fitted on it) also knows removed blocks
        feats = dmsnet.features_of_widths([net.space.widths(cfg)], removed)
        predicted = float(surrogate(torch.from_numpy(feats))[0])
        notes.append(f"predicted_ms is the latency surrogate's (the predictor's scale; predictor alone, all blocks "
                     f"kept: {float(LatencyCost(net, predictor, 'model')([cfg])[0]):.3f} ms)")
    if removed:
        notes.append(f"removed blocks: {', '.join(removed)}")
    train_lr = PIPELINES[pipeline]
    return finish("dms", subnet, config=cfg, budget=budget, unit=unit,
                  path=[path_point(h["step"], h["cost"], loss=h["task"], target=h["target"]) for h in history],
                  example_inputs=x1, val_loader=val_loader, work_dir=prep.work, log=log, supernet=net,
                  divisor=settings.divisor, predicted_ms=predicted,
                  measured_ms=fit.value if fit is not None and prep.latency else None, timing=prep,
                  measurements=measurements, full=prep.full, notes=notes, removed_blocks=removed, seconds=seconds,
                  train_loader=train_loader, calib=calib,
                  train_epochs=settings.train_epochs if train_lr is not None else 0.0, train_lr=train_lr or 0.0,
                  train_phase="train" if pipeline == "scratch" else "finetune", progress=progress)


__all__ = ["dms", "DMSSettings", "PIPELINES", "DEPRECATED_ARGUMENTS"]
