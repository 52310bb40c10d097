"""A user with a custom layer registers a handler for it without editing the package (README, "The channel space")."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compress
from compress.space import ops, register_module
from compress.space.trace import EXTRA_LEAF_MODULES


class MySwish(nn.Module):  # a custom activation whose forward torch.fx would trace into an op the table lacks
    def forward(self, x):
        return torch.special.erf(x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.act, self.c2 = nn.Conv2d(3, 16, 3, padding=1), MySwish(), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.c2(self.act(self.c1(x))).mean((2, 3))


@pytest.fixture
def restore_tables():
    handlers, leaves = dict(ops.MODULE_HANDLERS), set(EXTRA_LEAF_MODULES)
    yield
    ops.MODULE_HANDLERS.clear()
    ops.MODULE_HANDLERS.update(handlers)
    EXTRA_LEAF_MODULES.clear()
    EXTRA_LEAF_MODULES.update(leaves)


def test_registering_a_custom_activation_makes_its_channels_slimmable(restore_tables):
    x = torch.randn(2, 3, 8, 8)
    before = compress.SlimmableNetwork(Net().eval(), x)
    assert "c1" in {g.name for g in before.space.frozen}  # expit is not understood: frozen, with the reason
    register_module(MySwish, ops.module_passthrough)
    net = compress.SlimmableNetwork(Net().eval(), x)
    assert "c1" in {g.name for g in net.space.free}
    cfg = net.space.min_config()
    net.set_config(cfg)
    assert torch.allclose(compress.extract_subnet(net, cfg)(x), net(x), atol=1e-6)
    assert net.flops(cfg) == compress.count_flops(compress.extract_subnet(net, cfg), x).total


def test_registration_errors_are_named(restore_tables):
    register_module(MySwish, ops.module_passthrough)
    with pytest.raises(compress.InvalidParameterError, match="replace=True"):
        register_module(MySwish, ops.module_passthrough)
    register_module(MySwish, ops.module_passthrough, replace=True)
    with pytest.raises(compress.InvalidParameterError, match="nn.Module subclass"):
        register_module(int, ops.module_passthrough)
    with pytest.raises(compress.InvalidParameterError, match="callable"):
        register_module(MySwish, "passthrough", replace=True)


class MulSwish(nn.Module):  # an element-wise layer that costs FLOPs (a multiply) inside its forward
    def forward(self, x):
        return x * torch.special.expit(x)


def test_a_pass_through_layer_with_flops_of_its_own_is_named_not_miscounted(restore_tables):
    """module_passthrough records no FLOPs: a layer that has some (fvcore counts its multiply) would drift at
    narrow configs; the analytic model's check at the smallest config names it instead."""
    class MulNet(Net):
        def __init__(self):
            super().__init__()
            self.act = MulSwish()

    register_module(MulSwish, ops.module_passthrough)
    net = compress.SlimmableNetwork(MulNet().eval(), torch.randn(2, 3, 8, 8))
    with pytest.raises(compress.FlopsMismatchError, match="does not count what fvcore counts"):
        net.flops()
