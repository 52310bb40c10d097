"""Layers that read or write channels in blocks slim instead of freezing: PixelShuffle / PixelUnshuffle, transposed
convs (plain, grouped, depthwise, with a channel multiplier), a Linear's features viewed as a feature map
(a generator's first layer) and depthwise convs with a channel multiplier. For each: the group is slimmable, the
layer's own FLOPs shrink at the smallest config, ``verify_model`` passes (max == original, extracted == in place,
analytic FLOPs == fvcore, ONNX == onnxruntime, reorder keeps the function) and reordering moves whole blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.cost.flops import count_flops
from compress.errors import InvalidParameterError
from compress.slim.layers import layer_kind
from compress.slim.network import SlimmableNetwork
from compress.slim.reorder import permutable_groups, permute_groups_, reorder_channels_
from compress.subnet.export import export_onnx
from compress.subnet.extract import extract_subnet
from compress.verify import verify_model


class PixelShuffleNet(nn.Module):
    """conv2's 64 channels become 16 channels of twice the resolution: c3 reads one channel per run of 4."""

    def __init__(self, functional: bool = False) -> None:
        super().__init__()
        self.functional = functional
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 64, 3, padding=1)
        self.ps, self.bn, self.c3 = nn.PixelShuffle(2), nn.BatchNorm2d(16), nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c2(torch.relu(self.c1(x)))
        y = F.pixel_shuffle(y, 2) if self.functional else self.ps(y)
        return self.c3(torch.relu(self.bn(y)))


class PixelUnshuffleNet(nn.Module):
    """c1's 16 channels become 64 of half the resolution: each of c1's channels is 4 of c2's input channels."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.pu, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.PixelUnshuffle(2), nn.Conv2d(64, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(self.pu(torch.relu(self.c1(x))))


class Generator(nn.Module):
    """Linear(z, C*4*4) then view(B, C, 4, 4) with a literal C, as DCGAN-style generators write it."""

    def __init__(self, how: str = "view") -> None:
        super().__init__()
        self.how = how
        self.fc, self.bn = nn.Linear(8, 32 * 16), nn.BatchNorm2d(32)
        self.unflatten = nn.Unflatten(1, (32, 4, 4))
        self.up1, self.bn1 = nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.BatchNorm2d(16)
        self.up2 = nn.ConvTranspose2d(16, 3, 4, 2, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z)
        if self.how == "view":
            x = x.view(z.size(0), 32, 4, 4)
        elif self.how == "view-1":
            x = x.view(-1, 32, 4, 4)
        elif self.how == "reshape":
            x = torch.reshape(x, (z.shape[0], 32, 4, 4))
        else:
            x = self.unflatten(x)
        return torch.tanh(self.up2(torch.relu(self.bn1(self.up1(torch.relu(self.bn(x)))))))


class ConvTransposeNet(nn.Module):
    """A transposed conv between two convs; ``out`` / ``groups`` give plain, grouped, depthwise and multiplier."""

    def __init__(self, out: int = 16, groups: int = 1) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.up = nn.ConvTranspose2d(16, out, 3, 2, 1, groups=groups)
        self.bn, self.c2 = nn.BatchNorm2d(out), nn.Conv2d(out, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = self.up(torch.relu(self.c1(x)), output_size=[2 * h, 2 * w])  # output_size picks output_padding 1
        return self.c2(torch.relu(self.bn(y)))


class DepthwiseMultiplierNet(nn.Module):
    """Conv2d(C, 2C, groups=C): output channels 2i and 2i+1 read input channel i."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.dw, self.bn = nn.Conv2d(16, 32, 3, padding=1, groups=16), nn.BatchNorm2d(32)
        self.c2 = nn.Conv2d(32, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.relu(self.bn(self.dw(torch.relu(self.c1(x))))))


