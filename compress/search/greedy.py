"""AutoSlim greedy slimming (Yu & Huang 2019): from full width, repeatedly remove the channel bin that hurts least.

Each step tries cutting every group by one bin (``step_ratio`` of its full width, rounded to its divisor, or more
bins where one does not lower the cost), scores every candidate (BN recalibrated on fixed calibration batches, then
evaluated on fixed held-out batches), and keeps the best cut by ``settings.criterion``: the held-out loss added per
unit of cost saved (default), or AutoSlim's own rule, the highest held-out top-1 whatever the cut saves
(``"score"``; see ``SearchSettings`` for why it is not the default). With ``cuts_when_far > 1`` it keeps the best
few cuts at once while the cost is far above the target. To save time, every ``full_rescore_every``-th step scores
all groups and the steps between re-score only the ``rescore_top`` groups that ranked best (set
``full_rescore_every=1`` for the exact algorithm). The path (config, cost, FLOPs, score per step) is the
accuracy/cost frontier; it is saved after every step and a search resumes from it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from compress.io import save_json
from compress.errors import CorruptFileError, InvalidConfigError, SearchResumeError, is_finite_number, is_int
from compress.settings import SearchSettings
from compress.train.supernet import deferred_interrupt

CostFn = Callable[[Sequence[Mapping[str, int]]], np.ndarray]
ScoreFn = Callable[[Mapping[str, int]], dict]


def _least_damage(cur: dict, cur_cost: float):
    """AutoSlim's rule: the cut after which the held-out score is highest (lower loss breaks ties)."""
    return lambda r: (-r[0]["top1"], r[0]["loss"])


def _damage_per_cost(cur: dict, cur_cost: float):
    """Held-out loss added per unit of cost saved: prefers cuts that buy the most cost for the least damage."""
    return lambda r: ((r[0]["loss"] - cur["loss"]) / max(cur_cost - r[3], 1e-12), -r[0]["top1"])


CRITERIA = {"score": _least_damage, "score_per_cost": _damage_per_cost}


def _bins_and_floors(space, settings: SearchSettings) -> tuple[dict, dict]:
    bins, floors = {}, {}
    for g in space.free:
        allowed = g.allowed_widths()
        bins[g.name] = max(g.divisor, int(round(settings.step_ratio * g.width / g.divisor)) * g.divisor)
        floors[g.name] = next((w for w in allowed if w >= settings.min_ratio * g.width), allowed[-1])
    return bins, floors


def candidate_cuts(space, config: Mapping[str, int], settings: SearchSettings) -> list[tuple[str, list[dict]]]:
    """For every group, the configs narrower by 1, 2, ... bins in that group alone (never below its floor)."""
    bins, floors = _bins_and_floors(space, settings)
    out = []
    for g in space.free:
        w, steps = config[g.name], []
        while True:
            new = w - bins[g.name]
            new = max(floors[g.name], new - new % g.divisor)
            if new >= w:
                break
            steps.append({**config, g.name: int(new)})
            w = new
        if steps:
            out.append((g.name, steps))
    return out


def cheapest_useful_cuts(space, config: Mapping[str, int], cur_cost: float, cost: CostFn,
                         settings: SearchSettings) -> list[tuple[str, dict, float]]:
    """Per group, the smallest cut (in bins) that lowers the cost: a runtime that pads channels to blocks gains
    nothing from some one-bin cuts, so the cut grows until the cost moves."""
    per_group = candidate_cuts(space, config, settings)
    flat = [c for _, steps in per_group for c in steps]
    if not flat:
        return []
    costs = np.asarray(cost(flat), dtype=float)
    out, i = [], 0
    for name, steps in per_group:
        ks = costs[i:i + len(steps)]
        i += len(steps)
        j = next((j for j, k in enumerate(ks) if k < cur_cost * (1 - 1e-6)), None)
        if j is not None:
            out.append((name, steps[j], float(ks[j])))
    return out


# What each entry of a search identity means, for the message when a saved path does not fit.
# Entries a path written by an older version may lack (its weights' digest already ties it to one trained network).
IDENTITY_OPTIONAL = ("graph",)
IDENTITY_WORDS = {"graph": "the network (digest of its traced graph)", "weights": "the supernet's weights (digest)",
                  "objective": "the objective", "groups": "the channel groups"}


