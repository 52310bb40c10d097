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
from typing import Any, Callable

import numpy as np

from compress.deploy.closed_loop import (RETIMES, BudgetNotMetError, confirm_best, median_of_retimes, order_conflict,
                                         warn_if_noisy)


@dataclass
class ScaleFit:
    """The chosen factor, its config and cost, and every (s, cost) tried."""

    scale: float
    config: dict[str, int]
    value: float
    tried: list[dict] = field(default_factory=list)
    how: str = ""  # how the config came from the searched shape, for the result's notes


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
              min_use: float = 0.95, max_evals: int = 12, exponent: float = 1.5, align: int = 1,
              log: Callable[[str], None] = print, headroom: float = 0.0) -> ScaleFit:
    """Largest scale of ``config`` whose ``cost`` is <= ``budget``, stopping once one uses >= ``min_use`` of it.

    ``cost(config)`` measures (or counts) a config. The next s comes from the cost law cost ~ s^p fitted through
    the last two points (``exponent`` before there are two), kept strictly inside the bracket of the largest s
    known under and the smallest s known over; a guess that rounds to a config already tried falls back to
    bisection. Latency moves in steps (vector blocks; groups of equal width cross a block boundary together), so
    when the bracket closes with the subnet under the budget using less than ``min_use`` of it, the groups that
    differ between the under and the over config are taken over one by one (late groups first: fewer pixels, finer
    steps), bisecting on how many, then on the width of the group whose widening crosses the budget. When that
    group's widths still leave the subnet under ``min_use`` of the budget (its next width is the step itself:
    ResNet-20 x1.5's stage-1 group, 16 -> 24 channels, took a subnet from 0.386 to 0.469 ms under a 0.451 ms
    budget), the group is pinned at its first width over and the other groups are scaled down (never up) to fit;
    the largest subnet measured under the budget wins. At most ``max_evals`` costs are taken, besides the
    confirming and glitch re-timings of measured costs.

    A cost counts as under the budget only with ``headroom`` (a fraction of it) to spare: for measured latency,
    what a re-measurement can move (``compress.closed_loop.HEADROOM``); 0 for exact FLOPs.

    Raises:
        BudgetNotMetError: even the smallest scale (every group at its floor) is over the budget.
    """
    tried: list[dict] = []
    seen: dict[tuple, float] = {}
    limit = (1.0 - headroom) * budget
    fit = _Fit(space, cost, budget, limit, min_use, exponent, align, log, seen, tried)
    under, over = fit.scale_loop(config, floor, 1.0, max(3, max_evals - 3))  # the rest: filling a stepped bracket
    if under is not None and over is not None and under["value"] < min_use * budget:
        under, crossing = _fill_between(space, under, over, cost, budget, limit, min_use, max_evals - len(tried),
                                        seen, tried, log, floor, align)
        left = max_evals - len(tried)
        if crossing is not None and under["value"] < min_use * budget and left >= 2:
            name, wide = crossing["name"], crossing["config"]
            log(f"  {name} pinned at {wide[name]}, the other groups scaled down to fit")
            s0 = (fit.aim / crossing["value"]) ** (1.0 / exponent)
            fit.scale_loop(wide, {**floor, name: wide[name]}, min(s0, 1.0), left, pinned=name,
                           report_scale=under["scale"])
            under = max((t for t in tried if t["value"] <= limit), key=lambda t: t["value"])
    elif under is not None:
        under = max((t for t in tried if t["value"] <= limit), key=lambda t: t["value"])
    if under is not None and headroom > 0:  # a measured cost: time the choice again before it is deployed
        runs: dict[int, list] = {}  # id of a tried point -> its confirming timings

        def retime(t: dict) -> None:
            runs[id(t)] = []
            t["value"] = seen[_key(t["config"])] = median_of_retimes(t["value"], lambda: cost(t["config"]),
                                                                     runs[id(t)])
            log(f"  {t['value']:.4g} after timing the choice {RETIMES} more times (budget {budget:.4g})")

        under = confirm_best(sorted(tried, key=lambda t: -t["value"]), lambda t: t["value"], retime, limit)
        if under is not None:
            warn_if_noisy(runs.get(id(under)), budget, "ms")
    if under is None:
        lines = ", ".join(f"x{t['scale']:.2f}: {t['value']:.4g}" for t in tried)
        raise BudgetNotMetError(
            f"No scale of the DMS subnet fits the budget of {budget:.4g} ({lines}). Raise the budget, lower "
            "DMSSettings.min_ratio, or give the search a tighter resource target (lambda_resource).")
    return ScaleFit(under["scale"], under["config"], under["value"], tried, how=_how(under))


