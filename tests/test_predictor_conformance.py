"""The latency predictor contract (predictors.conformance) on LatencyPredictor, fitted on a tiny profiled table,
and the suite failing predictors that break it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import compress
import predictors
from predictors import LatencyPredictor, conformance

FAMILY = "tiny"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A two-conv slimmable network on 16 x 16 inputs and a table of 4 of its subnets (about 2 s)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(32, 10))
    net = compress.SlimmableNetwork(model, torch.randn(1, 3, 16, 16))
    configs = [net.space.max_config(), net.space.min_config()] + [net.space.random_config(s) for s in range(2)]
    table = predictors.profile_configs(net, configs, FAMILY, tmp_path_factory.mktemp("lut") / "tiny.json",
                                       min_runs=10)
    return net, table, configs + [net.space.random_config(100 + s) for s in range(3)]


def make() -> LatencyPredictor:
    return LatencyPredictor(n_trees=5)


def test_latency_predictor_keeps_the_contract(tiny, tmp_path):
    net, table, configs = tiny
    assert conformance.check_predictor(make, table, net, configs, FAMILY, tmp_path) == \
        [c.__name__ for c in conformance.CHECKS]


def test_damaged_files_cover_every_field(tiny, tmp_path):
    net, table, _ = tiny
    make().fit(table, nets={FAMILY: net}).save(tmp_path / "p.json")
    saved = json.loads((tmp_path / "p.json").read_text())
    cases = conformance.damaged_files(saved, LatencyPredictor.OPTIONAL_FIELDS)
    fields = set(saved) - {"kind", "schema_version"}
    assert {f"{k!r} of the wrong type" for k in fields} <= set(cases)
    assert {f"no {k!r}" for k in fields - set(LatencyPredictor.OPTIONAL_FIELDS)} <= set(cases)
    assert "no 'reference_ms'" not in cases  # files written before it existed still load
    (tmp_path / "bad.json").write_text(cases["'overhead' of the wrong type"][0])
    with pytest.raises(predictors.CorruptTableError, match="field 'overhead' must be an object"):
        LatencyPredictor.load(tmp_path / "bad.json")


# ---- the suite fails predictors that break a promise ----------------------------------------------------------
class PredictsUnfitted(LatencyPredictor):
    def predict_ms(self, net, configs, family=None):
        return np.ones(len(configs)) if not hasattr(self, "forests_") else super().predict_ms(net, configs, family)


class LosesPrecision(LatencyPredictor):
    @classmethod
    def load(cls, path, fingerprint=None):
        p = super().load(path, fingerprint)
        p.overhead_ = {k: [round(c, 3) for c in v] for k, v in p.overhead_.items()}
        return p


class RawKeyError(LatencyPredictor):
    @classmethod
    def load(cls, path, fingerprint=None):
        try:
            d = json.loads(Path(path).read_text())
        except ValueError:
            d = None
        if isinstance(d, dict) and d.get("kind") == "compress-latency-predictor":
            d["forests"]  # noqa: B018 -- a raw KeyError when the field is missing
        return super().load(path, fingerprint)


class FitReturnsNothing(LatencyPredictor):
    def fit(self, tables, nets=None):
        super().fit(tables, nets)


class FitDrifts(LatencyPredictor):
    fits = 0

    def fit(self, tables, nets=None):
        super().fit(tables, nets)
        FitDrifts.fits += 1
        self.overhead_ = {k: [c * (1 + 0.01 * FitDrifts.fits) for c in v] for k, v in self.overhead_.items()}
        return self


@pytest.mark.parametrize("cls, promise", [
    (PredictsUnfitted, "predict_ms before fit must raise NotFittedError; it raised nothing"),
    (LosesPrecision, "a saved and loaded predictor must predict what the saved one did"),
    (RawKeyError, "with no 'forests' .* must raise CorruptTableError; it raised KeyError"),
    (FitReturnsNothing, "fit must return the predictor itself"),
    (FitDrifts, "two fits with the same settings must predict the same"),
])
def test_the_suite_fails_a_predictor_that_breaks_a_promise(tiny, cls, promise, tmp_path):
    net, table, configs = tiny
    with pytest.raises(AssertionError, match=promise):
        conformance.check_predictor(lambda: cls(n_trees=5), table, net, configs, FAMILY, tmp_path)
