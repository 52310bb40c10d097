"""tools/profile_device.py: standalone (no torch), resumable, refuses unknown bundles."""

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import compress
import devices

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "profile_device.py"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundle")
    paths = {}
    for i, width in enumerate((8, 16, 24, 32, 40, 48)):
        model = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1))
        paths[f"m{i}"] = folder / f"m{i}.onnx"
        compress.export_onnx(model.eval(), torch.randn(1, 3, 48, 48), paths[f"m{i}"])
    return devices.write_bundle(paths, {"input": [1, 3, 48, 48]}, folder / "bundle.zip",
                                meta={"m0": {"family": "toy"}})


def _no_torch_env(tmp_path):
    """PYTHONPATH with a `torch` that cannot be imported, as on a board without torch."""
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('torch is not installed on this board')\n")
    return dict(os.environ, PYTHONPATH=str(fake))


def _run(args, env, **kw):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], env=env, capture_output=True, text=True,
                          **kw)


def test_runs_without_torch(bundle, tmp_path):
    env = _no_torch_env(tmp_path)
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "not installed" in check.stderr
    out = tmp_path / "board.json"
    proc = _run([bundle, "--out", out, "--threads", 1, "--min-runs", 5, "--batch", 4], env)
    assert proc.returncode == 0, proc.stderr
    assert "batch of 4 saved" in proc.stderr and "batch of 2 saved" in proc.stderr
    table = json.loads(out.read_text())
    assert [r["model"] for r in table["records"]] == [f"m{i}" for i in range(6)]
    assert table["records"][0]["meta"] == {"family": "toy"}
    assert table["fingerprint"]["threads"] == 1
    assert "[6/6]" in proc.stderr


def test_killed_run_resumes_without_losing_or_repeating(bundle, tmp_path):
    env = _no_torch_env(tmp_path)
    out = tmp_path / "board.json"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(bundle), "--out", str(out), "--min-runs", "400",
                             "--batch", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline:
        if out.exists():
            done = len(json.loads(out.read_text())["records"])
            if done >= 2:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = json.loads(out.read_text())["records"]  # a complete file, never half-written
    assert 2 <= len(first) < 6, "the run finished before it could be killed"
    resumed = _run([bundle, "--out", out, "--min-runs", 5], env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(first)} of 6 models already measured" in resumed.stderr
    final = json.loads(out.read_text())["records"]
    assert [r["model"] for r in final] == [f"m{i}" for i in range(6)]
    assert final[:len(first)] == first  # finished work kept as it was, not measured again


def test_ctrl_c_exits_cleanly(tmp_path):
    # models slow enough (a few ms per run, 400 runs per batch) that the second batch is still running when the
    # first one is on disk, however loaded the machine
    paths = {}
    for i in range(4):
        model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1))
        paths[f"m{i}"] = tmp_path / f"m{i}.onnx"
        compress.export_onnx(model.eval(), torch.randn(1, 3, 96, 96), paths[f"m{i}"])
    slow = devices.write_bundle(paths, {"input": [1, 3, 96, 96]}, tmp_path / "slow.zip")
    out = tmp_path / "board.json"
    # as from a terminal: a shell that starts a job in the background (`cmd &`, as CI may) leaves SIGINT ignored
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(slow), "--out", str(out), "--min-runs", "400",
                             "--batch", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not out.exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "resume" in err, (proc.returncode, err[-500:])
    saved = len(json.loads(out.read_text())["records"])
    assert saved >= 2 and f"{saved} finished models are saved" in err  # the finished batch at least, complete


def _slow_bundle(tmp_path, n=4):
    paths = {}
    for i in range(n):
        model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1))
        paths[f"m{i}"] = tmp_path / f"m{i}.onnx"
        compress.export_onnx(model.eval(), torch.randn(1, 3, 96, 96), paths[f"m{i}"])
    return devices.write_bundle(paths, {"input": [1, 3, 96, 96]}, tmp_path / "slow.zip")


