"""Named errors of the predictors package."""

from compress.errors import CompressError, NewerSchemaError


class CorruptTableError(CompressError, ValueError):
    """A table or predictor file that is truncated, not JSON, or missing fields."""


class SchemaVersionError(CompressError, ValueError):
    """A file written with an older (or no valid) schema version than this code reads; a file of a newer version
    gets :class:`NewerSchemaVersionError`, a subclass (upgrade to read it)."""


class FingerprintMismatchError(CompressError, ValueError):
    """A table or predictor measured on another device used for this one."""


class NewerSchemaVersionError(SchemaVersionError, NewerSchemaError):
    """A table or predictor written by a newer version of compress (a higher schema version): upgrade to read it.
    Both a SchemaVersionError and a ``compress.errors.NewerSchemaError``; code that remakes files of an older
    version must not remake (or delete) these."""


class NetworkMismatchError(CompressError, ValueError):
    """A latency table or predictor made for another network than the one given (another traced graph under the
    same family name)."""


class NotFittedError(CompressError, ValueError, AttributeError):
    """A predictor used before ``fit``."""


class ReferenceMismatchError(CompressError, ValueError):
    """Tables timed beside different reference models, so their latencies are on different scales."""


class MissingFileError(CorruptTableError, FileNotFoundError):
    """A table or predictor file that does not exist, or a folder given where the file was expected."""
