"""Devices: how to time a network on a target.

``get_device("cpu", threads=1)`` times ONNX models with onnxruntime on this CPU,
``"torch-cpu"`` times torch modules, ``"board"`` stands for a board reached
through profiling bundles and ``profile_device.py`` (standalone: onnxruntime,
numpy and the standard library only).

Devices come from a registry, and say what they can do as data: code asks
``capabilities_of(device)`` (a ``Capabilities``: the model kinds ``measure`` takes,
``"onnx"`` or ``"module"``; whether it measures and profiles on this host), never a
device's name. A device of your own is a class with ``capabilities``,
``fingerprint()`` (a JSON-able dict) and the methods its capabilities promise;
register it and check it against the contract::

    class MyBoard:
        capabilities = Capabilities(accepts=("onnx",), measurable_here=True)
        def __init__(self, host: str, threads: int = 1): ...
        def fingerprint(self) -> dict: ...
        def measure(self, model, input_shapes=None, **protocol) -> Measurement: ...  # protocol: min_runs, ...
        def measure_interleaved(self, models, input_shapes=None, **protocol) -> list[Measurement]: ...

    register_device("my-board", MyBoard, aliases=("mb",))   # DuplicateDeviceError if the name is taken
    dev = get_device("my-board", host="10.0.0.7")           # UnknownDeviceOptionError lists host, threads
    check_device(dev)        # from devices.conformance: AssertionError naming the broken promise

``autoslim(..., device="my-board")`` then times candidates on it (``threads=`` is passed on when the
factory takes it).
"""

from .board import BoardDevice, write_bundle
from .capabilities import MODEL_KINDS, NO_CAPABILITIES, Capabilities, capabilities_of
from .errors import (DeviceUnavailableError, DuplicateDeviceError, InputShapeError, ModelFileError,
                     ModelNotFoundError, UnknownDeviceError, UnknownDeviceOptionError)
from .measurement import Measurement
from .ort_cpu import OrtCpuDevice
from .registry import (DeviceEntry, device_entry, device_options, get_device, list_devices, register_device,
                       unregister_device)
from .torch_cpu import TorchCpuDevice

__all__ = ["BoardDevice", "Capabilities", "DeviceEntry", "DeviceUnavailableError", "DuplicateDeviceError",
           "InputShapeError", "MODEL_KINDS", "Measurement", "ModelFileError", "ModelNotFoundError",
           "NO_CAPABILITIES", "OrtCpuDevice", "TorchCpuDevice", "UnknownDeviceError", "UnknownDeviceOptionError",
           "capabilities_of", "device_entry", "device_options", "get_device", "list_devices", "register_device",
           "unregister_device", "write_bundle"]
