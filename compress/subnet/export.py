"""ONNX export, checked with onnx.checker and compared with onnxruntime.

We use torch's TorchScript-based exporter: it handles the fx GraphModules this
package produces in about a second, with a dynamic batch axis through
``dynamic_axes``; the torch.export-based exporter is slower per model and adds
nothing for static CNN graphs.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.io import atomic_write
from compress.errors import ExportError, ExportMismatchError, WriteError
from compress.space.trace import as_input_tuple, flatten_tensors, run_on_inputs

ATOL = 1e-4
RTOL = 1e-3


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and checked.

    Attributes:
        path: the ONNX file written.
        exporter: "torchscript" or "dynamo" (torch.export's exporter, the fallback).
        opset: ONNX opset version of the file.
        batch_sizes_checked: batch sizes (N) at which onnxruntime was compared with torch.
        max_abs_diff: largest |onnxruntime - torch| over every output element checked (output units).
        atol: absolute tolerance used (output units).
        rtol: relative tolerance used, as a fraction of max |torch output|.
        num_nodes: nodes in the ONNX graph.
        input_names: ONNX input names ("input", or "input0", "input1", ...).
        output_names: ONNX output names ("output", or "output0", "output1", ...).
    """

    path: str
    exporter: str
    opset: int
    batch_sizes_checked: list[int]
    max_abs_diff: float
    atol: float
    rtol: float
    num_nodes: int
    input_names: list[str]
    output_names: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def _check_path(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ExportError(f"Cannot write the ONNX file to {str(path)!r}: it is a directory. Pass a file path.")
    if not parent.is_dir():
        raise ExportError(f"Cannot write the ONNX file to {str(path)!r}: folder {str(parent)!r} does not exist. "
                          "Create it first.")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ExportError(f"Cannot write the ONNX file to {str(path)!r}: permission denied. "
                          "Pass a path in a writable folder.")


def _export(model: nn.Module, inputs: tuple, tmp: str, opset: int, input_names: list[str],
            output_names: list[str], axes: dict | None) -> str:
    """Export with the TorchScript exporter, falling back to torch.export's for ops the
    former cannot express (e.g. adaptive pooling to a size that does not divide the input)."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    errors = []
    try:  # MultiheadAttention's fused inference path has no ONNX export
        torch.backends.mha.set_fastpath_enabled(False)
        for name, dynamo, version in (("torchscript", False, opset), ("dynamo", True, max(opset, 18))):
            try:
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                        contextlib.redirect_stderr(io.StringIO()):
                    warnings.simplefilter("ignore")
                    torch.onnx.export(model, inputs, tmp, dynamo=dynamo, opset_version=version,
                                      input_names=input_names, output_names=output_names, dynamic_axes=axes,
                                      **({"verbose": False} if dynamo else {"do_constant_folding": True}))
                return name
            except Exception as exc:
                errors.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    raise ExportError(f"torch.onnx.export failed for {type(model).__name__} with both exporters: "
                      + " | ".join(errors))


def export_onnx(model: nn.Module, example_inputs: Any, path: str | os.PathLike, *, opset: int = 17,
                atol: float = ATOL, rtol: float = RTOL, dynamic_batch: bool = True) -> ExportReport:
    """Export ``model`` to ONNX atomically and verify it against onnxruntime (CPU).

    The file is written to a temporary name in the target folder, checked with
    ``onnx.checker``, run with onnxruntime at the example batch size and (with a
    dynamic batch axis) at batch size + 1, and only then renamed into place
    (:func:`compress.io.atomic_write`: fsynced, mode ``0o666 & ~umask``).
    Outputs must satisfy ``max |ort - torch| <= atol + rtol * max |torch|`` per
    output (defaults 1e-4 and 1e-3: float32 kernels differ in summation order, and
    deep randomly initialised nets have outputs in the tens or hundreds, so the
    tolerance scales with the output's magnitude). The model's train/eval modes are restored (in ``finally``).

    Args:
        model: the network to export (run in eval mode under ``torch.no_grad``).
        example_inputs: a tensor (e.g. N x C x H x W) or a tuple of tensors, the model's positional inputs.
        path: the ONNX file to write; its folder must exist and be writable.
        opset: ONNX opset of the TorchScript exporter (the torch.export fallback uses max(opset, 18)).
        atol: absolute tolerance of the onnxruntime-vs-torch comparison (output units).
        rtol: relative tolerance, as a fraction of the largest |torch output|.
        dynamic_batch: export with a dynamic batch axis (dim 0) and also check batch size N + 1.

    Returns:
        An :class:`ExportReport` of what was written and checked.

    Raises:
        ExportError: the path is a directory, its folder is missing or not writable, the file could not be
            written, the model returns no tensor, or both exporters failed.
        ExportMismatchError: onnxruntime disagrees with torch beyond the tolerance, or in an output's shape.
        InputShapeError: ``example_inputs`` is not a tensor or a sequence of tensors.

    Example:
        >>> report = export_onnx(subnet, torch.randn(1, 3, 224, 224), "subnet.onnx")
        >>> report.max_abs_diff < 1e-4
        True
    """
    import onnx
    import onnxruntime as ort

    path = Path(path)
    _check_path(path)
    inputs = as_input_tuple(example_inputs)
    input_names = [f"input{i}" if len(inputs) > 1 else "input" for i in range(len(inputs))]
    modes = {m: m.training for m in model.modules()}
    done: dict = {}

    def write(tmp: str) -> None:  # export, check and compare on the temporary file; rename only if all pass
        model.eval()
        with torch.no_grad():
            raw = run_on_inputs(model, inputs, "export_onnx")
            outputs = flatten_tensors(raw)
        if not outputs:
            raise ExportError(f"Model output of type {type(raw).__name__} holds no tensor and cannot be exported; "
                              f"return tensors (alone or in tuples, lists or dicts).")
        output_names = [f"output{i}" if len(outputs) > 1 else "output" for i in range(len(outputs))]
        axes = {n: {0: "batch"} for n in input_names + output_names} if dynamic_batch else None
        exporter = _export(model, inputs, tmp, opset, input_names, output_names, axes)
        proto = onnx.load(tmp)
        onnx.checker.check_model(proto)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(tmp, opts, providers=["CPUExecutionProvider"])
        batches = [inputs]
        if dynamic_batch:
            batches.append(tuple(torch.cat([t, torch.randn_like(t[:1])]) for t in inputs))
        worst = 0.0
        for batch in batches:
            with torch.no_grad():
                expected = [t.numpy() for t in flatten_tensors(model(*batch))]
            got = session.run(None, {n: t.numpy() for n, t in zip(input_names, batch)})
            for e, g in zip(expected, got):
                if e.shape != g.shape:
                    raise ExportMismatchError(f"onnxruntime output shape {g.shape} != torch {e.shape}.")
                diff = float(np.abs(e - g).max()) if e.size else 0.0
                scale = float(np.abs(e).max()) if e.size else 0.0
                worst = max(worst, diff)
                if diff > atol + rtol * scale:
                    raise ExportMismatchError(
                        f"onnxruntime output differs from torch by up to {diff:.3g} at batch size "
                        f"{batch[0].shape[0]} (tolerance {atol} + {rtol} * {scale:.3g}); the ONNX file was not "
                        "written.")
        done.update(exporter=exporter, proto=proto, batches=batches, worst=worst, output_names=output_names)

    try:
        atomic_write(path, write)
    except WriteError as exc:  # the documented error of this function for a path it cannot write
        raise ExportError(f"ONNX export: {exc}") from exc
    finally:
        for m, mode in modes.items():
            m.training = mode
    exporter, proto, batches, worst, output_names = (done[k] for k in ("exporter", "proto", "batches", "worst",
                                                                         "output_names"))
    return ExportReport(str(path), exporter, proto.opset_import[0].version, [int(b[0].shape[0]) for b in batches], worst, atol, rtol,
                        len(proto.graph.node), input_names, output_names)
