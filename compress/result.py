"""What a search returns: the slimmed subnet, its numbers, the whole path, and deployment to verified ONNX.

Every search (``compress.autoslim``, ``compress.dms``, and the full model returned when the budget already fits)
ends in :func:`finish`, which builds one :class:`SlimResult` with one schema and writes it to the work directory:

* ``result.json``: the numbers, the path (:class:`PathPoint` records), the closed-loop measurements
  (:class:`MeasurementRecord` records), the config, the removed blocks and how to rebuild the subnet;
* ``subnet.pt``: the subnet's weights, a ``state_dict`` written with ``torch.save`` (tensors only, read back with
  ``weights_only=True``; no pickled modules).

:meth:`SlimResult.load` rebuilds the subnet from those two files and the original model.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TypedDict

import torch
from torch import nn

from compress.cost.flops import count_flops
from compress.deploy.timing import timed_ms
from compress.errors import InvalidConfigError, ResultFileError
from compress.io import load_checkpoint, save_checkpoint, save_json, weights_digest
from compress.slim.network import SlimmableNetwork
from compress.space.digest import identity_differences, network_identity
from compress.subnet.bn import recalibrate_bn
from compress.subnet.depth import remove_blocks_
from compress.subnet.export import ExportReport, export_onnx
from compress.subnet.extract import extract_subnet
from compress.train.evaluate import evaluate
from compress.train.finetune import finetune

RESULT_SCHEMA = 1          # version of result.json; load refuses another
RESULT_FILE = "result.json"
WEIGHTS_FILE = "subnet.pt"


class PathPoint(TypedDict):
    """One point of a search path (every key is always present; None where a search does not know it).

    step: autoslim: the greedy step (0 = full width); dms: the optimizer step.
    cost: the cost at this point in the result's unit (predicted ms or FLOPs; dms: the soft cost under the masks).
    config: group name -> width (autoslim; None for dms, whose masks are soft during the search).
    flops: FLOPs of ``config`` (None when there is no config).
    top1: held-out top-1 (%) of the candidate (autoslim; None for dms).
    loss: cross-entropy: autoslim the held-out loss of the candidate, dms the task loss of the training batch.
    target: dms: the annealed resource target at this step (None for autoslim).
    seconds: wall-clock seconds since the search started (None when not kept).
    """

    step: int
    cost: float | None
    config: dict | None
    flops: int | None
    top1: float | None
    loss: float | None
    target: float | None
    seconds: float | None


class MeasurementRecord(TypedDict):
    """One closed-loop measurement, in the order taken (every key always present).

    value: the candidate's cost: its median latency (ms) for a latency budget, its FLOPs for a FLOPs budget.
    unit: "ms" or "FLOPs".
    p25_ms, p75_ms: latency quartiles (None for FLOPs and when only the median was kept).
    path_index: autoslim: the index in ``path`` of the point measured (None for dms).
    scale: dms: the factor on every width of the searched shape (None for autoslim).
    """

    value: float
    unit: str
    p25_ms: float | None
    p75_ms: float | None
    path_index: int | None
    scale: float | None


def path_point(step: int, cost: float | None = None, config: dict | None = None, flops: int | None = None,
               top1: float | None = None, loss: float | None = None, target: float | None = None,
               seconds: float | None = None) -> PathPoint:
    """A :class:`PathPoint` with every key, numbers as plain Python types."""
    def num(v, kind):
        return None if v is None else kind(v)
    return PathPoint(step=int(step), cost=num(cost, float), config=None if config is None else dict(config),
                     flops=num(flops, int), top1=num(top1, float), loss=num(loss, float), target=num(target, float),
                     seconds=num(seconds, float))


def measurement_record(value: float, unit: str, p25_ms: float | None = None, p75_ms: float | None = None,
                       path_index: int | None = None, scale: float | None = None) -> MeasurementRecord:
    """A :class:`MeasurementRecord` with every key, numbers as plain Python types."""
    return MeasurementRecord(value=float(value), unit=str(unit),
                             p25_ms=None if p25_ms is None else float(p25_ms),
                             p75_ms=None if p75_ms is None else float(p75_ms),
                             path_index=None if path_index is None else int(path_index),
                             scale=None if scale is None else float(scale))


def full_record(full: dict) -> dict:
    """The full-width network's numbers: flops, measured_ms (None if not measured), cost (None if no cost model)."""
    return {"flops": int(full["flops"]), "measured_ms": full.get("measured_ms"), "cost": full.get("cost")}