def read_path_file(path_file: str | os.PathLike) -> dict:
    """Read a search path saved by :func:`greedy_slim`, checked for its shape (not for what it was searched on).

    Args:
        path_file: the JSON file.

    Returns:
        The saved document: "identity", "settings", "target" and "path" (a list; its points are checked by
        :func:`check_path_points`).

    Raises:
        CorruptFileError: the file is not complete JSON, or not a search path (names the file and what to do).
    """
    redo = f"Delete {str(path_file)!r} to search again from the start (the supernet is kept), or restore it."
    try:
        saved = json.loads(Path(path_file).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"The search path {str(path_file)!r} is not complete JSON ({exc}): it was truncated "
                               f"or written by something else. {redo}") from None
    ok = isinstance(saved, dict) and isinstance(saved.get("identity"), dict) and isinstance(saved.get("path"), list)
    if not ok:
        raise CorruptFileError(f"The search path {str(path_file)!r} is not a search path greedy_slim wrote (it needs "
                               f"'identity' and a 'path' of points with 'config' and 'cost'). {redo}")
    return saved


def path_mismatch(saved: dict, ident: dict) -> str:
    """What differs between a saved search path's identity and ``ident`` (``{"identity": ..., "settings": ...}``),
    in words; empty when they agree.

    Args:
        saved: the document :func:`read_path_file` returned.
        ident: the identity of the search about to run.

    Returns:
        A phrase naming each differing entry, or "".

    Raises:
        Nothing.
    """
    old, new = saved.get("identity") or {}, ident.get("identity") or {}
    why = [f"{IDENTITY_WORDS.get(k, k)}: {old.get(k)!r:.80} in the file, {new.get(k)!r:.80} now"
           for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
           and not (k in IDENTITY_OPTIONAL and k not in old)]
    if saved.get("settings") != ident.get("settings"):
        so, sn = saved.get("settings") or {}, ident.get("settings") or {}
        keys = sorted(k for k in set(so) | set(sn) if so.get(k) != sn.get(k))
        why.append(f"the search settings ({', '.join(keys)})")
    return "; ".join(why)


def check_path_file(path_file: str | os.PathLike, known: Mapping) -> None:
    """Before a supernet is trained: a saved search path is readable, and the identity entries known already (e.g.
    ``{"graph": graph_digest(net)}``) are the saved ones. A missing file is fine.

    Args:
        path_file: the search path's JSON file.
        known: identity entries to compare (entries the file lacks are not compared).

    Returns:
        None.

    Raises:
        CorruptFileError: the file is not a readable search path.
        SearchResumeError: a known entry differs (names it, both values and what to do).
    """
    if not Path(path_file).exists():
        return
    old = read_path_file(path_file)["identity"]
    why = [f"{IDENTITY_WORDS.get(k, k)}: {old[k]!r:.80} in the file, {v!r:.80} now" for k, v in known.items()
           if k in old and old[k] != v]
    if why:
        raise SearchResumeError(f"The search path {str(path_file)!r} was written for another search; what differs: "
                                f"{'; '.join(why)}. Delete it to search again, or pass another work_dir.")


