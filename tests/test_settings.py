"""Settings JSON: schema version, nested settings from the field types, DMSSettings beside AutoSlimSettings."""

import dataclasses
import json
import warnings

import pytest

import compress
from compress import AutoSlimSettings, DMSSettings, InvalidParameterError, SearchSettings, TrainSettings
from compress.errors import SettingsSchemaError
from compress.settings import SETTINGS_SCHEMA, JsonSettings, nested_settings_type


def test_json_carries_the_schema_version_and_round_trips():
    s = AutoSlimSettings(train=TrainSettings(epochs=3), search=SearchSettings(step_ratio=0.05), min_budget_use=0.9)
    data = json.loads(s.to_json())
    assert data["schema"] == SETTINGS_SCHEMA == 1
    assert "schema" not in s.to_dict()  # to_dict is part of saved search identities: unchanged
    assert AutoSlimSettings.from_json(s.to_json()) == s
    d = DMSSettings(pipeline="scratch", train_epochs=2.0, min_budget_use=0.9)
    assert DMSSettings.from_json(d.to_json()) == d


def test_missing_version_means_the_current_one():
    text = json.dumps(DMSSettings(epochs=4.0).to_dict())
    assert DMSSettings.from_json(text).epochs == 4.0


@pytest.mark.parametrize("version, says", [(2, "newer version of compress"), (0, "not a settings file"),
                                           ("1", "not a settings file"), (True, "not a settings file")])
def test_other_versions_are_refused_naming_both(version, says):
    text = json.dumps({"schema": version, **AutoSlimSettings().to_dict()})
    with pytest.raises(SettingsSchemaError, match=f"reads settings schema version 1. Got \"schema\": {version!r}.*"
                                                  f"{says}") as e:
        AutoSlimSettings.from_json(text)
    assert isinstance(e.value, InvalidParameterError)


def test_nested_types_come_from_the_field_annotations():
    @dataclasses.dataclass
    class Outer(JsonSettings):  # a settings class no table knows about
        inner: TrainSettings = dataclasses.field(default_factory=TrainSettings)
        maybe: SearchSettings | None = None
        n: int = 1

    back = Outer.from_json(Outer(TrainSettings(epochs=2.0), SearchSettings(overshoot=0.5), 3).to_json())
    assert isinstance(back.inner, TrainSettings) and back.inner.epochs == 2.0
    assert isinstance(back.maybe, SearchSettings) and back.maybe.overshoot == 0.5 and back.n == 3
    assert nested_settings_type(int) is None and nested_settings_type(TrainSettings | None) is TrainSettings
    with pytest.raises(InvalidParameterError, match="TrainSettings has no setting"):
        Outer.from_dict({"inner": {"epochz": 1}})


def test_dms_settings_live_beside_autoslim_settings():
    from compress.search.dms.search import DMSSettings as old_path

    assert old_path is compress.DMSSettings is DMSSettings is compress.settings.DMSSettings
    shared = {"divisor", "threads", "max_measurements", "min_budget_use", "latency_headroom"}
    names = {f.name for f in dataclasses.fields(DMSSettings)}
    assert shared <= names and shared <= {f.name for f in dataclasses.fields(AutoSlimSettings)}
    assert "min_use" not in names and [n for n in names if "min_ratio" in n] == ["min_ratio"]
    assert DMSSettings(pipeline="search_only").search_only and not DMSSettings().search_only
    with pytest.raises(InvalidParameterError, match="Known: pretrained, scratch, search_only"):
        DMSSettings(pipeline="nas")
    with pytest.raises(InvalidParameterError, match="min_budget_use must be in"):
        DMSSettings(min_budget_use=1.5)


def test_loose_dms_arguments_are_mapped_with_a_deprecation_warning():
    from compress.api.dms import settings_with_deprecated

    base = DMSSettings(epochs=3.0)
    with pytest.warns(DeprecationWarning, match=r"dms\(min_use=\.\.\., pipeline=\.\.\.\) is deprecated.*"
                                                r"DMSSettings\(min_budget_use=\.\.\., pipeline=\.\.\.\)"):
        s = settings_with_deprecated(base, {"min_use": 0.9, "pipeline": "scratch"})
    assert (s.min_budget_use, s.pipeline, s.epochs) == (0.9, "scratch", 3.0)
    assert base.min_budget_use == 0.95  # the caller's settings are not changed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert settings_with_deprecated(base, {}) is base
    with pytest.raises(InvalidParameterError, match=r"unexpected keyword argument\(s\) \['min_ratio'\]"):
        settings_with_deprecated(None, {"min_ratio": 0.3})
