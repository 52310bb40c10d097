"""Trained weights + their JSON record (compress.train.pretrained): the shipped files load, bad ones are named."""

import json
from pathlib import Path

import pytest
import torch

from compress.errors import WeightsFileError
from compress.train.models import build_model
from compress.train.pretrained import load_pretrained

SHIPPED = sorted((Path(__file__).resolve().parent.parent / "data" / "weights").glob("*.pt"))


def _write(tmp_path, record=None, state=None, name="net"):
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", width=0.5)
    pt = tmp_path / f"{name}.pt"
    torch.save(model.state_dict() if state is None else state, pt)
    rec = {"model": "cifar_resnet20", "model_kwargs": {"width": 0.5}, "test_top1": 50.0} if record is None else record
    (tmp_path / f"{name}.json").write_text(rec if isinstance(rec, str) else json.dumps(rec))
    return pt, model


def test_loads_the_recorded_model_with_its_weights(tmp_path):
    pt, model = _write(tmp_path)
    loaded, record = load_pretrained(pt)
    assert record["test_top1"] == 50.0 and not loaded.training
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_weights_file_loads_and_records_its_accuracy(path):
    model, record = load_pretrained(path)
    assert 10.0 < record["test_top1"] <= 100.0 and record["train_images"] == 50_000
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("case, record, state, needle", [
    ("no record", None, None, "no record beside them"),
    ("not json", "{oops", None, "not readable JSON"),
    ("unknown model", {"model": "resnet9000"}, None, "must name a built-in model"),
    ("kwargs not a dict", {"model": "cifar_resnet20", "model_kwargs": [1]}, None, "must be a dict"),
    ("bad kwargs", {"model": "cifar_resnet20", "model_kwargs": {"depth_of_field": 3}}, None, "does not build"),
    ("other width", {"model": "cifar_resnet20", "model_kwargs": {"width": 1.0}}, None, "other shapes"),
    ("not a state_dict", None, [1, 2, 3], "not a state_dict"),
    ("missing tensors", None, {"conv1.weight": torch.zeros(8, 3, 3, 3)}, "missing"),
])
def test_bad_weights_are_named(tmp_path, case, record, state, needle):
    pt, _ = _write(tmp_path, record=record, state=state)
    if case == "no record":
        (tmp_path / "net.json").unlink()
    with pytest.raises(WeightsFileError, match=needle):
        load_pretrained(pt)


def test_missing_and_truncated_weights_files(tmp_path):
    with pytest.raises(WeightsFileError, match="No trained-weights file"):
        load_pretrained(tmp_path / "absent.pt")
    pt, _ = _write(tmp_path)
    pt.write_bytes(pt.read_bytes()[:200])
    with pytest.raises(WeightsFileError, match="not a readable state_dict"):
        load_pretrained(pt)
