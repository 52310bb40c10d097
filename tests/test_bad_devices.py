"""Catalogue, devices: what ``measure`` / ``measure_interleaved`` / ``profile`` are given is checked before a
session is opened or a run timed; a missing ONNX file is named with its path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compress
import devices


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    compress.export_onnx(nn.Sequential(nn.Conv2d(3, 4, 3)).eval(), torch.randn(1, 3, 8, 8), path)
    return path


SHAPES = {"input": [1, 3, 8, 8]}


@pytest.mark.parametrize("call, error, match", [
    (lambda dev, f: dev.measure(f, SHAPES, runs=5), compress.InvalidParameterError,
     r"OrtCpuDevice\.measure takes no measurement option\(s\) \['runs'\]\. It takes: warmup, min_runs, max_runs, rel_tol"),
    (lambda dev, f: dev.measure(f, SHAPES, max_runs=0), compress.InvalidParameterError,
     r"'max_runs' parameter of OrtCpuDevice\.measure must be an int >= 1 \(timed runs at most\)\. Got 0"),
    (lambda dev, f: dev.measure(f, SHAPES, rel_tol=float("nan")), compress.InvalidParameterError,
     r"'rel_tol' parameter .* a finite number >= 0 .* Got nan"),
    (lambda dev, f: dev.profile(f, SHAPES, burst=2), compress.InvalidParameterError,
     r"OrtCpuDevice\.profile takes no measurement option\(s\) \['burst'\]\. It takes: kernel_runs, warmup"),
    (lambda dev, f: dev.measure(f, [1, 3, 8, 8]), compress.InvalidParameterError,
     r"'input_shapes' parameter of OrtCpuDevice\.measure must be a dict of input name -> shape.* Got \[1, 3, 8, 8\]"),
    (lambda dev, f: dev.measure_interleaved([], SHAPES), compress.InvalidParameterError,
     r"'models' parameter of OrtCpuDevice\.measure_interleaved must be a non-empty list of ONNX files .* Got \[\]"),
    (lambda dev, f: dev.measure_interleaved(str(f), SHAPES), compress.InvalidParameterError,
     r"'models' parameter of OrtCpuDevice\.measure_interleaved must be a non-empty list .* Got '/"),
    (lambda dev, f: dev.measure(f.parent / "gone.onnx", SHAPES), devices.ModelNotFoundError,
     r"OrtCpuDevice\.measure: there is no ONNX file at '.*gone\.onnx'\. Export the model there"),
    (lambda dev, f: dev.measure(f, {"input": [1, 3, 8]}), devices.InputShapeError,
     r"input 'input' of the model has shape \[None, 3, 8, 8\] \(None: any size\), the shape given is \[1, 3, 8\]"),
])
def test_onnxruntime_cpu(onnx_file, call, error, match):
    with pytest.raises(error, match=match):
        call(devices.get_device("cpu"), onnx_file)


@pytest.mark.parametrize("call, match", [
    (lambda dev, m: dev.measure(m, torch.randn(1, 3, 8, 8), min_run=5),
     r"TorchCpuDevice\.measure takes no measurement option\(s\) \['min_run'\]"),
    (lambda dev, m: dev.measure_interleaved([], torch.randn(1, 3, 8, 8)),
     r"'models' parameter of TorchCpuDevice\.measure_interleaved must be a non-empty list of torch nn\.Modules"),
    (lambda dev, m: dev.measure(m, "image.png"), r"example_inputs must be a tensor or a tuple of tensors"),
])
def test_torch_cpu(call, match):
    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    with pytest.raises(compress.InvalidParameterError if "parameter" in match or "option" in match
                       else compress.InputShapeError, match=match):
        call(devices.get_device("torch-cpu"), model)


def test_protocol_options_in_range_are_passed_on(onnx_file):
    m = devices.get_device("cpu").measure(onnx_file, SHAPES, warmup=0, min_runs=3, max_runs=5, rel_tol=0.5)
    assert 3 <= m.runs <= 5
