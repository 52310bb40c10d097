"""The DMS call: ``compress.dms(model, latency_ms=... | flops=..., device="cpu", train_loader=..., ...)``.

model -> channel space -> DMS masks (a differentiable top-k per channel group and per residual stage) -> search
(weights and pruning ratios, resource loss against FLOPs or a latency surrogate of the device predictor) ->
closed loop (export, measure; over budget: tighten the target and search on) -> channels ordered by importance,
blocks removed -> subnet, BN recalibrated, trained or fine-tuned -> the same SlimResult as autoslim.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from compress.subnet.bn import recalibrate_bn
from compress.deploy.closed_loop import HEADROOM
from compress.deploy.timing import ReferenceTimer, timed_ms
from compress.errors import InvalidParameterError
from compress.train.evaluate import evaluate, take_batches
from compress.train.finetune import finetune
from compress.cost.flops import count_flops
from compress.search.objectives import LatencyCost, fit_latency_predictor
from compress.search.prepare import prepare
from compress.result import SlimResult
from compress.search.dms.masked import DMSNetwork, extract_with_depth
from compress.search.dms.scale import fit_scale
from compress.search.dms.search import DMSSettings, dms_search
from compress.search.dms.surrogate import fit_latency_surrogate

PIPELINES = ("pretrained", "scratch", "search_only")


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


def dms(model: nn.Module, *, latency_ms: float | None = None, flops: float | None = None, device: Any = "cpu",
        train_loader: Iterable, val_loader: Iterable, settings: DMSSettings | None = None,
        pipeline: str = "pretrained", train_epochs: float = 0.0, predictor: Any = None, threads: int = 1,
        divisor: int = 8, max_measurements: int = 8, min_use: float = 0.95, work_dir: str | Path | None = None,
        progress: bool = True, log: Callable[[str], None] = print, timer: ReferenceTimer | None = None) -> SlimResult:
    """Search widths and depths by gradient descent under a latency (or FLOPs) budget.

    Args:
        model: a CNN; trained for ``pipeline="pretrained"`` / ``"search_only"``, random for ``"scratch"``.
        latency_ms / flops: the budget (exactly one).
        pipeline: "pretrained" (search, then fine-tune the subnet ``train_epochs``), "scratch" (search from random
            weights, then train the subnet ``train_epochs``), "search_only" (structure parameters only).
        settings: search settings (epochs, learning rates, lambda_resource, annealing, depth on/off).
        max_measurements: closed loop: the searched shape is scaled (one factor on every width, removed blocks
            kept) until its measured latency (exact FLOPs) is within [min_use x budget, budget]; at most this many
            measurements.
        timer: a ``compress.timing.ReferenceTimer`` of the full model to share between searches (see autoslim).

    Returns:
        A SlimResult; ``notes`` lists removed blocks and the surrogate's error, ``config`` holds the group widths and
        ``removed_blocks`` the residual blocks dropped.

    Raises:
        the same errors as :func:`compress.autoslim`, and InvalidParameterError for an unknown pipeline.
    """
    if pipeline not in PIPELINES:
        raise InvalidParameterError(f"Unknown DMS pipeline {pipeline!r}. Known: {', '.join(PIPELINES)}.")
    settings = settings or DMSSettings()
    if pipeline == "search_only" and not settings.search_only:
        settings = DMSSettings.from_dict({**settings.to_dict(), "search_only": True})
    prep = prepare("dms", model, latency_ms, flops, device, train_loader, val_loader, divisor, threads,
                   settings.min_ratio, work_dir, log, timer)
    if prep.full_result is not None:
        return prep.full_result
    net, x1, device, budget = prep.net, prep.x1, prep.device, prep.budget
    notes: list[str] = []
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
    history = dms_search(dmsnet, train_loader, soft_cost, target, settings, progress=progress)
    seconds["search"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    removed = dmsnet.removed_blocks()
    cfg, _ = dmsnet.finalize_()  # channels ordered by importance: any width keeps the most important ones
    unit = "ms" if prep.latency else "FLOPs"
    measurements: dict[int, dict] = {}
    fit = None
    if not (prep.latency and not prep.measurable):
        def cost(c: dict) -> float:
            candidate = extract_with_depth(net, c, removed)
            return timed_ms(prep, candidate) if prep.latency else float(count_flops(candidate, x1).total)

        fit = fit_scale(net.space, cfg, prep.floor_cfg, cost, budget, min_use, max_measurements,
                        align=getattr(device, "channel_block", 1) if prep.latency else 1, log=log,
                        headroom=HEADROOM if prep.latency else 0.0)
        measurements = {i: {"value": t["value"], "unit": unit, "scale": t["scale"]} for i, t in enumerate(fit.tried)}
        if fit.scale != 1.0:
            notes.append(f"searched widths scaled by {fit.scale:.3f} to meet the budget on the device")
        cfg = fit.config
    else:
        notes.append(f"device {getattr(device, 'name', device)!r} cannot be measured from here: the subnet rests "
                     "on the latency surrogate alone")
    seconds["closed_loop"] = time.perf_counter() - t0
    subnet = extract_with_depth(net, cfg, removed)
    calib = take_batches(train_loader, 16, "train")
    recalibrate_bn(subnet, calib)
    if train_epochs > 0 and pipeline != "search_only":
        t0 = time.perf_counter()
        finetune(subnet, None, train_loader, train_epochs, lr=0.05 if pipeline == "scratch" else 0.01,
                 progress=progress)
        recalibrate_bn(subnet, calib)
        seconds["train" if pipeline == "scratch" else "finetune"] = time.perf_counter() - t0
    top1 = evaluate(subnet, val_loader)["top1"]
    measured = fit.value if fit is not None and prep.latency else timed_ms(prep, subnet)
    flops_now = int(count_flops(subnet, x1).total)
    predicted = None
    if prep.latency:  # the predictor knows widths only; the surrogate (fitted on it) also knows removed blocks
        feats = dmsnet.features_of_widths([net.space.widths(cfg)], removed)
        predicted = float(surrogate(torch.from_numpy(feats))[0])
        notes.append(f"predicted_ms is the latency surrogate's (the predictor's scale; predictor alone, all blocks "
                     f"kept: {float(LatencyCost(net, predictor, 'model')([cfg])[0]):.3f} ms)")
    if removed:
        notes.append(f"removed blocks: {', '.join(removed)}")
    result = SlimResult(subnet=subnet, config=cfg, flops=flops_now, predicted_ms=predicted, measured_ms=measured,
                        top1=top1, budget=budget, unit="ms" if prep.latency else "FLOPs",
                        path=[{"step": h["step"], "cost": h["cost"], "target": h["target"], "task": h["task"]}
                              for h in history], example_inputs=x1,
                        measurements={int(k): v for k, v in measurements.items()}, full=prep.full, notes=notes,
                        supernet=net, removed_blocks=removed, seconds=seconds)
    result.save(prep.work / "result.json")
    log(str(result))
    return result


__all__ = ["dms", "DMSSettings", "PIPELINES"]
