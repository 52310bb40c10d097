"""Shared by the channel-rule tests: weights that make a wrong slice show, and the closeness they are judged by."""

from __future__ import annotations

import torch
from torch import nn


def randomize_norms(model: nn.Module) -> nn.Module:
    """Random norm statistics and scales (every 1-d float parameter and buffer), so that slicing the wrong channels
    shows in the output; the model is returned in eval mode."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.dtype.is_floating_point and t.ndim == 1:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "var" in name or "weight" in name
                        else torch.randn(t.shape, generator=g))
    return model.eval()


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal within 1e-5 of ``b``'s scale (at least 1)."""
    return float((a - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max()))


def check_slims(model: nn.Module, slimmable: list[str], x: torch.Tensor | None = None, reorders: bool = True,
                min_share: float | None = None, all_ops_known: bool = False):
    """The channel-rule checks: the groups named in ``slimmable`` are free; max == original; at min, random and
    uniform-0.5 configs the extracted subnet equals the in-place network and the analytic FLOPs equal the counted
    ones; reordering keeps the function (and moves something when ``reorders``). Returns the network."""
    from compress import SlimmableNetwork, count_flops, extract_subnet, reorder_channels_

    x = torch.randn(2, 3, 16, 16) if x is None else x
    model = randomize_norms(model)
    with torch.no_grad():
        ref = model(x)
    net = SlimmableNetwork(model, x, divisor=2)
    if all_ops_known:
        assert not net.coupling.unknown_ops, net.coupling.unknown_ops
    free = {g.name for g in net.space.free}
    for name in slimmable:
        assert name in free, f"{name} frozen: {net.space.summary()}"
    if min_share is not None:
        assert net.slimmable_share() > min_share
    with torch.no_grad():
        assert close(net(x), ref)
        for cfg in (net.space.min_config(), net.space.random_config(seed=3), net.space.uniform_config(0.5)):
            net.set_config(cfg)
            dyn = net(x)
            sub = extract_subnet(net, cfg)
            assert close(sub(x), dyn)
            assert net.flops(cfg) == count_flops(sub, x).total
        assert net.flops(net.space.min_config()) < net.flops(net.space.max_config())
        net.set_config(None)
        perms = reorder_channels_(net)
        if reorders:
            assert any(p != sorted(p) for p in perms.values())  # something moved
        assert close(net(x), ref)
    return net
