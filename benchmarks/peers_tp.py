"""Torch-Pruning as the peer benchmark's baseline: pruning a copy of the pretrained model to a channel ratio with
one of its importance criteria, the bisection on measured latency that finds the ratio meeting a budget (under the
closed-loop rules of ``compress.deploy.closed_loop``), and rebuilding a pruned model from its recorded layer shapes.
Used by ``bench_peers_cifar.py``."""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from compress.deploy.closed_loop import (HEADROOM, RETIMES, confirm_best, median_of_retimes, order_conflict,
                                        warn_if_noisy)

MIN_USE = 0.95          # aim: a chosen subnet uses at least this fraction of the budget (as the closed loop does)

class PeerBenchmarkError(RuntimeError):
    """The benchmark cannot go on as asked (missing weights or Torch-Pruning, a state file of another setup)."""


# ---- Torch-Pruning ---------------------------------------------------------------------------------------------

def import_tp():
    try:
        import torch_pruning as tp
    except ImportError:
        raise PeerBenchmarkError("torch_pruning is not installed; it is a benchmark-only dependency: "
                                 "`pip install -e \".[bench]\"` or `make bench-peers` installs it.") from None
    return tp


def group_norm_importance(tp):
    """DepGraph's group-level L2 norm: ``GroupNormImportance`` in older Torch-Pruning, ``GroupMagnitudeImportance``
    (p=2, mean over the group) from 1.3 on."""
    cls = getattr(tp.importance, "GroupNormImportance", None) or tp.importance.GroupMagnitudeImportance
    return cls(p=2)


# criterion -> (importance factory taking the torch_pruning module, needs gradients, what it is)
TP_CRITERIA: dict[str, tuple[Callable, bool, str]] = {
    "l1": (lambda tp: tp.importance.MagnitudeImportance(p=1), False,
           "weight magnitude, L1 (Li et al. 2017), MagnitudeImportance(p=1)"),
    "bn_scale": (lambda tp: tp.importance.BNScaleImportance(), False,
                 "BN scale |gamma| (Liu et al. 2017, network slimming; no sparsity training), BNScaleImportance()"),
    "group_norm": (group_norm_importance, False,
                   "group L2 norm over every coupled layer (Fang et al. 2023, DepGraph; no sparsity training)"),
    "taylor": (lambda tp: tp.importance.TaylorImportance(), True,
               "first-order Taylor |w * dL/dw| (Molchanov et al. 2019) on fixed held-out batches, "
               "TaylorImportance()"),
}
TP_MODES = {"global": True, "local": False}  # mode -> MetaPruner(global_pruning=...)


def last_linear(model: nn.Module) -> nn.Module:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise PeerBenchmarkError(f"{type(model).__name__} has no nn.Linear classifier to leave unpruned.")
    return linears[-1]


def tp_prune(pretrained: nn.Module, x: torch.Tensor, criterion: str, global_pruning: bool, ratio: float,
             steps: int, round_to: int, grad_batches: list, max_ratio: float) -> nn.Module:
    """A deep copy of ``pretrained`` pruned by Torch-Pruning to channel ``ratio`` (0: unpruned; no layer pruned by
    more than ``max_ratio``) in ``steps`` iterative steps; with a gradient criterion, gradients are taken on
    ``grad_batches`` before every step."""
    tp = import_tp()
    model = copy.deepcopy(pretrained).eval()
    if ratio <= 0:
        return model
    make, needs_grad, _ = TP_CRITERIA[criterion]
    pruner = tp.pruner.MetaPruner(model, x, importance=make(tp), global_pruning=global_pruning,
                                  pruning_ratio=ratio, max_pruning_ratio=max_ratio, iterative_steps=steps,
                                  ignored_layers=[last_linear(model)], round_to=round_to)
    for _ in range(steps):
        if needs_grad:
            model.zero_grad(set_to_none=True)
            for xb, yb in grad_batches:  # eval mode: BN statistics stay as pretrained
                F.cross_entropy(model(xb), yb).backward()
        pruner.step()
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.grad = None
    return model.eval()


def budget_floor(headroom: float) -> float:
    """The fraction of the budget every method aims to use at least: MIN_USE, lowered to 1 - 2 x ``headroom`` when
    that is less, so the band [floor, 1 - headroom] of the budget stays open."""
    return min(MIN_USE, 1 - 2 * headroom)


def retime_probes(probes: list[dict], measure: Callable[[float], float], log=print) -> None:
    """If the last probe contradicts an earlier one (a higher pruning ratio measuring more than ``PLAUSIBLE``
    slower, or a lower one faster), measure both ``RETIMES`` more times; each keeps the median (in place)."""
    last = probes[-1]
    other = order_conflict(last, probes[:-1], size=lambda p: -p["ratio"], value=lambda p: p["latency_ratio"])
    if other is None:
        return
    log(f"    pruning ratio {last['ratio']:.4f} ({last['latency_ratio']:.3f}) contradicts "
        f"{other['ratio']:.4f} ({other['latency_ratio']:.3f}): timing both again")
    for p in (last, other):
        p["latency_ratio"] = median_of_retimes(p["latency_ratio"], lambda p=p: measure(p["ratio"]))


