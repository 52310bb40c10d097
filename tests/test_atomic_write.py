"""One atomic writer: every host file gets the mode open(path, "w") would give, is fsynced and renamed into place,
leaves no temporary file on error and turns an OSError into a WriteError naming the path and the OS's reason.
The standalone board profiler keeps a stdlib copy (it cannot import compress) that must behave the same."""

import errno
import importlib.util
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from torch import nn

import compress
from compress import io as cio

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "profile_device.py"


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    try:
        yield lambda mask: os.umask(mask)
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _standalone():
    """The board script loaded from tools/ as the board runs it (no compress import)."""
    spec = importlib.util.spec_from_file_location("standalone_profile_device", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _host_write(path, data):
    cio.save_json(data, path, indent=None)


def _board_write(path, data):
    _standalone().write_json_atomic(str(path), data)


def _text_write(path, data):
    cio.save_text(json.dumps(data), path)


WRITERS = {"host": _host_write, "board": _board_write, "text": _text_write}

# Where a plain write_text is right: a test harness that writes damaged files on purpose.
PLAIN_WRITES_ALLOWED = {"predictors/conformance.py"}


def test_no_shipped_code_writes_a_file_in_place():
    """Reports, state and markers of the SDK, its benchmarks, tools and examples go through the atomic writer: a
    run stopped mid-write must not leave a half-written file that a resumed run (or a reader) takes as whole."""
    offenders = []
    for folder in ("compress", "predictors", "devices", "benchmarks", "tools", "examples"):
        for py in sorted((ROOT / folder).rglob("*.py")):
            rel = py.relative_to(ROOT).as_posix()
            if rel in PLAIN_WRITES_ALLOWED:
                continue
            for n, line in enumerate(py.read_text().splitlines(), 1):
                if ".write_text(" in line or ".write_bytes(" in line:
                    offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "use compress.io.save_text / save_json / atomic_write:\n" + "\n".join(offenders)


def test_tools_script_is_the_devices_script():
    """tools/profile_device.py is what users copy to a board; it must be devices/profile_device.py itself."""
    assert SCRIPT.read_bytes() == (ROOT / "devices" / "profile_device.py").read_bytes()
    source = SCRIPT.read_text()
    assert "import compress" not in source and "from compress" not in source


def test_the_standalone_script_does_not_import_compress():
    import sys

    before = {m for m in sys.modules if m == "compress" or m.startswith("compress.")}
    _standalone()
    after = {m for m in sys.modules if m == "compress" or m.startswith("compress.")}
    assert after == before


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_mode_follows_the_umask_like_open(writer, mask, mode, umask, tmp_path):
    umask(mask)
    target = tmp_path / "t.json"
    WRITERS[writer](target, {"a": 1})
    with open(tmp_path / "plain.json", "w") as f:  # what a plain open gives, for comparison
        f.write("{}")
    assert _mode(target) == mode == _mode(tmp_path / "plain.json")
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.umask(mask) == mask  # reading the umask did not change it


@pytest.mark.parametrize("writer", WRITERS)
def test_mode_of_a_replaced_file_is_reset(writer, umask, tmp_path):
    target = tmp_path / "t.json"
    target.write_text("old")
    os.chmod(target, 0o600)
    WRITERS[writer](target, {"a": 2})
    assert _mode(target) == 0o644


@pytest.mark.parametrize("writer", WRITERS)
def test_content_is_replaced_atomically(writer, tmp_path):
    target = tmp_path / "t.json"
    target.write_text(json.dumps({"v": "old"}))
    old_inode = os.stat(target).st_ino
    with open(target) as reader:  # a reader holding the old file keeps reading the old, whole file
        WRITERS[writer](target, {"v": "new" * 1000})
        assert json.loads(reader.read()) == {"v": "old"}
    assert os.stat(target).st_ino != old_inode  # renamed into place, not rewritten in place
    assert json.loads(target.read_text()) == {"v": "new" * 1000}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


@pytest.mark.parametrize("writer", WRITERS)
def test_failed_write_leaves_no_temp_file_and_the_old_content(writer, tmp_path):
    target = tmp_path / "t.json"
    target.write_text('{"v": "old"}')
    with pytest.raises(TypeError, match="not JSON serializable"):  # fails half-way through the dump
        WRITERS[writer](target, {"a": list(range(10000)), "b": object()})
    assert target.read_text() == '{"v": "old"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


@pytest.mark.parametrize("writer", WRITERS)
def test_disk_full_names_the_path_and_the_reason(writer, tmp_path, monkeypatch):
    target = tmp_path / "t.json"
    target.write_text('{"v": "old"}')

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as info:
        WRITERS[writer](target, {"v": "new"})
    monkeypatch.undo()
    assert str(target) in str(info.value) and "No space left on device" in str(info.value)
    assert info.value.errno == errno.ENOSPC and "while flushing" in str(info.value)
    assert target.read_text() == '{"v": "old"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


@pytest.mark.parametrize("writer", WRITERS)
def test_parent_that_cannot_be_created(writer, tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    target = tmp_path / "file" / "sub" / "t.json"
    with pytest.raises(OSError) as info:
        WRITERS[writer](target, {"a": 1})
    assert str(target) in str(info.value) and "Not a directory" in str(info.value)
    assert info.value.errno == errno.ENOTDIR
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("writer", WRITERS)
def test_missing_parent_is_created(writer, umask, tmp_path):
    target = tmp_path / "a" / "b" / "t.json"
    WRITERS[writer](target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1} and _mode(target) == 0o644


def test_host_errors_are_write_errors_with_advice(tmp_path, monkeypatch):
    target = tmp_path / "t.json"

    def read_only(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(compress.WriteError, match=r"Read-only file system \(EROFS\).*pass a path on a writable"):
        cio.save_json({"a": 1}, target)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(compress.WriteError) as info:
        cio.save_json({"a": 1}, tmp_path)  # a folder
    assert isinstance(info.value, OSError) and isinstance(info.value, compress.CompressError)
    assert "Create the folder first" not in str(info.value)


def test_an_input_the_writer_reads_is_not_reported_as_the_output(tmp_path):
    """write_bundle reads the ONNX files it packs: a missing one is that file's FileNotFoundError."""
    import devices

    with pytest.raises(FileNotFoundError) as info:
        devices.write_bundle({"m": tmp_path / "missing.onnx"}, {"input": [1, 3, 8, 8]}, tmp_path / "b.zip")
    assert not isinstance(info.value, compress.WriteError)
    assert list(tmp_path.iterdir()) == []


def test_errors_of_the_writer_pass_through_unchanged(tmp_path):
    def write(tmp):
        raise compress.ExportError("the exporter's own words")

    with pytest.raises(compress.ExportError, match="the exporter's own words") as info:
        cio.atomic_write(tmp_path / "x.onnx", write)
    assert not isinstance(info.value, compress.WriteError)
    assert list(tmp_path.iterdir()) == []


def test_current_umask_reads_without_changing(umask):
    for mask in (0o022, 0o077, 0o002):
        umask(mask)
        assert cio.current_umask() == mask and cio.default_file_mode() == 0o666 & ~mask
        assert os.umask(mask) == mask


# ---- every host artifact gets 0644 under umask 022 ------------------------------------------------------------------
def test_onnx_export_mode(umask, tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    report = compress.export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    assert _mode(report.path) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_onnx_export_to_an_unwritable_place_is_an_export_error(tmp_path, monkeypatch):
    def read_only(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))

    monkeypatch.setattr(os, "replace", read_only)
    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    with pytest.raises(compress.ExportError, match="Read-only file system") as info:
        compress.export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    assert isinstance(info.value.__cause__, compress.WriteError)
    assert list(tmp_path.iterdir()) == []


def test_result_json_mode(umask, tmp_path):
    result = compress.SlimResult(subnet=nn.Identity(), config={"g": 4}, flops=10, predicted_ms=None,
                                 measured_ms=1.5, top1=None, budget=2.0, unit="ms", path=[{"config": {"g": 4}}],
                                 example_inputs=(torch.zeros(1),))
    result.save(tmp_path / "result.json")
    assert _mode(tmp_path / "result.json") == 0o644
    assert json.loads((tmp_path / "result.json").read_text())["measured_ms"] == 1.5


def test_checkpoint_mode(umask, tmp_path):
    path = compress.io.save_checkpoint({"w": torch.arange(3)}, tmp_path / "supernet.pt")
    assert _mode(path) == 0o644
    assert torch.equal(compress.io.load_checkpoint(path)["w"], torch.arange(3))


def test_latency_table_mode(umask, tmp_path):
    from predictors import LatencyTable

    table = LatencyTable({"cpu": "x"}, [{"model": "m", "median_ms": 1.0, "kernels": []}], {})
    table.save(tmp_path / "t.json")
    assert _mode(tmp_path / "t.json") == 0o644
    assert LatencyTable.load(tmp_path / "t.json").records == table.records
    assert "\n" not in (tmp_path / "t.json").read_text()  # the one-line format profile_device.py writes too


def test_bundle_mode(umask, tmp_path):
    import devices

    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    compress.export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    bundle = devices.write_bundle({"m": tmp_path / "m.onnx"}, {"input": [1, 3, 8, 8]}, tmp_path / "b.zip")
    assert _mode(bundle) == 0o644
