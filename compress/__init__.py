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

from .autoslim import autoslim
from .prepare import BudgetUnreachableError, MislabelledDataError, NothingToSlimError
from .closed_loop import BudgetNotMetError
from .result import SlimResult
from .settings import AutoSlimSettings, SearchSettings, TrainSettings
from .supernet import train_supernet

__all__ += ["BudgetNotMetError", "BudgetUnreachableError", "MislabelledDataError", "NothingToSlimError", "autoslim",
            "SlimResult", "AutoSlimSettings", "SearchSettings", "TrainSettings", "train_supernet"]

from .dms import DMSSettings, dms

__all__ += ["DMSSettings", "dms"]