def _how(point: dict) -> str:
    """'searched widths scaled by 1.224, then 4 of the groups that differ from the next scale widened, ...'."""
    text = f"searched widths scaled by {point['scale']:.3f}"
    if "groups_from_over" in point:
        text += f", then {point['groups_from_over']} of the groups that differ from the next scale tried widened"
    if "partial" in point:
        text += f" and {point['partial']} to {point['config'][point['partial']]} channels"
    if "pinned" in point:
        text += (f", then {point['pinned']} pinned at {point['config'][point['pinned']]} channels and the other "
                 f"groups scaled by {point['pinned_scale']:.3f}")
    return text


@dataclass
class _Fit:
    """What every scale loop of one :func:`fit_scale` shares: the cost, the budget, and every config tried."""

    space: Any
    cost: Callable[[dict], float]
    budget: float
    limit: float
    min_use: float
    exponent: float
    align: int
    log: Callable[[str], None]
    seen: dict
    tried: list

    @property
    def aim(self) -> float:
        return 0.5 * (self.min_use * self.budget + self.limit)

    def scale_loop(self, config: dict[str, int], floor: dict[str, int], s: float, evals: int,
                   pinned: str | None = None, report_scale: float | None = None) -> tuple[dict | None, dict | None]:
        """Scale ``config`` (secant on cost ~ s^p, bisection where the secant leaves the bracket) for at most
        ``evals`` new costs; returns the largest scale under the limit and the smallest over it (of this loop).
        Points of a loop with a ``pinned`` group are recorded with ``report_scale`` and the pinned group's name."""
        space = self.space
        # a pinned loop scales down from a config known over the budget (s = 1): never up to it again
        s_max = 1.0 if pinned else max(g.width / max(config[g.name], 1) for g in space.free)
        s_min = min(floor[g.name] / max(config[g.name], 1) for g in space.free)
        mine: list[dict] = []
        under = over = None
        while len(mine) < evals:
            cfg = scaled_config(space, config, floor, s, self.align)
            key = _key(cfg)
            if key in self.seen and pinned and not mine and s > s_min:
                s = max(s_min, 0.97 * s)  # the other groups round back to the over config's widths: go lower
                continue
            if key in self.seen:
                break
            value = self.seen[key] = float(self.cost(cfg))
            point = {"scale": s if pinned is None else report_scale, "value": value, "config": cfg,
                     **({"pinned": pinned, "pinned_scale": s} if pinned else {})}
            self.tried.append(point)
            mine.append({"s": s, "point": point})
            self.log(f"  scale {s:.3f}{f' ({pinned} pinned)' if pinned else ''}: {value:.4g} "
                     f"(budget {self.budget:.4g})")
            _retime_conflicts(point, [m["point"] for m in mine], lambda t: t.get("pinned_scale", t["scale"]),
                              self.cost, self.seen, self.log)
            value = point["value"]
            under = max((m for m in mine if m["point"]["value"] <= self.limit), key=lambda m: m["s"], default=None)
            over = min((m for m in mine if m["point"]["value"] > self.limit), key=lambda m: m["s"], default=None)
            if self.min_use * self.budget <= value <= self.limit:
                break
            lo = under["s"] if under else s_min
            hi = over["s"] if over else s_max
            if under is None and over is not None and over["s"] <= s_min + 1e-9:
                break
            p = self.exponent
            if len(mine) >= 2:
                a, b = mine[-2], mine[-1]
                va, vb = a["point"]["value"], b["point"]["value"]
                if a["s"] != b["s"] and va > 0 and vb > 0 and va != vb:
                    p = min(max(math.log(vb / va) / math.log(b["s"] / a["s"]), 0.3), 3.0)
            guess = s * (self.aim / value) ** (1.0 / p)
            if not lo < guess < hi:  # outside the bracket: bisect it (geometrically)
                guess = math.sqrt(max(lo, 1e-6) * hi)
            guess = min(max(guess, s_min), s_max)
            if _key(scaled_config(space, config, floor, guess, self.align)) in self.seen:
                guess = 0.5 * (lo + hi)
                if _key(scaled_config(space, config, floor, guess, self.align)) in self.seen:
                    break
            s = guess
        return (under["point"] if under else None), (over["point"] if over else None)


