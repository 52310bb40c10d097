"""What a search minimises: FLOPs (exact, analytic) or latency on a device (through a fitted predictor)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from compress.errors import (NewerSchemaError, PredictorMismatchError, PredictorUnavailableError,
                             WorkDirMismatchError)
from compress.space.digest import identity_differences, network_identity
from devices.capabilities import capabilities_of
from predictors import LatencyPredictor, LatencyTable
from predictors.errors import SchemaVersionError
from predictors.profiling import profile_family, table_network
from predictors.table import FINGERPRINT_KEYS


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


def verify_predictor(predictor, net, device, family: str = "model") -> None:
    """Refuse a predictor fitted on another device or for another network than the search's.

    The device: every fingerprint key (``predictors.table.FINGERPRINT_KEYS``: CPU, machine, cores, runtime and its
    version, optimisation level, threads) that both the predictor's ``fingerprint_`` and ``device.fingerprint()``
    hold must agree. The network: when the predictor fitted an overhead for ``family`` on a network it recorded
    (``networks_``), that network's traced graph must be ``net``'s. A predictor that recorded no network for
    ``family`` (fitted on other families, or on kernels only) predicts through its kernels and global overhead and
    is not refused.

    Args:
        predictor: a fitted predictor (``predictors.LatencyPredictor`` or one with the same attributes).
        net: the ``SlimmableNetwork`` searched.
        device: the device object searched on (its ``fingerprint()``).
        family: the family name the search predicts with.

    Returns:
        None.

    Raises:
        PredictorMismatchError: what differs (each fingerprint key with both values, or the network's
            differences) and what to do (fit one for this device and network, or ``check_predictor=False``).
    """
    problems = []
    fitted_on = getattr(predictor, "fingerprint_", None)
    here = device.fingerprint() if callable(getattr(device, "fingerprint", None)) else None
    if isinstance(fitted_on, dict) and isinstance(here, dict):
        diff = [f"{k}: {fitted_on[k]!r} for the predictor, {here[k]!r} here" for k in FINGERPRINT_KEYS
                if k in fitted_on and k in here and fitted_on[k] != here[k]]
        if diff:
            problems.append(f"it was fitted on another device or setting ({'; '.join(diff)})")
    networks = getattr(predictor, "networks_", None)
    saved = networks.get(family) if isinstance(networks, dict) else None
    if isinstance(saved, dict):
        ident = network_identity(net)
        if saved.get("graph") != ident["graph"]:
            problems.append(f"its latency overhead for family {family!r} was fitted on another network: "
                            f"{identity_differences(saved, ident)}")
    if problems:
        raise PredictorMismatchError(
            f"The predictor passed as predictor= does not fit this search: {'; '.join(problems)}. Fit one on this "
            "device for this network (predictor=None profiles it here, or tools/profile_device.py on a board), or "
            "pass check_predictor=False to use it anyway.")


def fit_latency_predictor(net, device, family: str, work_dir: str | os.PathLike, n_configs: int = 24,
                          progress: bool = True):
    """Profile ``n_configs`` subnets of ``net`` in context on ``device`` (one whose ``capabilities.profilable_here``:
    onnxruntime on this CPU with ``device.threads`` threads) and fit a predictor.

    The table (``<work_dir>/<family>.lut.json``) and predictor (``<family>.predictor.json``) are kept: a second
    call reuses them, and an interrupted profiling run resumes where it stopped. Both record the network they were
    made for (``compress.space.digest.network_identity``): files of another network are refused, not reused. A
    predictor of an older schema (or without a recorded network) is fitted again on the kept table (nothing is
    re-measured); one written by a newer version is refused and kept.

    Args:
        net: the ``SlimmableNetwork`` searched.
        device: the device object (``threads``, ``fingerprint()``).
        family: the family name of the records and of the predictor's overhead.
        work_dir: the folder of the table and predictor.
        n_configs: subnets to profile.
        progress: show the profiler's progress.

    Returns:
        The fitted ``predictors.LatencyPredictor``.

    Raises:
        PredictorUnavailableError: the device cannot be profiled from here (a board: profile it with
            tools/profile_device.py and pass ``predictor=``).
        WorkDirMismatchError: the table or predictor in ``work_dir`` was made for another network (names the file
            and what differs).
        NewerSchemaError: the table or predictor was written by a newer version of compress (kept).
        CorruptTableError, FingerprintMismatchError: a damaged file, or one of another device.
    """
    if not capabilities_of(device).profilable_here:
        raise PredictorUnavailableError(
            f"Latency search on device {getattr(device, 'name', device)!r} needs a latency predictor fitted on "
            "that device's measurements, and this device cannot be profiled from here. Write a bundle with "
            "devices.write_bundle, run tools/profile_device.py on the device, fit predictors.LatencyPredictor on "
            "the table it writes and pass it as predictor=..., or search with flops=... instead.")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    ident = network_identity(net)
    pred_file = work_dir / f"{family}.predictor.json"
    table_file = work_dir / f"{family}.lut.json"

    def refuse(path: Path, saved: dict, what: str) -> None:
        raise WorkDirMismatchError(
            f"{str(path)!r} holds {what} of another network: {identity_differences(saved, ident)}. Pass another "
            f"work_dir for this network, or delete {str(work_dir)!r} to profile this network there.")

    if table_file.exists():
        saved = table_network(LatencyTable.load(table_file), family)
        if saved is not None and saved.get("graph") != ident["graph"]:
            refuse(table_file, saved, "latency measurements")
    if pred_file.exists():
        try:
            pred = LatencyPredictor.load(pred_file, fingerprint=device.fingerprint())
        except NewerSchemaError:  # written by a newer version: refused, and the file kept
            raise
        except SchemaVersionError:  # written by an older version: refit on the kept table (nothing re-measured)
            pred = None
        saved = getattr(pred, "networks_", {}).get(family)
        if saved is not None and saved.get("graph") != ident["graph"]:
            refuse(pred_file, saved, "a latency predictor")
        if saved is not None:
            return pred
        # an older predictor without a recorded network: fitted again on the table (checked above)
    n_initial = max(4, (2 * n_configs) // 3)
    per_round = max(1, n_configs - n_initial)
    table = profile_family(net, family, table_file, n_initial=n_initial, rounds=1,
                           per_round=per_round, threads=device.threads, progress=progress)
    pred = LatencyPredictor().fit(table, nets={family: net})
    pred.save(pred_file)
    return pred
