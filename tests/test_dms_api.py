"""compress.dms end to end on real images (FLOPs budget), and its bad inputs."""

import pytest
import torch

from compress import InvalidParameterError, count_flops, dms
from compress.data import SHIPPED_CIFAR, TensorLoader, load_image_folder
from compress.dms import DMSSettings
from compress.models import cifar_resnet


@pytest.fixture(scope="module")
def loaders():
    data = load_image_folder(SHIPPED_CIFAR, "test")
    return TensorLoader(data.subset(30), 50, train=True), TensorLoader(data.subset(20, offset=30), 100)


def test_dms_flops_budget_end_to_end(loaders, tmp_path):
    train, val = loaders
    torch.manual_seed(0)
    model = cifar_resnet(20)
    x = torch.zeros(1, 3, 32, 32)
    full = count_flops(model, x).total
    res = dms(model, flops=0.45 * full, train_loader=train, val_loader=val, pipeline="scratch", train_epochs=0.5,
              settings=DMSSettings(epochs=3, lambda_resource=5.0), work_dir=tmp_path, progress=False,
              log=lambda s: None)
    assert res.flops <= 0.45 * full
    assert count_flops(res.subnet, x).total == res.flops
    assert res.measured_ms > 0 and 0 <= res.top1 <= 100
    report = res.export_onnx(tmp_path / "dms.onnx")
    assert report.max_abs_diff <= report.atol + report.rtol
    assert (tmp_path / "result.json").exists()


def test_dms_bad_inputs(loaders):
    train, val = loaders
    with pytest.raises(InvalidParameterError, match="Known: pretrained, scratch, search_only"):
        dms(cifar_resnet(8), flops=1e6, train_loader=train, val_loader=val, pipeline="nas")
    with pytest.raises(InvalidParameterError, match="exactly one budget"):
        dms(cifar_resnet(8), train_loader=train, val_loader=val)