def bisect_ratio(measure: Callable[[float], float], frac: float, max_probes: int, max_ratio: float,
                 log=print, headroom: float = HEADROOM) -> dict:
    """The smallest pruning ratio in [0, max_ratio] whose measured latency ratio is under ``frac`` with ``headroom``,
    searched by secant steps in a shrinking bracket (bisection when the secant falls outside its middle 80%);
    stops at a point using >= MIN_USE of the budget. ``measure(ratio)`` -> latency / full model.

    The closed loops' rules hold (``compress.deploy.closed_loop``): a probe that contradicts the order of those
    before it is timed again with the one it contradicts, and the choice is timed again before it is kept; if that
    puts it over, the search goes on, and if it puts it under MIN_USE of the budget, the ratios between it and the
    largest one over are tried (up to 4 probes more in all)."""
    min_use = budget_floor(headroom)
    limit, aim = (1 - headroom) * frac, (min_use + 1 - headroom) / 2 * frac
    probes: list[dict] = []

    def bracket() -> tuple[float, float, float, float | None]:
        lo, lo_m = max(((p["ratio"], p["latency_ratio"]) for p in probes if p["latency_ratio"] > limit),
                       default=(0.0, 1.0))  # ratio 0 is the full model
        hi, hi_m = min(((p["ratio"], p["latency_ratio"]) for p in probes if p["latency_ratio"] <= limit),
                       default=(max_ratio, None))  # measured only if the bracket needs it
        return lo, lo_m, hi, hi_m

    def next_ratio(r: float) -> float | None:
        m = probes[-1]["latency_ratio"]
        lo, lo_m, hi, hi_m = bracket()
        if min_use * frac <= m <= limit or (m > limit and r >= max_ratio) or hi - lo < 1e-3:
            return None
        if hi_m is None:
            if lo > 0 and hi - lo < 0.05:
                return hi
            return (lo + hi) / 2 if lo > 0 else min(max_ratio, r + (max_ratio - r) / 2)
        # secant in log latency between the bracket ends
        t = (math.log(lo_m) - math.log(aim)) / max(math.log(lo_m) - math.log(hi_m), 1e-9)
        return lo + min(0.9, max(0.1, t)) * (hi - lo)

    def retime(p: dict) -> None:  # the choice is timed again before it is kept
        p["runs"] = []
        p["latency_ratio"] = median_of_retimes(p["latency_ratio"], lambda: measure(p["ratio"]), p["runs"])
        p["confirmed"] = True
        log(f"    pruning ratio {p['ratio']:.4f}: {p['latency_ratio']:.3f} after timing it {RETIMES} more times")

    r: float | None = min(max_ratio, 1 - math.sqrt(aim))  # conv cost ~ (1 - ratio)^2
    allowed = max_probes
    while True:
        while r is not None and len(probes) < allowed:
            probes.append({"ratio": r, "latency_ratio": measure(r)})
            log(f"    pruning ratio {r:.4f}: latency {probes[-1]['latency_ratio']:.3f} of the full model "
                f"(budget {frac:.2f})")
            retime_probes(probes, measure, log)
            r = next_ratio(r)
        best = confirm_best(sorted(probes, key=lambda p: p["ratio"]), lambda p: p["latency_ratio"],
                            lambda p: None if p.get("confirmed") else retime(p), limit)
        lo, lo_m = bracket()[:2]
        if (best is not None and best["latency_ratio"] < min_use * frac and best["ratio"] - lo >= 1e-3
                and len(probes) < max_probes + 4):
            # timed again, the choice reads lower than its first timing (MobileNetV2 at 50%: 0.465, then a median
            # of 0.436): try between it and the largest ratio over, as compress's closed loop does
            t = (math.log(lo_m) - math.log(aim)) / max(math.log(lo_m) - math.log(best["latency_ratio"]), 1e-9)
            r = lo + min(0.9, max(0.1, t)) * (best["ratio"] - lo)
            if all(abs(p["ratio"] - r) > 1e-4 for p in probes):
                allowed = len(probes) + 1
                continue
        if best is not None or lo >= max_ratio or len(probes) >= max_probes + 4:
            break
        r, allowed = (lo + max_ratio) / 2, len(probes) + 1  # the choice was a glitch: on towards max_ratio
    if best is not None:
        warn_if_noisy(best.get("runs"), frac, "of the full model", advice="--headroom")
    return {"ratio": best["ratio"] if best else None, "latency_ratio": best["latency_ratio"] if best else None,
            "probes": probes}


# ---- rebuilding a saved subnet --------------------------------------------------------------------------------

# module type -> (its shape record, a module of that shape built like ``old``)
SHAPES: dict[type, tuple[Callable, Callable]] = {
    nn.Conv2d: (lambda m: {"in": m.in_channels, "out": m.out_channels, "groups": m.groups},
                lambda old, s: nn.Conv2d(s["in"], s["out"], old.kernel_size, old.stride, old.padding, old.dilation,
                                         s["groups"], bias=old.bias is not None, padding_mode=old.padding_mode)),
    nn.BatchNorm2d: (lambda m: {"features": m.num_features},
                     lambda old, s: nn.BatchNorm2d(s["features"], old.eps, old.momentum, old.affine,
                                                   old.track_running_stats)),
    nn.Linear: (lambda m: {"in": m.in_features, "out": m.out_features},
                lambda old, s: nn.Linear(s["in"], s["out"], bias=old.bias is not None)),
}


def module_shapes(model: nn.Module) -> dict:
    """Name -> shape record of every conv, BN and linear layer (what Torch-Pruning changes)."""
    return {name: SHAPES[type(m)][0](m) for name, m in model.named_modules() if type(m) in SHAPES}


def with_shapes(model: nn.Module, shapes: dict) -> nn.Module:
    """``model`` with every layer named in ``shapes`` replaced by a layer of the recorded shape (weights to load)."""
    for name, shape in shapes.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, attr)
        record, rebuild = SHAPES[type(old)]
        if record(old) != shape:
            setattr(parent, attr, rebuild(old, shape))
    return model
