"""Bad input gets a named error that says what was received and what to do."""

import pytest
import torch
import torchvision
from torch import nn

import compress


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:  # control flow on a tensor value cannot be traced
            return y
        return -y


def test_untraceable_model_names_the_problem():
    with pytest.raises(compress.TraceError, match=r"DataDependent.*control flow"):
        compress.SlimmableNetwork(DataDependent(), torch.randn(1, 3, 8, 8))


def test_untraceable_module_can_be_ignored():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 3, 1)
            self.inner = DataDependent()
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.head(self.inner(self.stem(x)))

    net = compress.SlimmableNetwork(Wrapper(), torch.randn(1, 3, 8, 8), ignore=["inner"])
    assert all(g.frozen for g in net.space.groups)


def test_wrong_input_shape():
    with pytest.raises(compress.InputShapeError, match=r"\[\(1, 1, 64, 64\)\]"):
        compress.SlimmableNetwork(torchvision.models.resnet18(), torch.randn(1, 1, 64, 64))


def test_inputs_of_the_wrong_type():
    with pytest.raises(compress.InputShapeError, match="Got list"):
        compress.SlimmableNetwork(torchvision.models.resnet18(), [[1, 2, 3]])


def test_ignore_entry_that_names_no_layer():
    with pytest.raises(compress.InvalidParameterError, match=r"'layer1.0.conv9'.*Closest.*layer1.0.conv1"):
        compress.SlimmableNetwork(torchvision.models.resnet18(), torch.randn(1, 3, 32, 32), ignore=["layer1.0.conv9"])


@pytest.mark.parametrize("divisor", [0, -8, 2.5])
def test_bad_divisor(divisor):
    with pytest.raises(compress.InvalidParameterError, match=r"'divisor' parameter of SlimmableNetwork"):
        compress.SlimmableNetwork(torchvision.models.resnet18(), torch.randn(1, 3, 32, 32), divisor=divisor)
