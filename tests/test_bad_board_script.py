"""Catalogue, the board script (tools/profile_device.py): a bundle or an --out file that is not what the host
writes ends in exit code 2 and one line naming the file and the field, never a traceback, and nothing is
measured first. Most cases call ``main`` in-process (the script's own entry point); two run it as the board does."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import compress
from devices import profile_device as pd

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "profile_device.py"
MODEL = "models/00000.onnx"
GOOD = {"schema_version": pd.BUNDLE_SCHEMA_VERSION, "kind": pd.BUNDLE_KIND,
        "models": [{"name": "m0", "file": MODEL, "inputs": {"input": [1, 3, 8, 8]}, "meta": {}}]}


@pytest.fixture(scope="module")
def onnx_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    compress.export_onnx(nn.Sequential(nn.Conv2d(3, 4, 3)).eval(), torch.randn(1, 3, 8, 8), path)
    return path.read_bytes()


def bundle(folder: Path, manifest, files: dict) -> str:
    path = folder / "bundle.zip"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("manifest.json", manifest if isinstance(manifest, str) else json.dumps(manifest))
    return str(path)


def profile(capsys, bundle_path: str, out: str) -> tuple[int, str]:
    code = pd.main([bundle_path, "--out", out, "--min-runs", "3", "--quiet"])
    return code, capsys.readouterr().err


def changed(change) -> dict:
    m = copy.deepcopy(GOOD)
    change(m)
    return m


@pytest.mark.parametrize("manifest, match", [
    ([GOOD], r"is not a profiling bundle \(its manifest\.json is a JSON list, not an object of kind "
             r"'compress-profiling-bundle'\)"),
    (changed(lambda m: m.pop("models")), r"manifest field models must be a non-empty list; got None"),
    (changed(lambda m: m.__setitem__("models", ["m0"])), r"manifest field models\[0\] must be an object; got 'm0'"),
    (changed(lambda m: m["models"][0].__setitem__("file", "models/9.onnx")),
     r"manifest field models\[0\]\.file must name a file of the zip; got 'models/9\.onnx'"),
    (changed(lambda m: m["models"][0].pop("name")), r"manifest field models\[0\]\.name must be a non-empty string"),
    (changed(lambda m: m["models"].append(dict(m["models"][0]))),
     r"manifest field models\[1\]\.name must be unique \(results are resumed by name\); got 'm0'"),
    (changed(lambda m: m["models"][0].__setitem__("inputs", {"input": [1, -3, 8, 8]})),
     r"manifest field models\[0\]\.inputs must map input names to shapes \(lists of positive ints\)"),
    (changed(lambda m: m["models"][0].__setitem__("meta", ["family"])), r"manifest field models\[0\]\.meta must be an "
                                                                        r"object"),
    (changed(lambda m: m.__setitem__("anchor", {"file": "anchor.onnx", "inputs": {}, "name": "full"})),
     r"manifest field anchor\.file must name a file of the zip; got 'anchor\.onnx'"),
    (changed(lambda m: m["models"][0].__setitem__("inputs", {"image": [1, 3, 8, 8]})),
     r"model 'm0' \(models/00000\.onnx\): the model has no input 'image'; its inputs are \{'input': \[None, 3, 8, 8\]\}"),
    (changed(lambda m: m["models"][0].__setitem__("inputs", {"input": [1, 4, 8, 8]})),
     r"model 'm0' \(models/00000\.onnx\): input 'input' of the model has shape \[None, 3, 8, 8\] \(None: any size\), "
     r"the shape given is \[1, 4, 8, 8\]"),
])
def test_a_bad_manifest_is_named_before_anything_is_measured(capsys, tmp_path, onnx_bytes, manifest, match):
    out = tmp_path / "board.json"
    code, err = profile(capsys, bundle(tmp_path, manifest, {MODEL: onnx_bytes}), str(out))
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "bundle.zip" in err and ("Write the bundle again" in err or "Pass a bundle written" in err), err
    assert re.search(match, err), err
    assert not out.exists()  # nothing measured


def test_an_onnx_file_onnxruntime_cannot_load_is_named(capsys, tmp_path):
    code, err = profile(capsys, bundle(tmp_path, GOOD, {MODEL: b"not onnx"}), str(tmp_path / "board.json"))
    assert code == 2 and "model 'm0' (models/00000.onnx) cannot be loaded by onnxruntime" in err, err
    assert "Write the bundle again with devices.write_bundle on the host" in err


def _valid_bundle(tmp_path, onnx_bytes) -> tuple[str, str]:
    path = bundle(tmp_path, GOOD, {MODEL: onnx_bytes})
    return path, hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("table, match", [
    ([], r"the file must be a JSON object of kind 'compress-latency-table'; got \[\]"),
    ({"kind": pd.TABLE_KIND, "records": 5}, r"field records must be a list; got 5"),
    ({"kind": pd.TABLE_KIND}, r"field records must be a list; got None"),
    ({"kind": pd.TABLE_KIND, "records": [{"median_ms": 1.0}]},
     r"field records\[0\] must be an object with a string 'model'; got \{'median_ms': 1\.0\}"),
    ({"kind": pd.TABLE_KIND, "records": ["m0"]}, r"field records\[0\] must be an object with a string 'model'; got "
                                                 r"'m0'"),
])
def test_an_out_file_that_is_json_but_not_a_table(capsys, tmp_path, onnx_bytes, table, match):
    path, digest = _valid_bundle(tmp_path, onnx_bytes)
    if isinstance(table, dict):  # of this bundle and device, so only the damaged field is wrong
        table = {**table, "bundle_sha256": digest, "fingerprint": pd.fingerprint(1, "all")}
    out = tmp_path / "board.json"
    out.write_text(json.dumps(table))
    code, err = profile(capsys, path, str(out))
    assert code == 2, err
    assert re.search(rf"'{out}' exists but is not a latency table of profile_device\.py: {match}\. Move it away to "
                     r"start afresh, or pass another --out path", err), err
    assert json.loads(out.read_text()) == table  # left as it was


def test_an_out_path_that_is_a_folder(capsys, tmp_path, onnx_bytes):
    path, _ = _valid_bundle(tmp_path, onnx_bytes)
    code, err = profile(capsys, path, str(tmp_path))
    assert code == 2 and f"--out '{tmp_path}' is a folder; pass the path of a file" in err, err


@pytest.mark.parametrize("manifest", ["list", "missing file"])
def test_on_the_board_no_traceback(tmp_path, onnx_bytes, manifest):
    """As the board runs it (a separate python, no torch needed): one error line, exit code 2."""
    bad = [GOOD] if manifest == "list" else changed(lambda m: m["models"][0].__setitem__("file", "models/9.onnx"))
    proc = subprocess.run([sys.executable, str(SCRIPT), bundle(tmp_path, bad, {MODEL: onnx_bytes}), "--out",
                           str(tmp_path / "board.json")], capture_output=True, text=True, env=dict(os.environ),
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: ") and "bundle.zip" in proc.stderr
