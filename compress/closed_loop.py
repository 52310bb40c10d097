"""Closed loop on the device: walk the search path until the *measured* latency is under the budget.

The predictor ranks subnets; the device decides. Starting at the first path point predicted under the budget, the
subnet is exported to ONNX and measured. Over budget: move further along the path, to the first point whose
prediction, scaled by the measured/predicted ratio seen so far, is under the budget. Under budget but using less
than ``min_use`` of it: try a larger point the same way. The largest measured point under the budget wins.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

from .errors import CompressError
from .export import export_onnx
from .extract import extract_subnet


class BudgetNotMetError(CompressError, RuntimeError):
    """No subnet on the search path measured under the latency budget."""


def measure_module(device: Any, module, example_inputs: tuple, folder: str | Path | None = None):
    """Latency of ``module`` on ``device``: onnxruntime devices time its verified ONNX export, torch devices the
    module itself. Returns a Measurement."""
    if getattr(device, "name", "") in ("cpu", "ort-cpu"):
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            path = Path(tmp) / "subnet.onnx"
            export_onnx(module, example_inputs, path)
            return device.measure(path, {"input": list(example_inputs[0].shape)})
    return device.measure(module, example_inputs)


def can_measure(device: Any) -> bool:
    return getattr(device, "name", "") in ("cpu", "ort-cpu", "torch-cpu")


def closed_loop(net, path: list[dict], budget_ms: float, device: Any, max_measurements: int = 6,
                min_use: float = 0.85, log: Callable[[str], None] = print) -> tuple[int, dict[int, Any]]:
    """Index of the path point to deploy and every measurement taken (index -> Measurement).

    Raises:
        BudgetNotMetError: every point tried measured over the budget (the message gives the numbers).
    """
    x = net.example_inputs
    measured: dict[int, Any] = {}
    ratio = 1.0
    best = None

    def pick(lo: int, hi: int, largest: bool) -> int | None:
        """A point in [lo, hi) predicted (times ratio) under budget: the largest such one, not yet measured."""
        order = range(lo, hi) if largest else range(hi - 1, lo - 1, -1)
        for j in order:
            if path[j]["cost"] * ratio <= budget_ms and j not in measured:
                return j
        return None

    i = pick(0, len(path), True)
    if i is None:
        i = len(path) - 1
    while len(measured) < max_measurements and i is not None:
        m = measure_module(device, extract_subnet(net, path[i]["config"]), x)
        measured[i] = m
        ratio = m.median_ms / max(path[i]["cost"], 1e-9)
        log(f"  path point {i}: predicted {path[i]['cost']:.3f} ms, measured {m.median_ms:.3f} ms "
            f"(budget {budget_ms:.3f} ms)")
        if m.median_ms <= budget_ms:
            best = i if best is None or i < best else best
            if m.median_ms >= min_use * budget_ms:
                break
            i = pick(0, i, True)  # room left: try a larger subnet
        else:
            if best is not None and best == i + 1:
                break
            i = pick(i + 1, best if best is not None else len(path), True)
            if i is None and best is None and len(measured) < max_measurements:
                rest = [j for j in range(len(path)) if j not in measured and j > max(measured)]
                i = rest[0] if rest else None
    if best is None:
        lines = ", ".join(f"point {k}: {v.median_ms:.3f} ms" for k, v in sorted(measured.items()))
        raise BudgetNotMetError(
            f"No subnet on the search path measured under the budget of {budget_ms:.3f} ms ({lines}). The path "
            f"ends at a predicted {path[-1]['cost']:.3f} ms; lower SearchSettings.overshoot so the search goes "
            "further, raise the budget, or check that the device is not busy.")
    if measured[best].median_ms < min_use * budget_ms:
        warnings.warn(f"The chosen subnet uses {measured[best].median_ms / budget_ms:.0%} of the latency budget "
                      f"(less than {min_use:.0%}): the next larger subnet on the path measured over it.",
                      stacklevel=2)
    return best, measured