@dataclass
class SlimResult:
    """The chosen subnet and how it was chosen (the same fields whichever search made it).

    Attributes:
        subnet: the physically smaller network (BN recalibrated; fine-tuned if asked).
        config: its channel config (group name -> width).
        flops: its FLOPs (1 multiply-add = 1 FLOP).
        predicted_ms: the latency predictor's estimate (None for a FLOPs search without a predictor; dms: the
            latency surrogate's).
        measured_ms: median latency measured on the device (None if the device cannot be measured here); on
            onnxruntime/torch devices timed interleaved with the full model and scaled by the full model's median
            latency over the run (compress/deploy/timing.py), so a drifting host does not move it.
        top1: held-out top-1 accuracy (%) of the subnet after BN recalibration (and fine-tuning).
        budget: the budget searched for, in ``unit``.
        unit: the budget's unit: "ms" (latency, milliseconds) or "FLOPs" (fused multiply-adds).
        path: the search path, :class:`PathPoint` records (autoslim: the accuracy/cost frontier; dms: the
            logged optimizer steps).
        example_inputs: the example inputs the subnet was traced, exported and checked with (a tuple of tensors,
            e.g. one 1 x C x H x W image batch).
        measurements: every closed-loop measurement in the order taken, :class:`MeasurementRecord` records.
        full: the full-width network's flops, measured_ms and cost (see :func:`full_record`).
        notes: what the reader should know about how the subnet was chosen.
        supernet: the trained slimmable network the subnet was cut from (left at full width; None when loaded).
        removed_blocks: residual blocks a depth search dropped (add nodes of the traced graph).
        seconds: wall-clock seconds of each phase (for example supernet, search, closed_loop, finetune).
        method: the search that made it: "autoslim" or "dms" (also when the budget fitted the full model).
        divisor: the channel divisor of the network the config belongs to (needed to rebuild it).
    """

    subnet: nn.Module
    config: dict
    flops: int
    predicted_ms: float | None
    measured_ms: float | None
    top1: float | None
    budget: float
    unit: str
    path: list[PathPoint]
    example_inputs: tuple = field(repr=False)
    measurements: list[MeasurementRecord] = field(default_factory=list)
    full: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    supernet: Any = field(default=None, repr=False)
    removed_blocks: list[str] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    method: str = "autoslim"
    divisor: int = 8

    def export_onnx(self, path: str | os.PathLike, **kwargs: Any) -> ExportReport:
        """Export the subnet to ONNX, checked with onnx.checker and compared with onnxruntime (atomic write)."""
        return export_onnx(self.subnet, self.example_inputs, path, **kwargs)

    def summary(self) -> dict:
        """Everything but the module and the path, as plain JSON-able values."""
        return {"method": self.method, "config": self.config, "flops": self.flops, "predicted_ms": self.predicted_ms,
                "measured_ms": self.measured_ms, "top1": self.top1, "budget": self.budget, "unit": self.unit,
                "measurements": self.measurements, "full": self.full, "notes": self.notes,
                "removed_blocks": self.removed_blocks, "seconds": self.seconds, "divisor": self.divisor}

    def save(self, path: str | os.PathLike) -> None:
        """Summary and path as JSON (atomic): the content of result.json without the weights' digest."""
        save_json({"schema": RESULT_SCHEMA, **self.summary(), "path": self.path}, path)

    def save_to(self, work_dir: str | os.PathLike) -> Path:
        """Write ``subnet.pt`` (the subnet's state_dict) and then ``result.json`` (with the weights' digest, so a
        result.json is never paired with another run's weights) into ``work_dir``; returns result.json's path."""
        work = Path(work_dir)
        state = {k: v.detach().cpu() for k, v in self.subnet.state_dict().items()}
        save_checkpoint(state, work / WEIGHTS_FILE)
        doc = {"schema": RESULT_SCHEMA, **self.summary(), "path": self.path,
               "weights": {"file": WEIGHTS_FILE, "digest": weights_digest(self.subnet)}}
        if self.supernet is not None:  # the network searched: load refuses another one (same groups or not)
            doc["network"] = network_identity(self.supernet)
        return save_json(doc, work / RESULT_FILE)

    @classmethod
    def load(cls, work_dir: str | os.PathLike, model: nn.Module, example_inputs: Any) -> "SlimResult":
        """Rebuild a saved result: the subnet cut from ``model`` at the saved config, the saved removed blocks
        dropped, the saved weights loaded; the numbers, path and notes from result.json.

        Args:
            work_dir: the ``work_dir`` the search wrote (holds result.json and subnet.pt).
            model: the model the search was given (any weights: they are replaced), or the SlimmableNetwork.
            example_inputs: a tensor or tuple of tensors the model runs on (e.g. shape (1, 3, 32, 32)).

        Returns:
            A SlimResult whose ``supernet`` is None (the supernet is not saved with the result).

        Raises:
            ResultFileError: the directory, result.json or subnet.pt is missing, unreadable, of another schema
                version, or does not fit ``model`` (the message names the file and what to do).
        """
        work = Path(work_dir)
        rpath, wpath = work / RESULT_FILE, work / WEIGHTS_FILE
        if not rpath.is_file():
            raise ResultFileError(
                f"No {RESULT_FILE} in {str(work)!r}{'' if work.is_dir() else ' (no such directory)'}. Give the "
                "work_dir a finished autoslim or dms run wrote, or run the search with work_dir=... first.")
        doc = _read_result_json(rpath)
        if not wpath.is_file():
            raise ResultFileError(
                f"{str(rpath)!r} has no weights beside it: {WEIGHTS_FILE} is missing from {str(work)!r}. Restore it "
                "or rerun the search (results written before SlimResult.load existed have no weights file).")
        try:
            state = load_checkpoint(wpath)
        except Exception as e:  # torch raises many types for a truncated or foreign file
            raise ResultFileError(
                f"{str(wpath)!r} cannot be read as a state_dict ({type(e).__name__}: {e}). The file is corrupt or "
                "not written by compress; restore it or rerun the search.") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ResultFileError(f"{str(wpath)!r} is not a state_dict of tensors. Restore it or rerun the search.")
        x = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        try:
            net = model if isinstance(model, SlimmableNetwork) else SlimmableNetwork(model, x, divisor=doc["divisor"])
            subnet = extract_subnet(net, doc["config"])
        except InvalidConfigError as e:
            raise ResultFileError(
                f"The config in {str(rpath)!r} does not fit the given model ({e}). Give load the model (architecture "
                "and input shape) the search was run on.") from None
        saved = doc.get("network")
        if isinstance(saved, dict):  # the graph and channel groups, not the input's batch size
            ident = network_identity(net)
            if any(saved.get(k) != ident[k] for k in ("ops", "channels")):
                raise ResultFileError(
                    f"{str(rpath)!r} was searched on another network than the model given: "
                    f"{identity_differences(saved, ident)}. Give load the model the search was run on.")
        remove_blocks_(subnet, set(doc["removed_blocks"]))
        got = set(subnet.state_dict())
        if got != set(state) or any(subnet.state_dict()[k].shape != state[k].shape for k in got & set(state)):
            missing, extra = sorted(got - set(state)), sorted(set(state) - got)
            shapes = sorted(k for k in got & set(state) if subnet.state_dict()[k].shape != state[k].shape)
            raise ResultFileError(
                f"{str(wpath)!r} does not fit the subnet rebuilt from the given model and {RESULT_FILE}: missing "
                f"{missing[:5]}, unexpected {extra[:5]}, other shapes {shapes[:5]}. Give load the model the search "
                "was run on, or restore the files of one run.")
        subnet.load_state_dict(state)
        digest = doc.get("weights", {}).get("digest")
        if digest is not None and weights_digest(subnet) != digest:
            raise ResultFileError(
                f"{str(wpath)!r} holds other weights than {str(rpath)!r} was written with (digest "
                f"{weights_digest(subnet)}, expected {digest}): the two files come from different runs. Restore the "
                "pair of one run or rerun the search.")
        subnet.eval()
        return cls(subnet=subnet, config=doc["config"], flops=doc["flops"], predicted_ms=doc["predicted_ms"],
                   measured_ms=doc["measured_ms"], top1=doc["top1"], budget=doc["budget"], unit=doc["unit"],
                   path=doc["path"], example_inputs=x, measurements=doc["measurements"], full=doc["full"],
                   notes=doc["notes"], supernet=None, removed_blocks=doc["removed_blocks"], seconds=doc["seconds"],
                   method=doc["method"], divisor=doc["divisor"])

    def __str__(self) -> str:
        pred = f"{self.predicted_ms:.3f} ms" if self.predicted_ms is not None else "n/a"
        meas = f"{self.measured_ms:.3f} ms" if self.measured_ms is not None else "n/a"
        top1 = f"{self.top1:.2f}%" if self.top1 is not None else "n/a"
        return (f"SlimResult(budget {self.budget:.4g} {self.unit}: FLOPs {self.flops / 1e6:.2f}M, predicted {pred}, "
                f"measured {meas}, top-1 {top1}, {len(self.path)} path points)")


