"""Latency predictors: per-kernel latency tables profiled on a device, and predictors fitted on them.

    table = profile_family(net, "resnet18", "resnet18.lut.json")           # in-context kernels
    pred = LatencyPredictor().fit(table, nets={"resnet18": net})
    pred.predict_ms(net, configs, family="resnet18")                       # many configs, fast
"""

from .errors import (CorruptTableError, FingerprintMismatchError, MissingFileError, NetworkMismatchError,
                     NewerSchemaVersionError, NotFittedError, ReferenceMismatchError, SchemaVersionError)
from .forest import ForestModel
from .latency import LatencyPredictor, NetKernels
from .profiling import profile_configs, profile_family
from .table import LatencyTable

__all__ = ["CorruptTableError", "FingerprintMismatchError", "ForestModel", "LatencyPredictor", "LatencyTable",
           "MissingFileError", "NetKernels", "NetworkMismatchError", "NewerSchemaVersionError", "NotFittedError",
           "ReferenceMismatchError", "SchemaVersionError", "profile_configs", "profile_family"]
