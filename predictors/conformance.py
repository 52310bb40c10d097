"""The latency predictor contract as executable checks (in the spirit of scikit-learn's ``check_estimator``).

``check_predictor(make, table, net, configs, family)`` runs every check below and raises ``AssertionError``
naming the predictor class and the promise it broke. ``make()`` returns a new, unfitted predictor (e.g.
``lambda: LatencyPredictor(n_trees=5)``); ``table`` is a ``LatencyTable`` with whole-model records of
``family``, a subnet family of the slimmable network ``net``; ``configs`` are configs of ``net`` to predict.
What a predictor promises (``predictors.LatencyPredictor`` is the reference):

* ``fit(tables, nets={family: net})`` returns the predictor itself; fitting nothing raises ``NotFittedError``.
* ``predict_ms(net, configs, family=...)`` returns one finite, positive latency (ms) per config; before ``fit``
  it (and ``save``) raises ``NotFittedError``; two calls give the same numbers; fitting twice with the same
  settings gives the same numbers (the fit is seeded).
* ``save(path)`` then ``type(p).load(path)`` gives the same predictions (JSON: bit-for-bit); ``load(path,
  fingerprint=...)`` accepts the table's fingerprint and refuses another device's with
  ``FingerprintMismatchError``.
* a damaged file (truncated, another kind, fields missing or of the wrong type) raises ``CorruptTableError`` and
  a file of another schema version ``SchemaVersionError``, never a raw exception.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import CorruptTableError, FingerprintMismatchError, NotFittedError, SchemaVersionError
from .table import LatencyTable


def _require(ok: bool, predictor: Any, promise: str) -> None:
    if not ok:
        raise AssertionError(f"{type(predictor).__name__} breaks the latency predictor contract: {promise}")


def _raises(predictor: Any, call: Callable[[], Any], error: type, promise: str) -> None:
    """``call()`` must raise ``error``; anything else (no error, another exception) breaks ``promise``."""
    try:
        call()
    except error:
        return
    except Exception as exc:  # the check reports the wrong exception instead of crashing on it
        _require(False, predictor, f"{promise}; it raised {type(exc).__name__}: {exc}")
    _require(False, predictor, f"{promise}; it raised nothing")


def _predict(pred: Any, net: Any, configs: Sequence[Mapping[str, int]], family: str) -> np.ndarray:
    return np.asarray(pred.predict_ms(net, list(configs), family=family), dtype=float)


def check_not_fitted(make: Callable[[], Any], table: LatencyTable, net: Any, configs: Sequence[Mapping[str, int]],
                     family: str, folder: str | os.PathLike) -> None:
    """Before ``fit``, ``predict_ms`` and ``save`` raise NotFittedError; ``fit([])`` too."""
    fresh = make()
    _raises(fresh, lambda: fresh.predict_ms(net, list(configs), family=family), NotFittedError,
            "predict_ms before fit must raise NotFittedError")
    _raises(fresh, lambda: fresh.save(Path(folder) / "unfitted.json"), NotFittedError,
            "save before fit must raise NotFittedError")
    _raises(fresh, lambda: make().fit([], nets={family: net}), NotFittedError,
            "fit with no table must raise NotFittedError")


def check_fit_predict(make: Callable[[], Any], table: LatencyTable, net: Any,
                      configs: Sequence[Mapping[str, int]], family: str, folder: str | os.PathLike) -> None:
    """``fit`` returns self; one finite positive latency per config, the same on two calls and two fits."""
    pred = make()
    _require(pred.fit(table, nets={family: net}) is pred, pred, "fit must return the predictor itself")
    got = _predict(pred, net, configs, family)
    _require(got.shape == (len(configs),) and np.all(np.isfinite(got)) and np.all(got > 0), pred,
             f"predict_ms must return one finite positive latency (ms) per config ({len(configs)}); got {got!r}")
    again = _predict(pred, net, configs, family)
    _require(np.array_equal(got, again), pred, f"predict_ms must repeat itself; got {got!r}, then {again!r}")
    refit = _predict(make().fit(table, nets={family: net}), net, configs, family)
    _require(np.allclose(refit, got, rtol=1e-12, atol=0), pred,
             f"two fits with the same settings must predict the same; got {got!r} and {refit!r}")


def check_round_trip(make: Callable[[], Any], table: LatencyTable, net: Any,
                     configs: Sequence[Mapping[str, int]], family: str, folder: str | os.PathLike) -> None:
    """save/load gives the same predictions; load checks the device fingerprint."""
    pred = make().fit(table, nets={family: net})
    want = _predict(pred, net, configs, family)
    path = Path(folder) / "predictor.json"
    pred.save(path)
    loaded = type(pred).load(path)
    got = _predict(loaded, net, configs, family)
    _require(np.array_equal(got, want), pred,
             f"a saved and loaded predictor must predict what the saved one did; got {got!r}, want {want!r}")
    same = _predict(type(pred).load(path, fingerprint=dict(table.fingerprint)), net, configs, family)
    _require(np.array_equal(same, want), pred, "load(path, fingerprint=the table's) must load the predictor")
    other = dict(table.fingerprint, threads=int(table.fingerprint.get("threads") or 1) + 1)
    _raises(pred, lambda: type(pred).load(path, fingerprint=other), FingerprintMismatchError,
            "load(path, fingerprint=another device's) must raise FingerprintMismatchError")


def damaged_files(saved: dict, optional: Sequence[str] = ()) -> dict[str, tuple[str, type]]:
    """Damaged versions of a saved predictor's JSON ``saved``: name -> (file text, the error load must raise).
    Fields in ``optional`` may be missing (older files lack them), not of the wrong type."""
    text = json.dumps(saved)
    out = {"truncated": (text[: len(text) // 2], CorruptTableError),
           "empty": ("", CorruptTableError),
           "not an object": (json.dumps([saved]), CorruptTableError),
           "another kind": (json.dumps(dict(saved, kind="something else")), CorruptTableError),
           "another schema version": (json.dumps(dict(saved, schema_version=-1)), SchemaVersionError)}
    for key in saved:
        if key not in ("kind", "schema_version") and key not in optional:
            out[f"no {key!r}"] = (json.dumps({k: v for k, v in saved.items() if k != key}), CorruptTableError)
        if key not in ("kind", "schema_version"):
            out[f"{key!r} of the wrong type"] = (json.dumps(dict(saved, **{key: "?"})), CorruptTableError)
    return out


def check_damaged_files(make: Callable[[], Any], table: LatencyTable, net: Any,
                        configs: Sequence[Mapping[str, int]], family: str, folder: str | os.PathLike) -> None:
    """Every damaged version of a saved file gets a named error, with and without a fingerprint to check (fields
    the predictor class lists in ``OPTIONAL_FIELDS`` may be missing)."""
    pred = make().fit(table, nets={family: net})
    path = Path(folder) / "good.json"
    pred.save(path)
    saved = json.loads(path.read_text())
    bad = Path(folder) / "damaged.json"
    for what, (text, error) in damaged_files(saved, getattr(type(pred), "OPTIONAL_FIELDS", ())).items():
        bad.write_text(text)
        for fp in (None, dict(table.fingerprint)):
            def load(fp=fp):
                loaded = type(pred).load(bad, fingerprint=fp)
                # a field of the wrong type may only show when predicting: that must be a named error too
                _predict(loaded, net, configs, family)
            _raises(pred, load, error, f"load of a file with {what} (fingerprint={'given' if fp else None}) "
                                       f"must raise {error.__name__}")


# every check takes (make, table, net, configs, family, folder)
CHECKS = (check_not_fitted, check_fit_predict, check_round_trip, check_damaged_files)


def check_predictor(make: Callable[[], Any], table: LatencyTable, net: Any, configs: Sequence[Mapping[str, int]],
                    family: str, folder: str | os.PathLike | None = None) -> list[str]:
    """Run every check of the latency predictor contract; returns the names of the checks run.

    Args:
        make: returns a new unfitted predictor, e.g. ``lambda: LatencyPredictor(n_trees=5)``.
        table: a latency table with whole-model records of ``family`` (``meta`` has ``family`` and ``config``).
        net: the ``SlimmableNetwork`` whose subnets the table measured.
        configs: configs of ``net`` to predict (at least one).
        family: the table's family name.
        folder: where files are written (a temporary folder by default).

    Raises:
        AssertionError: the first broken promise, naming the predictor class.
    """
    with tempfile.TemporaryDirectory(prefix="predictor-conformance-") as tmp:
        where = Path(folder) if folder is not None else Path(tmp)
        for check in CHECKS:
            check(make, table, net, configs, family, where)
    return [c.__name__ for c in CHECKS]


__all__ = ["CHECKS", "check_damaged_files", "check_fit_predict", "check_not_fitted", "check_predictor",
           "check_round_trip", "damaged_files"]
