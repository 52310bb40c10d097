"""The device contract as executable checks (in the spirit of scikit-learn's ``check_estimator``).

``check_device(device)`` runs every check below on a tiny model (a 3x3 conv on 16 x 16 inputs: seconds) and
raises ``AssertionError`` naming the device and the promise it broke. What a device promises:

* ``capabilities`` is a ``Capabilities`` that accepts at least one model kind; the methods it promises exist
  (``measure``/``measure_interleaved`` when ``measurable_here``; ``profile`` and an int ``threads`` when
  ``profilable_here``).
* ``fingerprint()`` is a dict of JSON values that survives a JSON round trip and is the same on two calls.
* measurement protocol: ``measure(model, inputs, min_runs=n)`` returns a ``Measurement`` with a positive median,
  ``p25_ms <= median_ms <= p75_ms``, ``runs >= n`` samples (``len(samples_ms) == runs``) and the device's
  fingerprint; ``measure_interleaved([a, b], inputs, min_runs=n)`` returns one such Measurement per model.
* errors: a missing ONNX file raises ``ModelNotFoundError``, inputs of the wrong shape ``InputShapeError``, a
  model of a kind the device does not accept ``InvalidParameterError`` -- named errors, never a raw exception.
* capabilities match behaviour: a device that cannot measure (profile) here raises ``DeviceUnavailableError``
  from ``measure``/``measure_interleaved`` (``profile``), and one that can, does.

Usage (a device of your own, before ``register_device``)::

    from devices.conformance import check_device
    check_device(MyDevice(), tmp_dir)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from compress.errors import InvalidParameterError
from compress.subnet.export import export_onnx

from .capabilities import MODEL_KINDS, Capabilities
from .errors import DeviceUnavailableError, InputShapeError, ModelNotFoundError
from .measurement import Measurement

INPUT_SHAPE = [1, 3, 16, 16]  # the tiny model's input (N, C, H, W)
BAD_INPUT_SHAPE = [1, 5, 16, 16]  # 5 channels where the model takes 3
MIN_RUNS = 10  # the protocol's min_runs in these checks (the default, 50, costs nothing more than time)


def tiny_module() -> nn.Module:
    """conv 3->8 (3x3) -> ReLU -> global pool -> linear 8->4, in eval mode, fixed weights (the global random
    state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, 4)).eval()


def _inputs(shape: list[int]) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def tiny_model(kind: str, folder: str | os.PathLike) -> tuple[Any, Any, Any]:
    """(model, good inputs, inputs of the wrong shape) of model kind ``kind`` ("onnx": a file in ``folder`` and
    ``{"input": shape}`` dicts; "module": the torch module and input tensors)."""
    module = tiny_module()
    if kind == "onnx":
        path = Path(folder) / "tiny.onnx"
        if not path.exists():
            export_onnx(module, (_inputs(INPUT_SHAPE),), path)
        return path, {"input": list(INPUT_SHAPE)}, {"input": list(BAD_INPUT_SHAPE)}
    if kind == "module":
        return module, (_inputs(INPUT_SHAPE),), (_inputs(BAD_INPUT_SHAPE),)
    raise InvalidParameterError(f"The 'kind' parameter of tiny_model must be one of {MODEL_KINDS}. Got {kind!r}.")


def _who(device: Any) -> str:
    return f"{type(device).__name__} ({getattr(device, 'name', '?')!r})"


def _require(ok: bool, device: Any, promise: str) -> None:
    if not ok:
        raise AssertionError(f"Device {_who(device)} breaks the device contract: {promise}")


def _raises(device: Any, call: Callable[[], Any], error: type, promise: str) -> None:
    """``call()`` must raise ``error``; anything else (no error, another exception) breaks ``promise``."""
    try:
        call()
    except error:
        return
    except Exception as exc:  # the check reports the wrong exception instead of crashing on it
        _require(False, device, f"{promise}; it raised {type(exc).__name__}: {exc}")
    _require(False, device, f"{promise}; it raised nothing")


def _call(device: Any, call: Callable[[], Any], what: str) -> Any:
    """``call()``'s result; an exception from it is reported as the broken promise that ``what`` works."""
    try:
        return call()
    except Exception as exc:  # the check reports any failure of a promised call as a contract violation
        raise AssertionError(f"Device {_who(device)} breaks the device contract: {what} must work; it raised "
                             f"{type(exc).__name__}: {exc}") from exc


