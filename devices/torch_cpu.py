"""PyTorch eager on this machine's CPU, with an explicit thread count."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compress.errors import check_parameter

from . import profile_device as pd
from .measurement import Measurement


class TorchCpuDevice:
    """Times a module's forward in eval mode without gradients (thread count restored afterwards)."""

    name = "torch-cpu"

    def __init__(self, threads: int = 1) -> None:
        check_parameter(isinstance(threads, int) and not isinstance(threads, bool) and threads > 0, "threads",
                        "TorchCpuDevice", "a positive int", threads)
        self.threads = threads

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
