"""Closed loop for DMS: keep the searched shape (relative widths, removed blocks), scale it until the measured
latency (or exact FLOPs) sits in [min_use x budget, budget].

The search works on a surrogate cost that misses what the device does (per-kernel overheads vanish with a removed
block, NCHWc padding, the predictor's own error), so its subnet can land 20-50% off the budget. Searching again
with a corrected target moves widths and blocks erratically; scaling every group's width by one factor s is
monotone in cost, so a secant/bisection on s converges in a few measurements. s = 1 is the searched subnet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from compress.deploy.closed_loop import RETIMES, BudgetNotMetError, confirm_best, median_of_retimes, order_conflict


@dataclass
class ScaleFit:
    """The chosen factor, its config and cost, and every (s, cost) tried."""

    scale: float
    config: dict[str, int]
    value: float
    tried: list[dict] = field(default_factory=list)


def _choices(g, floor_width: int, align: int) -> np.ndarray:
    """The widths a group may take here: allowed, >= its floor, multiples of ``align`` where there are any."""
    allowed = [w for w in g.allowed_widths() if w >= floor_width] or [g.width]
    aligned = [w for w in allowed if w % align == 0 or w == g.width]
    return np.array(aligned or allowed)


def _key(config: dict[str, int]) -> tuple:
    return tuple(sorted(config.items()))


def scaled_config(space, config: dict[str, int], floor: dict[str, int], s: float, align: int = 1) -> dict[str, int]:
    """Every group's width times ``s``, clamped to [floor, full] and rounded to the nearest allowed width (a
    multiple of ``align`` where the group has one: on a CPU with 16-channel vector blocks 56 channels cost what 64
    do, so an unaligned width only gives capacity away)."""
    out = {}
    for g in space.free:
        choices = _choices(g, floor[g.name], align)
        w = min(max(config[g.name] * s, floor[g.name]), g.width)
        out[g.name] = int(choices[np.argmin(np.abs(choices - w) - 1e-6 * choices)])
    return out


def fit_scale(space, config: dict[str, int], floor: dict[str, int], cost: Callable[[dict], float], budget: float,
              min_use: float = 0.95, max_evals: int = 8, exponent: float = 1.5, align: int = 1,
              log: Callable[[str], None] = print, headroom: float = 0.0) -> ScaleFit:
    """Largest scale of ``config`` whose ``cost`` is <= ``budget``, stopping once one uses >= ``min_use`` of it.

    ``cost(config)`` measures (or counts) a config. The next s comes from the cost law cost ~ s^p fitted through
    the last two points (``exponent`` before there are two), kept strictly inside the bracket of the largest s
    known under and the smallest s known over; a guess that rounds to a config already tried falls back to
    bisection. Latency moves in steps (vector blocks; groups of equal width cross a block boundary together), so
    when the bracket closes with the subnet under the budget using less than ``min_use`` of it, the groups that
    differ between the under and the over config are taken over one by one (late groups first: fewer pixels, finer
    steps), bisecting on how many.

    A cost counts as under the budget only with ``headroom`` (a fraction of it) to spare: for measured latency,
    what a re-measurement can move (``compress.closed_loop.HEADROOM``); 0 for exact FLOPs.

    Raises:
        BudgetNotMetError: even the smallest scale (every group at its floor) is over the budget.
    """
    s_max = max(g.width / max(config[g.name], 1) for g in space.free)
    s_min = min(floor[g.name] / max(config[g.name], 1) for g in space.free)
    tried: list[dict] = []
    seen: dict[tuple, float] = {}
    under: dict | None = None   # the largest s known under the budget
    over: dict | None = None    # the smallest s known over it
    limit = (1.0 - headroom) * budget
    aim = 0.5 * (min_use * budget + limit)
    s = 1.0
    while len(tried) < max(3, max_evals - 3):  # the rest is for filling between a stepped bracket
        cfg = scaled_config(space, config, floor, s, align)
        key = _key(cfg)
        if key in seen:
            break
        value = float(cost(cfg))
        seen[key] = value
        point = {"scale": s, "value": value, "config": cfg}
        tried.append(point)
        log(f"  scale {s:.3f}: {value:.4g} (budget {budget:.4g})")
        _retime_conflicts(point, tried, cost, seen, log)
        value = point["value"]
        under = max((t for t in tried if t["value"] <= limit), key=lambda t: t["scale"], default=None)
        over = min((t for t in tried if t["value"] > limit), key=lambda t: t["scale"], default=None)
        if min_use * budget <= value <= limit:
            break
        lo = under["scale"] if under else s_min
        hi = over["scale"] if over else s_max
        if under is None and over is not None and over["scale"] <= s_min + 1e-9:
            break
        p = exponent
        if len(tried) >= 2:
            a, b = tried[-2], tried[-1]
            if a["scale"] != b["scale"] and a["value"] > 0 and b["value"] > 0 and a["value"] != b["value"]:
                p = math.log(b["value"] / a["value"]) / math.log(b["scale"] / a["scale"])
                p = min(max(p, 0.3), 3.0)
        guess = s * (aim / value) ** (1.0 / p)
        if not lo < guess < hi:  # outside the bracket: bisect it (geometrically)
            guess = math.sqrt(max(lo, 1e-6) * hi)
        guess = min(max(guess, s_min), s_max)
        if _key(scaled_config(space, config, floor, guess, align)) in seen:
            guess = 0.5 * (lo + hi)
            if _key(scaled_config(space, config, floor, guess, align)) in seen:
                break
        s = guess
    if under is not None and over is not None and under["value"] < min_use * budget:
        under = _fill_between(space, under, over, cost, budget, limit, min_use, max_evals - len(tried), seen, tried,
                              log)
    if under is not None and headroom > 0:  # a measured cost: time the choice again before it is deployed
        def retime(t: dict) -> None:
            t["value"] = seen[_key(t["config"])] = median_of_retimes(t["value"], lambda: cost(t["config"]), headroom)
            log(f"  {t['value']:.4g} after timing the choice {RETIMES} more times (budget {budget:.4g})")

        under = confirm_best(sorted(tried, key=lambda t: -t["value"]), lambda t: t["value"], retime, limit)
    if under is None:
        lines = ", ".join(f"x{t['scale']:.2f}: {t['value']:.4g}" for t in tried)
        raise BudgetNotMetError(
            f"No scale of the DMS subnet fits the budget of {budget:.4g} ({lines}). Raise the budget, lower "
            "DMSSettings.min_ratio, or give the search a tighter resource target (lambda_resource).")
    return ScaleFit(under["scale"], under["config"], under["value"], tried)


def _retime_conflicts(point: dict, tried: list[dict], cost: Callable[[dict], float], seen: dict,
                      log: Callable[[str], None]) -> None:
    """A larger scale costs at least as much. If ``point`` contradicts a point tried before by more than
    ``PLAUSIBLE`` (a timing glitch on a busy host), cost both ``RETIMES`` more times; each keeps the median."""
    other = order_conflict(point, tried, size=lambda t: t["scale"], value=lambda t: t["value"])
    if other is None:
        return
    log(f"  scale {point['scale']:.3f} ({point['value']:.4g}) contradicts scale {other['scale']:.3f} "
        f"({other['value']:.4g}): timing both again")
    for q in (point, other):
        q["value"] = seen[_key(q["config"])] = median_of_retimes(q["value"], lambda q=q: cost(q["config"]))


def _fill_between(space, under: dict, over: dict, cost: Callable[[dict], float], budget: float, limit: float,
                  min_use: float, evals: int, seen: dict, tried: list, log: Callable[[str], None]) -> dict:
    """Bisect on how many of the differing groups (late first) take the over config's width."""
    diff = [g.name for g in reversed(space.free) if under["config"][g.name] != over["config"][g.name]]
    lo, hi = 0, len(diff)  # lo groups taken: under; hi taken: over
    while hi - lo > 1 and evals > 0:
        mid = (lo + hi) // 2
        cfg = {**under["config"], **{name: over["config"][name] for name in diff[:mid]}}
        key = _key(cfg)
        value = seen[key] if key in seen else float(cost(cfg))
        if key not in seen:
            seen[key] = value
            evals -= 1
            tried.append({"scale": under["scale"], "value": value, "config": cfg, "groups_from_over": mid})
            log(f"  {mid} of {len(diff)} groups widened: {value:.4g} (budget {budget:.4g})")
        if value <= limit:
            lo = mid
            if value > under["value"]:
                under = {"scale": under["scale"], "value": value, "config": cfg}
            if value >= min_use * budget:
                break
        else:
            hi = mid
    return under
