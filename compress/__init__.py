"""compress: hardware-aware channel slimming for PyTorch CNNs."""

from .errors import (CompressError, ExportError, ExportMismatchError, InputShapeError, InvalidConfigError,
                     InvalidParameterError, TraceError, UnsupportedOpError)
from .extract import extract_subnet
from .groups import ChannelGroup
from .slimmable import SlimmableNetwork
from .space import ChannelSpace, Config

__all__ = [
    "ChannelGroup", "ChannelSpace", "CompressError", "Config", "ExportError", "ExportMismatchError",
    "InputShapeError", "InvalidConfigError", "InvalidParameterError", "SlimmableNetwork", "TraceError",
    "UnsupportedOpError", "extract_subnet",
]
