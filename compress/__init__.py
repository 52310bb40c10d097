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

from .bn import recalibrate_bn
from .export import ExportReport, export_onnx
from .flops import FlopReport, count_flops
from .reorder import reorder_channels_

__all__ += ["recalibrate_bn", "ExportReport", "export_onnx", "FlopReport", "count_flops", "reorder_channels_"]