# result.json keys -> the JSON types load accepts (a missing or mistyped key is a corrupt file)
_NUM = (int, float)
RESULT_KEYS: dict[str, tuple] = {
    "schema": (int,), "method": (str,), "config": (dict,), "flops": (int,), "predicted_ms": _NUM + (type(None),),
    "measured_ms": _NUM + (type(None),), "top1": _NUM + (type(None),), "budget": _NUM, "unit": (str,),
    "measurements": (list,), "full": (dict,), "notes": (list,), "removed_blocks": (list,), "seconds": (dict,),
    "divisor": (int,), "path": (list,), "weights": (dict,),
}


def _read_result_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultFileError(f"{str(path)!r} is not readable JSON ({e}). The file is corrupt; restore it or rerun "
                              "the search.") from None
    if not isinstance(doc, dict):
        raise ResultFileError(f"{str(path)!r} holds a {type(doc).__name__}, not a search result. Restore it or rerun "
                              "the search.")
    if doc.get("schema", RESULT_SCHEMA) != RESULT_SCHEMA:
        raise ResultFileError(
            f"{str(path)!r} is result schema version {doc.get('schema')!r}; this version of compress reads "
            f"{RESULT_SCHEMA}. Load it with the compress that wrote it, or rerun the search.")
    bad = sorted(k for k, kinds in RESULT_KEYS.items()
                 if k not in doc or isinstance(doc[k], bool) or not isinstance(doc[k], kinds))
    if bad:
        raise ResultFileError(
            f"{str(path)!r} is missing or has mistyped key(s) {bad} (written by an older compress, or edited). "
            "Rerun the search to write it again.")
    return doc


