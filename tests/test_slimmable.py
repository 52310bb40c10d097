"""Slimmable execution: width 1.0 equals the original, extraction equals the in-place network,
gradients reach only the sliced part of the shared weights."""

import copy

import torch
import torchvision

import compress
from compress.slim.layers import slim_selection
from conftest import group_of


def test_max_config_equals_original(resnet18_net):
    model, x, net = resnet18_net
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=0, atol=1e-5)
        net.set_config(net.space.min_config())
        assert not torch.allclose(net(x), model(x))
        net.set_config(net.space.max_config())  # switching back restores the full network
        torch.testing.assert_close(net(x), model(x), rtol=0, atol=1e-5)


def test_building_leaves_the_users_model_untouched(resnet18_net):
    model, x, net = resnet18_net
    assert type(model.conv1) is torch.nn.Conv2d
    assert net.graph_module.conv1.weight.data_ptr() != model.conv1.weight.data_ptr()


def test_extraction_equals_dynamic_and_leaves_supernet_untouched(resnet18_net):
    _, x, net = resnet18_net
    before = copy.deepcopy(net.graph_module.state_dict())
    net.set_config(None)
    cfg = net.space.random_config(5)
    sub = compress.extract_subnet(net, cfg)
    assert net.config == net.space.max_config()
    for k, v in net.graph_module.state_dict().items():
        assert torch.equal(v, before[k]), k
    net.set_config(cfg)
    with torch.no_grad():
        torch.testing.assert_close(sub(x), net(x), rtol=0, atol=1e-5)
    net.set_config(None)
    # the subnet is made of ordinary layers whose attributes match their weights
    for m in sub.modules():
        assert not type(m).__name__.startswith("Slim")
        if isinstance(m, torch.nn.Conv2d):
            assert m.weight.shape == (m.out_channels, m.in_channels // m.groups, *m.kernel_size)
    n_sub = sum(p.numel() for p in sub.parameters())
    n_full = sum(p.numel() for p in net.parameters())
    assert n_sub < n_full
    assert sub.conv1.out_channels == cfg["conv1"]


def test_sgd_step_at_narrow_config_changes_only_the_slice():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    net = compress.SlimmableNetwork(model, x)
    net.train()
    cfg = net.space.uniform_config(0.5)
    net.set_config(cfg)
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    after = dict(net.named_parameters())
    conv = "graph_module.layer1.0.conv1.weight"
    k_out, k_in = cfg["layer1.0.conv1"], cfg["conv1"]
    changed = (after[conv] != before[conv])
    assert changed[:k_out, :k_in].any()
    assert not changed[k_out:].any() and not changed[:, k_in:].any()
    (stage4,) = group_of(net, ("module", "fc", "in"))  # fc reads the stage-4 residual stream
    fc = "graph_module.fc.weight"
    assert not (after[fc] != before[fc])[:, cfg[stage4]:].any()
    assert (after[fc] != before[fc])[:, :cfg[stage4]].any()
    for name, p in after.items():
        assert p.shape == before[name].shape  # shared full-width weights


def test_bn_running_stats_written_back_for_non_prefix_selection():
    model = torchvision.models.densenet121()
    x = torch.randn(4, 3, 64, 64)
    net = compress.SlimmableNetwork(model, x)
    name = "features.denseblock1.denselayer2.norm1"  # normalises cat(conv0 [64], denselayer1 [32])
    cfg = {"features.conv0": 32, "features.denseblock1.denselayer1.conv2": 16}
    net.set_config(cfg)
    bn = net.graph_module.get_submodule(name)
    assert isinstance(slim_selection(bn)["feat"], torch.Tensor)  # not a prefix: channels 0-31 and 64-79
    before = bn.running_mean.clone()
    net.train()
    with torch.no_grad():
        net(x)
    net.eval()
    moved = bn.running_mean != before
    kept = torch.zeros(96, dtype=torch.bool)
    kept[:32] = True
    kept[64:80] = True
    assert moved[kept].all() and not moved[~kept].any()
