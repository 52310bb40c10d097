"""onnxruntime on this machine's CPU: explicit intra-op threads, sequential execution."""

from __future__ import annotations

import os
from typing import Any

from compress.errors import check_parameter

from . import profile_device as pd
from .cpu import channel_block
from .measurement import Measurement


class OrtCpuDevice:
    """Times ONNX models with onnxruntime's CPU execution provider.

    Args:
        threads: intra-op threads (1 is the reference; must be explicit, never "all cores").
        opt_level: graph optimisation level: "disable", "basic", "extended" or "all".

    Example:
        >>> dev = get_device("cpu", threads=1)
        >>> dev.measure("model.onnx", {"input": [1, 3, 224, 224]}).median_ms
    """

    name = "cpu"

    def __init__(self, threads: int = 1, opt_level: str = "all") -> None:
        check_parameter(isinstance(threads, int) and not isinstance(threads, bool) and threads > 0, "threads",
                        "OrtCpuDevice", "a positive int", threads)
        check_parameter(opt_level in pd.OPT_LEVELS, "opt_level", "OrtCpuDevice", f"one of {pd.OPT_LEVELS}",
                        opt_level)
        self.threads = threads
        self.channel_block = channel_block()  # widths that are multiples of it waste no vector lanes
        self.opt_level = opt_level

    def fingerprint(self) -> dict:
        return pd.fingerprint(self.threads, self.opt_level)

    def measure(self, model: str | os.PathLike | bytes, input_shapes: dict[str, list[int]] | None = None,
                **protocol: Any) -> Measurement:
        """Whole-model latency: warm-up, then >= 50 runs until the median is stable."""
        import onnxruntime as ort

        src = model if isinstance(model, bytes) else str(model)
        sess = ort.InferenceSession(src, pd.session_options(self.threads, self.opt_level),
                                    providers=["CPUExecutionProvider"])
        feeds = pd.random_feeds(sess, input_shapes or {})
        return Measurement.from_stats(pd.measure(lambda: sess.run(None, feeds), **protocol), self.fingerprint())

    def measure_interleaved(self, models: list, input_shapes: dict[str, list[int]] | None = None,
                            **protocol: Any) -> list[Measurement]:
        """Latency of several models timed in bursts in rotating order, so a slow phase of the host hits all alike."""
        import onnxruntime as ort

        runs = []
        for model in models:
            src = model if isinstance(model, bytes) else str(model)
            sess = ort.InferenceSession(src, pd.session_options(self.threads, self.opt_level),
                                        providers=["CPUExecutionProvider"])
            feeds = pd.random_feeds(sess, input_shapes or {})
            runs.append(lambda s=sess, f=feeds: s.run(None, f))
        fp = self.fingerprint()
        return [Measurement.from_stats(st, fp) for st in pd.measure_interleaved(runs, **protocol)]

    def profile(self, model: str | os.PathLike | bytes, input_shapes: dict[str, list[int]] | None = None,
                **protocol: Any) -> dict:
        """Whole-model latency plus per-kernel times of the optimised graph (see profile_device.py)."""
        src = model if isinstance(model, bytes) else str(model)
        return pd.profile_model(src, input_shapes or {}, self.threads, self.opt_level, **protocol)
