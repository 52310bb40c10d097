"""compress.dms end to end on real images (FLOPs budget), and its bad inputs."""

import numpy as np
import pytest
import torch

from compress import InvalidParameterError, count_flops, dms
from compress.train.data import SHIPPED_CIFAR, TensorLoader, load_image_folder
from compress.dms import DMSSettings
from compress.train.models import cifar_resnet


@pytest.fixture(scope="module")
def loaders():
    data = load_image_folder(SHIPPED_CIFAR, "test")
    return TensorLoader(data.subset(30), 50, train=True), TensorLoader(data.subset(20, offset=30), 100)


def test_dms_flops_budget_end_to_end(loaders, tmp_path):
    train, val = loaders
    torch.manual_seed(0)
    model = cifar_resnet(20)
    x = torch.zeros(1, 3, 32, 32)
    full = count_flops(model, x).total
    res = dms(model, flops=0.45 * full, train_loader=train, val_loader=val,
              settings=DMSSettings(epochs=3, lambda_resource=5.0, pipeline="scratch", train_epochs=0.5),
              work_dir=tmp_path, progress=False, log=lambda s: None)
    assert res.flops <= 0.45 * full
    assert count_flops(res.subnet, x).total == res.flops
    assert res.measured_ms > 0 and 0 <= res.top1 <= 100
    report = res.export_onnx(tmp_path / "dms.onnx")
    assert report.max_abs_diff <= report.atol + report.rtol
    assert (tmp_path / "result.json").exists()


def test_dms_bad_inputs(loaders):
    train, val = loaders
    with pytest.raises(InvalidParameterError, match="Known: pretrained, scratch, search_only"):
        dms(cifar_resnet(8), flops=1e6, train_loader=train, val_loader=val, settings=DMSSettings(pipeline="nas"))
    with pytest.warns(DeprecationWarning, match="pass settings=DMSSettings"), \
            pytest.raises(InvalidParameterError, match="Known: pretrained, scratch, search_only"):
        dms(cifar_resnet(8), flops=1e6, train_loader=train, val_loader=val, pipeline="nas")  # the old loose form
    with pytest.raises(InvalidParameterError, match="exactly one budget"):
        dms(cifar_resnet(8), train_loader=train, val_loader=val)


def test_latency_surrogate_recovers_a_known_cost_model():
    """Fitted on a cost that is linear in the FLOPs of each op, the surrogate is exact, also under masks."""
    from compress import SlimmableNetwork
    from compress.search.dms.masked import DMSNetwork
    from compress.search.dms.surrogate import fit_latency_surrogate

    net = SlimmableNetwork(cifar_resnet(20), torch.zeros(1, 3, 32, 32))
    d = DMSNetwork(net)
    w = torch.linspace(1.0, 2.0, len(d.feature_ops)).double().numpy() * 1e-6

    def truth(configs):
        return 0.2 + d.features_of_widths([net.space.widths(c) for c in configs]) @ w

    sur = fit_latency_surrogate(d, truth, n=80)
    assert sur.tying == "op"  # a weight per op: tying them by kind cannot fit this cost
    assert sur.holdout_max_rel_err < 1e-6
    cfg = net.space.uniform_config(0.5)
    assert float(sur(torch.from_numpy(d.features_of_widths([net.space.widths(cfg)])[0]))) == \
        pytest.approx(float(truth([cfg])[0]), rel=1e-6)
    assert float(sur(d.soft_features())) < float(truth([net.space.max_config()])[0]) * 1.0001


def test_latency_surrogate_ties_weights_by_kind_when_that_fits():
    """A cost linear in the FLOPs of each op kind is fitted exactly, with one weight per kind."""
    from compress import SlimmableNetwork
    from compress.search.dms.masked import DMSNetwork
    from compress.search.dms.surrogate import fit_latency_surrogate

    net = SlimmableNetwork(cifar_resnet(20), torch.zeros(1, 3, 32, 32))
    d = DMSNetwork(net)
    per_kind = {k: 1e-6 * (i + 1) for i, k in enumerate(sorted(set(d.feature_kinds)))}
    w = np.array([per_kind[k] for k in d.feature_kinds])
    sur = fit_latency_surrogate(d, lambda cs: 0.1 + d.features_of_widths([net.space.widths(c) for c in cs]) @ w, n=80)
    assert sur.tying == "kind" and sur.holdout_max_rel_err < 1e-6


