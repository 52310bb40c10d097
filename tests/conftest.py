import pytest
import torch
import torchvision

import compress


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Give BatchNorm layers non-trivial statistics and scales (random init has mean 0, var 1, gamma 1)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.1
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5
    return model


@pytest.fixture(scope="module")
def resnet18_net():
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.resnet18()).eval()
    x = torch.randn(2, 3, 64, 64)
    return model, x, compress.SlimmableNetwork(model, x)


def group_of(net: compress.SlimmableNetwork, key: tuple) -> set[str]:
    """Names of the groups holding the channels of one sliced dim, e.g. ("module", "conv1", "out")."""
    g, _ = net.positions(net.site(*key).atoms)
    return {net.space.groups[i].name for i in set(g.tolist())}
