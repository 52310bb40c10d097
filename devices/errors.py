"""Named errors of the devices package."""

from compress.errors import CompressError, InputShapeError, InvalidParameterError


class UnknownDeviceError(CompressError, KeyError):
    """A device name that is not registered (the message lists the known ones)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DuplicateDeviceError(CompressError, ValueError):
    """``register_device`` was given a name or alias that is already registered."""


class UnknownDeviceOptionError(InvalidParameterError):
    """``get_device`` was given keyword arguments the device does not take (the message lists those it takes)."""


class DeviceUnavailableError(CompressError, RuntimeError):
    """The device cannot time things from this host (e.g. a board: profile it with a bundle)."""


class ModelFileError(CompressError, OSError):
    """The model file handed to a device cannot be read as an ONNX model."""


class ModelNotFoundError(ModelFileError, FileNotFoundError):
    """The model file handed to a device does not exist."""


__all__ = ["DeviceUnavailableError", "DuplicateDeviceError", "InputShapeError", "InvalidParameterError",
           "ModelFileError", "ModelNotFoundError", "UnknownDeviceError", "UnknownDeviceOptionError"]
