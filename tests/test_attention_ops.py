"""Attention and filtering ops of timm's CNN families: split attention (ResNeSt radix reshape, SK-net stacked
branches), ECA attention (a Conv1d sliding over the channel axis, expand_as), depthwise functional convs with a
buffer filter (blur pooling), padding layers and timm's own Linear. Each slims (its group is not frozen), the
extracted subnet equals the in-place network, the analytic FLOPs equal fvcore's count, and reordering keeps the
output; what cannot follow a narrower width is frozen with a reason that says why."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.slim.network import SlimmableNetwork
from compress.slim.reorder import permutable_groups
from compress.subnet.extract import extract_subnet
from numerics import check_slims  # noqa: E402


def _check(model, slimmable, x=None, reorders=True):
    return check_slims(model, slimmable, x, reorders, all_ops_known=True)


def _group(net: SlimmableNetwork, kind: str, module: str, role=None) -> set[str]:
    g, _ = net.positions(net.site(kind, module, role).atoms)
    return {net.space.groups[i].name for i in set(g.tolist())}


# ---- split attention ---------------------------------------------------------------------------------------
class RadixSplitAttention(nn.Module):
    """ResNeSt's split attention (radix 2): a grouped conv with one group per radix block, the channels
    reshaped to (B, radix, C, H, W) and summed over the radix, an attention whose softmax runs over the radix
    (view / transpose / softmax / reshape), multiplied back and summed."""

    def __init__(self, c: int = 8, radix: int = 2, literal: bool = False):
        super().__init__()
        self.radix, self.c, self.literal = radix, c, literal
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.conv = nn.Conv2d(c, c * radix, 3, padding=1, groups=radix)  # c/2 in, c out per group
        self.bn0 = nn.BatchNorm2d(c * radix)
        self.fc1 = nn.Conv2d(c, 6, 1)
        self.fc2 = nn.Conv2d(6, c * radix, 1)
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        x = torch.relu(self.bn0(self.conv(torch.relu(self.stem(x)))))
        b, rc, h, w = x.shape
        x = x.reshape((b, self.radix, self.c if self.literal else rc // self.radix, h, w))
        gap = x.sum(dim=1).mean((2, 3), keepdim=True)
        attn = self.fc2(torch.relu(self.fc1(gap)))
        attn = F.softmax(attn.view(b, 1, self.radix, -1).transpose(1, 2), dim=1).reshape(b, -1)
        attn = attn.view(b, -1, 1, 1).reshape((b, self.radix, rc // self.radix, 1, 1))
        return self.head((x * attn).sum(dim=1).contiguous())


def test_radix_split_attention_slims_with_its_radix_blocks_tied():
    net = _check(RadixSplitAttention(), ["stem[0:4]", "conv", "fc1"])
    # the radix conv keeps its 2 groups: its input's two halves are one channel set, its output's too
    assert _group(net, "module", "conv", "out") == _group(net, "module", "fc2", "out") == {"conv"}
    assert _group(net, "module", "conv", "in") == {"stem[0:4]"}  # the stem's 8 channels as 2 blocks of 4
    groups = {g.name: g for g in net.space.groups}
    assert groups["stem[0:4]"].width == 4 and groups["conv"].width == 8  # 16 channels as 2 blocks of 8
    sub = extract_subnet(net, {"stem[0:4]": 2, "conv": 4})
    assert (sub.conv.groups, sub.conv.in_channels, sub.conv.out_channels) == (2, 4, 8)
    assert sub.fc2.out_channels == 8 and sub.head.in_channels == 4


def test_radix_reshape_with_a_literal_channel_count_freezes_with_the_reason():
    net = SlimmableNetwork(RadixSplitAttention(literal=True), torch.randn(1, 3, 8, 8), divisor=2)
    group = {g.name: g for g in net.space.groups}["conv"]
    assert group.frozen and "literal size 8" in group.frozen_reason and "radix" in group.frozen_reason


class StackedBranches(nn.Module):
    """SK-net's selective kernel: the input split between two branches, the branch outputs stacked, summed for
    the attention, a softmax over the branches, multiplied back and summed."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.paths = nn.ModuleList([nn.Conv2d(c // 2, c, 3, padding=1), nn.Conv2d(c // 2, c, 3, padding=2,
                                                                                  dilation=2)])
        self.bn = nn.BatchNorm2d(c)
        self.fc_reduce = nn.Conv2d(c, 6, 1)
        self.fc_select = nn.Conv2d(6, 2 * c, 1)
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        parts = torch.split(x, x.shape[1] // 2, 1)
        x = torch.stack([op(parts[i]) for i, op in enumerate(self.paths)], dim=1)
        a = self.fc_select(torch.relu(self.fc_reduce(x.sum(1).mean((2, 3), keepdim=True))))
        b, c2, h, w = a.shape
        a = torch.softmax(a.view(b, 2, c2 // 2, h, w), dim=1)
        return self.head(self.bn(torch.sum(x * a, dim=1)))


def test_stacked_branches_are_one_channel_set():
    net = _check(StackedBranches(), ["stem", "paths.0", "fc_reduce"])
    assert _group(net, "module", "paths.1", "out") == _group(net, "module", "bn", "feat") == {"paths.0"}
    assert _group(net, "module", "fc_select", "out") == {"paths.0"}  # both halves follow the branch channels


# ---- ECA attention ---------------------------------------------------------------------------------------
class ChannelConvAttention(nn.Module):
    """ECA attention: the pooled channels as a sequence, a Conv1d sliding over them, the gate expanded back."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1)
        self.eca = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        y = self.eca(x.mean((2, 3)).view(x.shape[0], 1, -1))
        y = torch.sigmoid(y).view(x.shape[0], -1, 1, 1)
        return self.head(x * y.expand_as(x))


def test_conv_over_the_channel_axis_slims_but_keeps_the_channel_order():
    net = _check(ChannelConvAttention(), ["conv1"], reorders=False)
    gid = net.space.index["conv1"]
    assert gid not in permutable_groups(net)  # a permutation would change its neighbours
    assert any("eca: a Conv1d slides over these channels" in why for _, why in net.coupling.ordered)
    sub = extract_subnet(net, {"conv1": 4})
    assert sub.conv1.out_channels == 4 and sub.eca.weight.shape == (1, 1, 3)  # the filter is not sliced


# ---- blur pooling, functional depthwise convs ---------------------------------------------------------------
class BufferBlur(nn.Module):
    """A depthwise F.conv2d with a per-channel filter held in a buffer; ``groups`` computed or literal."""

    def __init__(self, c: int = 8, literal: bool = False, shared: bool = False):
        super().__init__()
        self.c, self.literal, self.shared = c, literal, shared
        self.conv1 = nn.Conv2d(3, c, 3, padding=1)
        filt = torch.tensor([1.0, 2.0, 1.0])
        filt = (filt[:, None] * filt[None, :] / 16)[None, None]
        self.register_buffer("filt", filt if shared else filt.repeat(c, 1, 1, 1) * torch.rand(c, 1, 1, 1))
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        c = self.c if self.literal else x.shape[1]
        weight = self.filt.expand((c, 1, 3, 3)) if self.shared else self.filt
        return self.head(F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), weight, stride=2, groups=c))


@pytest.mark.parametrize("shared", [False, True])
def test_depthwise_functional_conv_on_a_buffer_slims(shared):
    net = _check(BufferBlur(shared=shared), ["conv1"])
    if not shared:  # one filter per channel: sliced with them
        assert _group(net, "attr", "_slim_attr_0", "filt") == {"conv1"}
    sub = extract_subnet(net, {"conv1": 2})
    assert sub.filt.shape[0] == (1 if shared else 2)


def test_depthwise_functional_conv_with_a_literal_group_count_freezes_with_the_reason():
    net = SlimmableNetwork(BufferBlur(literal=True), torch.randn(1, 3, 8, 8), divisor=2)
    group = {g.name: g for g in net.space.groups}["conv1"]
    assert group.frozen and "literal groups=8" in group.frozen_reason


def test_timm_blur_pool_slices_its_filters():
    timm_layers = pytest.importorskip("timm.layers")

    class Blurred(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.blur = timm_layers.BlurPool2d(8, filt_size=3, stride=2)
            self.blur_any = timm_layers.BlurPool2d(None, filt_size=3, stride=2)  # one filter expanded to any width
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.head(self.blur_any(self.blur(torch.relu(self.conv1(x)))))

    net = _check(Blurred(), ["conv1"])
    assert _group(net, "module", "blur", "feat") == {"conv1"}
    sub = extract_subnet(net, {"conv1": 2})
    assert sub.blur.channels == 2 and sub.blur.filt.shape == (2, 1, 3, 3)


# ---- padding, timm's Linear -------------------------------------------------------------------------------------
class Padded(nn.Module):
    def __init__(self, pad_channels: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.pad = nn.ConstantPad2d(1, 0.5)
        self.pad2 = nn.ReflectionPad2d((1, 0, 1, 0))
        self.pad_channels = pad_channels
        self.conv2 = nn.Conv2d(10 if pad_channels else 8, 4, 3)

    def forward(self, x):
        x = self.pad2(self.pad(torch.relu(self.conv1(x))))
        if self.pad_channels:
            x = F.pad(x, (0, 0, 0, 0, 1, 1))  # two new channels made of zeros
        return self.conv2(F.pad(x, (2, 2, 2, 2), mode="replicate"))


def test_spatial_padding_passes_channels_through():
    net = _check(Padded(), ["conv1"])
    assert _group(net, "module", "conv2", "in") == {"conv1"}


def test_padding_the_channel_dim_is_not_a_pass_through():
    net = SlimmableNetwork(Padded(pad_channels=True), torch.randn(1, 3, 8, 8), divisor=2)
    assert any("pads the channel dim" in why for why in net.coupling.unknown_ops.values())
    assert {g.name: g for g in net.space.groups}["conv1"].frozen


def test_timm_linear_is_a_linear_layer():
    timm_layers = pytest.importorskip("timm.layers")

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.fc1 = timm_layers.Linear(8, 6)
            self.fc2 = timm_layers.Linear(6, 4)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(torch.relu(self.conv1(x)).mean((2, 3)))))

    net = _check(Head(), ["conv1", "fc1"])
    assert _group(net, "module", "fc1", "in") == {"conv1"}


class DepthMultiplier(nn.Module):
    """A depthwise conv with a channel multiplier (2 filters per input channel, groups = in channels), then a
    1x1 conv with a skip branch (FastViT's downsampling): the 1x1 conv's output follows the repeated channels."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 16, 1)
        self.skip = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = torch.relu(self.bn(self.dw(torch.relu(self.conv1(x)))))
        return self.head(self.pw(y) + self.skip(y))


def test_depthwise_conv_with_a_channel_multiplier_loses_whole_groups():
    net = _check(DepthMultiplier(), ["conv1"])
    for site in (("module", "dw", "out"), ("module", "pw", "out")):  # out channels 2j, 2j+1 read in channel j
        g, i = net.positions(net.site(*site).atoms)
        assert {net.space.groups[x].name for x in g.tolist()} == {"conv1"}
        assert i.tolist() == [j // 2 for j in range(16)]
    assert [g.name for g in net.space.free] == ["conv1"] and net.space.free[0].width == 8
    sub = extract_subnet(net, {"conv1": 4})
    assert (sub.dw.in_channels, sub.dw.out_channels, sub.dw.groups) == (4, 8, 4) and sub.head.in_channels == 8