def check_capabilities(device: Any, folder: str | os.PathLike | None = None, min_runs: int = MIN_RUNS) -> None:
    """``capabilities`` is a Capabilities accepting a model kind, and the methods it promises exist."""
    caps = getattr(device, "capabilities", None)
    _require(isinstance(caps, Capabilities), device, f"'capabilities' must be a devices.Capabilities; got {caps!r}")
    _require(len(caps.accepts) > 0, device, "capabilities.accepts must name a model kind measure() takes")
    _require(callable(getattr(device, "fingerprint", None)), device, "it must have a fingerprint() method")
    if caps.measurable_here:
        for method in ("measure", "measure_interleaved"):
            _require(callable(getattr(device, method, None)), device,
                     f"measurable_here=True promises a {method}() method")
    if caps.profilable_here:
        _require(callable(getattr(device, "profile", None)), device, "profilable_here=True promises profile()")
        threads = getattr(device, "threads", None)
        _require(isinstance(threads, int) and threads > 0, device,
                 f"profilable_here=True promises a positive int 'threads' (profile_family's); got {threads!r}")


def check_fingerprint(device: Any, folder: str | os.PathLike | None = None, min_runs: int = MIN_RUNS) -> None:
    """``fingerprint()`` is a JSON-able dict with str keys, the same on two calls."""
    fp = _call(device, device.fingerprint, "fingerprint()")
    _require(isinstance(fp, dict) and all(isinstance(k, str) for k in fp), device,
             f"fingerprint() must return a dict with str keys; got {fp!r}")
    try:
        back = json.loads(json.dumps(fp))
    except (TypeError, ValueError) as exc:
        back = exc
    _require(back == fp, device, f"fingerprint() must survive a JSON round trip; {fp!r} came back as {back!r}")
    again = _call(device, device.fingerprint, "fingerprint()")
    _require(again == fp, device, f"fingerprint() must be stable between calls; got {fp!r}, then {again!r}")


def check_measurement(device: Any, m: Any, what: str, min_runs: int = MIN_RUNS) -> None:
    """One Measurement of the protocol: positive median, ordered quartiles, ``runs`` samples, the fingerprint."""
    _require(isinstance(m, Measurement), device, f"{what} must return a devices.Measurement; got {type(m).__name__}")
    _require(m.median_ms > 0, device, f"{what}: the median must be positive; got {m.median_ms!r} ms")
    _require(m.p25_ms <= m.median_ms <= m.p75_ms, device,
             f"{what}: p25 <= median <= p75 must hold; got {m.p25_ms!r}, {m.median_ms!r}, {m.p75_ms!r} ms")
    _require(isinstance(m.runs, int) and m.runs >= min_runs and len(m.samples_ms) == m.runs, device,
             f"{what}: runs must count the samples, at least min_runs={min_runs}; got runs={m.runs!r} and "
             f"{len(m.samples_ms)} samples")
    _require(m.fingerprint == device.fingerprint(), device, f"{what}: the Measurement must carry the device's "
             f"fingerprint; got {m.fingerprint!r}")


def check_measure(device: Any, folder: str | os.PathLike, min_runs: int = MIN_RUNS) -> None:
    """Every accepted model kind is measured by the protocol (alone and interleaved), or, when the device
    cannot measure here, both calls raise DeviceUnavailableError."""
    caps = device.capabilities
    for kind in caps.accepts:
        model, inputs, _ = tiny_model(kind, folder)
        if not caps.measurable_here:
            _raises(device, lambda: device.measure(model, inputs, min_runs=min_runs), DeviceUnavailableError,
                    "measurable_here=False promises that measure() raises DeviceUnavailableError")
            _raises(device, lambda: device.measure_interleaved([model, model], inputs, min_runs=min_runs),
                    DeviceUnavailableError,
                    "measurable_here=False promises that measure_interleaved() raises DeviceUnavailableError")
            continue
        m = _call(device, lambda: device.measure(model, inputs, min_runs=min_runs), f"measure({kind} model)")
        check_measurement(device, m, f"measure({kind} model)", min_runs)
        both = _call(device, lambda: device.measure_interleaved([model, model], inputs, min_runs=min_runs),
                     f"measure_interleaved([{kind} model, {kind} model])")
        _require(isinstance(both, list) and len(both) == 2, device,
                 f"measure_interleaved of 2 models must return a list of 2 Measurements; got {both!r}")
        for m in both:
            check_measurement(device, m, f"measure_interleaved([{kind} model, {kind} model])", min_runs)


