"""Timing subnets on the device, robust to a host whose speed drifts.

On a shared machine the same model measures 15-30% apart from one minute to the next (docs/measurement_noise.md),
so two absolute measurements taken minutes apart cannot be compared to a budget reliably. A ReferenceTimer times
every candidate interleaved with a fixed reference (the full model), round by round: the median of the per-round
ratios repeats within 1-3%. The
candidate's latency is that ratio times the reference's latency, taken as the median of every reference median seen
in the run, so each decision uses all the evidence about how fast the reference is.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from devices.capabilities import capabilities_of
from devices.measurement import Measurement
from devices.profile_device import round_ratio

from compress.errors import check_parameter
from compress.subnet.export import export_onnx


def can_measure(device: Any) -> bool:
    """Whether ``device`` can time a module from this process (its ``capabilities.measurable_here`` and it takes
    ONNX files or modules; a board cannot: it works through bundles)."""
    caps = capabilities_of(device)
    return caps.measurable_here and bool(caps.accepts)


def takes_onnx(device: Any) -> bool:
    """Whether a module is handed to ``device`` as its ONNX export: its first accepted model kind is "onnx"."""
    accepts = capabilities_of(device).accepts
    return bool(accepts) and accepts[0] == "onnx"


def measure_module(device: Any, module: nn.Module, example_inputs: tuple, folder: str | Path | None = None):
    """Latency of ``module`` on ``device``: devices that take ONNX time its verified ONNX export, devices that
    take modules the module itself. Returns a Measurement."""
    if takes_onnx(device):
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            path = Path(tmp) / "subnet.onnx"
            export_onnx(module, example_inputs, path)
            return device.measure(path, {"input": list(example_inputs[0].shape)})
    return device.measure(module, example_inputs)


class ReferenceTimer:
    """Latency of candidates as (candidate / reference, timed interleaved) x the reference's latency over the run.

    Args:
        device: a device that ``can_measure``.
        reference: the module every candidate is timed against (the full model).
        example_inputs: inputs of both.

    ``reference_ms`` is the median of all reference medians taken so far, or pinned by the ``reference_ms``
    argument: then a candidate's latency is its ratio times that number, so several searches (or a benchmark's
    budgets, fractions of the full model) judge every candidate by its ratio alone. ``history`` keeps every
    (ratio, reference median) pair. Pass one timer to several ``autoslim`` / ``dms`` calls to share it.
    """

    def __init__(self, device: Any, reference: nn.Module, example_inputs: tuple,
                 reference_ms: float | None = None) -> None:
        self.device = device
        self.example_inputs = example_inputs
        self._tmp = tempfile.TemporaryDirectory(prefix="reference-timer-")
        self._onnx = takes_onnx(device)
        self.history: list[dict] = []
        if self._onnx:
            self.reference = Path(self._tmp.name) / "reference.onnx"
            export_onnx(reference, example_inputs, self.reference)
        else:
            self.reference = reference
        self.pinned_ms = reference_ms
        if reference_ms is not None:
            check_parameter(isinstance(reference_ms, (int, float)) and reference_ms > 0, "reference_ms",
                            "ReferenceTimer", "a positive latency in ms", reference_ms)
            self._reference_medians = []
            return
        first = device.measure(self.reference, self._shapes()) if self._onnx else \
            device.measure(reference, example_inputs)
        self._reference_medians = [first.median_ms]

    def _shapes(self) -> dict:
        return {"input": list(self.example_inputs[0].shape)}

    @property
    def reference_ms(self) -> float:
        """The reference's latency: pinned if given, else the median of its medians so far."""
        return self.pinned_ms if self.pinned_ms is not None else statistics.median(self._reference_medians)

    def __call__(self, module: nn.Module) -> Measurement:
        """The candidate's latency on the reference's scale; ``p25_ms``/``p75_ms`` scale with it."""
        if self._onnx:
            with tempfile.TemporaryDirectory(dir=self._tmp.name) as tmp:
                path = Path(tmp) / "candidate.onnx"
                export_onnx(module, self.example_inputs, path)
                ref, cand = self.device.measure_interleaved([self.reference, path], self._shapes())
        else:
            ref, cand = self.device.measure_interleaved([self.reference, module], self.example_inputs)
        self._reference_medians.append(ref.median_ms)
        ratio = round_ratio(cand.to_dict(), ref.to_dict())
        self.history.append({"ratio": ratio, "reference_median_ms": ref.median_ms})
        median_ms = ratio * self.reference_ms
        scale = median_ms / cand.median_ms  # the quartiles keep their spread around the drift-free median
        return Measurement(median_ms, cand.p25_ms * scale, cand.p75_ms * scale, cand.runs,
                           cand.samples_ms, cand.fingerprint)

    def close(self) -> None:
        self._tmp.cleanup()


def timed_ms(prep: Any, module: nn.Module) -> float | None:
    """A search's latency of ``module``: through the run's ReferenceTimer when there is one, else measured alone;
    None when the device cannot be measured from here."""
    if getattr(prep, "timer", None) is not None:
        return prep.timer(module).median_ms
    if not prep.measurable:
        return None
    return measure_module(prep.device, module, prep.x1).median_ms
