"""Layers whose forward calls F.batch_norm / F.group_norm / F.layer_norm with their own parameters, reshaped
layer scales, fixed channel slices and split attention: each slims (its group is not frozen), the extracted
subnet equals the in-place network, the analytic FLOPs equal fvcore's count, and reordering keeps the output."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.subnet.extract import extract_subnet
from numerics import check_slims  # noqa: E402

timm_layers = pytest.importorskip("timm.layers")


def _check(model, slimmable, x=None):
    return check_slims(model, slimmable, x, min_share=0.2)


class BatchNormActNet(nn.Module):
    """timm's BatchNormAct2d (a BatchNorm2d subclass with its own forward and activation)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = timm_layers.BatchNormAct2d(8, act_layer=nn.SiLU)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = timm_layers.BatchNormAct2d(6, act_layer=nn.ReLU)

    def forward(self, x):
        return self.bn2(self.conv2(self.bn1(self.conv1(x))))


def test_batch_norm_act_slims_as_a_batch_norm_with_its_activation():
    net = _check(BatchNormActNet(), ["conv1"])
    assert type(net.graph_module.bn1).__mro__[1].__name__ == "BatchNormAct2d"  # one layer, not traced into
    assert net.site("module", "bn1", "feat") is not None


class OwnBatchNorm(nn.Module):
    """A layer of one's own that calls F.batch_norm with its own parameters and buffers (traced into)."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.1, 1e-5)


class OwnBatchNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = OwnBatchNorm(8)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.norm(self.conv1(x))))


def test_functional_batch_norm_with_own_parameters_slices_them():
    net = _check(OwnBatchNormNet(), ["conv1"])
    assert {s.role for s in net.sites if s.kind == "attr"} == {"norm.weight", "norm.bias", "norm.running_mean",
                                                                "norm.running_var"}


class GroupNormNet(nn.Module):
    def __init__(self, act: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.gn1 = timm_layers.GroupNormAct(16, 4, act_layer=nn.ReLU) if act else nn.GroupNorm(4, 16)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.gn2 = nn.GroupNorm(1, 8)  # one group stays one group: any width
        self.conv3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.conv3(self.gn2(self.conv2(self.gn1(self.conv1(x)))))


@pytest.mark.parametrize("act", [False, True])
def test_group_norm_cuts_whole_groups(act):
    net = _check(GroupNormNet(act), ["conv1", "conv2"])
    g1 = net.space.groups[net.space.index["conv1"]]
    assert g1.divisor == 4 and g1.allowed_widths() == [4, 8, 12, 16]  # 4 channels per group, kept whole
    assert net.space.groups[net.space.index["conv2"]].divisor == 2  # the network's divisor only
    sub = extract_subnet(net, {"conv1": 8, "conv2": 6})
    assert (sub.gn1.num_groups, sub.gn1.num_channels, sub.gn2.num_groups, sub.gn2.num_channels) == (2, 8, 1, 6)


class ConvNeXtBlockNet(nn.Module):
    """timm's LayerNorm2d and a ConvNeXt layer scale (``gamma`` reshaped, then multiplied) on a residual."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.norm0 = timm_layers.LayerNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm = timm_layers.LayerNorm2d(8)
        self.pw1 = nn.Conv2d(8, 16, 1)
        self.pw2 = nn.Conv2d(16, 8, 1)
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.norm0(self.stem(x))
        y = self.pw2(F.gelu(self.pw1(self.norm(self.dw(x)))))
        x = x + y.mul(self.gamma.reshape(1, -1, 1, 1))
        return self.head(x.mean((2, 3)))


def test_layer_norm2d_and_reshaped_layer_scale_follow_the_residual():
    net = _check(ConvNeXtBlockNet(), ["stem", "pw1"])
    assert any(s.kind == "attr" and s.role == "gamma" for s in net.sites)
    sub = extract_subnet(net, {"stem": 4})
    assert sub.gamma.shape == (4,) and sub.norm.weight.shape == (4,)