def _randomize(model: nn.Module) -> nn.Module:
    """Random norm statistics and affine terms, so that slicing or permuting wrong channels shows in the output."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.2, 2.0)
                m.bias.normal_()
    return model.eval()


IMAGE, NOISE = torch.randn(2, 3, 8, 8), torch.randn(2, 8)
# id -> (model, input, the group of the new rule, the layer whose FLOPs depend only on that rule's channels)
CASES = {
    "pixel_shuffle": (lambda: PixelShuffleNet(), IMAGE, "c2", "c3"),
    "pixel_shuffle_functional": (lambda: PixelShuffleNet(functional=True), IMAGE, "c2", "c3"),
    "pixel_unshuffle": (lambda: PixelUnshuffleNet(), IMAGE, "c1", "c2"),
    "generator_view": (lambda: Generator("view"), NOISE, "fc", "fc"),
    "generator_view_minus_one": (lambda: Generator("view-1"), NOISE, "fc", "fc"),
    "generator_reshape": (lambda: Generator("reshape"), NOISE, "fc", "fc"),
    "generator_unflatten": (lambda: Generator("unflatten"), NOISE, "fc", "fc"),
    "conv_transpose": (lambda: ConvTransposeNet(), IMAGE, "up", "up"),
    "conv_transpose_grouped": (lambda: ConvTransposeNet(16, 4), IMAGE, "c1", "up"),
    "conv_transpose_depthwise": (lambda: ConvTransposeNet(16, 16), IMAGE, "c1", "up"),
    "conv_transpose_multiplier": (lambda: ConvTransposeNet(32, 16), IMAGE, "c1", "up"),
    "depthwise_multiplier": (lambda: DepthwiseMultiplierNet(), IMAGE, "c1", "dw"),
}


def _layer_share(net: SlimmableNetwork, x: torch.Tensor, layer: str) -> float:
    """1 - fvcore FLOPs of ``layer`` in the smallest extracted subnet / in the full one."""
    full = count_flops(extract_subnet(net, net.space.max_config()), x).by_module[layer]
    small = count_flops(extract_subnet(net, net.space.min_config()), x).by_module[layer]
    return 1.0 - small / full


@pytest.mark.parametrize("case", list(CASES))
def test_block_layer_slims_and_verifies(case):
    make, x, group, layer = CASES[case]
    model = _randomize(make())
    net = SlimmableNetwork(model, x, divisor=4)
    free = {g.name: g for g in net.space.free}
    assert group in free, f"{group} frozen: {net.space.summary()}"
    assert _layer_share(net, x, layer) > 0.4  # the layer's own FLOPs shrink (0 while the rule froze it)
    rep = verify_model(model, x, divisor=4)
    assert rep.ok, rep.error
    assert rep.slimmable_share > 0.5 and rep.unknown_ops == []
    assert rep.configs_checked == 5 and rep.max_sub_vs_dynamic < 1e-5 and rep.onnx_max_abs_diff < 1e-4
    # reordering moves the group's channels (something moved) and keeps the full-width function
    gid = net.space.index[group]
    assert gid in permutable_groups(net)
    with torch.no_grad():
        before = net(x)
        perms = reorder_channels_(net, "l1")
        assert perms[group] != sorted(perms[group])
        torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)
        cfg = net.space.min_config()
        net.set_config(cfg)
        torch.testing.assert_close(extract_subnet(net, cfg)(x), net(x), rtol=0, atol=1e-5)


def test_pixel_shuffle_cuts_and_moves_whole_runs_in_order():
    x = IMAGE
    net = SlimmableNetwork(_randomize(PixelShuffleNet()), x, divisor=4)
    c2 = net.space.groups[net.space.index["c2"]]
    assert c2.width == 64 and c2.divisor == 4  # lcm(divisor 4, runs of 2 * 2)
    sub = extract_subnet(net, {"c2": 24})
    assert sub.c2.out_channels == 24 and sub.bn.num_features == 6 and sub.c3.in_channels == 6
    perm = np.array(reorder_channels_(net, "l1")["c2"]).reshape(16, 4)
    assert (perm - perm[:, :1] == np.arange(4)).all() and (perm[:, 0] % 4 == 0).all()
    inside = list(range(64))
    inside[0], inside[1] = 1, 0  # swaps two sub-pixels of one output channel: would change the function
    with pytest.raises(InvalidParameterError, match="whole blocks of 4 channels \\(its tied runs, in their order\\)"):
        permute_groups_(net, {net.space.index["c2"]: np.array(inside)})


def test_generator_view_follows_the_width_and_exports():
    z = NOISE
    net = SlimmableNetwork(_randomize(Generator("view")), z, divisor=4)
    fc = net.space.groups[net.space.index["fc"]]
    assert fc.width == 512 and fc.divisor == 16  # runs of 4 * 4 features per channel
    cfg = {"fc": 160, "up1": 8}
    sub = extract_subnet(net, cfg)
    assert sub.fc.out_features == 160 and sub.bn.num_features == 10 and sub.up1.in_channels == 10
    assert sub.up1.out_channels == 8 and sub.up2.in_channels == 8
    assert "unflatten(1, (-1, 4, 4))" in sub.code  # the literal 32 would not fit 160 features
    net.set_config(cfg)
    with torch.no_grad():
        z5 = torch.randn(5, 8)
        torch.testing.assert_close(sub(z5), net(z5), rtol=0, atol=1e-6)  # another batch size


def test_generator_onnx_runs_at_another_batch_size(tmp_path):
    z = NOISE
    net = SlimmableNetwork(_randomize(Generator("view")), z, divisor=4)
    sub = extract_subnet(net, {"fc": 96, "up1": 4})
    rep = export_onnx(sub, z, tmp_path / "gen.onnx")
    assert rep.max_abs_diff < 1e-4 and len(rep.batch_sizes_checked) >= 2


def test_conv_transpose_layer_kind_and_flops():
    x = IMAGE
    net = SlimmableNetwork(_randomize(ConvTransposeNet()), x, divisor=4)
    assert layer_kind(net.graph_module.up) == "conv_transpose"
    cfg = {"c1": 8, "up": 12}
    sub = extract_subnet(net, cfg)
    assert type(sub.up) is nn.ConvTranspose2d and sub.up.weight.shape == (8, 12, 3, 3)
    assert (sub.up.in_channels, sub.up.out_channels, sub.up.groups) == (8, 12, 1)
    # a transposed conv: batch x input pixels x in x out x kernel (fvcore's convention), counted independently
    assert count_flops(sub, x).by_module["up"] == 2 * 8 * 8 * 8 * 12 * 9
    assert net.flops(cfg) == count_flops(sub, x).total
    grouped = extract_subnet(SlimmableNetwork(_randomize(ConvTransposeNet(32, 16)), x, divisor=4), {"c1": 4})
    assert (grouped.up.in_channels, grouped.up.out_channels, grouped.up.groups) == (4, 8, 4)
    assert count_flops(grouped, x).by_module["up"] == 2 * 8 * 8 * 4 * 2 * 9


def test_depthwise_multiplier_ties_each_input_to_its_outputs():
    x = IMAGE
    net = SlimmableNetwork(_randomize(DepthwiseMultiplierNet()), x, divisor=4)
    assert [g.name for g in net.space.free] == ["c1"]  # dw's 32 outputs follow c1's 16 channels
    g, i = net.positions(net.site("module", "dw", "out").atoms)
    assert (i == np.repeat(np.arange(16), 2)).all()  # outputs 2i, 2i+1 <- input i
    sub = extract_subnet(net, {"c1": 4})
    assert (sub.dw.in_channels, sub.dw.out_channels, sub.dw.groups) == (4, 8, 4) and sub.c2.in_channels == 8


class ShuffleThenAdd(nn.Module):
    """A PixelShuffle's output added to another conv's: channel c of c3 would be tied to c2's run c, which one
    channel group cannot hold (its runs are 4 channels wide, c3's channels 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 64, 3, padding=1)
        self.ps, self.c3, self.c4 = nn.PixelShuffle(2), nn.Conv2d(3, 16, 1), nn.Conv2d(16, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ps(self.c2(torch.relu(self.c1(x))))
        return self.c4(y + self.c3(F.interpolate(x, scale_factor=2.0)))


def test_runs_no_group_can_hold_freeze_with_the_reason():
    x = IMAGE
    net = SlimmableNetwork(ShuffleThenAdd().eval(), x, divisor=4)
    assert [g.name for g in net.space.free] == ["c1"]
    reasons = {g.frozen_reason for g in net.space.frozen}
    assert ("ps: reads its input in runs of 4 channels (one output channel each) that no channel group holds whole "
            "and aligned (its output is coupled channel by channel to channels not in runs, e.g. added to another "
            "layer's output)") in reasons
    assert "runs of 4 channels" in net.summary()
    rep = verify_model(ShuffleThenAdd(), x, divisor=4)
    assert rep.ok, rep.error


@pytest.mark.parametrize("make", [PixelShuffleNet, lambda: ConvTransposeNet(16, 4)], ids=["tied_runs", "grouped"])
def test_dms_finalize_orders_channels_in_whole_blocks(make):
    from compress.search.dms.masked import DMSNetwork

    net = SlimmableNetwork(_randomize(make()), IMAGE, divisor=4)
    with torch.no_grad():
        before = net(IMAGE)
    weights = {k: v.clone() for k, v in net.graph_module.state_dict().items()}
    dms = DMSNetwork(net, depth=False)
    torch.manual_seed(0)
    for t in dms.channel_topk:  # learned importances that rank channels inside a block apart
        t.importance.copy_(torch.rand(t.importance.shape))
    cfg, removed = dms.finalize_()  # permute_groups_ refused a per-channel order of a block group before
    assert removed == [] and set(cfg) == {g.name for g in net.space.free}
    moved = [k for k, v in net.graph_module.state_dict().items() if k in weights and not torch.equal(v, weights[k])]
    assert "c2.weight" in moved and "c1.weight" in moved  # channels were reordered
    with torch.no_grad():
        net.set_config(None)
        torch.testing.assert_close(net(IMAGE), before, rtol=1e-5, atol=1e-5)
