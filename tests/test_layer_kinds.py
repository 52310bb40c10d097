"""A new slimmable layer kind is one LayerKind entry (plus its op handler): a model using it slims, extracts,
reorders and counts FLOPs like one made of built-in layers. And the public sites of a SlimmableNetwork."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import compress
from compress.errors import InvalidParameterError, UnsupportedOpError
from compress.slim.layers import (LAYER_KINDS, LayerKind, find_layer_kind, permute_tensors_, register_layer_kind,
                                  slice_tensor_, slim_kind, slim_selection, take)
from compress.space import ops, register_module
from compress.space.trace import EXTRA_LEAF_MODULES, class_key


class ChannelAffine(nn.Module):
    """y = x * w[c] + b[c] over the channels of an NCHW tensor: a per-channel layer no built-in kind knows."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(n) + 0.5)
        self.bias = nn.Parameter(torch.randn(n) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class UnslicedAffine(nn.Module):
    """The same layer with an op handler but no layer kind: the network must refuse it by name."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1)


def _affine_forward(mod: nn.Module, sel, x: torch.Tensor) -> torch.Tensor:
    s = sel.get("feat")
    return x * take(mod.weight, 0, s).view(1, -1, 1, 1) + take(mod.bias, 0, s).view(1, -1, 1, 1)


def _affine_slice(mod: nn.Module, sel) -> None:
    slice_tensor_(mod, "weight", 0, sel.get("feat"))
    slice_tensor_(mod, "bias", 0, sel.get("feat"))


def _affine_permute(mod: nn.Module, role: str, idx: torch.Tensor) -> None:
    permute_tensors_(mod, ("weight", "bias"), 0, idx)


AFFINE = LayerKind("channel_affine", ChannelAffine, ("feat",), _affine_forward, _affine_slice, _affine_permute)


@pytest.fixture
def affine_kind():
    """Register the layer kind and its op handler (the two places a new kind needs), and undo it afterwards."""
    handlers = dict(ops.MODULE_HANDLERS)
    leaves = set(EXTRA_LEAF_MODULES)
    kinds = dict(LAYER_KINDS)
    try:
        register_module(ChannelAffine, ops.per_channel_layer(1, "batch_norm"))  # 2 FLOPs per element, like BN
        register_module(UnslicedAffine, ops.per_channel_layer(1, "batch_norm"))
        yield register_layer_kind(AFFINE)
    finally:
        ops.MODULE_HANDLERS.clear()
        ops.MODULE_HANDLERS.update(handlers)
        EXTRA_LEAF_MODULES.clear()
        EXTRA_LEAF_MODULES.update(leaves)
        LAYER_KINDS.clear()
        LAYER_KINDS.update(kinds)


class AffineNet(nn.Module):
    def __init__(self, affine=ChannelAffine) -> None:
        super().__init__()
        self.conv1, self.aff1 = nn.Conv2d(3, 16, 3, padding=1), affine(16)
        self.conv2, self.aff2 = nn.Conv2d(16, 24, 3, stride=2, padding=1), affine(24)
        self.conv3, self.aff3 = nn.Conv2d(24, 24, 1), affine(24)
        self.gamma = nn.Parameter(torch.rand(24, 1, 1) + 0.5)  # read from the graph: an "attr" site
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.aff1(self.conv1(x)))
        y = torch.relu(self.aff2(self.conv2(x)))
        y = y + self.aff3(self.conv3(y)) * self.gamma
        return self.fc(y.mean((2, 3)))


def _affine_net(x: torch.Tensor) -> compress.SlimmableNetwork:
    torch.manual_seed(0)
    return compress.SlimmableNetwork(AffineNet().eval(), x, divisor=4)


def test_new_layer_kind_slims_extracts_and_counts_flops(affine_kind):
    x = torch.randn(2, 3, 16, 16)
    net = _affine_net(x)
    aff = net.graph_module.aff2
    assert slim_kind(aff) is affine_kind and find_layer_kind(ChannelAffine(4)) is affine_kind
    assert {g.name for g in net.space.free} == {"conv1", "conv2"}
    site = net.site("module", "aff2", "feat")
    assert {net.space.groups[g].name for g in net.positions(site.atoms)[0]} == {"conv2"}
    for cfg in (net.space.uniform_config(0.5), {"conv1": 4, "conv2": 12}, net.space.max_config()):
        sub = compress.extract_subnet(net, cfg)
        assert type(sub.aff2) is ChannelAffine and sub.aff2.weight.shape == (cfg["conv2"],)
        assert type(sub.aff1) is ChannelAffine and sub.aff1.bias.shape == (cfg["conv1"],)
        assert sub.gamma.shape == (cfg["conv2"], 1, 1)
        net.set_config(cfg)
        assert slim_selection(aff) == {"feat": None if cfg["conv2"] == 24 else cfg["conv2"]}  # a prefix
        with torch.no_grad():
            torch.testing.assert_close(sub(x), net(x), rtol=0, atol=1e-6)
        # analytic FLOPs: the "batch_norm" formula (2 per element) is what fvcore counts for x * w + b
        assert net.flops(cfg) == compress.count_flops(sub, x).total
    assert net.flops({"conv1": 4, "conv2": 12}) < net.flops(None)


def test_new_layer_kind_is_reordered_with_its_group(affine_kind):
    x = torch.randn(2, 3, 16, 16)
    net = _affine_net(x)
    with torch.no_grad():
        net.graph_module.aff1.weight.copy_(torch.linspace(0.1, 1.6, 16))  # ascending: reordering must flip it
        net.set_config(None)
        before = net(x)
    perms = compress.reorder_channels_(net, "bn")  # |weight| of the group's "feat" layers
    assert perms["conv1"] == list(range(15, -1, -1))
    torch.testing.assert_close(net.graph_module.aff1.weight.detach(), torch.linspace(1.6, 0.1, 16))
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)  # full width: the same function
        cfg = {"conv1": 8, "conv2": 12}
        net.set_config(cfg)
        torch.testing.assert_close(compress.extract_subnet(net, cfg)(x), net(x), rtol=0, atol=1e-6)
    assert compress.extract_subnet(net, cfg).aff1.weight.detach().min() >= 0.85  # the larger half kept


def test_tracked_layer_without_a_kind_is_refused_by_name(affine_kind):
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(UnsupportedOpError, match="register_layer_kind") as err:
        compress.SlimmableNetwork(AffineNet(UnslicedAffine), x)
    assert "'aff1'" in str(err.value) and "UnslicedAffine" in str(err.value)
    net = compress.SlimmableNetwork(AffineNet(UnslicedAffine), x, ignore=["aff1", "aff2", "aff3"])
    assert all(s.module not in ("aff1", "aff2", "aff3") for s in net.sites)


def test_register_layer_kind_checks_its_entry(affine_kind):
    with pytest.raises(InvalidParameterError, match="replace=True"):
        register_layer_kind(AFFINE)
    with pytest.raises(InvalidParameterError, match="kind.roles"):
        register_layer_kind(LayerKind("x", ChannelAffine, (), _affine_forward, _affine_slice, _affine_permute))
    with pytest.raises(InvalidParameterError, match="kind.slice"):
        register_layer_kind(LayerKind("x", ChannelAffine, ("feat",), _affine_forward, None, _affine_permute))
    assert "x" not in LAYER_KINDS
    assert register_layer_kind(AFFINE, replace=True) is AFFINE and list(LAYER_KINDS)[-1] == "channel_affine"


def test_no_kind_registered_outside_the_fixture():
    assert "channel_affine" not in LAYER_KINDS and class_key(ChannelAffine(1)) not in EXTRA_LEAF_MODULES
    assert find_layer_kind(ChannelAffine(1)) is None
    assert [k.name for k in map(find_layer_kind, (nn.Conv2d(1, 1, 1), nn.BatchNorm1d(2), nn.LayerNorm(3)))] == \
        ["conv", "batch_norm", "layer_norm"]


class Shuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.head, self.tail = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), self.b(x)], 1)
        n, c, h, w = y.size()
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        p, q = y.chunk(2, dim=1)
        return self.head(p) + self.tail(q)


def test_sites_are_public_and_identify_each_sliced_dim():
    net = compress.SlimmableNetwork(Shuffle(), torch.randn(1, 3, 8, 8), divisor=2)
    kinds = {s.kind for s in net.sites}
    assert kinds == {"module", "split", "permute"}
    (perm_site,) = [s for s in net.sites if s.kind == "permute"]
    perm = net.permutation(perm_site.module)
    assert sorted(perm.tolist()) == list(range(16)) and perm.tolist() == [v for k in range(8) for v in (k, 8 + k)]
    with pytest.raises(ValueError):
        perm[0] = 3  # read-only
    assert net.site("split", "_slim_split_0", 1).atoms.shape == (8,)
    assert net.site("module", "head", "in") == net.site("module", "head", "in")
    with pytest.raises(InvalidParameterError, match="closest"):
        net.site("module", "head", "out_channels")
    with pytest.raises(InvalidParameterError, match="permutation"):
        net.permutation("head")
    masks = net.live_masks({"a": 6})
    assert list(masks) == list(net.sites)
    assert masks[net.site("module", "a", "out")].tolist() == [True] * 6 + [False] * 2
    # a group's members list the sites holding it
    assert "a:out" in net.space.groups[net.space.index["a"]].members
