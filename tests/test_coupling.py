"""Which channels must be cut together: residual adds, concat, depthwise/grouped convs, gating,
flatten->linear, channel shuffle, unknown ops, ignore lists."""

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import compress
from conftest import group_of


def test_residual_adds_couple_stem_and_first_stage(resnet18_net):
    _, _, net = resnet18_net
    stem = group_of(net, ("module", "conv1", "out"))
    assert stem == group_of(net, ("module", "layer1.0.conv2", "out")) == group_of(net, ("module", "layer1.1.conv2", "out"))
    assert stem == group_of(net, ("module", "layer2.0.downsample.0", "in"))
    # the inner width of a basic block is its own group
    assert group_of(net, ("module", "layer1.0.conv1", "out")).isdisjoint(stem)
    # a downsample conv joins the next stage's residual stream
    assert group_of(net, ("module", "layer2.0.downsample.0", "out")) == group_of(net, ("module", "layer2.1.conv2", "out"))


def test_input_and_output_channels_are_frozen(resnet18_net):
    _, _, net = resnet18_net
    (inp,) = group_of(net, ("module", "conv1", "in"))
    (out,) = group_of(net, ("module", "fc", "out"))
    groups = {g.name: g for g in net.space.groups}
    assert groups[inp].frozen and "input" in groups[inp].frozen_reason
    assert groups[out].frozen and "output" in groups[out].frozen_reason
    assert inp not in net.space.max_config() and out not in net.space.max_config()


