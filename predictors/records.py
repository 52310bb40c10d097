"""The fields of a latency table's records, checked before any of them is used.

A table comes from ``tools/profile_device.py`` on a board or from in-context profiling here; a record or kernel
missing a field, or one of the wrong type, is refused when the table is loaded (:class:`CorruptTableError` naming
the file, the record, the kernel and the field), not met later as a ``KeyError`` deep inside a fit.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from .errors import CorruptTableError


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v: Any) -> bool:
    return _number(v) and v > 0


def _non_negative(v: Any) -> bool:
    return _number(v) and v >= 0


def _shapes(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(s, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in s) for s in v)


# field -> (required, check, what it must be)
RECORD_FIELDS: dict[str, tuple[bool, Callable[[Any], bool], str]] = {
    "model": (True, lambda v: isinstance(v, str) and v != "", "a non-empty string (the model's name)"),
    "median_ms": (True, _positive, "a positive, finite number (milliseconds)"),
    "kernels": (True, lambda v: isinstance(v, list), "a list of kernel records"),
    "p25_ms": (False, _non_negative, "a finite number >= 0 (milliseconds)"),
    "p75_ms": (False, _non_negative, "a finite number >= 0 (milliseconds)"),
    "runs": (False, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an int >= 0"),
    "meta": (False, lambda v: isinstance(v, dict), "an object"),
    "reference_ms": (False, _positive, "a positive, finite number (milliseconds)"),
    "anchor_ms": (False, _positive, "a positive, finite number (milliseconds)"),
    "reference_ratio": (False, _positive, "a positive, finite number"),
    "anchor_ratio": (False, _positive, "a positive, finite number"),
    "anchor_reference_ratio": (False, _positive, "a positive, finite number"),
}
KERNEL_FIELDS: dict[str, tuple[bool, Callable[[Any], bool], str]] = {
    "name": (True, lambda v: isinstance(v, str), "a string (the kernel's node name)"),
    "op": (True, lambda v: isinstance(v, str) and v != "", "a non-empty string (the operator)"),
    "inputs": (True, _shapes, "a list of shapes (lists of ints >= 0)"),
    "outputs": (True, _shapes, "a list of shapes (lists of ints >= 0)"),
    "us": (True, _non_negative, "a finite number >= 0 (microseconds)"),
    "calls": (False, _non_negative, "a finite number >= 0 (calls per run)"),
}


def _check_fields(item: Any, fields: dict, where: str, path: str) -> None:
    if not isinstance(item, dict):
        raise CorruptTableError(f"{path!r}: {where} must be an object; got {type(item).__name__} {item!r:.60}. "
                                "Profile again or restore the file.")
    for key, (required, ok, what) in fields.items():
        if key not in item:
            if required:
                raise CorruptTableError(f"{path!r}: {where} lacks field {key!r} ({what}). Profile again or restore "
                                        "the file.")
            continue
        if not ok(item[key]):
            raise CorruptTableError(f"{path!r}: {where} field {key!r} must be {what}; got {item[key]!r:.60}. "
                                    "Profile again or restore the file.")


def check_records(records: Any, path: str) -> None:
    """Refuse records that are not what a profiler writes (see :data:`RECORD_FIELDS`, :data:`KERNEL_FIELDS`).

    Args:
        records: the table's ``records`` as read from JSON.
        path: the file, for the message.

    Raises:
        CorruptTableError: names the file, the record (index and model), the kernel and the field.
    """
    if not isinstance(records, list):
        raise CorruptTableError(f"{path!r}: field 'records' must be a list; got {type(records).__name__}. Profile "
                                "again or restore the file.")
    for i, rec in enumerate(records):
        _check_fields(rec, RECORD_FIELDS, f"record {i}", path)
        where = f"record {i} ({rec['model']!r})"
        for j, kernel in enumerate(rec["kernels"]):
            _check_fields(kernel, KERNEL_FIELDS, f"{where}, kernel {j}", path)
