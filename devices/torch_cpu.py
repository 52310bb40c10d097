"""PyTorch eager on this machine's CPU, with an explicit thread count."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compress.errors import check_parameter

from . import profile_device as pd
from .cpu import channel_block
from .measurement import Measurement


class TorchCpuDevice:
    """Times a module's forward in eval mode without gradients (thread count restored afterwards)."""

    name = "torch-cpu"

    def __init__(self, threads: int = 1) -> None:
        check_parameter(isinstance(threads, int) and not isinstance(threads, bool) and threads > 0, "threads",
                        "TorchCpuDevice", "a positive int", threads)
        self.threads = threads
        self.channel_block = channel_block()  # widths that are multiples of it waste no vector lanes

    def fingerprint(self) -> dict:
        return {"cpu": pd.cpu_model(), "cores": __import__("os").cpu_count(), "runtime": "torch",
                "runtime_version": torch.__version__, "opt_level": "eager", "threads": self.threads}

    def measure(self, model: nn.Module, example_inputs: Any, **protocol: Any) -> Measurement:
        inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        prev_threads, prev_mode = torch.get_num_threads(), model.training
        try:
            torch.set_num_threads(self.threads)
            model.eval()
            with torch.no_grad():
                stats = pd.measure(lambda: model(*inputs), **protocol)
        finally:
            torch.set_num_threads(prev_threads)
            model.train(prev_mode)
        return Measurement.from_stats(stats, self.fingerprint())

    def measure_interleaved(self, models: list[nn.Module], example_inputs: Any, **protocol: Any) -> list[Measurement]:
        """Latency of several modules timed in bursts in rotating order, so a slow phase of the host hits all alike."""
        inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        prev_threads, prev_modes = torch.get_num_threads(), [m.training for m in models]
        try:
            torch.set_num_threads(self.threads)
            for m in models:
                m.eval()
            with torch.no_grad():
                stats = pd.measure_interleaved([lambda m=m: m(*inputs) for m in models], **protocol)
        finally:
            torch.set_num_threads(prev_threads)
            for m, mode in zip(models, prev_modes):
                m.train(mode)
        fp = self.fingerprint()
        return [Measurement.from_stats(st, fp) for st in stats]
