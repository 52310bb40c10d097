"""Named errors of the devices package."""

from compress.errors import CompressError, InvalidParameterError


class UnknownDeviceError(CompressError, KeyError):
    """A device name that is not registered (the message lists the known ones)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DeviceUnavailableError(CompressError, RuntimeError):
    """The device cannot time things from this host (e.g. a board: profile it with a bundle)."""


__all__ = ["UnknownDeviceError", "DeviceUnavailableError", "InvalidParameterError"]
