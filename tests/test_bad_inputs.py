"""Bad inputs get a named error that says what was received and what to do (each case isolated, message checked)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import compress
import devices
from compress.train.models import cifar_resnet


@pytest.fixture(scope="module")
def model_x():
    torch.manual_seed(0)
    return cifar_resnet(8).eval(), torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("kwargs, match", [
    ({"divisor": True}, r"'divisor' .* an int >= 1\. Got True"),
    ({"divisor": 0}, r"'divisor' .* an int >= 1\. Got 0"),
    ({"ignore": "conv1"}, r"'ignore' .* a list of module names .* not one string\. Got 'conv1'"),
    ({"ignore": ["conv_1"]}, r"'ignore' entry 'conv_1' names no module .* Closest module names: \['conv1'"),
])
def test_slimmable_network_parameters(model_x, kwargs, match):
    model, x = model_x
    with pytest.raises(compress.InvalidParameterError, match=match):
        compress.SlimmableNetwork(model, x, **kwargs)


@pytest.mark.parametrize("text, match", [
    ({"train": {"epochs": "3"}}, r"TrainSettings\.epochs must be a finite number\. Got '3' \(str\)"),
    ({"train": 5}, r"AutoSlimSettings\.train must be a TrainSettings\. Got 5 \(int\)"),
    ({"pretrained": "false"}, r"AutoSlimSettings\.pretrained must be a bool \(true/false\)\. Got 'false'"),
    ('{"train": {"epochs": Infinity}}', r"TrainSettings\.epochs must be a finite number\. Got inf"),
    ({"train": {"num_subnets": 4.0}}, r"TrainSettings\.num_subnets must be an int\. Got 4\.0"),
    ({"divisor": True}, r"AutoSlimSettings\.divisor must be an int\. Got True \(bool\)"),
    ({"search": {"criterion": 3}}, r"SearchSettings\.criterion must be a string\. Got 3"),
])
def test_settings_are_checked_by_type(text, match):
    with pytest.raises(compress.InvalidParameterError, match=match):
        compress.AutoSlimSettings.from_json(text if isinstance(text, str) else json.dumps(text))


def test_settings_objects_are_checked_when_built_directly():
    with pytest.raises(compress.InvalidParameterError, match=r"TrainSettings\.epochs must be a finite number"):
        compress.TrainSettings(epochs=True)
    assert compress.TrainSettings(epochs=3).epochs == 3  # an int is a number


@pytest.mark.parametrize("call, where", [
    (lambda m, x: compress.count_flops(m, x), "count_flops"),
    (lambda m, x: compress.export_onnx(m, x, "/tmp/never-written.onnx"), "export_onnx"),
    (lambda m, x: compress.recalibrate_bn(m, [(x, None)]), "a batch given to recalibrate_bn"),
    (lambda m, x: compress.SlimmableNetwork(m, x), "example inputs"),
])
def test_inputs_the_model_cannot_take(model_x, call, where):
    model, _ = model_x
    with pytest.raises(compress.InputShapeError, match=rf"does not run on .*{where}.* shape \[\(2, 5, 32, 32\)\].* "
                                                       rf"expected .* Pass inputs the model accepts"):
        call(model, torch.randn(2, 5, 32, 32))


def test_recalibrate_bn_failing_midway_restores_the_statistics(model_x):
    model, x = model_x
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(x, None), (torch.randn(2, 5, 32, 32), None)]  # the second batch fails after the reset
    with pytest.raises(compress.InputShapeError):
        compress.recalibrate_bn(model, batches)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(compress.InvalidParameterError, match="'num_batches' .* positive int or None. Got True"):
        compress.recalibrate_bn(model, batches, num_batches=True)


@pytest.mark.parametrize("budget, match", [
    ({"latency_ms": float("inf")}, r"positive, finite number \(milliseconds\)\. Got inf"),
    ({"flops": float("nan")}, r"positive, finite number \(FLOPs\)\. Got nan"),
    ({"flops": True}, r"positive, finite number \(FLOPs\)\. Got True"),
    ({"latency_ms": 1.0, "flops": 1e6}, r"exactly one budget"),
])
def test_budgets(model_x, budget, match):
    from compress.train.data import cifar10_loaders
    tl, vl = cifar10_loaders(batch_size=8, train_per_class=2, val_per_class=1)
    with pytest.raises(compress.InvalidParameterError, match=match):
        compress.autoslim(model_x[0], train_loader=tl, val_loader=vl, **budget)


def test_a_work_dir_that_is_a_file(model_x, tmp_path):
    from compress.train.data import cifar10_loaders
    tl, vl = cifar10_loaders(batch_size=8, train_per_class=2, val_per_class=1)
    f = tmp_path / "not-a-folder"
    f.write_text("x")
    with pytest.raises(compress.InvalidParameterError, match=r"work_dir of autoslim must be a folder.* is a file"):
        compress.autoslim(model_x[0], flops=1e6, train_loader=tl, val_loader=vl, work_dir=f)


@pytest.mark.parametrize("call, error, match", [
    (lambda: devices.get_device("cpu", thread=1), devices.UnknownDeviceOptionError, "Did you mean 'threads'"),
    (lambda: devices.get_device(["cpu"]), compress.InvalidParameterError, r"device name \(str\)"),
    (lambda: devices.get_device("gpu"), devices.UnknownDeviceError, "cpu"),
])
def test_devices(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("corrupt, match", [
    (lambda t: t["left"].__setitem__(0, 0), "node 0 points to a child that is not after it"),  # a loop: hung before
    (lambda t: t["right"].__setitem__(0, 10**6), "not after it inside the tree"),
    (lambda t: t["left"].__setitem__(0, -1), "exactly one child"),
    (lambda t: t["feature"].__setitem__(0, 7), r"reads feature 7, outside \[0, 3\)"),
    (lambda t: t["value"].__setitem__(1, float("nan")), "not a finite number"),
    (lambda t: t.pop("threshold"), "lacks or has a malformed field"),
])
def test_a_corrupt_tree_in_a_predictor_file_is_named_not_walked(corrupt, match):
    import numpy as np
    from predictors.errors import CorruptTableError
    from predictors.forest import ForestModel
    rng = np.random.default_rng(0)
    X = rng.random((100, 3))
    d = ForestModel.fit(X, X.sum(1), n_trees=2).to_dict()
    corrupt(d["trees"][0])
    with pytest.raises(CorruptTableError, match=match):
        ForestModel.from_dict(json.loads(json.dumps(d)), n_features=3)


def test_a_second_run_on_a_busy_work_dir_is_refused_by_name(model_x, tmp_path):
    """Real processes: one holds the work directory, the other is refused with its process id; when the holder
    is killed (SIGKILL) the folder is free again."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from compress.io import work_dir_lock
    from compress.train.data import cifar10_loaders
    work = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-c",
         "import sys, time; from compress.io import work_dir_lock\n"
         f"with work_dir_lock({str(work)!r}, 'autoslim'):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert holder.stdout.readline().strip() == "held"
        tl, vl = cifar10_loaders(batch_size=8, train_per_class=2, val_per_class=1)
        with pytest.raises(compress.WorkDirBusyError, match=rf"in use by another run \(autoslim, process "
                                                            rf"{holder.pid}, since .*\)\. Wait for it"):
            compress.autoslim(model_x[0], flops=1e6, train_loader=tl, val_loader=vl, work_dir=work)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with work_dir_lock(work, "autoslim"):  # free after the holder died
        assert "process" in (work / ".lock").read_text()
    assert (work / ".lock").read_text() == ""


def test_a_mostly_frozen_model_warns_with_the_frozen_reasons():
    """Slimmable share under 50%: the search warns, naming the top frozen reasons and what to do."""
    from compress.train.data import cifar10_loaders

    class Opaque(nn.Module):  # no handler: its channels freeze
        def forward(self, x):
            return torch.special.erf(x)

    class MostlyFrozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 64, 3, padding=1)
            self.c3 = nn.Conv2d(64, 64, 3, padding=1)
            self.op, self.fc = Opaque(), nn.Linear(64, 10)

        def forward(self, x):
            y = self.op(self.c2(torch.relu(self.c1(x))))
            return self.fc(self.op(self.c3(y)).mean((2, 3)))

    tl, vl = cifar10_loaders(batch_size=8, train_per_class=2, val_per_class=1)
    with pytest.warns(UserWarning, match=r"only \d+% of MostlyFrozen's FLOPs can be slimmed .* frozen reasons: .*erf.*"
                                         r"register_module"):
        try:
            compress.autoslim(MostlyFrozen(), flops=1e12, train_loader=tl, val_loader=vl)
        except compress.CompressError:
            pass