def finish(method: str, subnet: nn.Module, *, config: dict, budget: float, unit: str, path: list[PathPoint],
           example_inputs: tuple, val_loader: Iterable, work_dir: str | os.PathLike,
           log: Callable[[str], None] = print, supernet: Any = None, divisor: int | None = None,
           flops: int | None = None, predicted_ms: float | None = None, measured_ms: float | None = None,
           timing: Any = None, measurements: list[MeasurementRecord] | None = None, full: dict | None = None,
           notes: list[str] | None = None, removed_blocks: list[str] | None = None,
           seconds: dict[str, float] | None = None, train_loader: Iterable | None = None,
           calib: list | None = None, train_epochs: float = 0.0, train_lr: float = 0.01,
           teacher: nn.Module | None = None, train_phase: str = "finetune", progress: bool = False) -> SlimResult:
    """The common end of every search: train the chosen subnet if asked, evaluate and measure it, build the
    SlimResult and write it to ``work_dir`` (result.json and subnet.pt).

    Args:
        method: "autoslim" or "dms".
        subnet: the extracted subnet, BN already recalibrated by the caller.
        config, budget, unit, path, measurements, full, notes, removed_blocks, seconds: as in SlimResult.
        example_inputs: tuple of the model's inputs (batch 1), e.g. ((1, 3, 32, 32) tensor,).
        val_loader: held-out (images, labels) batches the top-1 is measured on.
        supernet: the slimmable network the subnet was cut from (its divisor is kept unless ``divisor`` is given).
        flops: the subnet's FLOPs if the caller knows them (else counted on the subnet).
        measured_ms: the subnet's closed-loop latency if measured; else timed here through ``timing`` (an object
            with ``timer``, ``measurable``, ``device``, ``x1``: the search's Prepared), None without it.
        train_epochs, train_lr, train_loader, teacher, calib: train the subnet this many epochs (distilled from
            ``teacher`` if given), then recalibrate its BN on ``calib`` batches; 0 epochs: no training.
        train_phase: the key of ``seconds`` the training time goes under ("finetune" or "train").

    Returns:
        The SlimResult (also written to ``work_dir``; its str is logged).
    """
    seconds = dict(seconds or {})
    if train_epochs > 0:
        t0 = time.perf_counter()
        finetune(subnet, teacher, train_loader, train_epochs, train_lr, progress=progress)
        seconds[train_phase] = time.perf_counter() - t0
        if calib is not None:
            recalibrate_bn(subnet, calib)
    top1 = evaluate(subnet, val_loader)["top1"]
    if measured_ms is None and timing is not None:
        measured_ms = timed_ms(timing, subnet)
    if flops is None:
        flops = count_flops(subnet, example_inputs).total
    if divisor is None:
        divisor = getattr(supernet, "divisor", 8)
    result = SlimResult(subnet=subnet, config=dict(config), flops=int(flops), predicted_ms=predicted_ms,
                        measured_ms=measured_ms, top1=top1, budget=float(budget), unit=unit, path=list(path),
                        example_inputs=example_inputs, measurements=list(measurements or []),
                        full=full_record(full) if full else {}, notes=list(notes or []), supernet=supernet,
                        removed_blocks=list(removed_blocks or []), seconds=seconds, method=method,
                        divisor=int(divisor))
    result.save_to(work_dir)
    log(str(result))
    return result


__all__ = ["MeasurementRecord", "PathPoint", "RESULT_FILE", "RESULT_SCHEMA", "SlimResult", "WEIGHTS_FILE", "finish",
           "full_record", "measurement_record", "path_point"]
