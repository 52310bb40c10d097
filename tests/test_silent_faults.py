"""Silent wrong results, one class per test group, each on small models written from the patterns users report in
peers' bug trackers. Every test here failed before its fix (the value it checks was wrong without an error)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compress
from compress.cost import flops as flops_module


def smallest_flops_agree(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(analytic, counted) FLOPs at the smallest config: net.flops vs fvcore on the extracted subnet."""
    net = compress.SlimmableNetwork(model.eval(), x)
    cfg = net.space.min_config()
    return net.flops(cfg), compress.count_flops(compress.extract_subnet(net, cfg), x).total


# ---- analytic FLOPs follow the op's arguments, as fvcore does ----------------------------------------------
class NormThenConv(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.c1, self.norm, self.c2 = nn.Conv2d(3, 16, 3, padding=1), norm, nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.c2(F.relu(self.norm(self.c1(x)))).mean((2, 3))


@pytest.mark.parametrize("norm", [
    nn.BatchNorm2d(16), nn.BatchNorm2d(16, track_running_stats=False),
    nn.BatchNorm2d(16, affine=False, track_running_stats=False), nn.BatchNorm2d(16, affine=False)],
    ids=["stats", "no-stats", "no-stats-no-affine", "no-affine"])
def test_batch_norm_flops_with_and_without_running_statistics(norm):
    analytic, counted = smallest_flops_agree(NormThenConv(norm), torch.randn(2, 3, 16, 16))
    assert analytic == counted


class Resize(nn.Module):
    def __init__(self, module: bool, **kw) -> None:
        super().__init__()
        self.kw = kw
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)
        self.up = nn.Upsample(**kw) if module else None

    def forward(self, x):
        y = F.relu(self.c1(x))
        y = self.up(y) if self.up is not None else F.interpolate(y, **self.kw)
        return self.c2(y).mean((2, 3))


RESIZES = [dict(scale_factor=2, mode="nearest"), dict(scale_factor=2, mode="nearest-exact"),
           dict(scale_factor=2, mode="bilinear"), dict(scale_factor=2, mode="bilinear", align_corners=True),
           dict(scale_factor=2, mode="bicubic"), dict(scale_factor=2, mode="area"), dict(size=(5, 7), mode="area"),
           dict(scale_factor=0.5, mode="bilinear", antialias=True)]


