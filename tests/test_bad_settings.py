"""Catalogue, settings: values that trained or searched on silently (a negative learning rate climbs the loss, a
momentum >= 1 diverges) and JSON that is not settings text. Each case: the named error, the setting, what was
received and what it must be."""

from __future__ import annotations

import pytest

import compress
from compress.settings import AutoSlimSettings, DMSSettings, SearchSettings, TrainSettings


@pytest.mark.parametrize("cls, kwargs, match", [
    (TrainSettings, {"momentum": -0.5}, r"TrainSettings\.momentum must be in \[0, 1\)\. Got -0\.5"),
    (TrainSettings, {"momentum": 1.5}, r"TrainSettings\.momentum must be in \[0, 1\)\. Got 1\.5"),
    (TrainSettings, {"weight_decay": -1e-4}, r"TrainSettings\.weight_decay must be >= 0\. Got -0\.0001"),
    (TrainSettings, {"warmup_epochs": -1.0}, r"TrainSettings\.warmup_epochs must be >= 0\. Got -1\.0"),
    (AutoSlimSettings, {"finetune_lr": -0.01}, r"AutoSlimSettings\.finetune_lr must be > 0\. Got -0\.01"),
    (DMSSettings, {"lr": 0.0}, r"DMSSettings\.lr must be > 0\. Got 0\.0"),
    (DMSSettings, {"structure_lr": -0.1}, r"DMSSettings\.structure_lr must be > 0\. Got -0\.1"),
    (SearchSettings, {"overshoot": 1.5}, r"SearchSettings\.overshoot must be in \(0, 1\]\. Got 1\.5"),
    (DMSSettings, {"pipeline": "fast"}, r"DMSSettings\.pipeline must be a known DMS pipeline \(Known: pretrained"),
    (AutoSlimSettings, {"latency_headroom": -0.01}, r"AutoSlimSettings\.latency_headroom must be in \[0, 0\.5\)"),
    (DMSSettings, {"latency_headroom": 0.05}, r"DMSSettings\.latency_headroom must be below 1 - min_budget_use = "
                                              r"0\.05 .*lower min_budget_use\)\. Got 0\.05"),
])
def test_out_of_range_settings(cls, kwargs, match):
    with pytest.raises(compress.InvalidParameterError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("text, match", [
    (None, r"AutoSlimSettings\.from_json needs the JSON text \(a str\)\. Got NoneType instead; to read a file pass "
           r"Path\(file\)\.read_text\(\)"),
    (b"\xff\xfe{", r"AutoSlimSettings\.from_json got text that is not JSON"),
    ("[1, 2]", r"AutoSlimSettings needs a dict\. Got list instead"),
    (DMSSettings().to_json(), r"AutoSlimSettings has no setting\(s\) \['anneal', .*Known: \['divisor'"),
])
def test_text_that_is_not_autoslim_settings(text, match):
    with pytest.raises(compress.InvalidParameterError, match=match):
        AutoSlimSettings.from_json(text)


def test_defaults_and_boundaries_stay_legal():
    """The new range checks keep the documented boundaries legal (momentum 0, no weight decay, no warm-up)."""
    assert TrainSettings(momentum=0.0, weight_decay=0.0, warmup_epochs=0.0).momentum == 0.0
    assert AutoSlimSettings.from_json(AutoSlimSettings().to_json()) == AutoSlimSettings()
    assert DMSSettings.from_json(DMSSettings().to_json()) == DMSSettings()