def _retime_conflicts(point: dict, tried: list[dict], size: Callable[[dict], float], cost: Callable[[dict], float],
                      seen: dict, log: Callable[[str], None]) -> None:
    """A larger scale (``size``: the scale of one scale loop) costs at least as much. If ``point`` contradicts a
    point of ``tried`` by more than ``PLAUSIBLE`` (a timing glitch on a busy host), cost both ``RETIMES`` more
    times; each keeps the median."""
    other = order_conflict(point, tried, size=size, value=lambda t: t["value"])
    if other is None:
        return
    log(f"  scale {point['scale']:.3f} ({point['value']:.4g}) contradicts scale {other['scale']:.3f} "
        f"({other['value']:.4g}): timing both again")
    for q in (point, other):
        q["value"] = seen[_key(q["config"])] = median_of_retimes(q["value"], lambda q=q: cost(q["config"]))


def _fill_between(space, under: dict, over: dict, cost: Callable[[dict], float], budget: float, limit: float,
                  min_use: float, evals: int, seen: dict, tried: list, log: Callable[[str], None],
                  floor: dict[str, int], align: int) -> tuple[dict, dict | None]:
    """Bisect on how many of the differing groups (late first) take the over config's width; then, if the group
    whose widening crosses the budget carries a step (the subnet still uses < ``min_use`` of the budget), bisect on
    that group's width between its under and over widths (ResNet-20 x1.5 at 50%: four of five groups widened
    gave 0.386 ms, the fifth 0.469 ms, under a 0.451 ms budget). Returns the best config under the limit and, when
    the crossing group's next width is over, ``{"name", "config", "value"}`` of that first config over (else None).
    """
    start = under
    diff = [g.name for g in reversed(space.free) if under["config"][g.name] != over["config"][g.name]]

    def probe(cfg: dict, what: str, **fields) -> float:
        nonlocal evals
        key = _key(cfg)
        if key in seen:
            return seen[key]
        value = seen[key] = float(cost(cfg))
        evals -= 1
        tried.append({"scale": start["scale"], "value": value, "config": cfg, **fields})
        log(f"  {what}: {value:.4g} (budget {budget:.4g})")
        return value

    lo, hi = 0, len(diff)  # lo groups taken: under; hi taken: over
    while hi - lo > 1 and evals > 0:
        mid = (lo + hi) // 2
        cfg = {**start["config"], **{name: over["config"][name] for name in diff[:mid]}}
        value = probe(cfg, f"{mid} of {len(diff)} groups widened", groups_from_over=mid)
        if value <= limit:
            lo = mid
            if value > under["value"]:
                under = {"scale": start["scale"], "value": value, "config": cfg}
            if value >= min_use * budget:
                return under, None
        else:
            hi = mid
    if hi - lo != 1 or under["value"] >= min_use * budget:
        return under, None
    taken, name = lo, diff[lo]  # taking this group's over width crosses the budget: try the widths between
    base = {**start["config"], **{n: over["config"][n] for n in diff[:taken]}}
    g = next(g for g in space.free if g.name == name)
    widths = [int(w) for w in _choices(g, floor[name], align) if base[name] < w < over["config"][name]]
    lo, hi = -1, len(widths)  # widths[lo] (base's width when -1) is under; widths[hi] (over's when len) is over
    while hi - lo > 1 and evals > 0:
        mid = (lo + hi) // 2
        cfg = {**base, name: widths[mid]}
        value = probe(cfg, f"{taken} of {len(diff)} groups widened, {name} at {widths[mid]} of "
                           f"{over['config'][name]}", groups_from_over=taken, partial=name)
        if value <= limit:
            lo = mid
            if value > under["value"]:
                under = {"scale": start["scale"], "value": value, "config": cfg}
            if value >= min_use * budget:
                break
        else:
            hi = mid
    if under["value"] >= min_use * budget:
        return under, None
    cfg = {**base, name: widths[hi] if hi < len(widths) else over["config"][name]}
    return under, {"name": name, "config": cfg, "value": seen[_key(cfg)]} if _key(cfg) in seen else None
