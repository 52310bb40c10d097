"""Latency tables: what a device measured, as a versioned JSON file (no pickles).

A table holds the device fingerprint and one record per profiled model: its
whole-model latency statistics and the kernels onnxruntime executed, each with
its input/output shapes and median time. Tables written by
``tools/profile_device.py`` on a board load here unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.io import save_json
from devices import profile_device as pd

from .errors import (CorruptTableError, FingerprintMismatchError, MissingFileError, NewerSchemaVersionError,
                     SchemaVersionError)
from .records import check_records

def read_json_file(path: str | os.PathLike, what: str, advice: str) -> object:
    """The JSON in ``path``; a missing file, a folder, unreadable bytes or broken JSON is a named error.

    Raises:
        MissingFileError: nothing at ``path``, or a folder.
        CorruptTableError: the file cannot be read or is not complete JSON (names the file and what to do).
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"There is no {what} at {str(path)!r}"
                               f"{' (that is a folder)' if p.is_dir() else ''}. Pass the path of the file.")
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise CorruptTableError(f"{str(path)!r} is not a complete JSON {what} ({exc}); it may have been truncated. "
                                f"{advice}") from exc



# Fields of the fingerprint that must agree for two measurements to be comparable.
FINGERPRINT_KEYS = ("cpu", "machine", "cores", "runtime", "runtime_version", "opt_level", "threads")


def check_fingerprint(expected: dict, got: dict, what: str) -> None:
    diff = {k: (expected.get(k), got.get(k)) for k in FINGERPRINT_KEYS if expected.get(k) != got.get(k)}
    if diff:
        detail = ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items())
        raise FingerprintMismatchError(
            f"{what} was measured on another device or setting ({detail}). Profile this device, or use the "
            "table that was measured on it.")


def check_schema_version(path: str | os.PathLike, version: Any, reads: int, what: str, redo: str) -> None:
    """Refuse a file of a schema version other than ``reads``: a newer one asks for an upgrade (the file is kept),
    an older one says how to remake it.

    Args:
        path: the file (named in the message).
        version: the file's "schema_version".
        reads: the version this code reads.
        what: "predictor" or "table".
        redo: what to do with an older file ("Fit it again", "Profile again").

    Returns:
        None.

    Raises:
        NewerSchemaVersionError: ``version`` is an int above ``reads`` (a SchemaVersionError too).
        SchemaVersionError: any other version.
    """
    if version == reads and not isinstance(version, bool):
        return
    if isinstance(version, int) and not isinstance(version, bool) and version > reads:
        raise NewerSchemaVersionError(f"{str(path)!r} was written by a newer version of compress ({what} schema "
                                      f"version {version}; this version reads {reads}). Upgrade compress to read it; "
                                      "the file is kept.")
    raise SchemaVersionError(f"{str(path)!r} has {what} schema version {version!r}; this version reads {reads}. "
                             f"{redo}.")


@dataclass
class LatencyTable:
    """A device's measured models and kernels (what ``profile_family``/``profile_configs`` or
    ``tools/profile_device.py`` on a board write).

    Attributes:
        fingerprint: the device's ``fingerprint()`` (JSON-able: CPU, cores, runtime and version, opt level,
            threads); tables and predictors of different fingerprints are not mixed.
        records: one dict per model timed: "model" (its name), "median_ms", "p25_ms", "p75_ms" (whole-model
            latency in milliseconds), "runs", "kernels" (per-kernel times, "us" in microseconds, with the kernel's
            shape), "meta" (e.g. "family" and "config"), and where timed beside them "reference_ms" /
            "anchor_ms" (ms) and the ratios to them.
        meta: the bundle's metadata (free-form, JSON-able).

    Raises:
        Nothing in the constructor (the fields are taken as given). ``load`` raises CorruptTableError (not a
        complete table), SchemaVersionError (an older or unknown schema version) and NewerSchemaVersionError (written
        by a newer compress: upgrade); ``merge`` and ``check_device`` raise
        FingerprintMismatchError for another device; ``save`` raises WriteError.

    Example:
        >>> table = LatencyTable.load("board.json")
        >>> table.records[0]["median_ms"]
    """

    fingerprint: dict
    records: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        """Read a table; a missing, truncated, foreign or damaged file gets a named error.

        Every record and kernel is checked field by field (:func:`predictors.records.check_records`) before it is
        used.

        Raises:
            MissingFileError: no file at ``path`` (or a folder there).
            CorruptTableError: not a complete JSON latency table, or a record or kernel that lacks a field or has
                one of the wrong type (the message names the record, the kernel and the field).
            SchemaVersionError: written with another table schema version.
        """
        data = read_json_file(path, "latency table", "Profile again or restore the file.")
        if not isinstance(data, dict) or data.get("kind") != pd.TABLE_KIND:
            raise CorruptTableError(f"{str(path)!r} is not a latency table (kind {data.get('kind') if isinstance(data, dict) else None!r}).")
        check_schema_version(path, data.get("schema_version"), pd.TABLE_SCHEMA_VERSION, "table", "Profile again")
        for key, kind in (("fingerprint", dict), ("bundle_meta", dict)):
            if not isinstance(data.get(key, {}), kind):
                raise CorruptTableError(f"{str(path)!r}: field {key!r} must be an object; got "
                                        f"{data[key]!r:.60}. Profile again or restore the file.")
        if "fingerprint" not in data:
            raise CorruptTableError(f"{str(path)!r} lacks field 'fingerprint' (the device's); profile again.")
        check_records(data.get("records"), str(path))
        return cls(dict(data["fingerprint"]), list(data["records"]), dict(data.get("bundle_meta", {})))

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (:func:`compress.io.atomic_write`: mode ``0o666 & ~umask``, never half-written).

        Raises:
            WriteError: the file could not be written (the message names the path and the OS's reason).
        """
        save_json({"schema_version": pd.TABLE_SCHEMA_VERSION, "kind": pd.TABLE_KIND,
                   "fingerprint": self.fingerprint, "bundle_meta": self.meta, "records": self.records},
                  path, indent=None)

    def merge(self, other: "LatencyTable") -> "LatencyTable":
        """Records of both tables (the same device only); later records win on name clashes."""
        check_fingerprint(self.fingerprint, other.fingerprint, "The table to merge")
        by_name = {r["model"]: r for r in self.records}
        by_name.update({r["model"]: r for r in other.records})
        return LatencyTable(self.fingerprint, list(by_name.values()), {**self.meta, **other.meta})

    def check_device(self, fingerprint: dict) -> None:
        check_fingerprint(self.fingerprint, fingerprint, "This table")

    def __len__(self) -> int:
        return len(self.records)
