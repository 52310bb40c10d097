"""Channel reordering keeps the full-width function and puts important channels first."""

import torch
import torchvision

import compress
from conftest import randomize_bn


def test_reorder_keeps_function_and_sorts_by_bn_scale():
    model = randomize_bn(torchvision.models.resnet18()).eval()
    x = torch.randn(2, 3, 64, 64)
    net = compress.SlimmableNetwork(model, x)
    gamma_before = net.graph_module.get_submodule("layer1.0.bn1").weight.detach().abs().clone()
    perms = compress.reorder_channels_(net, "bn")
    assert set(perms) == set(net.space.max_config())
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=1e-4, atol=1e-4)
    gamma = net.graph_module.get_submodule("layer1.0.bn1").weight.detach().abs()
    assert torch.all(gamma[:-1] >= gamma[1:])  # a single-BN group is sorted by |gamma|
    torch.testing.assert_close(gamma, gamma_before[perms["layer1.0.conv1"]])
    # a narrow subnet keeps the largest-|gamma| channels
    sub = compress.extract_subnet(net, {"layer1.0.conv1": 16})
    kept = sub.get_submodule("layer1.0.bn1").weight.detach().abs()
    torch.testing.assert_close(kept, gamma_before.sort(descending=True).values[:16])


def test_reorder_l1_on_shufflenet_keeps_function():
    model = randomize_bn(torchvision.models.shufflenet_v2_x0_5()).eval()
    x = torch.randn(2, 3, 64, 64)
    net = compress.SlimmableNetwork(model, x)
    perms = compress.reorder_channels_(net, "l1")
    assert 0 < len(perms) <= len(net.space)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=1e-4, atol=1e-4)
        cfg = net.space.random_config(0)
        net.set_config(cfg)
        torch.testing.assert_close(compress.extract_subnet(net, cfg)(x), net(x), rtol=1e-5, atol=1e-5)
