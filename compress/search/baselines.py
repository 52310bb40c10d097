"""The baseline every slimming result is judged against: the same network uniformly narrowed (one width
multiplier for every group) to the same measured latency or FLOPs."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from compress.subnet.bn import recalibrate_bn
from compress.deploy.closed_loop import HEADROOM, closed_loop
from compress.train.evaluate import evaluate
from compress.subnet.extract import extract_subnet


def uniform_path(net, cost: Callable, min_ratio: float = 0.25, steps: int = 64) -> list[dict]:
    """Distinct uniform configs from full width down to ``min_ratio``, with their cost, largest first."""
    path, seen = [], set()
    for r in np.linspace(1.0, min_ratio, steps):
        cfg = net.space.uniform_config(float(r))
        key = tuple(cfg.values())
        if key not in seen:
            seen.add(key)
            path.append({"ratio": float(r), "config": cfg})
    costs = cost([p["config"] for p in path])
    for p, c in zip(path, costs):
        p["cost"] = float(c)
        p["flops"] = int(net.flops(p["config"]))
    return path


def uniform_baseline(net, budget: float, cost: Callable, calib: Iterable, val_loader: Iterable,
                     device: Any = None, min_ratio: float = 0.25, max_measurements: int = 6,
                     log: Callable[[str], None] = print, timer: Any = None, headroom: float = HEADROOM) -> dict:
    """The widest uniformly narrowed subnet under ``budget`` (measured on ``device`` when given, with ``timer``
    interleaved with the full model, else by ``cost``), BN recalibrated on ``calib`` and evaluated on
    ``val_loader``."""
    path = uniform_path(net, cost, min_ratio)
    measured = {}
    if device is not None:
        index, meas = closed_loop(net, path, budget, device, max_measurements, log=log, timer=timer,
                                  headroom=headroom)
        measured = {k: v.median_ms for k, v in meas.items()}
    else:
        index = next((i for i, p in enumerate(path) if p["cost"] <= budget), len(path) - 1)
    point = path[index]
    net.set_config(point["config"])
    recalibrate_bn(net, calib)
    subnet = extract_subnet(net, point["config"])
    top1 = evaluate(subnet, val_loader)["top1"]
    net.set_config(net.space.max_config())
    return {"ratio": point["ratio"], "config": point["config"], "flops": point["flops"], "cost": point["cost"],
            "measured_ms": measured.get(index), "top1": top1, "subnet": subnet, "path": path}
