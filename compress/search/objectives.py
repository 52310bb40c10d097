"""What a search minimises: FLOPs (exact, analytic) or latency on a device (through a fitted predictor)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from compress.errors import PredictorUnavailableError
from devices.capabilities import capabilities_of
from predictors import LatencyPredictor
from predictors.errors import SchemaVersionError
from predictors.profiling import profile_family


class FlopsCost:
    """Exact FLOPs of each config (1 multiply-add = 1 FLOP; equals fvcore on the extracted subnet)."""

    unit = "FLOPs"
    name = "flops"

    def __init__(self, net) -> None:
        self.model = net.flops_model()

    def __call__(self, configs: Sequence[Mapping[str, int]]) -> np.ndarray:
        return np.asarray(self.model.flops_batch(list(configs)), dtype=float)


class LatencyCost:
    """Predicted latency (ms) of each config on the device the predictor was fitted for."""

    unit = "ms"
    name = "latency_ms"

    def __init__(self, net, predictor, family: str | None = None) -> None:
        self.net, self.predictor, self.family = net, predictor, family

    def __call__(self, configs: Sequence[Mapping[str, int]]) -> np.ndarray:
        return np.asarray(self.predictor.predict_ms(self.net, list(configs), family=self.family), dtype=float)


def fit_latency_predictor(net, device, family: str, work_dir: str | os.PathLike, n_configs: int = 24,
                          progress: bool = True):
    """Profile ``n_configs`` subnets of ``net`` in context on ``device`` (one whose ``capabilities.profilable_here``:
    onnxruntime on this CPU with ``device.threads`` threads) and fit a predictor.

    The table (``<work_dir>/<family>.lut.json``) and predictor (``<family>.predictor.json``) are kept: a second
    call reuses them, and an interrupted profiling run resumes where it stopped.

    Raises:
        PredictorUnavailableError: the device cannot be profiled from here (a board: profile it with
            tools/profile_device.py and pass ``predictor=``).
    """
    if not capabilities_of(device).profilable_here:
        raise PredictorUnavailableError(
            f"Latency search on device {getattr(device, 'name', device)!r} needs a latency predictor fitted on "
            "that device's measurements, and this device cannot be profiled from here. Write a bundle with "
            "devices.write_bundle, run tools/profile_device.py on the device, fit predictors.LatencyPredictor on "
            "the table it writes and pass it as predictor=..., or search with flops=... instead.")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    pred_file = work_dir / f"{family}.predictor.json"
    if pred_file.exists():
        try:
            return LatencyPredictor.load(pred_file, fingerprint=device.fingerprint())
        except SchemaVersionError:  # written by an older version: refit on the kept table (nothing re-measured)
            pred_file.unlink()
    n_initial = max(4, (2 * n_configs) // 3)
    per_round = max(1, n_configs - n_initial)
    table = profile_family(net, family, work_dir / f"{family}.lut.json", n_initial=n_initial, rounds=1,
                           per_round=per_round, threads=device.threads, progress=progress)
    pred = LatencyPredictor().fit(table, nets={family: net})
    pred.save(pred_file)
    return pred
