"""Catalogue, predictors: what ``LatencyPredictor`` is given to fit on and to load is named when it is not a table
or a predictor file (the file cases are in test_bad_files.py)."""

from __future__ import annotations

import json

import pytest

import compress
import predictors
from predictors import LatencyPredictor, LatencyTable


@pytest.mark.parametrize("tables, match", [
    ("board.json", r"'tables' parameter of LatencyPredictor\.fit must be a LatencyTable or a list of them \(read a "
                   r"file with LatencyTable\.load\(path\)\)\. Got 'board\.json'"),
    ([{"records": []}], r"'tables' parameter of LatencyPredictor\.fit must be a LatencyTable .* Got \{'records': \[\]\}"),
])
def test_fit_on_something_that_is_not_a_table(tables, match):
    with pytest.raises(compress.InvalidParameterError, match=match):
        LatencyPredictor().fit(tables)


def test_fit_on_nothing_and_predict_before_fit():
    with pytest.raises(predictors.NotFittedError, match="fit needs at least one latency table"):
        LatencyPredictor().fit([])
    with pytest.raises(predictors.NotFittedError, match=r"not fitted yet\. Call 'fit'"):
        LatencyPredictor().predict_ms(None, [{}])


@pytest.mark.parametrize("text, error, match", [
    ("\x00\x01", predictors.CorruptTableError, r"is not a complete JSON predictor file .* Fit and save it again"),
    (json.dumps({"kind": "compress-latency-table"}), predictors.CorruptTableError, "is not a latency predictor file"),
])
def test_load_something_that_is_not_a_predictor(tmp_path, text, error, match):
    (tmp_path / "p.json").write_text(text)
    with pytest.raises(error, match=match):
        LatencyPredictor.load(tmp_path / "p.json")


def test_a_table_given_to_predictor_load_and_back(tmp_path):
    """A latency table passed where a predictor file is expected, and the reverse, are told apart by kind."""
    table = LatencyTable({"cpu": "x"}, [])
    table.save(tmp_path / "t.json")
    with pytest.raises(predictors.CorruptTableError, match="is not a latency predictor file"):
        LatencyPredictor.load(tmp_path / "t.json")
