"""Device registry, measurement protocol and errors."""

import pytest
import torch
from torch import nn

import compress
import devices


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "small.onnx"
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    compress.export_onnx(model.eval(), torch.randn(1, 3, 16, 16), path)
    return path


def test_registry():
    assert {"cpu", "torch-cpu", "board"} <= set(devices.list_devices())
    assert isinstance(devices.get_device("cpu", threads=1), devices.OrtCpuDevice)
    with pytest.raises(devices.UnknownDeviceError, match=r"Unknown device 'gpu'. Known devices: .*cpu"):
        devices.get_device("gpu")
    with pytest.raises(KeyError):
        devices.get_device("gpu")


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_threads_must_be_positive(threads):
    with pytest.raises(compress.InvalidParameterError, match="'threads' parameter"):
        devices.get_device("cpu", threads=threads)
    with pytest.raises(ValueError):
        devices.get_device("torch-cpu", threads=threads)


def test_ort_measurement_protocol(small_onnx):
    dev = devices.get_device("cpu", threads=1)
    m = dev.measure(small_onnx, {"input": [1, 3, 16, 16]})
    assert m.runs >= 50 and len(m.samples_ms) == m.runs
    assert m.p25_ms <= m.median_ms <= m.p75_ms
    assert m.fingerprint["threads"] == 1 and m.fingerprint["runtime"] == "onnxruntime"
    assert {"cpu", "cores", "runtime_version", "opt_level"} <= set(m.fingerprint)
    prof = dev.profile(small_onnx, {"input": [1, 3, 16, 16]}, min_runs=10)
    ops = [k["op"] for k in prof["kernels"]]
    assert any(op in ("Conv", "FusedConv") for op in ops)
    assert all(k["us"] >= 0 for k in prof["kernels"])


def test_torch_device_restores_threads():
    before = torch.get_num_threads()
    dev = devices.get_device("torch-cpu", threads=1)
    model = nn.Conv2d(3, 4, 3).train()
    m = dev.measure(model, torch.randn(1, 3, 8, 8), min_runs=10)
    assert m.runs >= 10 and torch.get_num_threads() == before and model.training


def test_board_cannot_be_timed_from_the_host():
    with pytest.raises(devices.DeviceUnavailableError, match="profile_device.py bundle.zip"):
        devices.get_device("board", threads=4).measure("x.onnx")