def _start(bundle, out, *extra):
    return subprocess.Popen([sys.executable, str(SCRIPT), str(bundle), "--out", str(out), *map(str, extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_ctrl_c_in_the_first_batch_keeps_the_models_it_finished(tmp_path):
    """Before: Ctrl-C in the first batch printed "finished models are saved" with nothing on disk."""
    out = tmp_path / "board.json"
    proc = _start(_slow_bundle(tmp_path), out, "--min-runs", 50, "--batch", 4)
    for line in proc.stderr:
        if line.startswith("[1/4]"):  # model 1 of the one batch is finished (timed and its kernels profiled)
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-500:]
    saved = len(json.loads(out.read_text())["records"])
    assert 1 <= saved < 4 and f"{saved} finished models are saved" in err


def test_a_second_profiler_on_the_same_out_is_refused(tmp_path):
    out = tmp_path / "board.json"
    bundle = _slow_bundle(tmp_path, 2)
    first = _start(bundle, out, "--min-runs", 2000, "--batch", 1)
    try:
        for line in first.stderr:  # the first one holds --out once it starts measuring
            if "models already measured" in line:
                break
        second = _run([bundle, "--out", out, "--min-runs", 5], dict(os.environ))
        assert second.returncode == 2
        assert f"is being written by another profile_device.py (process {first.pid})" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    again = _run([bundle, "--out", out, "--min-runs", 5], dict(os.environ))  # free after the holder died
    assert again.returncode == 0, again.stderr[-500:]


def test_out_in_a_missing_folder_is_refused_before_measuring(bundle, tmp_path):
    proc = _run([bundle, "--out", tmp_path / "missing" / "board.json"], dict(os.environ))
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "before anything is measured" in proc.stderr


def test_unknown_bundle_schema_is_refused(bundle, tmp_path):
    bad = tmp_path / "future.zip"
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "manifest.json":
                manifest = json.loads(data)
                manifest["schema_version"] = 99
                data = json.dumps(manifest).encode()
            dst.writestr(item, data)
    proc = _run([bad, "--out", tmp_path / "o.json"], os.environ)
    assert proc.returncode == 2
    assert "schema version 99" in proc.stderr and "reads version 1" in proc.stderr
    assert not (tmp_path / "o.json").exists()


def test_bad_threads_and_bad_bundle(tmp_path):
    (tmp_path / "junk.zip").write_text("not a zip")
    proc = _run([tmp_path / "junk.zip", "--out", tmp_path / "o.json"], os.environ)
    assert proc.returncode == 2 and "Cannot read bundle" in proc.stderr
    proc = _run([tmp_path / "junk.zip", "--out", tmp_path / "o.json", "--threads", 0], os.environ)
    assert proc.returncode == 2 and "--threads must be a positive int" in proc.stderr


def test_rounds_alternate_and_round_ratio_cancels_drift():
    from devices import profile_device as pd

    calls = []
    stats = pd.measure_interleaved([lambda i=i: calls.append(i) for i in range(3)], warmup=0, min_runs=6,
                                   burst=2, max_runs=6)
    # the order rotates: no model always runs first, none runs twice in a row across rounds
    assert calls == [0, 0, 1, 1, 2, 2, 1, 1, 2, 2, 0, 0, 2, 2, 0, 0, 1, 1]
    assert [s["burst"] for s in stats] == [2, 2, 2] and [s["runs"] for s in stats] == [6, 6, 6]
    # a host that slows down 4x over the rounds: the medians' ratio is off, the round-by-round ratio is exact
    a = {"burst": 2, "median_ms": 1.0, "samples_ms": [1.0, 1.0, 2.0, 2.0, 4.0, 4.0]}  # medians of
    b = {"burst": 2, "median_ms": 8.0, "samples_ms": [2.0, 2.0, 4.0, 4.0, 8.0, 8.0]}  # other phases
    assert pd.round_ratio(a, b) == 0.5 and a["median_ms"] / b["median_ms"] != 0.5


def test_same_models_give_the_same_bundle_bytes(bundle, tmp_path):
    """The profiler keys its output by the bundle's hash: rewriting a bundle of the same models (a rerun) must
    give the same bytes, or a rerun could not resume."""
    import zipfile

    from devices import profile_device as pd

    with zipfile.ZipFile(bundle) as z:
        manifest = json.loads(z.read("manifest.json"))
        for m in manifest["models"]:
            (tmp_path / m["name"]).write_bytes(z.read(m["file"]))
    paths = {m["name"]: tmp_path / m["name"] for m in manifest["models"]}
    time.sleep(2.1)  # zip time stamps have a 2 s resolution
    again = devices.write_bundle(paths, {"input": [1, 3, 48, 48]}, tmp_path / "again.zip",
                                 meta={"m0": {"family": "toy"}})
    assert pd.sha256_file(str(again)) == pd.sha256_file(str(bundle))
