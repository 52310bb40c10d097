"""Work directories that know what they hold (issue 16): every file a search keeps records the network it was made
for (a digest of the traced graph: op kinds and targets, not only widths) and a mismatch is a named error that
names the file, what differs and what to do; newer files are refused and kept, older ones refitted or migrated;
corrupt files are named before any training is wasted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import compress
import devices
from compress import (CheckpointMismatchError, CorruptFileError, NewerSchemaError, PredictorMismatchError,
                      SlimmableNetwork, TrainSettings, WorkDirMismatchError, graph_digest, train_supernet)
from compress.search.objectives import fit_latency_predictor
from compress.search.work_record import check_work_dir
from predictors import LatencyPredictor, LatencyTable
from predictors.errors import CorruptTableError, NetworkMismatchError

ROOT = Path(__file__).resolve().parent.parent
X = torch.zeros(1, 3, 16, 16)


def tiny(act: type = nn.ReLU, seed: int = 0, stride: int = 1) -> nn.Module:
    """Two convs; the ReLU and Hardswish versions have the same channel groups and parameter count."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), act(),
                         nn.Conv2d(16, 16, 3, padding=1, stride=stride), nn.BatchNorm2d(16), act(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def batches(n: int = 2, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


SETTINGS = TrainSettings(epochs=1, lr=0.01, warmup_epochs=0)


@pytest.fixture(scope="module")
def relu_work(tmp_path_factory):
    """A latency folder profiled for the ReLU network (table and predictor, 5 subnets, about 10 s)."""
    work = tmp_path_factory.mktemp("relu") / "latency"
    net = SlimmableNetwork(tiny(nn.ReLU), X)
    pred = fit_latency_predictor(net, devices.get_device("cpu", threads=1), "model", work, n_configs=4,
                                 progress=False)
    return work, pred


def copy_latency(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


# ---- the digest --------------------------------------------------------------------------------------------------
def test_graph_digest_sees_op_kinds_and_layer_settings_not_config_or_weights():
    relu = SlimmableNetwork(tiny(nn.ReLU), X)
    assert graph_digest(relu) == graph_digest(SlimmableNetwork(tiny(nn.ReLU, seed=5), X))  # weights do not count
    relu.set_config(relu.space.uniform_config(0.5))
    assert graph_digest(relu) == graph_digest(SlimmableNetwork(tiny(nn.ReLU), X))  # nor does the config
    hswish = SlimmableNetwork(tiny(nn.Hardswish), X)
    # what the old identity compared cannot tell them apart ...
    assert {g.name: g.width for g in relu.space.free} == {g.name: g.width for g in hswish.space.free}
    assert sum(p.numel() for p in relu.parameters()) == sum(p.numel() for p in hswish.parameters())
    # ... the digest does, and so do a stride and an input size
    assert graph_digest(relu) != graph_digest(hswish)
    assert graph_digest(relu) != graph_digest(SlimmableNetwork(tiny(nn.ReLU, stride=2), X))
    assert graph_digest(relu) != graph_digest(SlimmableNetwork(tiny(nn.ReLU), torch.zeros(1, 3, 32, 32)))


def test_graph_digest_is_the_same_in_another_process():
    """Files outlive processes: the digest must not depend on object ids or hash seeds."""
    code = ("import torch, sys; sys.path.insert(0, 'tests'); from torch import nn; import compress; "
            "from test_work_dir_identity import tiny, X; "
            "print(compress.graph_digest(compress.SlimmableNetwork(tiny(nn.Hardswish), X)))")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"}, check=True).stdout.split()[-1]
    assert out == graph_digest(SlimmableNetwork(tiny(nn.Hardswish), X))


# ---- supernet checkpoints ----------------------------------------------------------------------------------------
def test_a_checkpoint_of_the_relu_network_is_refused_for_the_hardswish_one(tmp_path):
    ck = tmp_path / "supernet.pt"
    train_supernet(SlimmableNetwork(tiny(nn.ReLU), X), batches(), SETTINGS, checkpoint=ck, progress=False)
    before = ck.read_bytes()
    with pytest.raises(CheckpointMismatchError,
                       match=r"supernet\.pt' does not fit this run: it was trained for another network: op kinds "
                             r"differ \(in the file: ReLU x2; now: Hardswish x2\).*Delete .*supernet\.pt' to train "
                             r"the supernet from the start .*or pass another work_dir"):
        train_supernet(SlimmableNetwork(tiny(nn.Hardswish), X), batches(), SETTINGS, checkpoint=ck, progress=False)
    assert ck.read_bytes() == before  # refused, not overwritten
    assert issubclass(CheckpointMismatchError, WorkDirMismatchError)


def test_a_checkpoint_trained_from_other_starting_weights_is_refused(tmp_path):
    ck = tmp_path / "supernet.pt"
    train_supernet(SlimmableNetwork(tiny(nn.ReLU, seed=0), X), batches(), SETTINGS, checkpoint=ck, progress=False)
    with pytest.raises(CheckpointMismatchError, match=r"training started from other weights \(digest \w+ in the "
                                                      r"file, \w+ now\).*torch\.manual_seed"):
        train_supernet(SlimmableNetwork(tiny(nn.ReLU, seed=1), X), batches(), SETTINGS, checkpoint=ck,
                       progress=False)
    # built as before: resumed (nothing left to train, the weights are the checkpoint's)
    net = SlimmableNetwork(tiny(nn.ReLU, seed=0), X)
    hist = train_supernet(net, batches(), SETTINGS, checkpoint=ck, progress=False)
    assert hist["steps"] == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not a checkpoint"])
def test_a_corrupt_checkpoint_is_named(tmp_path, damage):
    ck = tmp_path / "supernet.pt"
    train_supernet(SlimmableNetwork(tiny(), X), batches(), SETTINGS, checkpoint=ck, progress=False)
    data = ck.read_bytes()
    if damage == "garbage":
        ck.write_bytes(b"\x00" * 100)
    elif damage == "truncated":
        ck.write_bytes(data[: len(data) // 2])
    else:
        torch.save({"weights": torch.zeros(3)}, ck)
    what = r"is not a checkpoint train_supernet wrote" if damage == "not a checkpoint" else \
        r"cannot be read \(\w+.*\): it is truncated or not a checkpoint compress wrote"
    with pytest.raises(CorruptFileError, match=rf"The supernet checkpoint '.*supernet\.pt' {what}.*Delete "
                                               r".*supernet\.pt' to train the supernet from the start"):
        train_supernet(SlimmableNetwork(tiny(), X), batches(), SETTINGS, checkpoint=ck, progress=False)


def test_a_checkpoint_of_a_newer_version_is_refused_and_kept(tmp_path):
    ck = tmp_path / "supernet.pt"
    train_supernet(SlimmableNetwork(tiny(), X), batches(), SETTINGS, checkpoint=ck, progress=False)
    state = torch.load(ck, weights_only=True)
    torch.save({**state, "schema": 99}, ck)
    before = ck.read_bytes()
    with pytest.raises(NewerSchemaError, match=r"written by a newer version of compress \(checkpoint schema 99; "
                                               r"this version reads up to 2\)\. Upgrade compress .*the file is kept"):
        train_supernet(SlimmableNetwork(tiny(), X), batches(), SETTINGS, checkpoint=ck, progress=False)
    assert ck.read_bytes() == before


def test_a_checkpoint_of_the_older_schema_is_migrated_with_a_warning(tmp_path):
    """Written before the identity had the graph: accepted when what it recorded matches, said so."""
    ck = tmp_path / "supernet.pt"
    train_supernet(SlimmableNetwork(tiny(), X), batches(), SETTINGS, checkpoint=ck, progress=False)
    state = torch.load(ck, weights_only=True)
    old = {k: state["identity"][k] for k in ("settings", "net", "steps_per_epoch")}
    torch.save({k: v for k, v in state.items() if k != "schema"} | {"identity": old}, ck)
    with pytest.warns(UserWarning, match=r"written by an older version of compress.*only the channel groups"):
        train_supernet(SlimmableNetwork(tiny(), X), batches(), SETTINGS, checkpoint=ck, progress=False)
    with pytest.raises(CheckpointMismatchError, match="training settings differ"):  # and still checked
        torch.save({k: v for k, v in state.items() if k != "schema"} | {"identity": old}, ck)
        train_supernet(SlimmableNetwork(tiny(), X), batches(), TrainSettings(epochs=2), checkpoint=ck,
                       progress=False)


# ---- the work directory, through autoslim: refused before anything is trained or profiled ------------------------
def test_autoslim_refuses_a_work_dir_of_another_network_before_training(tmp_path):
    check_work_dir(tmp_path, SlimmableNetwork(tiny(nn.ReLU), X), "autoslim")
    with pytest.raises(WorkDirMismatchError, match=r"The work_dir '.*' holds the files of another network "
                                                   r"\(network\.json: op kinds differ \(in the file: ReLU x2; now: "
                                                   r"Hardswish x2\).*Pass another work_dir"):
        compress.autoslim(tiny(nn.Hardswish), flops=4e5, train_loader=batches(), val_loader=batches(1),
                          settings=compress.AutoSlimSettings(train=SETTINGS), work_dir=tmp_path, progress=False,
                          log=lambda s: None)
    assert not (tmp_path / "supernet.pt").exists()


def test_autoslim_names_a_corrupt_checkpoint_before_training(tmp_path):
    (tmp_path / "supernet.pt").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CorruptFileError, match=r"supernet\.pt' cannot be read"):
        compress.autoslim(tiny(), flops=4e5, train_loader=batches(), val_loader=batches(1),
                          settings=compress.AutoSlimSettings(train=SETTINGS), work_dir=tmp_path, progress=False,
                          log=lambda s: None)
    assert (tmp_path / "supernet.pt").read_bytes() == b"PK\x03\x04 not really"


def test_autoslim_names_a_corrupt_search_path_before_training(tmp_path):
    (tmp_path / "path.json").write_text('{"identity": {"objective": "flops"}, "path": [{"config"')
    with pytest.raises(CorruptFileError, match=r"The search path '.*path\.json' is not complete JSON .*Delete "
                                               r".*path\.json' to search again from the start"):
        compress.autoslim(tiny(), flops=4e5, train_loader=batches(), val_loader=batches(1),
                          settings=compress.AutoSlimSettings(train=SETTINGS), work_dir=tmp_path, progress=False,
                          log=lambda s: None)
    assert not (tmp_path / "supernet.pt").exists()  # nothing was trained


# ---- latency tables and predictors in work_dir/latency ---------------------------------------------------------
def test_another_networks_latency_folder_is_refused_not_reused(relu_work, tmp_path):
    src, _ = relu_work
    hswish = SlimmableNetwork(tiny(nn.Hardswish), X)
    cpu = devices.get_device("cpu", threads=1)
    work = copy_latency(src, tmp_path / "latency")
    with pytest.raises(WorkDirMismatchError, match=r"model\.lut\.json' holds latency measurements of another "
                                                   r"network: op kinds differ \(in the file: ReLU x2; now: Hardswish "
                                                   r"x2\).*Pass another work_dir"):
        fit_latency_predictor(hswish, cpu, "model", work, n_configs=4, progress=False)
    (work / "model.lut.json").unlink()  # the predictor alone also knows its network
    with pytest.raises(WorkDirMismatchError, match=r"model\.predictor\.json' holds a latency predictor of another "
                                                   r"network: op kinds differ"):
        fit_latency_predictor(hswish, cpu, "model", work, n_configs=4, progress=False)
    # profiling into the table directly is refused too
    import predictors
    work = copy_latency(src, tmp_path / "latency2")
    with pytest.raises(NetworkMismatchError, match=r"holds measurements of another network under the family name "
                                                   r"'model': op kinds differ"):
        predictors.profile_configs(hswish, [hswish.space.max_config()], "model", work / "model.lut.json",
                                   start=100, min_runs=5)


def test_a_newer_predictor_is_refused_and_kept(relu_work, tmp_path):
    src, _ = relu_work
    work = copy_latency(src, tmp_path / "latency")
    doc = json.loads((work / "model.predictor.json").read_text())
    doc["schema_version"] += 1
    (work / "model.predictor.json").write_text(json.dumps(doc))
    before = (work / "model.predictor.json").read_text()
    with pytest.raises(NewerSchemaError, match=rf"model\.predictor\.json' was written by a newer version of "
                                               rf"compress \(predictor schema version {doc['schema_version']}; this "
                                               r"version reads \d+\)\. Upgrade compress to read it; the file is kept"):
        fit_latency_predictor(SlimmableNetwork(tiny(), X), devices.get_device("cpu", threads=1), "model", work,
                              n_configs=4, progress=False)
    assert (work / "model.predictor.json").read_text() == before


def test_a_newer_table_is_refused_and_kept(relu_work, tmp_path):
    src, _ = relu_work
    work = copy_latency(src, tmp_path / "latency")
    (work / "model.predictor.json").unlink()
    doc = json.loads((work / "model.lut.json").read_text())
    doc["schema_version"] += 1
    (work / "model.lut.json").write_text(json.dumps(doc))
    with pytest.raises(NewerSchemaError, match=r"model\.lut\.json' was written by a newer version of compress "
                                               r"\(table schema version"):
        fit_latency_predictor(SlimmableNetwork(tiny(), X), devices.get_device("cpu", threads=1), "model", work,
                              n_configs=4, progress=False)
    assert json.loads((work / "model.lut.json").read_text()) == doc


@pytest.mark.parametrize("older", ["schema 2", "no network recorded"])
def test_an_older_predictor_is_refitted_on_the_kept_table(relu_work, tmp_path, older):
    src, _ = relu_work
    work = copy_latency(src, tmp_path / "latency")
    doc = json.loads((work / "model.predictor.json").read_text())
    if older == "schema 2":
        doc["schema_version"] = 2
    else:
        del doc["networks"]
    (work / "model.predictor.json").write_text(json.dumps(doc))
    table_before = (work / "model.lut.json").read_text()
    net = SlimmableNetwork(tiny(), X)
    pred = fit_latency_predictor(net, devices.get_device("cpu", threads=1), "model", work, n_configs=4,
                                 progress=False)
    assert (work / "model.lut.json").read_text() == table_before  # nothing measured again
    again = json.loads((work / "model.predictor.json").read_text())
    assert again["schema_version"] == 3 and again["networks"]["model"]["graph"] == graph_digest(net)
    assert pred.networks_["model"]["graph"] == graph_digest(net)


def test_a_predictor_file_whose_trees_read_features_the_kernels_lack_is_refused(relu_work, tmp_path):
    """LatencyPredictor.load passes each family's feature count to ForestModel.from_dict."""
    src, _ = relu_work
    doc = json.loads((src / "model.predictor.json").read_text())
    tree = doc["forests"]["conv"]["trees"][0]
    split = next(i for i, left in enumerate(tree["left"]) if left != -1)
    tree["feature"][split] = 99
    (tmp_path / "p.json").write_text(json.dumps(doc))
    with pytest.raises(CorruptTableError, match=r"Tree 0: a split reads feature 99, outside \[0, 23\)"):
        LatencyPredictor.load(tmp_path / "p.json")


# ---- predictor= checked against the device and the network -----------------------------------------------------
def _search(model, predictor, tmp_path, table, **kw):
    """A search for a board whose table (and so fingerprint) is this host's: nothing is measured here."""
    board = devices.get_device("board", threads=1, table=table)
    return compress.autoslim(model, latency_ms=1.0, device=board,
                             train_loader=batches(), val_loader=batches(1), predictor=predictor,
                             settings=compress.AutoSlimSettings(train=SETTINGS), work_dir=tmp_path, progress=False,
                             log=lambda s: None, **kw)


def test_a_predictor_of_another_device_is_refused_by_name_and_the_override_works(relu_work, tmp_path):
    src, pred = relu_work
    doc = json.loads((src / "model.predictor.json").read_text())
    doc["fingerprint"].update(cpu="Other CPU 9000", threads=4)
    (tmp_path / "other.json").write_text(json.dumps(doc))
    other = LatencyPredictor.load(tmp_path / "other.json")
    here = json.loads((src / "model.lut.json").read_text())["fingerprint"]
    cpu_here = re.escape(repr(here["cpu"]))  # e.g. 'Intel(R) Xeon(R) Processor': parentheses are regex syntax
    with pytest.raises(PredictorMismatchError,
                       match=rf"predictor= does not fit this search: it was fitted on another device or setting "
                             rf"\(cpu: 'Other CPU 9000' for the predictor, {cpu_here} here; threads: 4 for the "
                             r"predictor, 1 here\)\. .*pass check_predictor=False to use it anyway"):
        _search(tiny(), other, tmp_path / "a", src / "model.lut.json")
    # the override: the check is skipped and the run goes on (here to the corrupt checkpoint planted after it)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "supernet.pt").write_bytes(b"junk")
    with pytest.raises(CorruptFileError, match="supernet.pt' cannot be read"):
        _search(tiny(), other, tmp_path / "b", src / "model.lut.json", check_predictor=False)


def test_a_predictor_of_another_network_is_refused(relu_work, tmp_path):
    src, pred = relu_work
    with pytest.raises(PredictorMismatchError, match=r"its latency overhead for family 'model' was fitted on another "
                                                     r"network: op kinds differ \(in the file: ReLU x2; now: "
                                                     r"Hardswish x2\)"):
        _search(tiny(nn.Hardswish), pred, tmp_path / "a", src / "model.lut.json")


def test_the_override_runs_the_search_with_a_foreign_predictor_and_says_so(relu_work, tmp_path):
    src, pred = relu_work
    doc = json.loads((src / "model.predictor.json").read_text())
    doc["fingerprint"].update(threads=4)
    (tmp_path / "other.json").write_text(json.dumps(doc))
    other = LatencyPredictor.load(tmp_path / "other.json")
    full_ms = float(other.predict_ms(SlimmableNetwork(tiny(), X), [{}], family="model")[0])
    board = devices.get_device("board", threads=1, table=src / "model.lut.json")
    res = compress.autoslim(tiny(), latency_ms=0.9 * full_ms, device=board, train_loader=batches(),
                            val_loader=batches(1), predictor=other, check_predictor=False,
                            settings=compress.AutoSlimSettings(train=SETTINGS), work_dir=tmp_path / "run",
                            progress=False, log=lambda s: None)
    assert res.predicted_ms <= 0.9 * full_ms
    assert any("check_predictor=False" in n for n in res.notes)


def test_a_result_is_not_loaded_into_another_network(tmp_path):
    """SlimResult.load of the ReLU network's result into its Hardswish twin: same config, same weight shapes."""
    res = compress.autoslim(tiny(nn.ReLU), flops=4e5, train_loader=batches(), val_loader=batches(1),
                            settings=compress.AutoSlimSettings(train=SETTINGS), work_dir=tmp_path, progress=False,
                            log=lambda s: None)
    again = compress.SlimResult.load(tmp_path, tiny(nn.ReLU), torch.zeros(2, 3, 16, 16))  # another batch size: fine
    assert again.config == res.config
    with pytest.raises(compress.ResultFileError, match=r"result\.json' was searched on another network than the "
                                                       r"model given: op kinds differ \(in the file: ReLU x2; now: "
                                                       r"Hardswish x2\)"):
        compress.SlimResult.load(tmp_path, tiny(nn.Hardswish), X)


def test_the_divisor_is_a_search_setting_not_part_of_the_network():
    """A predictor profiled on the divisor-8 space serves a divisor-16 search (benchmarks/bench_dms_cifar.py)."""
    assert graph_digest(SlimmableNetwork(tiny(), X)) == graph_digest(SlimmableNetwork(tiny(), X, divisor=16))
