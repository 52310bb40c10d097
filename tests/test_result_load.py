"""One result schema for autoslim and dms, written to the work directory and rebuilt by SlimResult.load."""

import json

import pytest
import torch

from compress import (AutoSlimSettings, DMSSettings, SearchSettings, SlimmableNetwork, SlimResult, TrainSettings,
                      autoslim, count_flops, dms)
from compress.errors import ResultFileError
from compress.result import RESULT_FILE, WEIGHTS_FILE, MeasurementRecord, PathPoint, measurement_record, path_point
from compress.search.dms.masked import DMSNetwork, extract_with_depth
from compress.train.data import SHIPPED_CIFAR, TensorLoader, load_image_folder
from compress.train.models import cifar_resnet

X = torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module")
def loaders():
    data = load_image_folder(SHIPPED_CIFAR, "test")
    return TensorLoader(data.subset(30), 50, train=True), TensorLoader(data.subset(20, offset=30), 100)


@pytest.fixture(scope="module")
def autoslim_run(loaders, tmp_path_factory):
    train, val = loaders
    work = tmp_path_factory.mktemp("autoslim")
    torch.manual_seed(0)
    model = cifar_resnet(8)
    settings = AutoSlimSettings(train=TrainSettings(epochs=1, lr=0.05, warmup_epochs=0),
                                search=SearchSettings(calib_batches=2, eval_batches=1))
    res = autoslim(model, flops=0.5 * count_flops(model, X).total, train_loader=train, val_loader=val,
                   settings=settings, work_dir=work, progress=False, log=lambda s: None)
    return res, work


@pytest.fixture(scope="module")
def dms_run(loaders, tmp_path_factory):
    train, val = loaders
    work = tmp_path_factory.mktemp("dms")
    torch.manual_seed(0)
    model = cifar_resnet(8)
    res = dms(model, flops=0.5 * count_flops(model, X).total, train_loader=train, val_loader=val,
              settings=DMSSettings(epochs=2, lambda_resource=5.0, pipeline="search_only"), work_dir=work,
              progress=False, log=lambda s: None)
    return res, work


def _assert_same(res: SlimResult, back: SlimResult) -> None:
    x = torch.randn(4, 3, 32, 32)
    res.subnet.eval()
    with torch.no_grad():
        torch.testing.assert_close(back.subnet(x), res.subnet(x), rtol=0, atol=0)
    assert back.config == res.config and back.removed_blocks == res.removed_blocks
    assert (back.flops, back.top1, back.measured_ms, back.predicted_ms, back.budget, back.unit) == \
        (res.flops, res.top1, res.measured_ms, res.predicted_ms, res.budget, res.unit)
    assert back.path == res.path and back.measurements == res.measurements and back.notes == res.notes
    assert back.method == res.method and back.supernet is None
    assert count_flops(back.subnet, X).total == res.flops


def test_autoslim_result_round_trips(autoslim_run):
    res, work = autoslim_run
    back = SlimResult.load(work, cifar_resnet(8), X)  # fresh random weights: all of them come from subnet.pt
    _assert_same(res, back)
    assert back.method == "autoslim"


def test_dms_result_round_trips(dms_run):
    res, work = dms_run
    back = SlimResult.load(work, cifar_resnet(8), (X,))
    _assert_same(res, back)
    assert back.method == "dms"


def test_both_results_write_one_schema(autoslim_run, dms_run):
    docs = [json.loads((work / RESULT_FILE).read_text()) for _, work in (autoslim_run, dms_run)]
    assert set(docs[0]) == set(docs[1])
    auto, dm = docs
    assert auto["measurements"] == []  # a FLOPs budget needs no closed loop in autoslim; dms scales to exact FLOPs
    for doc, key, record in ((auto, "path", PathPoint), (dm, "path", PathPoint),
                             (dm, "measurements", MeasurementRecord)):
        assert doc[key] and all(set(r) == set(record.__annotations__) for r in doc[key]), key
    assert set(docs[0]["full"]) == set(docs[1]["full"]) == {"flops", "measured_ms", "cost"}
    assert auto["path"][0]["top1"] is not None and auto["path"][0]["target"] is None
    assert dm["path"][0]["target"] is not None and dm["path"][0]["config"] is None
    assert all(m["unit"] == "FLOPs" and m["scale"] is not None for m in dm["measurements"])


