"""ONNX export: onnx.checker, onnxruntime agreement, dynamic batch, atomic writes, clear errors."""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import compress


@pytest.fixture(scope="module")
def subnet(resnet18_net):
    _, x, net = resnet18_net
    return compress.extract_subnet(net, net.space.random_config(2)), x


def test_export_matches_onnxruntime_at_other_batch_sizes(subnet, tmp_path):
    sub, x = subnet
    path = tmp_path / "sub.onnx"
    report = compress.export_onnx(sub, x, path)
    assert path.exists() and report.path == str(path)
    assert report.batch_sizes_checked == [2, 3] and report.max_abs_diff < 1e-4
    onnx.checker.check_model(onnx.load(str(path)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = torch.randn(5, 3, 64, 64)
    (got,) = session.run(None, {"input": batch.numpy()})
    with torch.no_grad():
        expected = sub(batch).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    # the exported graph has the slimmed sizes, not the original ones
    inits = {i.name: tuple(i.dims) for i in onnx.load(str(path)).graph.initializer}
    assert sub.conv1.out_channels in {d[0] for d in inits.values() if len(d) == 4}
    assert (64, 3, 7, 7) not in inits.values() or sub.conv1.out_channels == 64
    assert [f for f in os.listdir(tmp_path) if f != "sub.onnx"] == []


def test_unwritable_paths(subnet, tmp_path):
    sub, x = subnet
    with pytest.raises(compress.ExportError, match="does not exist"):
        compress.export_onnx(sub, x, tmp_path / "missing" / "sub.onnx")
    with pytest.raises(compress.ExportError, match="is a directory"):
        compress.export_onnx(sub, x, tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        compress.export_onnx(sub, x, tmp_path / "file" / "sub.onnx")


def test_read_only_folder(subnet, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    sub, x = subnet
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(compress.ExportError, match="permission denied"):
        compress.export_onnx(sub, x, ro / "sub.onnx")


def test_mismatch_leaves_nothing_on_disk(subnet, tmp_path, monkeypatch):
    sub, x = subnet
    real_run = ort.InferenceSession.run

    def corrupted(self, *a, **k):
        return [o + 1.0 for o in real_run(self, *a, **k)]

    monkeypatch.setattr(ort.InferenceSession, "run", corrupted)
    with pytest.raises(compress.ExportMismatchError, match="not written"):
        compress.export_onnx(sub, x, tmp_path / "sub.onnx")
    assert os.listdir(tmp_path) == []


def test_export_restores_train_mode(subnet, tmp_path):
    sub, x = subnet
    sub.train()
    compress.export_onnx(sub, x, tmp_path / "sub.onnx")
    assert all(m.training for m in sub.modules())
    sub.eval()