class CatAdd(nn.Module):
    """cat(a, b) + c: c's channels split at the concat boundary into two groups."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 16, 1), nn.Conv2d(3, 24, 1), nn.Conv2d(3, 40, 1)
        self.head = nn.Conv2d(40, 5, 1)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], 1) + self.c(x))


def test_concat_is_offset_aware():
    net = compress.SlimmableNetwork(CatAdd(), torch.randn(1, 3, 8, 8))
    widths = {g.name: g.width for g in net.space.free}
    assert widths == {"a": 16, "b": 24}
    g, i = net.positions(net.site("module", "c", "out").atoms)
    names = [net.space.groups[x].name for x in g]
    assert names == ["a"] * 16 + ["b"] * 24
    assert i.tolist() == list(range(16)) + list(range(24))
    cfg = {"a": 8, "b": 16}
    sub = compress.extract_subnet(net, cfg)
    assert sub.c.out_channels == 24 and sub.head.in_channels == 24
    net.set_config(cfg)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(sub(x), net(x))


def test_densenet_concat_offsets():
    net = compress.SlimmableNetwork(torchvision.models.densenet121(), torch.randn(1, 3, 64, 64))
    g, i = net.positions(net.site("module", "features.denseblock1.denselayer2.norm1", "feat").atoms)
    names = [net.space.groups[x].name for x in g]
    assert names == ["features.conv0"] * 64 + ["features.denseblock1.denselayer1.conv2"] * 32
    assert i.tolist() == list(range(64)) + list(range(32))


class DepthwiseAndSingle(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.single = nn.Conv2d(16, 1, 1)  # out_channels == 1 is NOT depthwise
        self.expand = nn.Conv2d(1, 48, 1)
        self.grouped = nn.Conv2d(48, 48, 3, padding=1, groups=2)  # 24 in, 24 out per group
        self.mid = nn.Conv2d(48, 32, 1)
        self.uneven = nn.Conv2d(32, 64, 1, groups=2)  # 16 in, 32 out per group: cannot be sliced by first-k
        self.head = nn.Conv2d(64, 4, 1)

    def forward(self, x):
        y = self.grouped(self.expand(self.single(self.dw(self.stem(x)))))
        return self.head(self.uneven(self.mid(y)))


def test_depthwise_grouped_and_single_channel_convs():
    net = compress.SlimmableNetwork(DepthwiseAndSingle(), torch.randn(1, 3, 8, 8))
    assert group_of(net, ("module", "dw", "in")) == group_of(net, ("module", "dw", "out")) == {"stem"}
    # the 1-channel conv is not coupled to its input and is too narrow to slim
    (single,) = group_of(net, ("module", "single", "out"))
    assert single != "stem"
    groups = {g.name: g for g in net.space.groups}
    assert groups[single].frozen
    # grouped conv with 24 channels per group: widths move in whole conv groups (divisor lcm(8, 24) = 24)
    assert group_of(net, ("module", "grouped", "in")) == group_of(net, ("module", "grouped", "out")) == {"expand"}
    assert groups["expand"].divisor == 24 and groups["expand"].allowed_widths() == [24, 48]
    assert not groups["expand"].frozen
    # grouped conv with unequal per-group widths keeps its 2 groups: each group's channels are tied to the
    # other's (mid's 32 channels are 2 blocks of 16, uneven's 64 are 2 blocks of 32), each group narrows
    assert not groups["mid[0:16]"].frozen and groups["mid[0:16]"].width == 16
    assert group_of(net, ("module", "uneven", "out")) == {"uneven"} and groups["uneven"].width == 32
    sub = compress.extract_subnet(net, net.space.min_config())
    assert sub.dw.groups == sub.dw.out_channels == sub.stem.out_channels == 8
    assert (sub.grouped.in_channels, sub.grouped.out_channels, sub.grouped.groups) == (24, 24, 1)
    assert (sub.uneven.in_channels, sub.uneven.out_channels, sub.uneven.groups) == (16, 16, 2)
    x = torch.randn(2, 3, 8, 8)
    net.set_config(net.space.min_config())
    torch.testing.assert_close(sub(x), net(x))


def test_grouped_conv_keeps_whole_groups():
    model = torchvision.models.resnext50_32x4d()
    net = compress.SlimmableNetwork(model, torch.randn(1, 3, 64, 64))
    (grp,) = group_of(net, ("module", "layer1.0.conv2", "in"))
    g = {x.name: x for x in net.space.groups}[grp]
    assert g.width == 128 and g.divisor == 8  # 32 groups of 4 channels: lcm(8, 4)
    sub = compress.extract_subnet(net, {grp: 64})
    conv = sub.get_submodule("layer1.0.conv2")
    assert (conv.in_channels, conv.out_channels, conv.groups) == (64, 64, 16)


def test_squeeze_excitation_gate_is_coupled_to_its_block():
    net = compress.SlimmableNetwork(torchvision.models.mobilenet_v3_large(), torch.randn(1, 3, 64, 64))
    gate = group_of(net, ("module", "features.4.block.2.fc2", "out"))
    assert gate == group_of(net, ("module", "features.4.block.1.0", "out"))  # the depthwise conv it scales
    squeeze = group_of(net, ("module", "features.4.block.2.fc1", "out"))
    assert squeeze.isdisjoint(gate) and not any(net.space.groups[net.space.index[s]].frozen for s in squeeze)


def test_flatten_to_linear_repeats_each_channel_per_position():
    net = compress.SlimmableNetwork(torchvision.models.vgg11_bn(), torch.randn(1, 3, 64, 64))
    g, i = net.positions(net.site("module", "classifier.0", "in").atoms)
    assert {net.space.groups[x].name for x in g} == {"features.25"}
    assert np.array_equal(i, np.repeat(np.arange(512), 49))
    sub = compress.extract_subnet(net, {"features.25": 256})
    assert sub.get_submodule("classifier.0").in_features == 256 * 49


class Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(3, 16, 1)
        self.head = nn.Conv2d(16, 4, 1)
        self.tail = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        n, c, h, w = y.size()
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        p, q = y.chunk(2, dim=1)
        return self.head(p) + self.tail(q)


def test_channel_shuffle_becomes_a_permutation_and_stays_slimmable():
    net = compress.SlimmableNetwork(Shuffle(), torch.randn(1, 3, 8, 8))
    assert {g.name for g in net.space.free} == {"a", "b"}
    g, i = net.positions(net.site("module", "head", "in").atoms)
    assert [net.space.groups[x].name for x in g] == ["a", "b"] * 8
    assert i.tolist() == [v for k in range(8) for v in (k, k)]
    x = torch.randn(2, 3, 8, 8)
    # the second chunk holds channels 8..15 of a and b: one of them must keep it non-empty
    groups = {g.name: g for g in net.space.groups}
    assert sorted([groups["a"].allowed_widths(), groups["b"].allowed_widths()]) == [[8, 16], [16]]
    for cfg in ({"a": 16, "b": 8}, {"a": 16, "b": 16}):
        net.set_config(cfg)
        sub = compress.extract_subnet(net, cfg)
        torch.testing.assert_close(sub(x), net(x))
    # reference: a slimmed group behaves as if its cut channels were zero (no bias after them)
    ref = Shuffle()
    ref.load_state_dict({k: v for k, v in net.graph_module.state_dict().items()})
    with torch.no_grad():
        ref.b.weight[8:] = 0
        ref.b.bias[8:] = 0
    net.set_config({"a": 16, "b": 8})
    torch.testing.assert_close(net(x), ref(x))


def test_shufflenet_stage_widths_are_slimmable():
    net = compress.SlimmableNetwork(torchvision.models.shufflenet_v2_x0_5(), torch.randn(1, 3, 64, 64))
    free = {g.name for g in net.space.free}
    assert "stage2.0.branch1.2" in free and "stage2.0.branch2.5" in free  # the two halves of a stage output
    assert net.coupling.permutes, "channel shuffles were not turned into permutations"


class WithUnknownOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 16, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.a(x)
        y = torch.cumsum(y, dim=1)  # mixes channels: must not be cut through
        return self.head(self.b(y))


def test_unknown_op_freezes_its_channels_and_is_listed():
    net = compress.SlimmableNetwork(WithUnknownOp(), torch.randn(1, 3, 8, 8))
    groups = {g.name: g for g in net.space.groups}
    assert groups["a"].frozen and "cumsum" in groups["a"].frozen_reason and "'cumsum'" in groups["a"].frozen_reason
    assert not groups["b"].frozen
    assert any("cumsum" in r for r in net.coupling.unknown_ops.values())
    with pytest.raises(compress.InvalidConfigError, match="frozen"):
        net.set_config({"a": 8})


def test_ignore_freezes_named_layers(resnet18_net):
    model, x, _ = resnet18_net
    net = compress.SlimmableNetwork(model, x, ignore=["layer1.0.conv1"])
    groups = {g.name: g for g in net.space.groups}
    (grp,) = group_of(net, ("module", "layer1.0.bn1", "feat"))
    assert groups[grp].frozen and "ignored" in groups[grp].frozen_reason
    assert "layer1.0.conv1" not in net.space.max_config()
