"""Named errors of the predictors package."""

from compress.errors import CompressError


class CorruptTableError(CompressError, ValueError):
    """A table or predictor file that is truncated, not JSON, or missing fields."""


class SchemaVersionError(CompressError, ValueError):
    """A file written with a schema version this code does not read."""


class FingerprintMismatchError(CompressError, ValueError):
    """A table or predictor measured on another device used for this one."""


class NotFittedError(CompressError, ValueError, AttributeError):
    """A predictor used before ``fit``."""


class ReferenceMismatchError(CompressError, ValueError):
    """Tables timed beside different reference models, so their latencies are on different scales."""


class MissingFileError(CorruptTableError, FileNotFoundError):
    """A table or predictor file that does not exist, or a folder given where the file was expected."""
