"""CIFAR-sized networks built from torchvision's own blocks, small enough to train on a 2-core CPU.

``cifar_resnet`` stacks torchvision's ``BasicBlock`` (ResNet-20 at depth 20: 3 stages of 3 blocks, widths
16/32/64); ``cifar_mobilenet_v2`` is torchvision's ``MobileNetV2`` with strides suited to 32 x 32 inputs.
"""

from __future__ import annotations

from typing import Callable

from torch import nn
from torchvision.models import MobileNetV2
from torchvision.models.resnet import BasicBlock

from compress.errors import InvalidParameterError, check_parameter


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (3x3 stem, three stages, global pool, linear) from torchvision BasicBlocks."""

    def __init__(self, blocks_per_stage: int = 3, widths: tuple[int, int, int] = (16, 32, 64),
                 num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], widths[0]
        for s, w in enumerate(widths):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if s > 0 and b == 0 else 1
                down = None
                if stride != 1 or cin != w:
                    down = nn.Sequential(nn.Conv2d(cin, w, 1, stride, bias=False), nn.BatchNorm2d(w))
                blocks.append(BasicBlock(cin, w, stride, down))
                cin = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def cifar_resnet(depth: int = 20, width: float = 1.0, num_classes: int = 10) -> CifarResNet:
    """ResNet-``depth`` for 32 x 32 inputs (depth = 6n + 2), stage widths 16/32/64 times ``width``."""
    check_parameter(isinstance(depth, int) and depth >= 8 and (depth - 2) % 6 == 0, "depth", "cifar_resnet",
                    "an int 6n + 2 (8, 14, 20, 32, 44, 56, ...)", depth)
    widths = tuple(max(8, int(round(w * width / 8)) * 8) if width != 1.0 else w for w in (16, 32, 64))
    return CifarResNet((depth - 2) // 6, widths, num_classes)


CIFAR_MBV2_SETTING = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
                      [6, 160, 3, 2], [6, 320, 1, 1]]


def cifar_mobilenet_v2(width_mult: float = 0.5, num_classes: int = 10) -> MobileNetV2:
    """torchvision MobileNetV2 for 32 x 32 inputs: the stride-2 stem, then strides 1, 1, 2, 2, 1, 2, 1."""
    check_parameter(isinstance(width_mult, (int, float)) and width_mult > 0, "width_mult", "cifar_mobilenet_v2",
                    "a positive float", width_mult)
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult, inverted_residual_setting=CIFAR_MBV2_SETTING)


MODELS: dict[str, Callable[..., nn.Module]] = {"cifar_resnet20": cifar_resnet,
                                               "cifar_mobilenet_v2": cifar_mobilenet_v2}


def build_model(name: str, **kwargs) -> nn.Module:
    """A built-in model by name (see ``MODELS``)."""
    if name not in MODELS:
        raise InvalidParameterError(f"Unknown model {name!r}. Built-in models: {sorted(MODELS)}.")
    return MODELS[name](**kwargs)
