"""A board the host cannot reach: models go out in a bundle, a latency table comes back.

    bundle = write_bundle({"resnet18_w050": "r18.onnx"}, {"input": [1, 3, 224, 224]}, "bundle.zip")
    # on the board:  python3 profile_device.py bundle.zip --out board.json --threads 4
    table = LatencyTable.load("board.json")
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Mapping

from compress.errors import check_parameter, is_int
from compress.io import atomic_write

from . import profile_device as pd
from .capabilities import Capabilities
from .errors import DeviceUnavailableError, ModelNotFoundError


def write_bundle(models: Mapping[str, str | os.PathLike], input_shapes: Mapping[str, list[int]],
                 path: str | os.PathLike, meta: Mapping[str, dict] | None = None,
                 model_inputs: Mapping[str, Mapping[str, list[int]]] | None = None,
                 reference: str | os.PathLike | None = None,
                 reference_inputs: Mapping[str, list[int]] | None = None, reference_name: str = "reference",
                 anchor: str | os.PathLike | None = None, anchor_name: str = "anchor") -> Path:
    """Write a profiling bundle (ONNX models + manifest) atomically; returns its path.

    Args:
        models: model name -> ONNX file.
        input_shapes: input name -> shape used for every model, e.g. ``{"input": [1, 3, 224, 224]}``
            (N x C x H x W).
        path: the .zip to write.
        meta: optional per-model metadata (e.g. the channel config) carried into the table.
        model_inputs: optional per-model input shapes, overriding ``input_shapes``.
        reference: optional ONNX model timed in every batch, to correct for machine drift.
        reference_inputs: its input shapes.
        reference_name: its name in the table (tables put on one scale must share the reference).
        anchor: optional ONNX model like the others (say the full model of the family being profiled), timed
            in every batch too: each record gets its ratio to the anchor, round by round, which repeats within
            1-3% where ratios to a small unrelated reference repeat within 4-13% (docs/measurement_noise.md).
            Its inputs are ``input_shapes``.
        anchor_name: the anchor's name in the table (records of several tables sharing an anchor name are put on
            one scale together).

    Returns:
        ``path`` as a :class:`~pathlib.Path` (a zip: ``manifest.json`` and ``models/*.onnx``).

    Raises:
        InvalidParameterError: ``models`` is not a non-empty mapping of names (str) to paths, or shapes that are
            not input name -> list of positive ints.
        ModelNotFoundError: an ONNX file named in ``models``, ``reference`` or ``anchor`` does not exist (a
            ``FileNotFoundError``; checked before anything is written).
        WriteError: the bundle could not be written (the path is left as it was). A missing folder is created.
    """
    check_parameter(isinstance(models, Mapping) and len(models) > 0, "models", "write_bundle",
                    "a non-empty mapping of model name -> ONNX file", models)
    for name in models:
        check_parameter(isinstance(name, str) and name != "", "models", "write_bundle",
                        "a mapping whose keys (model names) are non-empty strings", name)
    _check_shapes(input_shapes, "input_shapes")
    for name, shapes in (model_inputs or {}).items():
        _check_shapes(shapes, f"model_inputs[{name!r}]")
    if reference_inputs is not None:
        _check_shapes(reference_inputs, "reference_inputs")
    files = [(f"model {name!r}", f) for name, f in models.items()]
    files += [(role, f) for role, f in (("reference", reference), ("anchor", anchor)) if f is not None]
    for what, onnx_path in files:  # before anything is written
        check_parameter(isinstance(onnx_path, (str, os.PathLike)), what, "write_bundle", "the path of an ONNX file",
                        onnx_path)
        if not Path(onnx_path).is_file():
            raise ModelNotFoundError(f"write_bundle: there is no ONNX file at {str(onnx_path)!r} ({what}). Export "
                                     "the model there (compress.export_onnx) or pass the path of an existing file; "
                                     "nothing was written.")
    path = Path(path)
    manifest = {"schema_version": pd.BUNDLE_SCHEMA_VERSION, "kind": pd.BUNDLE_KIND, "models": []}

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for i, (name, onnx_path) in enumerate(models.items()):
                arc = f"models/{i:05d}.onnx"
                _add_file(z, onnx_path, arc)
                inputs = dict((model_inputs or {}).get(name, input_shapes))
                manifest["models"].append({"name": name, "file": arc, "inputs": inputs,
                                           "meta": dict((meta or {}).get(name, {}))})
            if reference is not None:
                _add_file(z, reference, "reference.onnx")
                manifest["reference"] = {"file": "reference.onnx", "inputs": dict(reference_inputs or {}),
                                         "name": reference_name}
            if anchor is not None:
                _add_file(z, anchor, "anchor.onnx")
                manifest["anchor"] = {"file": "anchor.onnx", "inputs": dict(input_shapes), "name": anchor_name}
            z.writestr(_entry("manifest.json"), json.dumps(manifest, indent=1))

    atomic_write(path, write)
    return path


def _check_shapes(shapes: object, what: str) -> None:
    """Input name -> shape (a list of positive ints), as profile_device.py reads them."""
    ok = isinstance(shapes, Mapping) and all(
        isinstance(k, str) and isinstance(v, (list, tuple)) and 0 < len(v) <= 8
        and all(is_int(d) and d > 0 for d in v) for k, v in shapes.items())
    check_parameter(ok, what, "write_bundle", "a dict of input name -> shape (positive ints), e.g. "
                    "{'input': [1, 3, 224, 224]}", shapes)


def _entry(arc: str) -> zipfile.ZipInfo:
    """A zip entry with a fixed time stamp: the same models give the same bundle bytes, so the profiler's
    output (keyed by the bundle's hash) resumes across runs that rewrite the bundle."""
    info = zipfile.ZipInfo(arc, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def _add_file(z: zipfile.ZipFile, path: str | os.PathLike, arc: str) -> None:
    z.writestr(_entry(arc), Path(path).read_bytes())


class BoardDevice:
    """A remote board: timing happens there, from a bundle, with ``tools/profile_device.py``.

    Args:
        threads: the onnxruntime intra-op threads the board will be profiled with (``--threads``), int > 0.
        table: the latency table (JSON) the board wrote, once it is back (its fingerprint is the board's).

    Raises:
        InvalidParameterError: ``threads`` is not a positive int.
        DeviceUnavailableError: from ``measure``, ``measure_interleaved`` and ``profile`` always (a board is not
            timed from the host), and from ``fingerprint`` when ``table`` cannot be read.
    """

    name = "board"
    capabilities = Capabilities(accepts=("onnx",), measurable_here=False, profilable_here=False)

    def __init__(self, threads: int = 1, table: str | os.PathLike | None = None) -> None:
        check_parameter(isinstance(threads, int) and not isinstance(threads, bool) and threads > 0, "threads",
                        "BoardDevice", "a positive int", threads)
        self.threads = threads
        self.table = table

    def fingerprint(self) -> dict:
        """The fingerprint recorded in the board's table when one was given, else what the host knows
        (JSON-able): ``{"device": "board", "runtime": "onnxruntime", "threads": threads}``.

        Raises:
            DeviceUnavailableError: the table given cannot be read.
        """
        if self.table is None:
            return {"device": "board", "runtime": "onnxruntime", "threads": self.threads}
        try:
            fp = json.loads(Path(self.table).read_text())["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DeviceUnavailableError(f"The board's latency table {str(self.table)!r} cannot be read ({exc!r}). "
                                         "Pass the table profile_device.py wrote on the board.") from exc
        return dict(fp)

    def _unavailable(self) -> DeviceUnavailableError:
        return DeviceUnavailableError(
            "A board cannot be timed from the host. Write a bundle with devices.write_bundle(...), run "
            f"`python3 profile_device.py bundle.zip --out board.json --threads {self.threads}` on the board, "
            "and load the table it writes.")

    def measure(self, *args, **kwargs):
        """Always raises DeviceUnavailableError (``capabilities.measurable_here`` is False)."""
        raise self._unavailable()

    def measure_interleaved(self, *args, **kwargs):
        """Always raises DeviceUnavailableError (``capabilities.measurable_here`` is False)."""
        raise self._unavailable()

    def profile(self, *args, **kwargs):
        """Always raises DeviceUnavailableError (``capabilities.profilable_here`` is False)."""
        raise self._unavailable()

    write_bundle = staticmethod(write_bundle)