def check_errors(device: Any, folder: str | os.PathLike, min_runs: int = MIN_RUNS) -> None:
    """Named errors: a missing ONNX file, inputs of the wrong shape, a model of a kind not accepted."""
    caps = device.capabilities
    if not caps.measurable_here:
        return  # check_measure holds it to DeviceUnavailableError
    for kind in caps.accepts:
        model, _, bad = tiny_model(kind, folder)
        _raises(device, lambda: device.measure(model, bad, min_runs=1), InputShapeError,
                f"measure({kind} model, inputs of the wrong shape) must raise InputShapeError")
    if "onnx" in caps.accepts:
        missing = Path(folder) / "no-such-model.onnx"
        _raises(device, lambda: device.measure(missing, {"input": list(INPUT_SHAPE)}, min_runs=1),
                ModelNotFoundError, "measure(a missing ONNX file) must raise ModelNotFoundError")
    for kind in MODEL_KINDS:
        if kind not in caps.accepts:
            model, inputs, _ = tiny_model(kind, folder)
            _raises(device, lambda: device.measure(model, inputs, min_runs=1), InvalidParameterError,
                    f"measure(a {kind} model), a kind it does not accept, must raise InvalidParameterError")


def check_profile(device: Any, folder: str | os.PathLike, min_runs: int = MIN_RUNS) -> None:
    """A device that profiles here returns the whole-model statistics and per-kernel times; one that cannot
    raises DeviceUnavailableError from ``profile`` (when it has one)."""
    caps = device.capabilities
    if not caps.profilable_here:
        if callable(getattr(device, "profile", None)):
            model, inputs, _ = tiny_model(caps.accepts[0], folder)
            _raises(device, lambda: device.profile(model, inputs, min_runs=min_runs), DeviceUnavailableError,
                    "profilable_here=False promises that profile() raises DeviceUnavailableError")
        return
    model, inputs, _ = tiny_model("onnx", folder)
    prof = _call(device, lambda: device.profile(model, inputs, min_runs=min_runs), "profile(onnx model)")
    kernels = prof.get("kernels") if isinstance(prof, dict) else None
    _require(isinstance(prof, dict) and prof.get("median_ms", 0) > 0 and isinstance(kernels, list) and kernels
             and all(k.get("us", -1) >= 0 and "op" in k for k in kernels), device,
             "profile() must return a dict with a positive median_ms and a non-empty list of kernels "
             f"({{'op': ..., 'us': >= 0, ...}}); got {prof!r:.300}")


# every check takes (device, folder, min_runs); those that time nothing ignore the last two
CHECKS = (check_capabilities, check_fingerprint, check_measure, check_errors, check_profile)


def check_device(device: Any, folder: str | os.PathLike | None = None, min_runs: int = MIN_RUNS) -> list[str]:
    """Run every check of the device contract on ``device``; returns the names of the checks run.

    Args:
        device: the device object (e.g. ``get_device(name)``).
        folder: where the tiny ONNX model is written (a temporary folder by default).
        min_runs: the measurement protocol's ``min_runs`` in these checks.

    Raises:
        AssertionError: the first broken promise, naming the device.
    """
    with tempfile.TemporaryDirectory(prefix="device-conformance-") as tmp:
        where = Path(folder) if folder is not None else Path(tmp)
        for check in CHECKS:
            check(device, where, min_runs)
    return [c.__name__ for c in CHECKS]


__all__ = ["BAD_INPUT_SHAPE", "CHECKS", "INPUT_SHAPE", "MIN_RUNS", "check_capabilities", "check_device",
           "check_errors", "check_fingerprint", "check_measure", "check_measurement", "check_profile",
           "tiny_model", "tiny_module"]