class DualPathNet(nn.Module):
    """Channel slices: a DPN-style residual on the first k channels and a dense path on the rest."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 12, 3, padding=1)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        out = self.conv(x)
        resid = x + out[:, :8]
        dense = torch.cat([x[:, 2:5], out[:, 8:]], dim=1)
        return self.head(torch.cat([resid, dense, x[:, 5:6]], dim=1)[:, :12])


def test_channel_slices_follow_their_atoms():
    net = _check(DualPathNet(), ["stem[0:2]", "stem[2:5]", "conv[9:12]"])
    # every slice bound is a group bound: [:, :8], [:, 2:5], [:, 5:6], and the final [:, :12] ends after conv's 9th
    assert {"stem[0:2]", "stem[2:5]", "stem[5:6]", "stem[6:8]", "conv[8:9]", "conv[9:12]"} == \
        {g.name for g in net.space.groups if g.name.startswith(("stem", "conv"))}
    assert not net.coupling.unknown_ops
    sub = extract_subnet(net, {"stem[0:2]": 2, "stem[2:5]": 2, "conv[9:12]": 2})
    bounds = [(m.start, m.stop) for m in sub.modules() if type(m).__name__ == "ChannelSlice"]
    assert bounds[:3] == [(0, 7), (2, 4), (7, 10)]  # out[:, :8] keeps 7, x[:, 2:5] keeps 2, out[:, 8:] keeps 3


class SplitAttention(nn.Module):
    """ResNeSt / SK-net split attention: a softmax over the radix parts of split channels."""

    def __init__(self, c=8, radix=2):
        super().__init__()
        self.radix = radix
        self.conv = nn.Conv2d(3, c * radix, 3, padding=1)
        self.fc = nn.Conv2d(c, c * radix, 1)
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        x = self.conv(x)
        b, rc, h, w = x.shape
        parts = x.reshape(b, self.radix, rc // self.radix, h, w)
        gap = parts.sum(dim=1).mean((2, 3), keepdim=True)
        attn = self.fc(gap).view(b, self.radix, -1).softmax(dim=1).reshape(b, self.radix, -1, 1, 1)
        return self.head((parts * attn).sum(dim=1))


def test_split_attention_slims_with_its_radix_blocks_tied():
    net = _check(SplitAttention(), ["conv[0:8]"])  # used to raise on softmax of Long ids, then to freeze
    assert not net.coupling.unknown_ops
    g, i = net.positions(net.site("module", "conv", "out").atoms)  # the 2 radix blocks are one channel set
    assert len(set(g.tolist())) == 1 and i.tolist() == list(range(8)) * 2
    sub = extract_subnet(net, {"conv[0:8]": 4})
    assert sub.conv.out_channels == sub.fc.out_channels == 8 and sub.head.in_channels == 4


class StdConvNet(nn.Module):
    """NF-net / BiT convs: weight standardisation (with and without gain) and "same" padding in their forward."""

    def __init__(self):
        super().__init__()
        self.conv1 = timm_layers.ScaledStdConv2d(3, 8, 3, padding=1)
        self.conv2 = timm_layers.StdConv2dSame(8, 8, 3, stride=2)
        self.conv3 = timm_layers.Conv2dSame(8, 8, 3, groups=4)
        self.conv4 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.conv4(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))


def test_weight_standardised_and_same_padded_convs_slim():
    with torch.no_grad():
        model = StdConvNet()
        model.conv1.gain.uniform_(0.5, 1.5)
    net = _check(model, ["conv1", "conv2"])
    sub = extract_subnet(net, {"conv1": 2, "conv2": 4})
    assert sub.conv1.gain.shape == (2, 1, 1, 1) and sub.conv2.weight.shape == (4, 2, 3, 3)
    assert sub.conv3.groups == 2
