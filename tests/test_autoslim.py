"""compress.autoslim end to end on real images, and every bad input it must refuse clearly."""

import json
import warnings

import pytest
import torch
from torch import nn

import compress
from compress import (AutoSlimSettings, BudgetUnreachableError, InvalidParameterError, MislabelledDataError,
                      NothingToSlimError, SearchSettings, TrainSettings, autoslim, count_flops)
from compress.train.data import SHIPPED_CIFAR, TensorLoader, load_image_folder
from compress.train.models import cifar_resnet
from devices.errors import UnknownDeviceError


@pytest.fixture(scope="module")
def loaders():
    data = load_image_folder(SHIPPED_CIFAR, "test")
    return TensorLoader(data.subset(30), 50, train=True), TensorLoader(data.subset(20, offset=30), 100)


def _settings(**search):
    return AutoSlimSettings(train=TrainSettings(epochs=1, lr=0.05, warmup_epochs=0),
                            search=SearchSettings(calib_batches=2, eval_batches=1, **search))


def test_flops_budget_end_to_end(loaders, tmp_path):
    train, val = loaders
    torch.manual_seed(0)
    model = cifar_resnet(8)
    full = count_flops(model, torch.zeros(1, 3, 32, 32)).total
    res = autoslim(model, flops=0.5 * full, train_loader=train, val_loader=val, settings=_settings(),
                   work_dir=tmp_path, progress=False, log=lambda s: None)
    # the budget holds, by fvcore's independent count on the extracted module
    assert res.flops <= 0.5 * full
    assert count_flops(res.subnet, torch.zeros(1, 3, 32, 32)).total == res.flops
    # the subnet is the supernet at the chosen config, BN included
    net = res.supernet
    net.set_config(res.config)
    compress.recalibrate_bn(net, [b for _, b in zip(range(16), train)])
    x = next(iter(val))[0][:8]
    torch.testing.assert_close(res.subnet(x), net(x), rtol=1e-4, atol=1e-5)
    # the path is the frontier: cost falls step by step, each point scored
    costs = [p["cost"] for p in res.path]
    assert all(b < a for a, b in zip(costs, costs[1:])) and all(p["top1"] is not None for p in res.path)
    assert 0 <= res.top1 <= 100 and res.measured_ms > 0
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["flops"] == res.flops and len(saved["path"]) == len(res.path)
    assert (tmp_path / "supernet.pt").exists() and (tmp_path / "path.json").exists()
    report = res.export_onnx(tmp_path / "subnet.onnx")
    assert report.max_abs_diff <= report.atol + report.rtol


def test_latency_budget_end_to_end_is_measured_under_budget(loaders, tmp_path):
    """The closed loop: the exported subnet's measured latency is under the budget."""
    from compress.deploy.closed_loop import measure_module
    from devices import get_device

    train, val = loaders
    torch.manual_seed(0)
    model = cifar_resnet(14, width=2.0)
    dev = get_device("cpu", threads=1)
    full_ms = measure_module(dev, model.eval(), (torch.zeros(1, 3, 32, 32),)).median_ms
    settings = _settings(overshoot=0.7)  # room below the budget for a noisy machine
    settings.profile_configs = 8
    settings.train.epochs = 0.5
    res = autoslim(model, latency_ms=0.6 * full_ms, device=dev, train_loader=train, val_loader=val,
                   settings=settings, work_dir=tmp_path, progress=False, log=lambda s: None)
    assert res.measured_ms <= 0.6 * full_ms
    assert res.measurements and min(m["value"] for m in res.measurements) <= 0.6 * full_ms
    assert all(m["unit"] == "ms" and m["p25_ms"] <= m["value"] <= m["p75_ms"] for m in res.measurements)
    chosen = [m for m in res.measurements if res.path[m["path_index"]]["config"] == res.config]
    assert chosen and chosen[0]["value"] == res.measured_ms
    assert res.predicted_ms is not None and res.flops < res.full["flops"]
    assert (tmp_path / "latency" / "model.predictor.json").exists()


class _Listy:
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def test_bad_inputs_are_named_errors(loaders, tmp_path):
    train, val = loaders
    model = cifar_resnet(8)
    kw = dict(train_loader=train, val_loader=val, work_dir=tmp_path, progress=False, log=lambda s: None)
    with pytest.raises(InvalidParameterError, match="exactly one budget"):
        autoslim(model, **kw)
    with pytest.raises(InvalidParameterError, match="exactly one budget"):
        autoslim(model, latency_ms=1.0, flops=1e6, **kw)
    with pytest.raises(InvalidParameterError, match="positive, finite number"):
        autoslim(model, latency_ms=-1.0, **kw)
    with pytest.raises(UnknownDeviceError, match="Known devices: .*cpu"):
        autoslim(model, latency_ms=1.0, device="tpu", **kw)
    x = torch.zeros(4, 3, 32, 32)
    with pytest.raises(InvalidParameterError, match="yielded no batch"):
        autoslim(model, flops=1e6, train_loader=_Listy([]), val_loader=val, progress=False)
    with pytest.raises(MislabelledDataError, match="labels in \\[0, 12\\] but the model outputs 10 classes"):
        autoslim(model, flops=1e6, train_loader=_Listy([(x, torch.tensor([0, 3, 12, 1]))]), val_loader=val,
                 progress=False)
    with pytest.raises(MislabelledDataError, match="1-D integer tensor"):
        autoslim(model, flops=1e6, train_loader=train, val_loader=_Listy([(x, torch.rand(4))]), progress=False)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    with pytest.raises(NothingToSlimError, match="no channel group"):
        autoslim(flat, flops=1e3, **kw)
    full = count_flops(model, torch.zeros(1, 3, 32, 32)).total
    with pytest.raises(BudgetUnreachableError, match="Raise the budget to at least"):
        autoslim(model, flops=0.01 * full, **kw)
    with pytest.raises(BudgetUnreachableError, match="below the smallest subnet's measured latency"):
        autoslim(model, latency_ms=1e-4, **kw)


