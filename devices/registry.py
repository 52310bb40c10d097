"""Device registry: get_device(name, **options) and list_devices()."""

from __future__ import annotations

from typing import Any, Callable

from .board import BoardDevice
from .errors import UnknownDeviceError
from .ort_cpu import OrtCpuDevice
from .torch_cpu import TorchCpuDevice

DEVICES: dict[str, Callable[..., Any]] = {
    "cpu": OrtCpuDevice,
    "ort-cpu": OrtCpuDevice,
    "torch-cpu": TorchCpuDevice,
    "board": BoardDevice,
}


def list_devices() -> list[str]:
    """Names accepted by :func:`get_device`."""
    return sorted(DEVICES)


def get_device(name: str, **options: Any) -> Any:
    """Create a device by name, e.g. ``get_device("cpu", threads=1)``.

    Raises:
        UnknownDeviceError: the name is not registered (the message lists the known names).
        InvalidParameterError: bad options, e.g. threads <= 0.
    """
    if name not in DEVICES:
        raise UnknownDeviceError(f"Unknown device {name!r}. Known devices: {', '.join(list_devices())}.")
    return DEVICES[name](**options)
