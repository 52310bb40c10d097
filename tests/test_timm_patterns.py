"""Patterns from timm families that failed the zoo check, each on a small model of our own: in-place ops called
for their effect (NF-Net), channel counts baked into a reshape (EdgeNeXt), a channels-last functional layer norm
(MetaFormer / ConvFormer), and models built for one input size (Visformer). Every test failed before its fix."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compress
from compress.verify import verify_model


# ---- in-place ops whose result is dropped still act on their input (timm NF-Net's skipinit gain, GammaAct) ----
INPLACE_EFFECTS = {
    "method mul_": lambda m, t: t.mul_(m.gain),
    "F.relu inplace=True": lambda m, t: F.relu(t, inplace=True),
    "F.hardtanh positional inplace": lambda m, t: F.hardtanh(t, -0.1, 0.1, True),
    "torch.sigmoid_": lambda m, t: torch.sigmoid_(t),
    "nn.ReLU(inplace=True)": lambda m, t: m.act(t),
}


class EffectOnlyBlock(nn.Module):
    """A residual block whose branch is changed by an in-place op whose result is never read."""

    def __init__(self, effect) -> None:
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 8, 1)
        self.gain = nn.Parameter(torch.tensor(0.25))
        self.act = nn.ReLU(inplace=True)
        self.effect = effect

    def forward(self, x):
        x = self.stem(x)
        out = self.conv(x)
        self.effect(self, out)  # result dropped: only the in-place change of `out` matters
        return self.head(out * 0.5 + x).mean((2, 3))


@pytest.mark.parametrize("effect", list(INPLACE_EFFECTS), ids=list(INPLACE_EFFECTS))
def test_an_inplace_op_whose_result_is_unused_is_kept(effect):
    torch.manual_seed(0)
    model = EffectOnlyBlock(INPLACE_EFFECTS[effect]).eval()
    x = torch.randn(1, 3, 16, 16)
    rep = verify_model(model, x, n_random=1, onnx=False)
    assert rep.ok, rep.error
    assert rep.max_vs_original == 0.0
    assert rep.slimmable_share > 0.5


class TwoBlocks(nn.Module):
    """Two residual blocks; the first scales its branch in place (the result dropped), as NF-Net does."""

    def __init__(self, skip_second: bool = False) -> None:
        super().__init__()
        self.stem, self.c1, self.c2 = (nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                                       nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Conv2d(8, 4, 1)
        self.gain = nn.Parameter(torch.tensor(0.25))
        self.skip_second = skip_second

    def forward(self, x):
        x = self.stem(x)
        b = self.c1(x)
        b.mul_(self.gain)
        x = x + b
        if not self.skip_second:  # a Python flag: the traced graph has the block or not
            x = x + self.c2(x)
        return self.head(x).mean((2, 3))


def test_removing_a_block_keeps_the_inplace_ops_of_the_others():
    from compress.space.trace import trace_model
    from compress.subnet.depth import remove_blocks_

    torch.manual_seed(0)
    model, x = TwoBlocks().eval(), torch.randn(1, 3, 12, 12)
    gm = trace_model(model, (x,))
    adds = [n.name for n in gm.graph.nodes if n.name.startswith("add")]
    assert remove_blocks_(gm, {adds[1]}) == 1
    reference = TwoBlocks(skip_second=True).eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(gm(x), reference(x), atol=1e-6)
    assert "mul_" in gm.code


# ---- a channel count read from a shape sizes a dim holding other channels (timm EdgeNeXt's XCA) ------------
class CountFromInput(nn.Module):
    """Tokens (B, N, C) through a branch whose channels are not tracked (cumsum has no handler), reshaped with the
    count C read from the tokens: at a narrower C the reshape of the full-width branch fails."""

    def __init__(self, own_count: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.fc, self.proj = nn.Linear(16, 16), nn.Linear(16, 16)
        self.mlp1, self.mlp2 = nn.Linear(16, 64), nn.Linear(64, 16)
        self.own_count = own_count

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)  # (B, N, C)
        B, N, C = t.shape
        h = self.fc(t) * C ** -0.5  # the count as a number (an attention scale): follows the config, no size
        if not self.own_count:
            h = torch.cumsum(h, dim=-1)  # not understood: h stays at full width
        t = t + self.proj(h.reshape(B, N, C))
        return self.mlp2(F.gelu(self.mlp1(t))).mean(1)


def test_a_count_read_from_a_shape_freezes_the_channels_it_counts_when_it_sizes_others():
    torch.manual_seed(0)
    model, x = CountFromInput().eval(), torch.randn(1, 3, 8, 8)
    net = compress.SlimmableNetwork(model, x)
    stream = net.space.groups[net.space.index["stem"]]
    assert stream.frozen
    assert "reshape at node" in stream.frozen_reason and "takes the channel count read at node" in \
        stream.frozen_reason and "does not hold those channels" in stream.frozen_reason
    rep = verify_model(model, x, n_random=1, onnx=False)
    assert rep.ok, rep.error
    assert rep.slimmable_share > 0.3  # the MLP's hidden channels still slim


def test_a_count_read_from_a_shape_that_sizes_its_own_channels_stays_slimmable():
    torch.manual_seed(0)
    model, x = CountFromInput(own_count=True).eval(), torch.randn(1, 3, 8, 8)
    net = compress.SlimmableNetwork(model, x)
    assert not net.space.groups[net.space.index["stem"]].frozen
    rep = verify_model(model, x, n_random=2, onnx=False)
    assert rep.ok, rep.error
    assert rep.slimmable_share > 0.7


class FixedScale(nn.Module):
    """A leaf layer scaling by a per-channel tensor: with a (wrong) pass-through handler it cannot run narrower."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 16).view(1, 16, 1, 1))

    def forward(self, x):
        return x * self.scale


class WithFixedScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.s, self.c2 = nn.Conv2d(3, 16, 3), FixedScale(), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.c2(self.s(self.c1(x))).mean((2, 3))


def test_a_network_that_cannot_run_narrower_names_the_node_not_the_inputs():
    from compress.space import ops
    from compress.space.trace import EXTRA_LEAF_MODULES, class_key

    key = class_key(FixedScale())
    ops.register_module(key, lambda p, n, mod, args, kwargs, value: ops.passthrough(p, n, args, kwargs, value))
    try:
        net = compress.SlimmableNetwork(WithFixedScale().eval(), torch.randn(1, 3, 8, 8))
        with pytest.raises(compress.errors.UnsupportedOpError) as info:
            net.flops_model()
    finally:
        ops.MODULE_HANDLERS.pop(key)
        EXTRA_LEAF_MODULES.discard(key)
    msg = str(info.value)
    assert "At the smallest config" in msg and "node 's'" in msg and "FixedScale 's'" in msg
    assert "must match the size" in msg and "ignore=" in msg and "count_flops" not in msg


# ---- a channels-last F.layer_norm with the module's own weight, and x ** 2 (timm MetaFormer / ConvFormer) -----
class ChannelsLastNorm(nn.Module):
    """timm's LayerNorm2dNoBias pattern: traced into, F.layer_norm over the last dim of a permuted tensor."""

    def __init__(self, channels: int, keywords: bool) -> None:
        super().__init__()
        self.normalized_shape = (channels,)
        self.weight = nn.Parameter(torch.rand(channels) + 0.5)
        self.bias = nn.Parameter(torch.randn(channels) * 0.1)
        self.keywords = keywords

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        if self.keywords:
            x = F.layer_norm(x, normalized_shape=self.normalized_shape, weight=self.weight, bias=None, eps=1e-6)
        else:
            x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, 1e-6)
        return x.permute(0, 3, 1, 2)


class MetaFormerBlock(nn.Module):
    def __init__(self, keywords: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = ChannelsLastNorm(16, keywords)
        self.fc1, self.fc2 = nn.Conv2d(16, 48, 1), nn.Conv2d(48, 16, 1)
        self.scale = nn.Parameter(torch.tensor(0.8))
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        h = self.fc1(self.norm(x))
        h = self.scale * F.relu(h) ** 2 + torch.square(h) * 0.1  # StarReLU / SquaredReLU
        x = x + self.fc2(h)
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("keywords", [False, True], ids=["positional", "keywords"])
def test_a_channels_last_functional_layer_norm_slims_with_its_weight(keywords):
    torch.manual_seed(0)
    model, x = MetaFormerBlock(keywords).eval(), torch.randn(1, 3, 8, 8)
    net = compress.SlimmableNetwork(model, x)
    assert net.coupling.unknown_ops == {}
    assert not net.space.groups[net.space.index["stem"]].frozen
    rep = verify_model(model, x, n_random=2, onnx=True)
    assert rep.ok, rep.error
    assert rep.slimmable_share > 0.7
    sub = compress.extract_subnet(net, net.space.min_config())
    assert sub.norm.weight.shape[0] == net.space.min_config()["stem"]  # the parameter itself is cut


# ---- a model built for one input size (timm Visformer's position tables) -------------------------------------
def test_the_timm_zoo_builds_a_model_for_its_input_size():
    pytest.importorskip("timm")
    from compress.verify import timm_zoo_model

    model, x = timm_zoo_model("visformer_tiny")  # built for 224 by default: "Input height (32) doesn't match"
    assert model.img_size == (64, 64) and x.shape == (1, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (1, 10)
    model, x = timm_zoo_model("resnet18")  # a class without img_size is built as before
    assert x.shape == (1, 3, 64, 64)