def test_budget_above_full_model_returns_it_with_a_warning(loaders, tmp_path):
    train, val = loaders
    model = cifar_resnet(8)
    full = count_flops(model, torch.zeros(1, 3, 32, 32)).total
    with pytest.warns(UserWarning, match="returning the full model"):
        res = autoslim(model, flops=2 * full, train_loader=train, val_loader=val, work_dir=tmp_path,
                       progress=False, log=lambda s: None)
    assert res.flops == full and res.config == res.supernet.space.max_config()
    assert "full model returned" in res.notes[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = autoslim(model, latency_ms=1e4, train_loader=train, val_loader=val, work_dir=tmp_path,
                       progress=False, log=lambda s: None)
    assert res.measured_ms is not None and res.measured_ms < 1e4 and res.flops == full


def test_settings_round_trip_through_json():
    s = AutoSlimSettings(train=TrainSettings(epochs=3, distill="alpha"), search=SearchSettings(step_ratio=0.05),
                         finetune_epochs=1.0)
    back = AutoSlimSettings.from_json(s.to_json())
    assert back == s and isinstance(back.train, TrainSettings)
    with pytest.raises(InvalidParameterError, match="has no setting"):
        AutoSlimSettings.from_dict({"epochz": 3})
    with pytest.raises(InvalidParameterError, match="distill must be"):
        TrainSettings(distill="mse")
    with pytest.raises(InvalidParameterError, match="not JSON"):
        AutoSlimSettings.from_json("{nope")


def test_a_filled_latency_step_becomes_the_result_and_a_path_point(loaders, tmp_path, monkeypatch):
    """Where the closed loop's choice sits under a latency step, the subnet fill_step finds is what autoslim
    returns: its config, its measurement, a path point of its own between the step's two points, and a note."""
    import compress.api.autoslim as api
    from types import SimpleNamespace as NS

    from compress.deploy.closed_loop import measure_module
    from devices import get_device

    train, val = loaders
    torch.manual_seed(0)
    model = cifar_resnet(8)
    dev = get_device("cpu", threads=1)
    budget = 0.6 * measure_module(dev, model.eval(), (torch.zeros(1, 3, 32, 32),)).median_ms

    def timed(fraction):
        return NS(median_ms=fraction * budget, p25_ms=fraction * budget, p75_ms=fraction * budget)

    def fake_loop(net, path, budget_ms, *args, **kwargs):  # the last point under (70%), the one before over
        picked["headroom"] = kwargs["headroom"]
        return len(path) - 1, {len(path) - 2: timed(1.1), len(path) - 1: timed(0.7)}

    picked = {}

    def fake_fill(net, path, index, measured, budget_ms, *args, **kwargs):
        picked.update(index=index, n=len(path), config=dict(path[index - 1]["config"]), fill_headroom=kwargs["headroom"])
        return {"config": picked["config"], "measurement": timed(0.9), "from_index": index - 1, "steps": 2}

    monkeypatch.setattr(api, "closed_loop", fake_loop)
    monkeypatch.setattr(api, "fill_step", fake_fill)
    settings = _settings(overshoot=0.7)
    settings.profile_configs = 8
    settings.latency_headroom = 0.04  # the closed loop and the fill both get it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = autoslim(model, latency_ms=budget, device=dev, train_loader=train, val_loader=val, settings=settings,
                       work_dir=tmp_path, progress=False, log=lambda s: None)
    i = picked["index"]
    assert res.config == picked["config"] and res.measured_ms == pytest.approx(0.9 * budget)
    assert len(res.path) == picked["n"] + 1 and res.path[i]["config"] == picked["config"]
    assert res.path[i]["top1"] is None and res.path[i]["cost"] is not None
    by_index = {m["path_index"]: m["value"] for m in res.measurements}
    assert by_index == pytest.approx({i - 1: 1.1 * budget, i: 0.9 * budget, i + 1: 0.7 * budget})
    assert any("latency step" in n and "2 steps filled" in n for n in res.notes)
    assert picked["headroom"] == picked["fill_headroom"] == 0.04
    assert res.flops == count_flops(res.subnet, torch.zeros(1, 3, 32, 32)).total
