"""PyTorch eager on this machine's CPU, with an explicit thread count."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compress.errors import check_parameter
from compress.space.trace import as_input_tuple, run_on_inputs

from . import profile_device as pd
from .capabilities import Capabilities
from .cpu import channel_block
from .measurement import Measurement, check_protocol


def checked_inputs(model: Any, example_inputs: Any, where: str) -> tuple:
    """``example_inputs`` as a tuple, after checking that ``model`` is a module that runs on them (in eval mode,
    without gradients: the caller sets both).

    Raises:
        InvalidParameterError: ``model`` is not an ``nn.Module`` (e.g. an ONNX path: use the "cpu" device).
        InputShapeError: ``example_inputs`` is not a tensor or a tuple of tensors, the module raises on them, or
            they have no batch dimension.
    """
    check_parameter(isinstance(model, nn.Module), "model", where,
                    "a torch nn.Module (ONNX files are timed by the 'cpu' device)", model)
    inputs = as_input_tuple(example_inputs)
    run_on_inputs(model, inputs, where)  # a named error for shapes it cannot take, or inputs without a batch dim
    return inputs


class TorchCpuDevice:
    """Times a module's forward in eval mode without gradients (thread count restored afterwards).

    Latencies are in milliseconds per call of ``model(*example_inputs)`` (one forward pass at their batch size).

    Args:
        threads: torch intra-op threads while timing, int > 0 (``torch.set_num_threads``; restored afterwards).

    Raises:
        InvalidParameterError: ``threads`` is not a positive int; from ``measure`` and ``measure_interleaved``:
            a model that is not an ``nn.Module``.
        InputShapeError: from ``measure`` and ``measure_interleaved``: the module raises on the example inputs.
    """

    name = "torch-cpu"
    capabilities = Capabilities(accepts=("module",), measurable_here=True, profilable_here=False)

    def __init__(self, threads: int = 1) -> None:
        check_parameter(isinstance(threads, int) and not isinstance(threads, bool) and threads > 0, "threads",
                        "TorchCpuDevice", "a positive int", threads)
        self.threads = threads
        self.channel_block = channel_block()  # widths that are multiples of it waste no vector lanes

    def fingerprint(self) -> dict:
        """What identifies the timing conditions (JSON-able): CPU, cores, torch version, threads."""
        return {"cpu": pd.cpu_model(), "cores": __import__("os").cpu_count(), "runtime": "torch",
                "runtime_version": torch.__version__, "opt_level": "eager", "threads": self.threads}

    def measure(self, model: nn.Module, example_inputs: Any, **protocol: Any) -> Measurement:
        """Latency of ``model(*example_inputs)``: warm-up, then >= 50 runs until the median is stable.

        Args:
            model: a torch module (put in eval mode while timed, its mode restored afterwards).
            example_inputs: a tensor or a tuple of tensors, e.g. ``torch.randn(1, 3, 224, 224)``.
            protocol: ``pd.measure`` options (warmup, min_runs, max_runs, rel_tol).

        Raises:
            InvalidParameterError: ``model`` is not a module, or a protocol option it does not take or out of range.
            InputShapeError: the module raises on ``example_inputs``.
        """
        check_parameter(isinstance(model, nn.Module), "model", "TorchCpuDevice.measure",
                        "a torch nn.Module (ONNX files are timed by the 'cpu' device)", model)
        check_protocol(protocol, ("warmup", "min_runs", "max_runs", "rel_tol"), "TorchCpuDevice.measure")
        prev_threads, prev_mode = torch.get_num_threads(), model.training
        try:
            torch.set_num_threads(self.threads)
            model.eval()
            with torch.no_grad():
                inputs = checked_inputs(model, example_inputs, "TorchCpuDevice.measure")
                stats = pd.measure(lambda: model(*inputs), **protocol)
        finally:
            torch.set_num_threads(prev_threads)
            model.train(prev_mode)
        return Measurement.from_stats(stats, self.fingerprint())

    def measure_interleaved(self, models: list[nn.Module], example_inputs: Any, **protocol: Any) -> list[Measurement]:
        """Latency of several modules timed in bursts in rotating order, so a slow phase of the host hits all alike.
        Arguments and errors as for ``measure``; one Measurement per module, in order."""
        check_parameter(isinstance(models, (list, tuple)) and len(models) > 0, "models",
                        "TorchCpuDevice.measure_interleaved", "a non-empty list of torch nn.Modules", models)
        check_protocol(protocol, ("warmup", "min_runs", "burst", "max_runs", "rel_tol"),
                       "TorchCpuDevice.measure_interleaved")
        for m in models:
            check_parameter(isinstance(m, nn.Module), "models", "TorchCpuDevice.measure_interleaved",
                            "a list of torch nn.Modules (ONNX files are timed by the 'cpu' device)", m)
        prev_threads, prev_modes = torch.get_num_threads(), [m.training for m in models]
        try:
            torch.set_num_threads(self.threads)
            for m in models:
                m.eval()
            with torch.no_grad():
                inputs = as_input_tuple(example_inputs)
                for m in models:
                    checked_inputs(m, inputs, "TorchCpuDevice.measure_interleaved")
                stats = pd.measure_interleaved([lambda m=m: m(*inputs) for m in models], **protocol)
        finally:
            torch.set_num_threads(prev_threads)
            for m, mode in zip(models, prev_modes):
                m.train(mode)
        fp = self.fingerprint()
        return [Measurement.from_stats(st, fp) for st in stats]
