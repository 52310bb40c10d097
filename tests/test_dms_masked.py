"""DMS masks on real networks: blocks found, soft FLOPs against fvcore, masked forward against the extracted subnet."""

import pytest
import torch
import torchvision

from compress import SlimmableNetwork, count_flops
from compress.search.dms.masked import DMSNetwork, extract_with_depth
from compress.train.models import cifar_mobilenet_v2, cifar_resnet

X = torch.zeros(1, 3, 32, 32)


def _harden(dms, factor=1e4):
    for t in list(dms.channel_topk) + list(dms.block_topk):
        t.lam = factor * t.n


def _set_ratio(t, k):
    """Pruning ratio that keeps exactly k of t.n elements."""
    with torch.no_grad():
        t.a.fill_((t.n - k) / t.n)


def _randomize(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def test_stages_of_removable_blocks():
    dms = DMSNetwork(SlimmableNetwork(cifar_resnet(20), X))
    assert [len(s) for s in dms.stages] == [3, 2, 2]  # first blocks of stages 2 and 3 downsample: kept
    dms = DMSNetwork(SlimmableNetwork(cifar_mobilenet_v2(1.0), X))
    assert [len(s) for s in dms.stages] == [1, 2, 3, 2, 2]
    dms = DMSNetwork(SlimmableNetwork(torchvision.models.resnet18(num_classes=10), X))
    assert [len(s) for s in dms.stages] == [2, 1, 1, 1]


@pytest.mark.parametrize("build", [lambda: cifar_resnet(20), lambda: cifar_mobilenet_v2(1.0),
                                   lambda: torchvision.models.resnet18(num_classes=10)],
                         ids=["cifar_resnet20", "cifar_mobilenet_v2", "resnet18"])
def test_hard_masks_equal_the_extracted_subnet(build):
    torch.manual_seed(0)
    net = SlimmableNetwork(build(), X)
    _randomize(net)
    dms = DMSNetwork(net)
    _harden(dms)
    cfg = net.space.uniform_config(0.5)
    for gid, t in zip(dms.group_ids, dms.channel_topk):
        _set_ratio(t, cfg[net.space.groups[gid].name])
    for t in dms.block_topk:
        _set_ratio(t, max(t.n - 1, 0))  # drop one block per stage (the last: equal importances)
    assert dms.hard_widths() == cfg
    removed = dms.removed_blocks()
    assert len(removed) == len(dms.stages)
    sub = extract_with_depth(net, cfg, removed)
    fv = count_flops(sub, X).total
    assert float(dms.soft_flops()) == pytest.approx(fv, rel=1e-6)
    feats = dms.features_of_widths([net.space.widths(cfg)], removed)  # the surrogate's input, blocks dropped
    assert float(feats.sum()) + dms.constant == pytest.approx(fv, rel=1e-6)
    dms.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dms(x), sub(x), rtol=1e-4, atol=1e-4)
    n_full = len(list(extract_with_depth(net, cfg, []).graph.nodes))
    assert len(list(sub.graph.nodes)) < n_full  # the removed blocks are gone from the graph


def test_soft_flops_gradient_reaches_every_ratio():
    dms = DMSNetwork(SlimmableNetwork(cifar_resnet(20), X))
    for t in dms.channel_topk:  # blocks all kept (hard gates 1): every channel counts
        with torch.no_grad():
            t.a.fill_(0.3)
    dms.soft_flops().backward()
    grads = [p.grad for p in dms.structure_parameters()]
    assert all(g is not None and g.item() < 0 for g in grads)  # raising any pruning ratio lowers the cost


def test_finalize_orders_kept_channels_first():
    torch.manual_seed(0)
    net = SlimmableNetwork(cifar_resnet(8), X)
    _randomize(net)
    dms = DMSNetwork(net)
    _harden(dms)
    t = dms.channel_topk[0]
    with torch.no_grad():
        t.importance.copy_(torch.rand(t.n))
    _set_ratio(t, 8)
    dms.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        masked = dms(x)
    cfg, removed = dms.finalize_()
    sub = extract_with_depth(net, cfg, removed)
    with torch.no_grad():
        torch.testing.assert_close(sub(x), masked, rtol=1e-4, atol=1e-4)