def test_block_gates_are_invisible_to_the_latency_predictor():
    """DMS puts a gate between each residual branch and its add; the predictor's view of the network (which
    adds fuse into convs, which activations run on their own) must not change, or the surrogate is fitted on
    a different network (it was: ResNet-18's predictions moved by up to 45%)."""
    import torchvision

    from compress import SlimmableNetwork
    from compress.search.dms.masked import DMSNetwork
    from predictors.latency import NetKernels

    net = SlimmableNetwork(torchvision.models.resnet18(num_classes=10), torch.zeros(1, 3, 32, 32))
    before = NetKernels(net)
    d = DMSNetwork(net)
    assert d.gates  # the graph really was changed
    after = NetKernels(net)
    assert after.convs == before.convs
    assert sum(c["has_sum"] for c in after.convs) == 8  # ResNet-18's 8 residual adds fused into convs
    assert after.other_ops == before.other_ops and after.other_const == before.other_const


def test_no_residual_stage_skips_depth_with_a_note(loaders, tmp_path):
    train, val = loaders
    plain = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.BatchNorm2d(64), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10))
    full = count_flops(plain, torch.zeros(1, 3, 32, 32)).total
    res = dms(plain, flops=0.6 * full, train_loader=train, val_loader=val,
              settings=DMSSettings(epochs=2, lambda_resource=5.0, pipeline="search_only"), work_dir=tmp_path,
              progress=False, log=lambda s: None)
    assert any("depth search skipped" in n for n in res.notes)
    assert res.flops <= 0.6 * full and not res.removed_blocks


def test_target_anneals_linearly_from_full_to_budget_then_stays():
    from compress.search.dms.search import annealed_target

    seq = [annealed_target(100.0, 40.0, s, 10) for s in range(20)]
    assert seq[0] == pytest.approx(94.0) and seq[4] == pytest.approx(70.0)
    assert seq[9:] == pytest.approx([40.0] * 11)
    steps = [b - a for a, b in zip(seq[:9], seq[1:10])]
    assert steps == pytest.approx([-6.0] * 9)


def test_dms_latency_budget_is_met_on_the_device(loaders, tmp_path, monkeypatch):
    """Latency budget end to end: surrogate of the profiled predictor, search, closed loop by scaling with
    drift-free timing; the returned subnet's latency is under the budget with the settings' headroom (3%) and uses
    >= 85% of it."""
    import compress.api.dms as api
    from compress.deploy.timing import ReferenceTimer
    from devices import get_device

    seen = {}
    real_fit = api.fit_scale

    def fit_scale(*args, **kwargs):
        seen["headroom"] = kwargs["headroom"]
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(api, "fit_scale", fit_scale)

    train, val = loaders
    torch.manual_seed(0)
    model = cifar_resnet(20, width=2.0)
    dev = get_device("cpu", threads=1)
    x = (torch.zeros(1, 3, 32, 32),)
    budget = 0.5 * ReferenceTimer(dev, model.eval(), x).reference_ms
    res = dms(model, latency_ms=budget, device=dev, train_loader=train, val_loader=val,
              settings=DMSSettings(epochs=2, lambda_resource=5.0, pipeline="search_only", latency_headroom=0.03),
              work_dir=tmp_path, progress=False, log=lambda s: None)
    assert seen["headroom"] == 0.03 and 0.85 * budget <= res.measured_ms <= 0.97 * budget
    assert res.measurements and all(m["unit"] == "ms" and m["scale"] > 0 for m in res.measurements)
    assert res.measured_ms in [m["value"] for m in res.measurements]
    assert res.predicted_ms > 0 and set(res.seconds) >= {"search", "closed_loop"}
    assert any("surrogate" in n for n in res.notes)
