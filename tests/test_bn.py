"""BN recalibration against a direct computation of the statistics."""

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import compress


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6, momentum=0.3), nn.ReLU(), nn.Dropout(0.5),
                         nn.Flatten(), nn.LazyLinear(2))


def test_recalibration_matches_direct_statistics():
    model = _net()
    batches = [torch.randn(8, 3, 10, 10) * (i + 1) for i in range(5)]
    model(batches[0])  # materialise the lazy layer
    loader = [(b, torch.zeros(8)) for b in batches]
    seen = compress.recalibrate_bn(model, loader)
    assert seen == 40
    conv, bn = model[0], model[1]
    with torch.no_grad():
        feats = [conv(b).transpose(0, 1).reshape(6, -1).numpy().astype(np.float64) for b in batches]
    mean = np.mean([f.mean(1) for f in feats], axis=0)  # cumulative average of per-batch statistics
    var = np.mean([f.var(1, ddof=1) for f in feats], axis=0)
    np.testing.assert_allclose(bn.running_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.running_var.numpy(), var, rtol=1e-4)
    assert bn.momentum == 0.3
    assert model.training and bn.training  # modes restored (Sequential starts in train mode)


def test_state_restored_on_error():
    model = _net()
    model(torch.randn(2, 3, 10, 10))
    model.eval()

    def broken():
        yield torch.randn(4, 3, 10, 10)
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        compress.recalibrate_bn(model, broken())
    assert model[1].momentum == 0.3
    assert not any(m.training for m in model.modules())


def test_empty_loader_and_bad_num_batches():
    model = _net()
    with pytest.raises(compress.InvalidParameterError, match="yielded no batch"):
        compress.recalibrate_bn(model, [])
    with pytest.raises(compress.InvalidParameterError, match="num_batches"):
        compress.recalibrate_bn(model, [torch.randn(1, 3, 10, 10)], num_batches=0)


def test_recalibrated_slimmed_net_equals_its_extracted_subnet():
    model = torchvision.models.mobilenet_v2(num_classes=10)
    x = torch.randn(4, 3, 32, 32)
    net = compress.SlimmableNetwork(model, x)
    cfg = net.space.uniform_config(0.5)
    net.set_config(cfg)
    data = [torch.randn(8, 3, 32, 32) for _ in range(3)]
    compress.recalibrate_bn(net, data, num_batches=2)
    assert not net.training
    sub = compress.extract_subnet(net, cfg)
    with torch.no_grad():
        torch.testing.assert_close(sub(x), net(x), rtol=1e-5, atol=1e-5)
    # the subnet's statistics are the ones recalibrated on the narrow network
    ref = compress.extract_subnet(net, cfg)
    compress.recalibrate_bn(ref, data, num_batches=2)
    bn_sub = sub.get_submodule("features.1.conv.0.1")
    bn_ref = ref.get_submodule("features.1.conv.0.1")
    torch.testing.assert_close(bn_sub.running_mean, bn_ref.running_mean, rtol=1e-4, atol=1e-5)
