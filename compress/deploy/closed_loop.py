"""Closed loop on the device: walk the search path until the *measured* latency is under the budget.

The predictor ranks subnets; the device decides. Starting at the first path point predicted under the budget, the
subnet is exported to ONNX and measured. Over budget: move further along the path, to the first point whose
prediction, scaled by the measured/predicted ratio seen so far, is under the budget. Under budget but using less
than ``min_use`` of it: try a larger point the same way (unused budget is accuracy given away). The largest measured
point under the budget wins.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable

from compress.errors import BudgetNotMetError, TimingNoiseWarning
from compress.subnet.extract import extract_subnet
from compress.deploy.timing import ReferenceTimer, measure_module


# A measured latency counts as under the budget only this far below it: re-measuring the same ONNX file moves its
# ratio to the full model by 1-2% (docs/measurement_noise.md); two AutoSlim subnets chosen at 99-100% of the budget
# re-measured 0.2% and 2.3% over it (docs/dms_cifar_resnet18.md).
HEADROOM = 0.02

# Latency falls along a path (largest subnet first). A point measuring more than this much faster than a smaller
# subnet (or slower than a larger one) is a timing glitch on a busy host (one candidate measured 0.139 ms between
# neighbours at 0.30-0.52 ms, below the smallest subnet's 0.194 ms, while three jobs shared two cores): both
# points are timed RETIMES more times and keep their median measurement.
PLAUSIBLE = 0.10
RETIMES = 2


def order_conflict(point: Any, others: Iterable[Any], size: Callable[[Any], float],
                   value: Callable[[Any], float]) -> Any | None:
    """The one of ``others`` most at odds with ``point``, or None: a larger subnet (by ``size``) cannot cost less
    (``value``, a latency or a ratio to the full model's); it does by more than ``PLAUSIBLE`` only in a timing
    glitch. Every closed loop keys its points its own way (a path index, a width scale, a pruning ratio): ``size``
    orders them, larger = bigger subnet; points of equal size are not compared."""
    worst, worst_gap = None, 1.0 + PLAUSIBLE
    for other in others:
        if size(other) == size(point):
            continue
        big, small = (other, point) if size(other) > size(point) else (point, other)
        gap = value(small) / max(value(big), 1e-12)
        if gap > worst_gap:
            worst, worst_gap = other, gap
    return worst


def confirm_best(order: list, value: Callable[[Any], float], retime: Callable[[Any], None],
                 limit: float) -> Any | None:
    """The first key of ``order`` (best first) under ``limit`` that stays under it after ``retime(key)``.

    A glitch at the end of the order contradicts nothing (a timing far too fast on the smallest point tried, or on
    the point a bisection then closes in on), so the choice itself is timed ``RETIMES`` more times before it is
    deployed: ``retime(key)`` replaces its measurement by the median, ``value(key)`` reads it.
    """
    for key in order:
        if value(key) > limit:
            continue
        retime(key)
        if value(key) <= limit:
            return key
    return None


def _median_run(first: Any, again: Callable[[], Any], runs_out: list | None = None) -> Any:
    runs = sorted([first] + [again() for _ in range(RETIMES)], key=lambda v: v.median_ms)
    if runs_out is not None:
        runs_out[:] = [v.median_ms for v in runs]
    return runs[len(runs) // 2]


def median_of_retimes(first: float, again: Callable[[], float], runs_out: list | None = None) -> float:
    """The median of ``first`` and ``RETIMES`` more values of ``again()`` (a cost or latency ratio timed again);
    every value (sorted) goes into ``runs_out`` when given (for :func:`warn_if_noisy` once the choice is final)."""
    runs = sorted([first] + [float(again()) for _ in range(RETIMES)])
    if runs_out is not None:
        runs_out[:] = runs
    return runs[len(runs) // 2]


def warn_if_noisy(runs: list[float] | None, budget: float, unit: str = "",
                  advice: str = "latency_headroom in AutoSlimSettings / DMSSettings") -> None:
    """Warn (:class:`TimingNoiseWarning`) when one of ``runs`` (the final choice timed 1 + ``RETIMES`` times to
    confirm it; its median is kept) read over ``budget``: a later measurement of its file may read over it too.
    The latency headroom is the only margin a closed loop keeps for that (docs/peers_cifar.md: on a shared 2-core
    host one file's ratio to the full model moved by up to 4% between checks minutes apart, the default is 2%).
    ``advice`` names the setting to raise. No runs (a choice not timed again): nothing to say."""
    if not runs or max(runs) <= budget:
        return
    runs = sorted(runs)
    values = ", ".join(f"{v:.4g}" for v in runs)
    warnings.warn(f"Timing the chosen subnet {len(runs)} times gave {values}{' ' + unit if unit else ''} (median "
                  f"kept): the slowest is over the budget of {budget:.4g}{' ' + unit if unit else ''}, so a later "
                  f"measurement of the exported file may be too. Raise the latency headroom ({advice}) or measure "
                  "on a quieter device.", TimingNoiseWarning, stacklevel=3)


def retime_conflicts(i: int, measured: dict[int, Any], time_point: Callable[[int], Any],
                     log: Callable[[str], None], what: str = "path point") -> None:
    """After point ``i`` was timed into ``measured``: if it contradicts the order of the points timed before (see
    ``PLAUSIBLE``), time it and the point it contradicts ``RETIMES`` more times each; each keeps the median of its
    measurements (in ``measured``, in place)."""
    j = order_conflict(i, list(measured), size=lambda k: -k, value=lambda k: measured[k].median_ms)
    if j is None:
        return
    log(f"  {what} {i} measured {measured[i].median_ms:.3f} ms against {what} {j}'s {measured[j].median_ms:.3f} ms "
        "(a larger subnet cannot be faster): timing both again")
    for k in (i, j):
        measured[k] = _median_run(measured[k], lambda k=k: time_point(k))


def closed_loop(net, path: list[dict], budget_ms: float, device: Any, max_measurements: int = 6,
                min_use: float = 0.95, log: Callable[[str], None] = print,
                timer: ReferenceTimer | None = None, warn_below: float = 0.85,
                headroom: float = HEADROOM) -> tuple[int, dict[int, Any]]:
    """Index of the path point to deploy and every measurement taken (index -> Measurement).

    Path points are ordered from the largest subnet to the smallest. The walk keeps ``over`` (the last index known
    over the budget) and ``under`` (the first index known under it); the next point is the largest one between them
    whose prediction, scaled by the latest measured/predicted ratio, fits the budget, else the midpoint (bisection).
    With a ``timer`` every point is timed interleaved with the full model (drift-free); else measured alone. The walk
    stops at a point using >= ``min_use`` of the budget or after ``max_measurements``; a choice using less than
    ``warn_below`` of it is warned about. A point is under the budget when it measures <= (1 - ``headroom``) x
    the budget. The choice is timed ``RETIMES`` more times before it is kept; if that puts it over, the walk goes
    on down the path, and a smaller choice that uses less than ``min_use`` of the budget sends it back to the
    untimed points between (while fewer than ``max_measurements`` + ``RETIMES`` points are timed); such a choice
    also has the nearest larger point that read over the limit by less than ``headroom`` timed again, and kept
    when its median is under.

    Raises:
        BudgetNotMetError: every point tried measured over the budget (the message gives the numbers).
    """
    x = net.example_inputs
    measured: dict[int, Any] = {}
    over, under = -1, None
    ratio = 1.0
    limit_ms = (1.0 - headroom) * budget_ms

    def guess(lo: int, hi: int) -> int | None:
        fits = [j for j in range(lo + 1, hi) if path[j]["cost"] * ratio <= limit_ms and j not in measured]
        if fits:
            return fits[0]
        return (lo + hi) // 2 if hi - lo > 1 and (lo + hi) // 2 not in measured else None

    def time_point(j: int):
        sub = extract_subnet(net, path[j]["config"])
        return timer(sub) if timer is not None else measure_module(device, sub, x)

    confirmed: dict[int, list] = {}  # path index -> its confirming timings (ms)

    def retime(k: int) -> None:
        if k in confirmed:
            return
        confirmed[k] = []
        measured[k] = _median_run(measured[k], lambda: time_point(k), confirmed[k])
        log(f"  path point {k} timed {RETIMES} more times to confirm it: median {measured[k].median_ms:.3f} ms")

    allowed = max_measurements
    i = next((j for j, p in enumerate(path) if p["cost"] <= limit_ms), len(path) - 1)
    while True:
        while i is not None and len(measured) < allowed:
            measured[i] = time_point(i)
            log(f"  path point {i}: predicted {path[i]['cost']:.3f} ms, measured {measured[i].median_ms:.3f} ms "
                f"(budget {budget_ms:.3f} ms)")
            retime_conflicts(i, measured, time_point, log)
            ratio = measured[i].median_ms / max(path[i]["cost"], 1e-9)
            under = min((k for k, v in measured.items() if v.median_ms <= limit_ms), default=None)
            over = max((k for k, v in measured.items() if v.median_ms > limit_ms), default=-1)
            if under is not None and measured[under].median_ms >= min_use * budget_ms:
                break
            i = guess(over, under if under is not None else len(path))
            if under is None and i is None and over + 1 < len(path):
                i = over + 1
        under = confirm_best(sorted(measured), lambda k: measured[k].median_ms, retime, limit_ms)
        if under is not None and measured[under].median_ms < min_use * budget_ms:
            # a larger point that read just over the limit once (by less than the headroom) may be timing noise
            # (demo: the uniform width x0.75 read 0.480 ms against a 0.476 ms limit and x0.70, at 83% of the
            # budget, was kept): time the nearest such point again like a choice and keep it if its median is under
            near = [k for k in measured if k < under and k not in confirmed
                    and limit_ms < measured[k].median_ms <= (1.0 + headroom) * limit_ms]
            if near:
                retime(max(near))
                if measured[max(near)].median_ms <= limit_ms:
                    under = max(near)
        if under is not None:
            # a larger point that failed its confirmation can leave unmeasured points between it and the choice
            # (demo: point 15 read 0.468 ms, then 0.473 over the limit; point 18 at 78% of the budget was kept and
            # points 16-17 were never timed): try them while the choice uses less than min_use of the budget
            over = max((k for k in measured if k < under), default=-1)
            i = guess(over, under) if measured[under].median_ms < min_use * budget_ms else None
            if i is None or len(measured) >= max_measurements + RETIMES:
                break
            allowed = len(measured) + 1
            continue
        over = max(measured)
        if over + 1 >= len(path):
            break
        # every point timed is over once confirmed: go on down the path (one more measurement at a time)
        i = guess(over, len(path)) or over + 1
        allowed = len(measured) + 1
    if under is None:
        lines = ", ".join(f"point {k}: {v.median_ms:.3f} ms" for k, v in sorted(measured.items()))
        raise BudgetNotMetError(
            f"No subnet on the search path measured under the budget of {budget_ms:.3f} ms ({lines}). The path "
            f"ends at a predicted {path[-1]['cost']:.3f} ms; lower SearchSettings.overshoot so the search goes "
            "further, raise the budget, or check that the device is not busy.")
    warn_if_unused(measured[under].median_ms, budget_ms, warn_below)
    warn_if_noisy(confirmed.get(under), budget_ms, "ms")
    return under, measured


def warn_if_unused(measured_ms: float, budget_ms: float, warn_below: float = 0.85) -> None:
    """Warn (UserWarning) when the chosen subnet uses less than ``warn_below`` of the budget."""
    if measured_ms < warn_below * budget_ms:
        warnings.warn(f"The chosen subnet uses {measured_ms / budget_ms:.0%} of the latency budget (less than "
                      f"{warn_below:.0%}): the larger subnets tried measured over it.", stacklevel=3)


def fill_step(net, path: list[dict], index: int, measured: dict[int, Any], budget_ms: float, device: Any,
              max_measurements: int = 8, min_use: float = 0.95, log: Callable[[str], None] = print,
              timer: ReferenceTimer | None = None, headroom: float = HEADROOM) -> dict | None:
    """Spend the budget a latency step on the path left unused: a subnet between two path points, or None.

    Latency moves in steps (CPU vector blocks: 72 channels cost what 80 do, 64 far less; a channel group shared by
    every residual block of a stage crosses a step everywhere at once), so one greedy cut can take 20% off the
    measured latency and the closed loop's choice (path point ``index``) can use far less of the budget than the
    point before it, which measured over. Here the cut groups D (those whose widths differ between point
    ``index - 1`` and ``index``) keep their narrow width, and the other groups take back the widths of earlier
    path points: candidate k is point k's config with D as at ``index``, for k = ``index - 1`` (= the choice)
    down to 0 (every other group at full width). Latency rises as k falls; the smallest k measured under the
    budget (with ``headroom``) is found by bisection, stopping early at a candidate using >= ``min_use`` of it.
    The other groups come back in the reverse order of the greedy's cuts: the channels it found least useful per
    unit of cost stay out longest.

    Between two neighbouring candidates there can be another step (ResNet-20 x1.5 at 50%: 0.425 ms under a
    0.483 ms budget, the next candidate 0.554 ms). Then the groups that differ between them keep the under
    candidate's widths too and the bisection goes on over the points before the over one, until a candidate uses
    ``min_use`` of the budget, no step is left between neighbours, or ``max_measurements`` are spent.

    Args:
        net: the slimmable network of the path (``extract_subnet(net, config)`` makes each candidate).
        path: the search path, largest subnet first; every point has a ``config`` (group name -> channels).
        index: the closed loop's choice; ``measured[index]`` and ``measured[index - 1]`` must exist (the step).
        measured: the closed loop's measurements (path index -> an object with ``median_ms``).
        budget_ms: the latency budget (ms).
        device, timer: as in :func:`closed_loop` (``timer``: timed interleaved with the full model).
        max_measurements: candidates exported and measured at most, over all steps (int >= 0; 0: no fill).

    Returns:
        ``{"config", "measurement", "from_index", "steps"}`` of the widest candidate measured under the budget and
        above ``measured[index]`` (``steps``: how many latency steps it filled), or None when there is no step to
        fill or nothing measured better.
    """
    limit_ms = (1.0 - headroom) * budget_ms
    if (max_measurements < 1 or index < 1 or index not in measured or index - 1 not in measured
            or measured[index - 1].median_ms <= limit_ms or measured[index].median_ms >= min_use * budget_ms):
        return None
    base_cfg, base_m = path[index]["config"], measured[index]  # the best under the budget so far
    kept = {g: w for g, w in base_cfg.items() if path[index - 1]["config"][g] != w}  # stepped groups, kept narrow
    top, left, best, steps = index - 1, max_measurements, None, 0
    while left > 0:
        steps += 1
        candidates: list[tuple[int, dict]] = []  # widest first; position len(candidates): the base itself
        for k in range(top):
            cfg = {**path[k]["config"], **kept}
            if cfg != base_cfg and (not candidates or cfg != candidates[-1][1]):
                candidates.append((k, cfg))
        if not candidates:
            break

        def time_candidate(c: int, candidates=candidates, base_cfg=base_cfg):
            sub = extract_subnet(net, candidates[c][1] if c < len(candidates) else base_cfg)
            return timer(sub) if timer is not None else measure_module(device, sub, net.example_inputs)

        timed = {len(candidates): base_m}
        lo, hi = len(candidates), -1  # candidates[lo:] fit (the end: the base); candidates[hi] is over
        while lo - hi > 1 and left > 0:
            mid = (lo + hi + 1) // 2
            k, cfg = candidates[mid]
            timed[mid] = time_candidate(mid)
            left -= 1
            log(f"  path point {k} with the stepped groups ({', '.join(sorted(kept))}) kept narrow: measured "
                f"{timed[mid].median_ms:.3f} ms (budget {budget_ms:.3f} ms)")
            retime_conflicts(mid, timed, time_candidate, log, what="candidate")
            if timed[mid].median_ms <= limit_ms:
                lo = mid
                if timed[mid].median_ms >= min_use * budget_ms:
                    break
            else:
                hi = mid

        runs: dict[int, list] = {}  # candidate -> its confirming timings (ms)

        def retime(c: int, timed=timed, time_candidate=time_candidate, runs=runs) -> None:
            runs[c] = []
            timed[c] = _median_run(timed[c], lambda: time_candidate(c), runs[c])

        c = confirm_best(sorted(k for k in timed if k < len(candidates)), lambda k: timed[k].median_ms, retime,
                         limit_ms)
        if c is not None and timed[c].median_ms > base_m.median_ms:
            best = {"config": candidates[c][1], "measurement": timed[c], "from_index": candidates[c][0],
                    "steps": steps, "runs": runs.get(c)}
            base_cfg, base_m = candidates[c][1], timed[c]
        under = c if c is not None else len(candidates)
        if base_m.median_ms >= min_use * budget_ms or hi < 0 or under != hi + 1:
            break
        # another step between neighbours: the over candidate's extra width crosses it; keep those groups narrow
        over_k, over_cfg = candidates[hi]
        kept.update({g: w for g, w in base_cfg.items() if over_cfg[g] != w})
        top = over_k
    if best is not None:
        warn_if_noisy(best.pop("runs"), budget_ms, "ms")
    return best


def insert_point(path: list[dict], measured: dict[int, Any], index: int, point: dict,
                 measurement: Any) -> tuple[list[dict], dict[int, Any]]:
    """A new path with ``point`` at ``index`` (between points ``index - 1`` and ``index``: the path stays largest
    first) and the measurements re-keyed to it, ``measurement`` at ``index``. The inputs are left as they were."""
    new_path = path[:index] + [point] + path[index:]
    new_measured = {(k if k < index else k + 1): v for k, v in measured.items()}
    new_measured[index] = measurement
    return new_path, new_measured
