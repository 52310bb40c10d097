"""compress: hardware-aware channel slimming for PyTorch CNNs.

Layers, each importing only the ones before it (enforced by tests/test_layers.py):
errors, io, settings -> space -> cost -> slim -> subnet -> (devices, predictors) -> train -> deploy -> result
-> search -> api. This module is the public facade over all of them. It imports the layers below ``devices``
at once and the entry points above it (``autoslim``, ``dms``) on first use, so that ``import devices`` or
``import predictors`` before ``import compress`` works (both import ``compress.errors``, which runs this file).
"""

import importlib

from compress import moved

moved.install()

from compress.errors import (BudgetNotMetError, BudgetUnreachableError, CheckpointMismatchError,  # noqa: E402
                             CompressError, CorruptFileError, ExportError, ExportMismatchError, FlopsMismatchError,
                             InputShapeError, InvalidConfigError, InvalidParameterError, MislabelledDataError,
                             NewerSchemaError, NothingToSlimError, PredictorMismatchError, PredictorUnavailableError,
                             ReorderError, ResultFileError, SearchResumeError, SettingsSchemaError,
                             TimingNoiseWarning, TraceError, UnsupportedModelError, UnsupportedOpError, WeightsFileError, WorkDirBusyError,
                             WorkDirMismatchError, WriteError)
from compress.cost.flops import FlopReport, count_flops  # noqa: E402
from compress.result import SlimResult  # noqa: E402
from compress.settings import AutoSlimSettings, DMSSettings, SearchSettings, TrainSettings  # noqa: E402
from compress.slim.network import SlimmableNetwork  # noqa: E402
from compress.slim.reorder import reorder_channels_  # noqa: E402
from compress.space.digest import graph_digest  # noqa: E402
from compress.space.groups import ChannelGroup  # noqa: E402
from compress.space.space import ChannelSpace, Config  # noqa: E402
from compress.subnet.bn import recalibrate_bn  # noqa: E402
from compress.subnet.export import ExportReport, export_onnx  # noqa: E402
from compress.subnet.extract import extract_subnet  # noqa: E402
from compress.train.supernet import train_supernet  # noqa: E402

# name -> module that defines it, imported on first access (these modules import devices and predictors)
LAZY: dict[str, str] = {
    "autoslim": "compress.api.autoslim",
    "dms": "compress.api.dms",
}


def __getattr__(name: str):
    if name in LAZY:
        value = getattr(importlib.import_module(LAZY[name]), name)
        globals()[name] = value  # once: later lookups are plain attribute reads
        return value
    raise AttributeError(f"module 'compress' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(LAZY))


__all__ = [
    "AutoSlimSettings", "BudgetNotMetError", "BudgetUnreachableError", "ChannelGroup", "ChannelSpace",
    "CheckpointMismatchError", "CompressError", "Config", "CorruptFileError", "DMSSettings", "ExportError",
    "ExportMismatchError", "ExportReport", "FlopReport", "FlopsMismatchError", "InputShapeError",
    "InvalidConfigError", "InvalidParameterError", "MislabelledDataError", "NewerSchemaError", "NothingToSlimError",
    "PredictorMismatchError", "PredictorUnavailableError", "ReorderError", "ResultFileError", "SearchResumeError",
    "SearchSettings", "SettingsSchemaError", "SlimResult", "SlimmableNetwork", "TimingNoiseWarning", "TraceError", "TrainSettings",
    "UnsupportedModelError", "UnsupportedOpError", "WeightsFileError", "WorkDirBusyError", "WorkDirMismatchError",
    "WriteError", "autoslim", "count_flops", "dms",
    "export_onnx", "extract_subnet", "graph_digest", "recalibrate_bn", "reorder_channels_", "train_supernet",
]
