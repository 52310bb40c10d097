"""onnxruntime on this machine's CPU: explicit intra-op threads, sequential execution."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from compress.errors import check_parameter

from . import profile_device as pd
from .capabilities import Capabilities
from .cpu import channel_block
from .errors import InputShapeError, ModelFileError, ModelNotFoundError
from .measurement import Measurement, check_protocol

MEASURE_OPTIONS = ("warmup", "min_runs", "max_runs", "rel_tol")
INTERLEAVED_OPTIONS = ("warmup", "min_runs", "burst", "max_runs", "rel_tol")
PROFILE_OPTIONS = ("kernel_runs", *MEASURE_OPTIONS)


def model_source(model: Any, where: str) -> str | bytes:
    """What onnxruntime opens: the ONNX bytes, or the path of an ONNX file that exists.

    Raises:
        ModelNotFoundError: no file at that path.
        InvalidParameterError: neither bytes nor a path (e.g. a torch module: export it with compress.export_onnx).
    """
    if isinstance(model, bytes):
        return model
    check_parameter(isinstance(model, (str, os.PathLike)), "model", where,
                    "an ONNX file (path or bytes); export a torch module with compress.export_onnx first", model)
    if not Path(model).is_file():
        raise ModelNotFoundError(f"{where}: there is no ONNX file at {str(model)!r}. Export the model there "
                                 "(compress.export_onnx) or pass the path of an existing file.")
    return str(model)


def open_session(model: Any, input_shapes: Mapping[str, list[int]] | None, threads: int, opt_level: str,
                 where: str) -> tuple[Any, dict]:
    """An onnxruntime CPU session of ``model`` and random feeds of ``input_shapes`` (input name -> shape;
    dynamic dimensions not given default to 1), run once to check that the model takes them.

    Raises:
        ModelNotFoundError / ModelFileError: the model file is missing or not an ONNX model.
        InputShapeError: input names the model lacks, shapes of the wrong rank or size, or shapes it rejects.
    """
    import onnxruntime as ort

    src = model_source(model, where)
    try:
        sess = ort.InferenceSession(src, pd.session_options(threads, opt_level), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
        what = "the ONNX bytes given" if isinstance(src, bytes) else repr(src)
        raise ModelFileError(f"{where}: onnxruntime cannot load {what} as an ONNX model ({exc}). Export it "
                             "again with compress.export_onnx.") from exc
    check_parameter(input_shapes is None or isinstance(input_shapes, Mapping), "input_shapes", where,
                    "a dict of input name -> shape, e.g. {'input': [1, 3, 224, 224]}", input_shapes)
    shapes = dict(input_shapes or {})
    expected = {i.name: [d if isinstance(d, int) else None for d in i.shape] for i in sess.get_inputs()}
    problem = pd.input_shape_problem(sess, shapes)
    if problem is not None:
        raise InputShapeError(f"{where}: {problem}. Got input shapes {shapes}. Pass input name -> shape with the "
                              "model's input names, ranks and fixed sizes.")
    feeds = pd.random_feeds(sess, shapes)
    try:
        sess.run(None, feeds)
    except Exception as exc:  # onnxruntime's InvalidArgument / RuntimeException on shapes it cannot run
        raise InputShapeError(f"{where}: the model does not run on inputs of shapes "
                              f"{ {n: list(f.shape) for n, f in feeds.items()} } ({exc}). Pass input shapes the "
                              f"model was exported for: {expected} (None: any size).") from exc
    return sess, feeds


class OrtCpuDevice:
    """Times ONNX models with onnxruntime's CPU execution provider.

    Latencies are in milliseconds per run (one forward pass at the batch size of ``input_shapes``).

    Args:
        threads: intra-op threads, int > 0 (1 is the reference; must be explicit, never "all cores").
        opt_level: graph optimisation level: "disable", "basic", "extended" or "all".

    Raises:
        InvalidParameterError: ``threads`` is not a positive int, or an unknown ``opt_level``; from ``measure``,
            ``measure_interleaved`` and ``profile``: a model that is neither bytes nor a path.
        ModelNotFoundError, ModelFileError: from ``measure``, ``measure_interleaved`` and ``profile``: the ONNX
            file is missing, or onnxruntime cannot load it.
        InputShapeError: from the same methods: input names or shapes the model does not take.

    Example:
        >>> dev = get_device("cpu", threads=1)
        >>> dev.measure("model.onnx", {"input": [1, 3, 224, 224]}).median_ms
    """

    name = "cpu"
    capabilities = Capabilities(accepts=("onnx",), measurable_here=True, profilable_here=True)

    def __init__(self, threads: int = 1, opt_level: str = "all") -> None:
        check_parameter(isinstance(threads, int) and not isinstance(threads, bool) and threads > 0, "threads",
                        "OrtCpuDevice", "a positive int", threads)
        check_parameter(opt_level in pd.OPT_LEVELS, "opt_level", "OrtCpuDevice", f"one of {pd.OPT_LEVELS}",
                        opt_level)
        self.threads = threads
        self.channel_block = channel_block()  # widths that are multiples of it waste no vector lanes
        self.opt_level = opt_level

    def fingerprint(self) -> dict:
        """What identifies the timing conditions (JSON-able): CPU, cores, onnxruntime version, opt level, threads."""
        return pd.fingerprint(self.threads, self.opt_level)

    def measure(self, model: str | os.PathLike | bytes, input_shapes: dict[str, list[int]] | None = None,
                **protocol: Any) -> Measurement:
        """Whole-model latency: warm-up, then >= 50 runs until the median is stable.

        Args:
            model: an ONNX file (path or bytes).
            input_shapes: input name -> shape, e.g. ``{"input": [1, 3, 224, 224]}``; dynamic sizes not given are 1.
            protocol: ``pd.measure`` options (warmup, min_runs, max_runs, rel_tol).

        Raises:
            ModelNotFoundError / ModelFileError: missing or unreadable model file.
            InputShapeError: input shapes the model does not take.
            InvalidParameterError: ``input_shapes`` is not a dict, or a protocol option it does not take or out of
                range.
        """
        check_protocol(protocol, MEASURE_OPTIONS, "OrtCpuDevice.measure")
        sess, feeds = open_session(model, input_shapes, self.threads, self.opt_level, "OrtCpuDevice.measure")
        return Measurement.from_stats(pd.measure(lambda: sess.run(None, feeds), **protocol), self.fingerprint())

    def measure_interleaved(self, models: list, input_shapes: dict[str, list[int]] | None = None,
                            **protocol: Any) -> list[Measurement]:
        """Latency of several models timed in bursts in rotating order, so a slow phase of the host hits all alike.
        Arguments and errors as for ``measure``; one Measurement per model, in order."""
        check_parameter(isinstance(models, (list, tuple)) and len(models) > 0, "models",
                        "OrtCpuDevice.measure_interleaved", "a non-empty list of ONNX files (paths or bytes)", models)
        check_protocol(protocol, INTERLEAVED_OPTIONS, "OrtCpuDevice.measure_interleaved")
        runs = []
        for model in models:
            sess, feeds = open_session(model, input_shapes, self.threads, self.opt_level,
                                       "OrtCpuDevice.measure_interleaved")
            runs.append(lambda s=sess, f=feeds: s.run(None, f))
        fp = self.fingerprint()
        return [Measurement.from_stats(st, fp) for st in pd.measure_interleaved(runs, **protocol)]

    def profile(self, model: str | os.PathLike | bytes, input_shapes: dict[str, list[int]] | None = None,
                **protocol: Any) -> dict:
        """Whole-model latency plus per-kernel times of the optimised graph (see profile_device.py).
        Arguments and errors as for ``measure``."""
        check_protocol(protocol, PROFILE_OPTIONS, "OrtCpuDevice.profile")
        open_session(model, input_shapes, self.threads, self.opt_level, "OrtCpuDevice.profile")  # checks only
        src = model_source(model, "OrtCpuDevice.profile")
        return pd.profile_model(src, input_shapes or {}, self.threads, self.opt_level, **protocol)
