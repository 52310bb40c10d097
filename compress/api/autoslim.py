"""The one call: ``autoslim(model, latency_ms=5, device="cpu", train_loader=..., val_loader=...)``.

model -> channel space -> slimmable supernet training -> cost model (FLOPs, or a latency predictor profiled on the
device) -> greedy slimming path -> closed loop on the device (measured latency under the budget) -> subnet with BN
recalibrated (optionally fine-tuned) -> SlimResult (export_onnx gives a verified ONNX file).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable

from torch import nn

from compress.api.checks import check_call_arguments
from compress.subnet.bn import recalibrate_bn
from compress.io import weights_digest, locks_work_dir
from compress.deploy.closed_loop import closed_loop, fill_step, insert_point, warn_if_unused
from compress.train.evaluate import CalibratedScorer, take_batches
from compress.subnet.extract import extract_subnet
from compress.search.greedy import check_path_file, first_within, greedy_slim
from compress.search.objectives import FlopsCost, LatencyCost, fit_latency_predictor, verify_predictor
from compress.space.digest import graph_digest
from compress.search.prepare import BudgetUnreachableError, full_model_result, prepare
from compress.slim.reorder import reorder_channels_
from compress.result import MeasurementRecord, SlimResult, finish, measurement_record, path_point
from compress.settings import AutoSlimSettings
from compress.train.supernet import check_checkpoint, train_supernet
from compress.deploy.timing import ReferenceTimer


@locks_work_dir("autoslim")
def autoslim(model: nn.Module, *, latency_ms: float | None = None, flops: float | None = None,
             device: Any = "cpu", train_loader: Iterable, val_loader: Iterable,
             settings: AutoSlimSettings | None = None, predictor: Any = None, work_dir: str | Path | None = None,
             train: bool = True, progress: bool = True, log: Callable[[str], None] = print,
             timer: ReferenceTimer | None = None, check_predictor: bool = True) -> SlimResult:
    """Find the most accurate slimmed network of ``model`` under a latency (or FLOPs) budget.

    Follows AutoSlim (Yu & Huang 2019, "AutoSlim: Towards One-Shot Architecture Search for Channel Numbers"): a
    slimmable supernet trained with the sandwich rule and inplace distillation (Yu & Huang 2019, "Universally
    Slimmable Networks and Improved Training Techniques"; ``distill="alpha"``: the adaptive alpha-divergence of
    Wang et al. 2021, "AlphaNet"), then greedy slimming: from full width, repeatedly cut the channel bin whose
    removal costs the least held-out accuracy. Latency comes from an nn-Meter-style kernel predictor profiled on
    the device (Zhang et al. 2021, "nn-Meter"), and a closed loop measures the exported candidates on the device.
    Where one cut on the path crosses a latency step (a stage's channel group leaving a CPU vector block) and the
    choice uses < ``min_budget_use`` of the budget, the groups not cut there take back earlier path widths until
    the measured latency fills the budget (``fill_measurements``; the result's ``notes`` say so).

    Args:
        model: a CNN (or an already built ``SlimmableNetwork``, e.g. a supernet trained before with ``train=False``).
        latency_ms: budget in milliseconds, measured on ``device`` (give this or ``flops``).
        flops: budget in FLOPs (1 fused multiply-add = 1 FLOP, fvcore's convention).
        device: "cpu" (onnxruntime, 1 thread by default), "torch-cpu", or a device object.
        train_loader, val_loader: (images, labels) batches, images N x C x H x W, labels N class indices (int64);
            val_loader scores candidates and the result.
        settings: training, search and closed-loop settings (JSON-round-tripping).
        predictor: a fitted ``predictors.LatencyPredictor`` for the device (otherwise profiled here). It is checked
            against the device's fingerprint and the network (see ``check_predictor``).
        work_dir: checkpoints, latency table, search path and result are kept here; rerunning resumes. None: a
            new temporary folder. Its files record the network (and the supernet checkpoint the starting weights)
            they were made for: a work_dir of another network is refused, never reused.
        train: train the slimmable supernet first (False: ``model`` is a trained supernet already).
        progress: show progress bars.
        log: called with each line of progress text.
        timer: a ``compress.timing.ReferenceTimer`` of the full model to share between searches (optionally with
            its reference latency pinned); by default one is made and the full model measured here.
        check_predictor: refuse a ``predictor`` fitted on another device (fingerprint: CPU, cores, runtime,
            threads, ...) or for another network with PredictorMismatchError. False: use it anyway (e.g. a
            predictor of a sibling CPU you trust); the result's notes say it was not checked.

    Returns:
        A SlimResult: subnet, config, FLOPs, predicted and measured latency (ms), top-1 (%), path;
        ``export_onnx(path)``. A budget at or above the full model returns the full model, with a warning.

    Raises:
        InvalidParameterError / MislabelledDataError: no or two budgets, a non-positive budget, empty loaders,
            labels that do not fit the model's outputs, a ``timer`` made for other input shapes, ``settings`` that
            is not an AutoSlimSettings, a ``predictor`` without ``predict_ms``, a ``log`` that is not callable, a
            ``work_dir`` that is not a path.
        UnknownDeviceError: unknown device name (lists the known ones).
        InputShapeError, TraceError, UnsupportedOpError: the model does not run on the loader's images or cannot
            be traced (see :class:`SlimmableNetwork`).
        NothingToSlimError: the model has no slimmable channel group.
        BudgetUnreachableError: the budget is below the smallest subnet.
        PredictorUnavailableError: a latency budget on a device that cannot be profiled here and no ``predictor``.
        PredictorMismatchError: ``predictor`` was fitted on another device or for another network (and
            ``check_predictor`` is True).
        WorkDirMismatchError: ``work_dir`` (its ``network.json``, latency table or predictor) holds the files of
            another network; CheckpointMismatchError / SearchResumeError (both WorkDirMismatchErrors): the supernet
            checkpoint / search path there belongs to another network, starting weights or settings. Checked
            before anything is trained.
        CorruptFileError: supernet.pt or path.json in ``work_dir`` is truncated or foreign (checked before training).
        NewerSchemaError: a file in ``work_dir`` was written by a newer version of compress (kept).
        BudgetNotMetError: no subnet on the path measured under the latency budget.
    """
    check_call_arguments("autoslim", device, settings, AutoSlimSettings, predictor, timer, log, progress, train=train)
    settings = settings or AutoSlimSettings()
    prep = prepare("autoslim", model, latency_ms, flops, device, train_loader, val_loader, settings.divisor,
                   settings.threads, settings.search.min_ratio, work_dir, log, timer)
    if prep.full_result is not None:
        return prep.full_result
    net, x1, device, budget, work = prep.net, prep.x1, prep.device, prep.budget, prep.work
    measurable, full, floor_ms, floor_cfg = prep.measurable, prep.full, prep.floor_ms, prep.floor_cfg
    latency_ms = budget if prep.latency else None
    space = net.space
    full_cfg = space.max_config()

    # ---- what work_dir holds, checked before anything is profiled or trained -----------------------------------
    notes: list[str] = []
    if latency_ms is not None and predictor is not None:
        if check_predictor:
            verify_predictor(predictor, net, device, "model")
        else:
            notes.append("predictor= was not checked against the device and the network (check_predictor=False)")
    if train:
        if settings.pretrained:
            reorder_channels_(net, "bn")
        check_checkpoint(net, train_loader, settings.train, work / "supernet.pt")
    digest = graph_digest(net)
    check_path_file(work / "path.json", {"graph": digest})

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
            return full_model_result(net, full, budget, "ms", x1, val_loader, work, log, method="autoslim")

    # ---- supernet ---------------------------------------------------------------------------------------------
    seconds: dict[str, float] = {}
    if train:
        t0 = time.perf_counter()
        train_supernet(net, train_loader, settings.train, checkpoint=work / "supernet.pt", progress=progress)
        seconds["supernet"] = time.perf_counter() - t0
    calib_more = take_batches(train_loader, max(settings.search.calib_batches, 16), "train")  # final BN recal
    calib = calib_more[:settings.search.calib_batches]  # per-candidate BN recal: the same fixed batches
    held = take_batches(val_loader, settings.search.eval_batches, "val")
    scorer = CalibratedScorer(net, calib, held)

    # ---- search and closed loop -------------------------------------------------------------------------------
    measurements: list[MeasurementRecord] = []
    # the weights are part of what was searched: a path scored on another supernet must not be resumed
    ident = {"objective": cost.name, "groups": {g.name: g.width for g in space.free}, "weights": weights_digest(net),
             "graph": digest}
    search_target = budget
    if latency_ms is not None and measurable:  # the predictor may run low: search deep enough for the device
        worst = max(full["measured_ms"] / full_cost, floor_ms / floor_cost, 1.0)
        search_target = budget / worst
    t0 = time.perf_counter()
    path = greedy_slim(net, scorer, cost, search_target, settings.search, path_file=work / "path.json",
                       identity=ident, progress=progress)
    seconds["search"] = time.perf_counter() - t0
    if latency_ms is not None and measurable:
        t0 = time.perf_counter()
        index, meas = closed_loop(net, path, budget, device, settings.max_measurements, settings.min_budget_use,
                                  log=log, timer=prep.timer, warn_below=0.0,  # warned below, after the fill
                                  headroom=settings.latency_headroom)
        filled = fill_step(net, path, index, meas, budget, device, settings.fill_measurements,
                           settings.min_budget_use, log=log, timer=prep.timer, headroom=settings.latency_headroom)
        if filled is not None:
            cfg = filled["config"]
            path, meas = insert_point(path, meas, index, {
                **path[index], "config": cfg, "cost": float(cost([cfg])[0]), "flops": int(net.flops(cfg)),
                "top1": None, "loss": None, "seconds": None}, filled["measurement"])
            notes.append(f"a latency step between path points {index - 1} and {index} left "
                         f"{1 - meas[index + 1].median_ms / budget:.0%} of the budget unused; point {index} is path "
                         f"point {filled['from_index']} with the stepped groups kept narrow "
                         f"({meas[index].median_ms:.3f} ms"
                         + (f"; {filled['steps']} steps filled" if filled["steps"] > 1 else "") + ")")
        warn_if_unused(meas[index].median_ms, budget)
        seconds["closed_loop"] = time.perf_counter() - t0
        measurements = [measurement_record(v.median_ms, "ms", v.p25_ms, v.p75_ms, path_index=k)
                        for k, v in meas.items()]
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
    net.set_config(config)
    recalibrate_bn(net, calib_more)
    subnet = extract_subnet(net, config)
    net.set_config(full_cfg)
    if settings.finetune_epochs > 0:  # the teacher is the supernet at full width, BN recalibrated there
        recalibrate_bn(net, calib_more)
    measured = next((m["value"] for m in measurements if m["path_index"] == index), None)
    result = finish("autoslim", subnet, config=config, budget=budget, unit=cost.unit,
                    path=[path_point(p["step"], p["cost"], p["config"], p["flops"], p["top1"], p["loss"],
                                     seconds=p["seconds"]) for p in path],
                    example_inputs=x1, val_loader=val_loader, work_dir=work, log=log, supernet=net,
                    flops=int(net.flops(config)),
                    predicted_ms=float(cost([config])[0]) if latency_ms is not None else None,
                    measured_ms=measured, timing=prep, measurements=measurements, full=full, notes=notes,
                    seconds=seconds, train_loader=train_loader, calib=calib_more,
                    train_epochs=settings.finetune_epochs, train_lr=settings.finetune_lr, teacher=net,
                    train_phase="finetune", progress=progress)
    return result
