"""FLOPs: count_flops against hand counts, and the analytic per-config count against count_flops."""

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import compress
from compress import count_flops


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = y + self.dw(y)
        y = self.pool(y)
        return self.fc(torch.flatten(self.gap(y), 1) * 0.5)


def test_count_flops_matches_hand_count():
    n, h = 2, 8
    expected = {
        "conv": n * 8 * h * h * 3 * 9,  # multiply-adds, no bias
        "batch_norm": 2 * n * 8 * h * h,  # eval, affine
        "dw": n * 8 * h * h * 1 * 9,
        "add": n * 8 * h * h,
        "max_pool2d": n * 8 * 4 * 4 * 4,  # output elements x kernel area
        "adaptive_avg_pool2d": n * 8 * 4 * 4,  # input elements
        "mul": n * 8,
        "linear": n * 8 * 5,
    }
    report = count_flops(Small(), torch.randn(n, 3, h, h))
    assert report.total == sum(expected.values())
    assert report.by_operator["add"] == expected["add"]
    assert report.by_operator["max_pool2d"] == expected["max_pool2d"]


def test_count_flops_restores_train_mode():
    model = Small().train()
    count_flops(model, torch.randn(1, 3, 8, 8))
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "shufflenet_v2_x0_5", "densenet121"])
def test_analytic_flops_equal_fvcore_on_extracted_subnets(name):
    model = torchvision.models.get_model(name).eval()
    x = torch.randn(1, 3, 64, 64)
    net = compress.SlimmableNetwork(model, x)
    assert net.flops(net.space.max_config()) == count_flops(model, x).total
    configs = [net.space.min_config(), net.space.uniform_config(0.35)] + [net.space.random_config(s) for s in range(4)]
    fm = net.flops_model()
    batch = fm.flops_batch(configs)
    for cfg, f in zip(configs, batch):
        assert net.flops(cfg) == f
        assert f == count_flops(compress.extract_subnet(net, cfg), x).total


def test_flops_are_monotone_in_width(resnet18_net):
    _, _, net = resnet18_net
    fm = net.flops_model()
    ratios = np.linspace(0.125, 1.0, 8)
    flops = fm.flops_batch([net.space.uniform_config(float(r)) for r in ratios])
    assert np.all(np.diff(flops) > 0)
