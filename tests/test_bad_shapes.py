"""Catalogue, shapes: checked up front. The first train and val batches go through the model in prepare (size,
dtype, finiteness, and that the model runs on them); an unbatched example input (C, H, W) is named wherever a
model is run on example inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compress
import devices
from test_bad_parameters import batches, tiny_model


def conv_only() -> nn.Module:
    """No BatchNorm: torch runs its convs on an unbatched (C, H, W) input without complaint."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()


def search(fn, **kw):
    args = {"model": tiny_model(), "flops": 1e12, "train_loader": batches(), "val_loader": batches(),
            "progress": False, "log": lambda line: None, **kw}
    return fn(**args)


@pytest.mark.parametrize("fn", [compress.autoslim, compress.dms], ids=["autoslim", "dms"])
@pytest.mark.parametrize("kwargs, match", [
    ({"val_loader": batches(size=12)}, r"The val loader's images have shape \(3, 12, 12\) \(per image, batch "
                                       r"\(4, 3, 12, 12\)\), the model's example input \(3, 8, 8\).* Resize or crop"),
    ({"val_loader": batches(channels=1)}, r"The val loader's images have shape \(1, 8, 8\).*example input \(3, 8, 8\)"),
    ({"train_loader": [(torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8), torch.zeros(4, dtype=torch.long))]},
     r"The train loader's images are torch\.uint8, not floating point\. Convert them in the loader"),
    ({"val_loader": [(torch.full((4, 3, 8, 8), float("nan")), torch.zeros(4, dtype=torch.long))]},
     r"The val loader's first batch has 768 NaN or infinite values .* Fix the data"),
])
def test_first_batches_are_checked_before_anything_runs(fn, kwargs, match):
    with pytest.raises(compress.InputShapeError, match=match):
        search(fn, **kwargs)


def test_a_supernet_built_at_another_resolution_is_refused():
    net = compress.SlimmableNetwork(tiny_model(), torch.randn(1, 3, 16, 16))
    with pytest.raises(compress.InputShapeError, match=r"The train loader's images have shape \(3, 8, 8\) .*"
                                                       r"example input \(3, 16, 16\).*or build the SlimmableNetwork "
                                                       r"with example inputs of the loader's size"):
        compress.autoslim(net, flops=1e12, train_loader=batches(), val_loader=batches(), train=False,
                          progress=False, log=lambda line: None)


class BatchOfOne(nn.Module):
    """Runs at batch 1 only (flattens the whole batch into one row): the example input passes, a batch of 4 not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(self.conv(x).reshape(1, -1))


def test_a_model_that_fails_on_the_first_batch_is_named_up_front():
    with pytest.raises(compress.InputShapeError, match=r"BatchOfOne does not run on the inputs of the first train "
                                                       r"batch of shape \[\(4, 3, 8, 8\)\]"):
        search(compress.autoslim, model=BatchOfOne())


@pytest.mark.parametrize("call, where", [
    (lambda m, x: compress.SlimmableNetwork(m, x), ""),
    (lambda m, x: compress.count_flops(m, x), " for count_flops"),
    (lambda m, x: compress.export_onnx(m, x, "/tmp/never-written-unbatched.onnx"), " for export_onnx"),
    (lambda m, x: devices.get_device("torch-cpu").measure(m, x, min_runs=1), " for TorchCpuDevice.measure"),
], ids=["SlimmableNetwork", "count_flops", "export_onnx", "torch-cpu measure"])
def test_an_unbatched_example_input_is_named(call, where):
    with pytest.raises(compress.InputShapeError, match=rf"Sequential got unbatched inputs{where}: inputs of shape "
                                                       r"\[\(3, 8, 8\)\] reach '0' \(Conv2d\) as a 3-D tensor.* "
                                                       r"Add the batch dimension: x\.unsqueeze\(0\) \(shape \(1, 3, 8, "
                                                       r"8\)\)"):
        call(conv_only(), torch.randn(3, 8, 8))


def test_an_unbatched_batch_in_recalibration_is_named_and_the_statistics_kept():
    model = tiny_model().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(compress.InputShapeError, match=r"got unbatched inputs for a batch given to recalibrate_bn"):
        compress.recalibrate_bn(model, [torch.randn(3, 8, 8)])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_pre_hooks for m in model.modules())  # the check's hooks are gone


class PerSample(nn.Module):
    """Runs its conv on one sample at a time, on purpose: legal, not an unbatched input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.stack([self.conv(sample) for sample in x])


def test_a_model_that_loops_over_samples_is_not_refused():
    assert compress.count_flops(PerSample(), torch.randn(2, 3, 8, 8)).total == 2 * 4 * 27 * 36
