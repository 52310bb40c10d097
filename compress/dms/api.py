"""The DMS call: ``compress.dms(model, latency_ms=... | flops=..., device="cpu", train_loader=..., ...)``.

model -> channel space -> DMS masks (a differentiable top-k per channel group and per residual stage) -> search
(weights and pruning ratios, resource loss against FLOPs or a latency surrogate of the device predictor) ->
closed loop (export, measure; over budget: tighten the target and search on) -> channels ordered by importance,
blocks removed -> subnet, BN recalibrated, trained or fine-tuned -> the same SlimResult as autoslim.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Iterable

from torch import nn

from ..bn import recalibrate_bn
from ..closed_loop import BudgetNotMetError, measure_module
from ..errors import InvalidParameterError
from ..evaluate import evaluate, take_batches
from ..finetune import finetune
from ..flops import count_flops
from ..objectives import LatencyCost, fit_latency_predictor
from ..prepare import prepare
from ..result import SlimResult
from .masked import DMSNetwork, extract_with_depth
from .search import DMSSettings, dms_search
from .surrogate import fit_latency_surrogate

PIPELINES = ("pretrained", "scratch", "search_only")


def dms(model: nn.Module, *, latency_ms: float | None = None, flops: float | None = None, device: Any = "cpu",
        train_loader: Iterable, val_loader: Iterable, settings: DMSSettings | None = None,
        pipeline: str = "pretrained", train_epochs: float = 0.0, predictor: Any = None, threads: int = 1,
        divisor: int = 8, max_rounds: int = 4, min_use: float = 0.85, work_dir: str | Path | None = None,
        progress: bool = True, log: Callable[[str], None] = print) -> SlimResult:
    """Search widths and depths by gradient descent under a latency (or FLOPs) budget.

    Args:
        model: a CNN; trained for ``pipeline="pretrained"`` / ``"search_only"``, random for ``"scratch"``.
        latency_ms / flops: the budget (exactly one).
        pipeline: "pretrained" (search, then fine-tune the subnet ``train_epochs``), "scratch" (search from random
            weights, then train the subnet ``train_epochs``), "search_only" (structure parameters only).
        settings: search settings (epochs, learning rates, lambda_resource, annealing, depth on/off).
        max_rounds: closed-loop rounds: a subnet measured over budget tightens the target and the search goes on.

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
                   settings.min_ratio, work_dir, log)
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
        notes.append(f"latency surrogate vs predictor on unseen configs: median error "
                     f"{surrogate.holdout_rel_err:.1%}, max {surrogate.holdout_max_rel_err:.1%}")
        log(notes[-1])

        def soft_cost():
            return surrogate(dmsnet.soft_features())
    else:
        soft_cost = dmsnet.soft_flops
    target = budget
    measurements: dict[int, dict] = {}
    history = []
    feasible_t, over_t = None, None          # soft targets known to give a subnet under / over the budget
    best = None                              # (value, snapshot of the top-k states) of the best subnet under budget
    for rnd in range(max_rounds):
        rs = settings if rnd == 0 else DMSSettings.from_dict({**settings.to_dict(), "epochs": settings.epochs / 4,
                                                             "anneal": 0.5})
        history += dms_search(dmsnet, train_loader, soft_cost, target, rs, progress=progress)
        cfg, removed = dmsnet.hard_widths(), dmsnet.removed_blocks()
        if prep.latency and not prep.measurable:
            break
        candidate = extract_with_depth(net, cfg, removed)
        if prep.latency:
            value = measure_module(device, candidate, x1).median_ms
        else:
            value = float(count_flops(candidate, x1).total)
        unit = "ms" if prep.latency else "FLOPs"
        measurements[rnd] = {"value": value, "unit": unit, "target": target, "removed_blocks": len(removed)}
        log(f"  DMS round {rnd}: soft target {target:.4g}, {'measured' if prep.latency else 'exact'} {value:.4g} "
            f"{unit} (budget {budget:.4g}), {len(removed)} blocks removed")
        if value <= budget:
            feasible_t = target if feasible_t is None else max(feasible_t, target)
            if best is None or value > best[0]:
                best = (value, copy.deepcopy(dmsnet.topk_state()))
            if value >= min_use * budget:
                break
        else:
            over_t = target if over_t is None else min(over_t, target)
        if feasible_t is not None and over_t is not None:
            target = (feasible_t * over_t) ** 0.5  # bisect (geometrically) between the two
        else:
            target = target * (budget / value) * (0.97 if value > budget else 1.0)
    if best is None and not (prep.latency and not prep.measurable):
        lines = ", ".join(f"round {k}: {v['value']:.4g} {v['unit']}" for k, v in measurements.items())
        raise BudgetNotMetError(
            f"DMS found no subnet under the budget of {budget:.4g} in {max_rounds} rounds ({lines}). Raise "
            "max_rounds or lambda_resource, or search longer (DMSSettings.epochs).")
    if best is not None:
        dmsnet.load_topk_state(best[1])
    cfg, removed = dmsnet.finalize_()
    subnet = extract_with_depth(net, cfg, removed)
    calib = take_batches(train_loader, 16, "train")
    recalibrate_bn(subnet, calib)
    if train_epochs > 0 and pipeline != "search_only":
        finetune(subnet, None, train_loader, train_epochs, lr=0.05 if pipeline == "scratch" else 0.01,
                 progress=progress)
        recalibrate_bn(subnet, calib)
    top1 = evaluate(subnet, val_loader)["top1"]
    measured = measure_module(device, subnet, x1).median_ms if prep.measurable else None
    flops_now = int(count_flops(subnet, x1).total)
    predicted = float(LatencyCost(net, predictor, "model")([cfg])[0]) if prep.latency else None
    if removed:
        notes.append(f"removed blocks: {', '.join(removed)} (predicted latency ignores block removal)")
    result = SlimResult(subnet=subnet, config=cfg, flops=flops_now, predicted_ms=predicted, measured_ms=measured,
                        top1=top1, budget=budget, unit="ms" if prep.latency else "FLOPs",
                        path=[{"step": h["step"], "cost": h["cost"], "target": h["target"], "task": h["task"]}
                              for h in history], example_inputs=x1,
                        measurements={int(k): v for k, v in measurements.items()}, full=prep.full, notes=notes,
                        supernet=net, removed_blocks=removed)
    result.save(prep.work / "result.json")
    log(str(result))
    return result


__all__ = ["dms", "DMSSettings", "PIPELINES"]