def test_records_have_every_key():
    assert set(path_point(3, 1.5)) == set(PathPoint.__annotations__)
    assert path_point(3, 1.5)["top1"] is None and path_point(3, 1.5, flops=7.0)["flops"] == 7
    m = measurement_record(2, "ms", 1.0, 3.0, path_index=4)
    assert m == {"value": 2.0, "unit": "ms", "p25_ms": 1.0, "p75_ms": 3.0, "path_index": 4, "scale": None}


def test_load_rebuilds_removed_blocks(tmp_path):
    """A subnet with a residual block dropped and narrowed widths comes back the same from the files alone."""
    torch.manual_seed(0)
    net = SlimmableNetwork(cifar_resnet(8), X)
    dmsnet = DMSNetwork(net)
    removed = [dmsnet.stages[0][0].add]
    cfg = net.space.uniform_config(0.5)
    subnet = extract_with_depth(net, cfg, removed).eval()
    res = SlimResult(subnet=subnet, config=cfg, flops=count_flops(subnet, X).total, predicted_ms=None,
                     measured_ms=None, top1=None, budget=1e6, unit="FLOPs", path=[path_point(0, 1.0)],
                     example_inputs=(X,), removed_blocks=removed, method="dms", divisor=net.divisor)
    res.save_to(tmp_path)
    back = SlimResult.load(tmp_path, cifar_resnet(8), X)
    assert count_flops(back.subnet, X).total == res.flops < count_flops(extract_with_depth(net, cfg, []), X).total
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back.subnet(x), subnet(x), rtol=0, atol=0)


def test_load_names_the_missing_or_corrupt_file(autoslim_run, tmp_path):
    res, work = autoslim_run
    with pytest.raises(ResultFileError, match="No result.json in .*no such directory"):
        SlimResult.load(tmp_path / "nope", cifar_resnet(8), X)
    for name in (RESULT_FILE, WEIGHTS_FILE):
        (tmp_path / name).write_bytes((work / name).read_bytes())

    def load():
        return SlimResult.load(tmp_path, cifar_resnet(8), X)

    load()  # the copy is complete
    (tmp_path / WEIGHTS_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ResultFileError, match="subnet.pt' cannot be read as a state_dict"):
        load()
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(ResultFileError, match="subnet.pt is missing"):
        load()
    (tmp_path / WEIGHTS_FILE).write_bytes((work / WEIGHTS_FILE).read_bytes())
    doc = json.loads((work / RESULT_FILE).read_text())
    (tmp_path / RESULT_FILE).write_text("{truncated")
    with pytest.raises(ResultFileError, match="result.json' is not readable JSON"):
        load()
    (tmp_path / RESULT_FILE).write_text(json.dumps({**doc, "schema": 99}))
    with pytest.raises(ResultFileError, match="result schema version 99; this version of compress reads 1"):
        load()
    (tmp_path / RESULT_FILE).write_text(json.dumps({k: v for k, v in doc.items() if k != "config"}))
    with pytest.raises(ResultFileError, match=r"missing or has mistyped key\(s\) \['config'\]"):
        load()
    (tmp_path / RESULT_FILE).write_text(json.dumps({**doc, "weights": {**doc["weights"], "digest": "0" * 16}}))
    with pytest.raises(ResultFileError, match="different runs"):
        load()
    (tmp_path / RESULT_FILE).write_text(json.dumps(doc))
    with pytest.raises(ResultFileError, match=r"result\.json' was searched on another network than the model "
                                              r"given: the network now has more ops \(BatchNorm2d \+6, Conv2d \+6, "
                                              r"ReLU \+6, add \+3\).*Give load the model"):
        SlimResult.load(tmp_path, cifar_resnet(14), X)  # another architecture than the search's
