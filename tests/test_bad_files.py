"""Catalogue, files and paths the SDK reads: latency tables (every record and kernel checked on load), predictor
files, a saved search path resumed by greedy slimming, profiling bundles written for a board. Corrupt -> a named
error naming the file, the record or point, and the field; missing -> a named error naming the path."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import compress
import devices
import predictors
from compress.search.greedy import greedy_slim
from compress.search.objectives import FlopsCost
from compress.settings import SearchSettings
from devices import profile_device as pd
from predictors import LatencyPredictor, LatencyTable

KERNEL = {"name": "/c/Conv", "op": "Conv", "inputs": [[1, 3, 8, 8], [8, 3, 3, 3]], "outputs": [[1, 8, 8, 8]],
          "us": 11.0, "calls": 1.0}
RECORD = {"model": "m0", "median_ms": 0.5, "p25_ms": 0.45, "p75_ms": 0.55, "runs": 50, "meta": {},
          "kernels": [KERNEL]}
TABLE = {"schema_version": pd.TABLE_SCHEMA_VERSION, "kind": pd.TABLE_KIND, "fingerprint": {"cpu": "x"},
         "bundle_meta": {}, "records": [RECORD]}


def write_table(tmp_path, change) -> str:
    data = copy.deepcopy(TABLE)
    change(data)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    return str(path)


def kernel(data) -> dict:
    return data["records"][0]["kernels"][0]


@pytest.mark.parametrize("change, match", [
    (lambda d: kernel(d).pop("us"), r"record 0 \('m0'\), kernel 0 lacks field 'us' \(a finite number >= 0 "
                                    r"\(microseconds\)\)\. Profile again"),
    (lambda d: kernel(d).pop("op"), r"record 0 \('m0'\), kernel 0 lacks field 'op'"),
    (lambda d: kernel(d).__setitem__("inputs", [[1, 3, "8", 8]]), r"kernel 0 field 'inputs' must be a list of shapes "
                                                                  r"\(lists of ints >= 0\); got \[\[1, 3, '8', 8\]\]"),
    (lambda d: kernel(d).__setitem__("us", float("nan")), r"kernel 0 field 'us' must be a finite number >= 0"),
    (lambda d: d["records"][0]["kernels"].append("Conv"), r"record 0 \('m0'\), kernel 1 must be an object; got str"),
    (lambda d: d["records"][0].__setitem__("median_ms", -1.0), r"record 0 field 'median_ms' must be a positive, finite "
                                                               r"number \(milliseconds\); got -1\.0"),
    (lambda d: d["records"][0].pop("model"), r"record 0 lacks field 'model'"),
    (lambda d: d["records"][0].__setitem__("anchor_ratio", "1.0"), r"record 0 field 'anchor_ratio' must be a positive"),
    (lambda d: d.__setitem__("records", {"m0": RECORD}), r"field 'records' must be a list; got dict"),
    (lambda d: d.__setitem__("fingerprint", "x86"), r"field 'fingerprint' must be an object; got 'x86'"),
])
def test_a_damaged_latency_table_is_named_on_load(tmp_path, change, match):
    path = write_table(tmp_path, change)
    with pytest.raises(predictors.CorruptTableError, match=match) as info:
        LatencyTable.load(path)
    assert str(info.value).startswith(f"{path!r}: ")  # the file is named first


def test_a_complete_table_loads(tmp_path):
    assert LatencyTable.load(write_table(tmp_path, lambda d: None)).records == [RECORD]


@pytest.mark.parametrize("load, what", [(LatencyTable.load, "latency table"),
                                        (LatencyPredictor.load, "predictor file")])
@pytest.mark.parametrize("folder", [False, True], ids=["missing", "a folder"])
def test_a_missing_table_or_predictor_file(tmp_path, load, what, folder):
    path = tmp_path if folder else tmp_path / "nothing.json"
    said = r" \(that is a folder\)" if folder else ""
    with pytest.raises(predictors.MissingFileError, match=rf"There is no {what} at '{path}'{said}\. Pass the path of "
                                                          "the file"):
        load(path)
    assert issubclass(predictors.MissingFileError, FileNotFoundError)


# ---- a saved search path (work_dir/path.json), resumed by greedy slimming -----------------------------------------
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))


@pytest.fixture(scope="module")
def saved_path(tmp_path_factory):
    net = compress.SlimmableNetwork(Net(), torch.zeros(1, 3, 8, 8))
    cost = FlopsCost(net)
    path_file = tmp_path_factory.mktemp("search") / "path.json"
    score = lambda cfg: {"top1": float(sum(cfg.values())), "loss": 0.0}  # noqa: E731
    greedy_slim(net, score, cost, 0.5 * cost([net.space.max_config()])[0], SearchSettings(), path_file,
                progress=False)
    return net, cost, score, json.loads(path_file.read_text())


@pytest.mark.parametrize("change, error, match", [
    (lambda d: d["path"][1].pop("cost"), compress.CorruptFileError,
     r"point 1 field 'cost' must be a finite number; got nothing"),
    (lambda d: d["path"][0].__setitem__("config", [16, 16]), compress.CorruptFileError,
     r"point 0 field 'config' must be an object"),
    (lambda d: d["path"][1]["config"].__setitem__(next(iter(d["path"][1]["config"])), 5), compress.SearchResumeError,
     r"point 1 has a config this network cannot take \(Width 5 of group"),
    (lambda d: d["path"][1].__setitem__("ranking", "c1"), compress.CorruptFileError,
     r"point 1 field 'ranking' must be a list of group names"),
    (lambda d: d.__setitem__("path", []), compress.CorruptFileError,
     r"field 'path' must be a non-empty list of points; got \[\]"),
])
def test_a_damaged_search_path_is_named_before_it_is_resumed(saved_path, tmp_path, change, error, match):
    net, cost, score, data = saved_path
    data = copy.deepcopy(data)
    change(data)
    path_file = tmp_path / "path.json"
    path_file.write_text(json.dumps(data))
    with pytest.raises(error, match=rf"The search path '{path_file}': {match}.* Delete it \(the "
                                                         r"search starts again from full width\)"):
        greedy_slim(net, score, cost, 1.0, SearchSettings(), path_file, progress=False)


@pytest.mark.parametrize("text, match", [("[1, 2]", "is not a search path greedy_slim wrote"),
                                         ('{"path": ', r"is not complete JSON \(Expecting value")])
def test_a_search_path_that_is_not_one(saved_path, tmp_path, text, match):
    net, cost, score, _ = saved_path
    (tmp_path / "path.json").write_text(text)
    with pytest.raises(compress.CorruptFileError, match=match):
        greedy_slim(net, score, cost, 1.0, SearchSettings(), tmp_path / "path.json", progress=False)


# ---- profiling bundles written on the host --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    compress.export_onnx(nn.Sequential(nn.Conv2d(3, 4, 3)).eval(), torch.randn(1, 3, 8, 8), path)
    return path


@pytest.mark.parametrize("role", ["models", "anchor", "reference"])
def test_a_bundle_naming_a_missing_onnx_file_writes_nothing(onnx_file, tmp_path, role):
    missing = tmp_path / "gone.onnx"
    kwargs = {"models": {"m0": missing}} if role == "models" else {"models": {"m0": onnx_file}, role: missing}
    with pytest.raises(devices.ModelNotFoundError, match=rf"write_bundle: there is no ONNX file at '{missing}' "
                                                         rf"\({'model .m0.' if role == 'models' else role}\)\. Export "
                                                         r"the model there .*nothing was written"):
        devices.write_bundle(input_shapes={"input": [1, 3, 8, 8]}, path=tmp_path / "b.zip", **kwargs)
    assert not (tmp_path / "b.zip").exists()


@pytest.mark.parametrize("kwargs, match", [
    ({"models": ["m.onnx"]}, r"'models' parameter of write_bundle must be a non-empty mapping of model name -> ONNX "
                             r"file\. Got \['m\.onnx'\]"),
    ({"input_shapes": {"input": "1x3x8x8"}}, r"'input_shapes' parameter of write_bundle must be a dict of input name "
                                             r"-> shape \(positive ints\).* Got \{'input': '1x3x8x8'\}"),
    ({"input_shapes": {"input": [1, 0, 8, 8]}}, r"'input_shapes' parameter .* Got \{'input': \[1, 0, 8, 8\]\}"),
])
def test_bundle_arguments(onnx_file, tmp_path, kwargs, match):
    args = {"models": {"m0": onnx_file}, "input_shapes": {"input": [1, 3, 8, 8]}, "path": tmp_path / "b.zip", **kwargs}
    with pytest.raises(compress.InvalidParameterError, match=match):
        devices.write_bundle(**args)


def test_a_bundle_into_a_missing_folder_creates_it(onnx_file, tmp_path):
    """Documented legal behaviour: the folder of the bundle is created (as for every file the host writes)."""
    out = devices.write_bundle({"m0": onnx_file}, {"input": [1, 3, 8, 8]}, tmp_path / "new" / "deeper" / "b.zip")
    assert out.is_file() and pd.read_manifest(str(out))["models"][0]["name"] == "m0"