@pytest.mark.parametrize("module", [False, True], ids=["F.interpolate", "nn.Upsample"])
@pytest.mark.parametrize("kw", RESIZES, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_resize_flops_in_every_mode(kw, module):
    if module and kw.get("antialias"):
        pytest.skip("nn.Upsample has no antialias argument")
    analytic, counted = smallest_flops_agree(Resize(module, **kw), torch.randn(2, 3, 16, 16))
    assert analytic == counted


def test_a_drifting_formula_is_a_named_error_naming_the_op(monkeypatch):
    wrong = dict(flops_module.FLOP_FORMULAS)
    wrong["batch_norm"] = lambda op, s: flops_module.numel_poly(op.inputs[0], s) * 3
    monkeypatch.setattr(flops_module, "FLOP_FORMULAS", wrong)
    net = compress.SlimmableNetwork(NormThenConv(nn.BatchNorm2d(16)).eval(), torch.randn(2, 3, 16, 16))
    with pytest.raises(compress.FlopsMismatchError, match=r"batch_norm 'norm' \(.* vs fvcore's .*\)") as e:
        net.flops()
    assert "ignore=" in str(e.value)


# ---- 1. a permutation respects conv groups and is checked on the example input --------------------------------
def _randomize(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.1
            m.running_mean = torch.randn(m.num_features, generator=g) * 0.1
    return model.eval()


class GroupedConvNet(nn.Module):
    def __init__(self, groups: int = 4, width: int = 32) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width)
        self.c2, self.b2 = nn.Conv2d(width, width, 3, padding=1, groups=groups), nn.BatchNorm2d(width)
        self.c3 = nn.Conv2d(width, 16, 1)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.c3(x).mean((2, 3))


@pytest.mark.parametrize("groups", [2, 4, 32], ids=["2-groups", "4-groups", "depthwise"])
@pytest.mark.parametrize("importance", ["bn", "l1"])
def test_reorder_keeps_a_grouped_conv_network_function(groups, importance):
    x = torch.randn(2, 3, 12, 12)
    net = compress.SlimmableNetwork(_randomize(GroupedConvNet(groups)), x)
    before = net(x)
    perms = compress.reorder_channels_(net, importance)
    assert perms and any(p != sorted(p) for p in perms.values())  # something did move
    assert torch.allclose(net(x), before, atol=1e-5)
    cfg = net.space.min_config()  # and the narrow subnet is still the extracted one
    net.set_config(cfg)
    assert torch.allclose(compress.extract_subnet(net, cfg)(x), net(x), atol=1e-5)


def test_a_permutation_that_breaks_conv_blocks_is_refused():
    net = compress.SlimmableNetwork(_randomize(GroupedConvNet(4)), torch.randn(2, 3, 12, 12))
    gid = next(i for i, g in enumerate(net.space.groups) if g.name == "c1")
    swap = list(range(32))
    swap[0], swap[8] = 8, 0  # channel 0 to conv block 1: breaks the block
    with pytest.raises(compress.InvalidParameterError, match="whole blocks of 8"):
        compress.slim.permute_groups_(net, {gid: swap})


def test_a_permutation_that_changes_the_function_is_undone_and_named(monkeypatch):
    from compress.slim import reorder
    x = torch.randn(2, 3, 12, 12)
    net = compress.SlimmableNetwork(_randomize(GroupedConvNet(4)), x)
    before = net(x)
    monkeypatch.setattr(reorder, "channel_blocks", lambda net: {})  # as before the fix: blocks unknown
    with pytest.raises(compress.ReorderError, match="changed the full-width output .* weights are restored"):
        compress.reorder_channels_(net, "bn")
    assert torch.equal(net(x), before)


def test_torchvision_grouped_models_keep_their_function_after_reorder():
    import torchvision
    x = torch.randn(1, 3, 64, 64)
    for name in ("regnet_x_400mf", "resnext50_32x4d"):
        torch.manual_seed(0)
        net = compress.SlimmableNetwork(_randomize(getattr(torchvision.models, name)()), x)
        before = net(x)
        compress.reorder_channels_(net, "bn")
        assert float((net(x) - before).abs().max()) <= 1e-4 * max(1.0, float(before.abs().max())), name


# ---- 2. every tensor of any output structure is a network output ------------------------------------------------
class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 21, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = F.relu(self.c1(x))
        return {"out": self.c2(y), "aux": [self.c3(y), {"deep": y.mean((2, 3))}]}


def test_dict_and_nested_outputs_are_frozen_and_verified():
    x = torch.randn(2, 3, 8, 8)
    net = compress.SlimmableNetwork(DictOut().eval(), x)
    widths = {g.name: g.width for g in net.space.frozen}
    assert widths.get("c2") == 21 and widths.get("c3") == 4  # class channels never cut
    assert "c1" in widths  # returned itself (its mean) in the nested dict
    out = compress.extract_subnet(net, net.space.min_config())(x)
    assert out["out"].shape[1] == 21 and out["aux"][0].shape[1] == 4
    rep = verify_model_quick(DictOut(), x)
    assert rep.ok, rep.error


def verify_model_quick(model, x):
    from compress.verify import verify_model
    return verify_model(model.eval(), x, n_random=1, onnx=True)


def test_lraspp_keeps_its_21_classes():
    import torchvision
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
    x = torch.randn(1, 3, 64, 64)
    net = compress.SlimmableNetwork(model, x)
    sub = compress.extract_subnet(net, net.space.min_config())
    assert sub(x)["out"].shape[1] == 21


# ---- 3. a parameter used outside its layer freezes that layer -------------------------------------------------
class ReusedWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.conv, self.fc = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 10)

    def forward(self, x):
        y = self.conv(F.relu(self.c1(x)))
        y = F.conv2d(F.relu(y), self.conv.weight, padding=1)
        return self.fc(y.mean((2, 3)))


class NormalizedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.fc = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(16, 10)

    def forward(self, x):
        y = F.relu(self.c1(x)).mean((2, 3))
        return F.linear(F.normalize(y), F.normalize(self.fc.weight))


class TiedLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 16, 1), nn.Conv2d(16, 16, 1)
        self.c3.weight = self.c2.weight  # tied

    def forward(self, x):
        return self.c3(F.relu(self.c2(F.relu(self.c1(x))))).mean((2, 3))


@pytest.mark.parametrize("model_cls, layer", [(ReusedWeight, "conv"), (NormalizedHead, "c1"), (TiedLayers, "c2")])
def test_a_parameter_read_outside_its_layer_freezes_the_layer(model_cls, layer):
    x = torch.randn(2, 3, 8, 8)
    model = _randomize(model_cls())
    net = compress.SlimmableNetwork(model, x)
    for role in ("out",) if layer == "c1" else ("in", "out"):  # NormalizedHead: fc.weight is only read raw
        groups = [net.space.groups[g] for g in set(net.positions(net.site("module", layer, role).atoms)[0].tolist())]
        assert all(g.frozen for g in groups), (layer, role)
    for cfg in (net.space.min_config(), net.space.random_config(1)):
        net.set_config(cfg)
        assert torch.allclose(compress.extract_subnet(net, cfg)(x), net(x), atol=1e-5)
    net.set_config(None)
    before = net(x)
    compress.reorder_channels_(net, "l1")
    assert torch.allclose(net(x), before, atol=1e-5)


# ---- 4. a pass-through handler never passes a layer with per-channel tensors ----------------------------------
class WithPReLU(nn.Module):
    def __init__(self, slopes: int) -> None:
        super().__init__()
        self.c1, self.act, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.PReLU(slopes), nn.Conv2d(16, 8, 1)
        with torch.no_grad():
            self.act.weight.uniform_(-1, 1)

    def forward(self, x):
        return self.c2(self.act(self.c1(x))).mean((2, 3))


@pytest.mark.parametrize("slopes", [1, 16])
def test_prelu_slopes_are_sliced_and_permuted(slopes):
    x = torch.randn(2, 3, 8, 8)
    net = compress.SlimmableNetwork(WithPReLU(slopes).eval(), x)
    assert "c1" in {g.name for g in net.space.free}
    cfg = net.space.min_config()
    net.set_config(cfg)
    sub = compress.extract_subnet(net, cfg)
    assert torch.allclose(sub(x), net(x), atol=1e-5)
    assert sub.act.weight.numel() == (1 if slopes == 1 else cfg["c1"])
    assert net.flops(cfg) == compress.count_flops(sub, x).total
    net.set_config(None)
    before = net(x)
    compress.reorder_channels_(net, "l1")
    assert torch.allclose(net(x), before, atol=1e-5)


class ChannelScale(nn.Module):  # an element-wise layer with a per-channel buffer, handled as pass-through
    def __init__(self, n: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.rand(n) + 0.5)

    def forward(self, x):
        return x * self.scale.view(1, -1, 1, 1)


class ScaledNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.s, self.c2 = nn.Conv2d(3, 16, 3, padding=1), ChannelScale(16), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.c2(self.s(self.c1(x))).mean((2, 3))


def test_a_pass_through_handler_refuses_per_channel_tensors(monkeypatch):
    from compress.space import ops
    monkeypatch.setitem(ops.MODULE_HANDLERS, ChannelScale, ops.module_passthrough)
    monkeypatch.setattr(ops, "EXTRA_LEAF_MODULES", ops.EXTRA_LEAF_MODULES | {f"{__name__}.ChannelScale"})
    from compress.space import trace
    monkeypatch.setattr(trace, "EXTRA_LEAF_MODULES", ops.EXTRA_LEAF_MODULES)
    x = torch.randn(2, 3, 8, 8)
    net = compress.SlimmableNetwork(ScaledNet().eval(), x)
    assert "c1" in {g.name for g in net.space.frozen}
    assert any("per-channel ['scale']" in r for r in net.coupling.unknown_ops.values())
