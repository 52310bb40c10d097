"""compress: hardware-aware channel slimming for PyTorch CNNs.

Layers, each importing only the ones before it (enforced by tests/test_layers.py):
errors, io, settings -> space -> cost -> slim -> subnet -> (devices, predictors) -> train -> deploy -> result
-> search -> api. This module is the public facade over all of them.
"""

from compress import moved

moved.install()

from compress.errors import (CompressError, ExportError, ExportMismatchError, InputShapeError, InvalidConfigError,
                     InvalidParameterError, ResultFileError, SettingsSchemaError, TraceError, UnsupportedOpError)
from compress.subnet.extract import extract_subnet
from compress.space.groups import ChannelGroup
from compress.slim.network import SlimmableNetwork
from compress.space.space import ChannelSpace, Config

__all__ = [
    "ChannelGroup", "ChannelSpace", "CompressError", "Config", "ExportError", "ExportMismatchError",
    "InputShapeError", "InvalidConfigError", "InvalidParameterError", "ResultFileError", "SettingsSchemaError",
    "SlimmableNetwork", "TraceError",
    "UnsupportedOpError", "extract_subnet",
]

from compress.subnet.bn import recalibrate_bn
from compress.subnet.export import ExportReport, export_onnx
from compress.cost.flops import FlopReport, count_flops
from compress.slim.reorder import reorder_channels_

__all__ += ["recalibrate_bn", "ExportReport", "export_onnx", "FlopReport", "count_flops", "reorder_channels_"]

from compress.api.autoslim import autoslim
from compress.search.prepare import BudgetUnreachableError, MislabelledDataError, NothingToSlimError
from compress.deploy.closed_loop import BudgetNotMetError
from compress.result import SlimResult
from compress.settings import AutoSlimSettings, SearchSettings, TrainSettings
from compress.train.supernet import train_supernet

__all__ += ["BudgetNotMetError", "BudgetUnreachableError", "MislabelledDataError", "NothingToSlimError", "autoslim",
            "SlimResult", "AutoSlimSettings", "SearchSettings", "TrainSettings", "train_supernet"]

from compress.dms import DMSSettings, dms

__all__ += ["DMSSettings", "dms"]
