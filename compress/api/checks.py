"""The keyword arguments ``autoslim`` and ``dms`` share, checked at the public boundary before anything runs
(budget, device, loaders and model are checked by ``compress.search.prepare``)."""

from __future__ import annotations

from typing import Any

from compress.deploy.timing import ReferenceTimer
from compress.errors import check_parameter
from devices import list_devices


def check_call_arguments(where: str, device: Any, settings: Any, settings_type: type, predictor: Any, timer: Any,
                         log: Any, progress: Any, **flags: Any) -> None:
    """Refuse arguments of the wrong kind with the one message shape (what, got, what to do).

    Args:
        where: the call, for the message ("autoslim" or "dms").
        device: a registered device name (str) or a device object (with ``fingerprint()``).
        settings: the settings given (None: defaults).
        settings_type: the settings class the call takes.
        predictor: None or a fitted latency predictor (an object with ``predict_ms``).
        timer: None or a :class:`~compress.deploy.timing.ReferenceTimer`.
        log: a callable taking one line of text.
        progress: a bool.
        **flags: further bool arguments of the call, by name (``train=...``).

    Raises:
        InvalidParameterError: names the argument, what it must be and what was received.
    """
    check_parameter(isinstance(device, str) or callable(getattr(device, "fingerprint", None)), "device", where,
                    f"a device name (one of {', '.join(list_devices())}) or a device object with fingerprint() "
                    "(devices.get_device(name, ...))", device)
    check_parameter(settings is None or isinstance(settings, settings_type), "settings", where,
                    f"a compress.{settings_type.__name__} or None", settings)
    check_parameter(predictor is None or callable(getattr(predictor, "predict_ms", None)), "predictor", where,
                    "None or a fitted predictors.LatencyPredictor (load a saved one with "
                    "predictors.LatencyPredictor.load(path))", predictor)
    check_parameter(timer is None or isinstance(timer, ReferenceTimer), "timer", where,
                    "None or a compress.deploy.timing.ReferenceTimer", timer)
    check_parameter(callable(log), "log", where, "a callable taking one line of text (e.g. print)", log)
    for name, value in {"progress": progress, **flags}.items():
        check_parameter(isinstance(value, bool), name, where, "a bool (True or False)", value)