def _is_number(v: object) -> bool:
    """A score: an int or float, NaN allowed (a diverged subnet's loss is saved as NaN and resumed as such)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# fields of a saved path point -> (check, what it must be); "ranking" and "scored" only on steps after the first
POINT_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "step": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
    "config": (lambda v: isinstance(v, dict), "an object (group -> width)"),
    "cost": (is_finite_number, "a finite number"),
    "flops": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
    "top1": (_is_number, "a number"),
    "loss": (_is_number, "a number"),
    "seconds": (lambda v: is_finite_number(v) and v >= 0, "a finite number >= 0"),
}
OPTIONAL_POINT_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "ranking": (lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v), "a list of group names"),
    "scored": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
}


def check_path_points(path_file: str | os.PathLike, path: list, space) -> list[dict]:
    """The points of a saved search path, checked before they are resumed: every point has the fields
    :data:`POINT_FIELDS` names and a config this ``space`` accepts.

    Args:
        path_file: the file they were read from (for the messages).
        path: the saved "path" list.
        space: the channel space of the network about to be searched.

    Returns:
        ``path``.

    Raises:
        CorruptFileError: the list is empty, or a point lacks a field or has a damaged one (names the file, the
            point and the field, and says what to do).
        SearchResumeError: a point's config does not fit this network.
    """
    where = f"The search path {str(path_file)!r}"
    advice = "Delete it (the search starts again from full width) or use another work directory."
    if not path:
        raise CorruptFileError(f"{where}: field 'path' must be a non-empty list of points; got {path!r:.60}. {advice}")
    for i, p in enumerate(path):
        if not isinstance(p, dict):
            raise CorruptFileError(f"{where}: point {i} must be an object; got {p!r:.60}. {advice}")
        for key, (ok, what) in {**POINT_FIELDS, **{k: v for k, v in OPTIONAL_POINT_FIELDS.items() if k in p}}.items():
            if key not in p or not ok(p[key]):
                got = f"{p[key]!r:.60}" if key in p else "nothing"
                raise CorruptFileError(f"{where}: point {i} field {key!r} must be {what}; got {got}. {advice}")
        try:
            space.widths(p["config"])
        except InvalidConfigError as exc:
            raise SearchResumeError(f"{where}: point {i} has a config this network cannot take ({exc}). "
                                    f"{advice}") from exc
    return path


def greedy_slim(net, score: ScoreFn, cost: CostFn, target: float, settings: SearchSettings | None = None,
                path_file: str | os.PathLike | None = None, identity: dict | None = None,
                progress: bool = True) -> list[dict]:
    """Slim ``net``'s channel space greedily until ``cost`` is at most ``settings.overshoot * target``.

    Args:
        net: the trained slimmable supernet.
        score: config -> {"top1": ..., "loss": ...} (higher top1 is better; lower loss breaks ties).
        cost: list of configs -> costs (FLOPs, or predicted ms).
        target: the budget in the cost's unit.
        path_file: JSON file the path is written to after every step; an existing one is resumed.
        identity: anything that must match for a saved path to be resumed (objective, network); the target need
            not match (see below).

    Returns:
        The path: dicts with step, config, cost, flops, top1, loss, seconds.

    Raises:
        CorruptFileError: ``path_file`` exists but is not a readable search path.
        SearchResumeError: ``path_file`` was written for another network, weights, objective or settings (the
            message says which).
    """
    settings = settings or SearchSettings()
    space = net.space
    # The target is not part of the identity: greedy decisions do not depend on it (only how many cuts a step
    # makes while far from it), so a saved path is a valid start for any target: a deeper target goes on from its
    # end, a shallower one is cut after the first point below it. Reruns with a re-measured budget resume.
    ident = {"identity": identity or {}, "settings": settings.to_dict()}
    path: list[dict] = []
    if path_file is not None and Path(path_file).exists():
        saved = read_path_file(path_file)
        why = path_mismatch(saved, ident)
        if why:
            raise SearchResumeError(
                f"The search path {str(path_file)!r} was written for another search; what differs: {why}. Delete "
                "it to search again (the supernet is kept), or pass another work_dir.")
        path = check_path_points(path_file, saved["path"], space)
        stop = next((i for i, p in enumerate(path) if p["cost"] <= settings.overshoot * target), None)
        if stop is not None:
            path = path[:stop + 1]
    ident["target"] = float(target)

    def point(step: int, cfg: dict, res: dict, c: float, t: float) -> dict:
        return {"step": step, "config": cfg, "cost": float(c), "flops": int(net.flops(cfg)),
                "top1": float(res["top1"]), "loss": float(res["loss"]), "seconds": float(t)}

    def save() -> None:
        if path_file is not None:
            save_json({**ident, "path": path}, path_file)

    t0 = time.perf_counter() - (path[-1]["seconds"] if path else 0.0)
    if not path:
        cfg = space.max_config()
        first = point(0, cfg, score(cfg), cost([cfg])[0], time.perf_counter() - t0)
        with deferred_interrupt():
            path.append(first)
            save()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="greedy slimming", unit="step", initial=len(path) - 1)
    try:
        while path[-1]["cost"] > settings.overshoot * target:
            current, cur_cost = path[-1]["config"], path[-1]["cost"]
            useful = cheapest_useful_cuts(space, current, cur_cost, cost, settings)
            if not useful:
                break
            prev = path[-1].get("ranking")
            lazy = prev is not None and (len(path) - 1) % settings.full_rescore_every != 0
            if lazy:  # re-score only the groups that ranked best last time; the rest keep their old order
                top = set(prev[:settings.rescore_top])
                useful = [u for u in useful if u[0] in top] or useful
            results = [(score(c), n, c, k) for n, c, k in useful]
            results.sort(key=CRITERIA[settings.criterion](path[-1], cur_cost))
            ranking = [r[1] for r in results]
            if lazy:
                ranking += [n for n in prev if n not in ranking]
            far = cur_cost > settings.fast_factor * target
            n_cuts = min(settings.cuts_when_far if far else 1, len(results))
            if n_cuts == 1:
                res, _, cfg, new_cost = results[0]
            else:
                cfg = dict(current)
                for _, name, c, _ in results[:n_cuts]:
                    cfg[name] = c[name]
                new_cost = float(cost([cfg])[0])
                res = score(cfg)
            with deferred_interrupt():  # Ctrl-C: a finished step is on disk (a resume repeats none)
                path.append({**point(len(path), cfg, res, new_cost, time.perf_counter() - t0), "ranking": ranking,
                             "scored": len(results)})
                save()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(cost=f"{new_cost:.4g}", target=f"{target:.4g}", top1=f"{res['top1']:.1f}")
    finally:
        if bar is not None:
            bar.close()
        net.set_config(space.max_config())
    return path


def first_within(path: list[dict], target: float) -> int | None:
    """Index of the first (largest) path point whose cost is at most ``target``."""
    return next((i for i, p in enumerate(path) if p["cost"] <= target), None)
