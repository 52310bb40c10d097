"""Named errors raised at the public boundary of :mod:`compress`.

Every error says what is wrong, what was received and what to do next. Each one
inherits from the built-in exception it refines, so ``except ValueError`` keeps
working for callers that do not know our names.
"""

from __future__ import annotations

import math


class CompressError(Exception):
    """Base class of every error raised by this package."""


class InvalidParameterError(CompressError, ValueError, TypeError):
    """A public function received an argument of the wrong type or value."""


class TraceError(CompressError, RuntimeError):
    """The model could not be traced into a graph (says which node or line)."""


class UnsupportedOpError(TraceError):
    """An op at a named node cannot be handled and cannot be frozen safely."""


class UnsupportedModelError(TraceError):
    """A kind of model torch.fx cannot trace as a whole (a detector with its box post-processing); the message
    names the part to pass instead (e.g. ``model.backbone``)."""


class InputShapeError(CompressError, ValueError):
    """The example inputs do not fit the model (wrong shape, dtype or count)."""


class InvalidConfigError(CompressError, ValueError, KeyError):
    """A channel config names unknown groups or widths the group cannot take."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class ExportError(CompressError, OSError):
    """The ONNX file could not be written (path not writable, export failed)."""


class ExportMismatchError(CompressError, AssertionError):
    """onnxruntime's output differs from torch's by more than the tolerance."""


class FlopsMismatchError(CompressError, AssertionError):
    """The analytic FLOPs of a config differ from fvcore's count of the same network (names the op)."""


class ReorderError(CompressError, AssertionError):
    """A channel permutation would change what the full-width network computes (the weights are restored)."""


class WorkDirBusyError(CompressError, RuntimeError):
    """Another process is running in this work directory (the message names its process id)."""


class WriteError(CompressError, OSError):
    """A file could not be written (read-only folder, missing parent, disk full...).

    Raised by :func:`compress.io.atomic_write` and everything built on it; the message names the path and the
    operating system's reason, and ``errno``, ``strerror`` and ``filename`` are those of the ``OSError`` it wraps.
    The target file, if it existed, is left as it was.
    """

    def __init__(self, message: str, *, errno: int | None = None, strerror: str | None = None,
                 filename: str | None = None) -> None:
        super().__init__(message)
        self.errno, self.strerror, self.filename = errno, strerror, filename

    def __str__(self) -> str:  # OSError would otherwise print "[Errno n] strerror: filename" once errno is set
        return str(self.args[0]) if self.args else ""


# ---- work directories: files that know what they hold ----------------------------------------------------------
class WorkDirMismatchError(CompressError, ValueError):
    """A file in a work directory (its record ``network.json``, the supernet checkpoint, the search path, a latency
    table or predictor) was written for another network, other starting weights or other settings. The message
    names the file, what differs and what to do (another work_dir, or delete the file)."""


class CorruptFileError(CompressError, ValueError):
    """A file of a work directory (supernet checkpoint, search path, record) is truncated or not what compress
    wrote; the message names the file and what to do."""


class NewerSchemaError(CompressError, ValueError):
    """A file was written by a newer version of compress (a higher schema version than this one reads). The file is
    kept: upgrade compress to read it."""


class PredictorMismatchError(CompressError, ValueError):
    """A latency predictor passed to a search was fitted on another device (fingerprint) or for another network;
    the message says what differs and how to override the check."""


# ---- search, training and deployment (compress.search, compress.train, compress.deploy) ----------------------
class SearchResumeError(WorkDirMismatchError):
    """A saved search path belongs to another network, objective or target."""


class PredictorUnavailableError(CompressError, ValueError):
    """A latency objective was asked for a device that cannot be profiled here, and no predictor was given."""


class BudgetNotMetError(CompressError, RuntimeError):
    """No subnet on the search path measured under the latency budget."""


class CheckpointMismatchError(WorkDirMismatchError):
    """A checkpoint on disk was written with other settings or for another network."""


class BudgetUnreachableError(CompressError, ValueError):
    """The budget is below what the smallest subnet of the space reaches."""


class NothingToSlimError(CompressError, ValueError):
    """The model has no channel group that can be narrowed."""


class MislabelledDataError(InvalidParameterError):
    """Loader labels do not fit the model's outputs (wrong dtype, shape or range)."""


def is_int(value: object) -> bool:
    """An int that is not a bool (``True`` is an int to Python, never a count or a width here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    """An int or float that is not a bool, NaN or infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_parameter(ok: bool, name: str, where: str, expected: str, got: object) -> None:
    """Raise :class:`InvalidParameterError` in the one message shape used everywhere.

    Example:
        >>> check_parameter(5 > 0, "latency_ms", "autoslim", "a float in (0, inf)", 5)
    """
    if not ok:
        raise InvalidParameterError(
            f"The {name!r} parameter of {where} must be {expected}. Got {got!r} instead."
        )


class SettingsSchemaError(InvalidParameterError):
    """Settings JSON written for another (newer or foreign) settings schema version than this package reads."""


class ResultFileError(CompressError, OSError):
    """A saved search result (result.json, subnet.pt in a work directory) is missing, corrupt or does not fit."""


class WeightsFileError(CompressError, OSError):
    """A trained-weights file (a state_dict ``.pt`` with the JSON record of its model beside it) is missing,
    corrupt, or does not fit the model its record names."""


class TimingNoiseWarning(UserWarning):
    """Timing the chosen subnet again moved its latency by more than the closed loop's headroom: a later measurement
    of the exported file may read over the budget (raise ``latency_headroom`` or measure on a quieter device)."""
