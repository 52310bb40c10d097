"""Named errors raised at the public boundary of :mod:`compress`.

Every error says what is wrong, what was received and what to do next. Each one
inherits from the built-in exception it refines, so ``except ValueError`` keeps
working for callers that do not know our names.
"""

from __future__ import annotations


class CompressError(Exception):
    """Base class of every error raised by this package."""


class InvalidParameterError(CompressError, ValueError, TypeError):
    """A public function received an argument of the wrong type or value."""


class TraceError(CompressError, RuntimeError):
    """The model could not be traced into a graph (says which node or line)."""


class UnsupportedOpError(TraceError):
    """An op at a named node cannot be handled and cannot be frozen safely."""


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
