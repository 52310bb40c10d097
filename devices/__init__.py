"""Devices: how to time a network on a target.

``get_device("cpu", threads=1)`` times ONNX models with onnxruntime on this CPU,
``"torch-cpu"`` times torch modules, ``"board"`` stands for a board reached
through profiling bundles and ``profile_device.py`` (standalone: onnxruntime,
numpy and the standard library only).
"""

from .board import BoardDevice, write_bundle
from .errors import DeviceUnavailableError, UnknownDeviceError
from .measurement import Measurement
from .ort_cpu import OrtCpuDevice
from .registry import get_device, list_devices
from .torch_cpu import TorchCpuDevice

__all__ = ["BoardDevice", "DeviceUnavailableError", "Measurement", "OrtCpuDevice", "TorchCpuDevice",
           "UnknownDeviceError", "get_device", "list_devices", "write_bundle"]
