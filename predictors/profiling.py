"""Profile subnets of a model on a device into a latency table (in context), sampling adaptively."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from compress.space.digest import identity_differences, network_identity
from compress.subnet.export import export_onnx
from compress.subnet.extract import extract_subnet
from devices import profile_device as pd
from devices.board import write_bundle

from .errors import NetworkMismatchError
from .reference import export_reference, reference_input
from .table import LatencyTable


def export_configs(net, configs: Sequence[Mapping[str, int]], family: str, folder: str | os.PathLike,
                   indices: Sequence[int]) -> tuple[dict[str, str], dict[str, dict]]:
    """Export each config's subnet to ONNX in ``folder``; returns name -> path and name -> meta. Config k is
    named ``family/NNNN`` with NNNN = ``indices[k]``."""
    paths, meta = {}, {}
    x = net.example_inputs
    for i, cfg in zip(indices, configs):
        name = f"{family}/{i:04d}"
        path = Path(folder) / f"{family}_{i:04d}.onnx"
        export_onnx(extract_subnet(net, cfg), x, path)
        paths[name] = str(path)
        meta[name] = {"family": family, "config": dict(cfg)}
    return paths, meta


def profile_configs(net, configs: Sequence[Mapping[str, int]], family: str, out: str | os.PathLike,
                    threads: int = 1, opt_level: str = "all", start: int = 0, quiet: bool = True,
                    min_runs: int = 50, anchor: str | None = None, reference: str = "small") -> LatencyTable:
    """Profile the subnets of ``configs`` (whole-model latency + kernels) into the table ``out``.

    Every batch also times the reference model and the full model (the anchor, named ``anchor`` or
    ``family``): latencies are ratios to the full model, put on the reference's scale (predictors.reference).
    ``reference`` names the reference model (``predictors.reference.REFERENCES``).

    Resumable: configs already in ``out`` under the same name and config are not measured again, and the
    batches of an interrupted call are kept in ``out``'s ``.part`` file beside it and picked up by a rerun.

    Profiling kernels in the context of the whole network, to fit per-kernel predictors on, follows nn-Meter
    (Zhang et al. 2021, "nn-Meter: Towards Accurate Latency Prediction of Deep-Learning Model Inference on
    Diverse Edge Devices").

    Args:
        net: a ``compress.SlimmableNetwork``; its ``example_inputs`` (1 x C x H x W) fix the profiled input shape.
        configs: channel configs (group name -> width in channels) to profile.
        family: the model family's name; config k is recorded as ``family/NNNN`` (NNNN = ``start + k``) with
            meta ``{"family": family, "config": config}``.
        out: the latency table (JSON) to write; an existing one is extended.
        threads: onnxruntime intra-op threads, int > 0.
        opt_level: onnxruntime graph optimisation level: "disable", "basic", "extended" or "all".
        start: index of the first config in the record names.
        quiet: no progress output from the profiler.
        min_runs: timed runs per model at least.
        anchor: the anchor's (the full model's) name in the table; None: ``family``.
        reference: the reference model's name, a key of ``predictors.reference.REFERENCES``.

    Returns:
        The whole table now in ``out`` (old and new records; latencies in ms, kernel times in us).

    Raises:
        InvalidConfigError: a config the network's space refuses.
        ExportError, ExportMismatchError: a subnet could not be exported to verified ONNX.
        ValueError: an unknown ``reference`` name.
        ProfileInputError: bad ``threads`` or ``opt_level``, or a ``.part`` file of another bundle or device
            (``devices.profile_device``).
        CorruptTableError, SchemaVersionError: ``out`` exists but is not a readable table of this version.
        FingerprintMismatchError: ``out`` was profiled on another device or with other settings.
        NetworkMismatchError: ``out`` holds records of ``family`` measured on another network.
        NewerSchemaVersionError: ``out`` was written by a newer version of compress.
        WriteError: the table could not be written.
    """
    existing = LatencyTable.load(out) if Path(out).exists() else None
    ident = network_identity(net)
    if existing is not None:
        check_table_network(existing, family, ident, out)
    done = {r["model"]: r.get("meta", {}).get("config") for r in existing.records} if existing else {}
    todo = [(i, dict(c)) for i, c in enumerate(configs, start) if done.get(f"{family}/{i:04d}") != dict(c)]
    if not todo:
        if existing.meta.get("networks", {}).get(family) != ident:  # an older table: record whose it is
            existing.meta["networks"] = {**existing.meta.get("networks", {}), family: ident}
            existing.save(out)
        return existing
    shapes = {"input": list(net.example_inputs[0].shape)}
    with tempfile.TemporaryDirectory() as tmp:
        paths, meta = export_configs(net, [c for _, c in todo], family, tmp, [i for i, _ in todo])
        ref = export_reference(Path(tmp) / "reference.onnx", reference)
        full = Path(tmp) / "anchor.onnx"
        export_onnx(extract_subnet(net, net.space.max_config()), net.example_inputs, full)
        bundle = write_bundle(paths, shapes, Path(tmp) / "bundle.zip", meta, reference=ref,
                              reference_inputs={"input": reference_input(reference)},
                              reference_name=reference, anchor=full, anchor_name=anchor or family)
        part = Path(f"{out}.{pd.sha256_file(str(bundle))[:12]}.part")
        pd.run(str(bundle), str(part), threads, opt_level, quiet=quiet, min_runs=min_runs)
        new = LatencyTable.load(part)
        annotate_fused_activations(new.records, paths)
    if existing is not None:
        new = existing.merge(new)
    new.meta["networks"] = {**new.meta.get("networks", {}), family: ident}
    new.save(out)
    part.unlink()
    return new


def table_network(table: LatencyTable, family: str) -> dict | None:
    """The network identity a table recorded for ``family`` (``compress.space.digest.network_identity``), or None
    (a table of an older version, a board's table, or no records of that family)."""
    ident = table.meta.get("networks", {}).get(family) if isinstance(table.meta.get("networks"), dict) else None
    return ident if isinstance(ident, dict) else None


def check_table_network(table: LatencyTable, family: str, ident: dict, path: str | os.PathLike) -> None:
    """Refuse to add records of a network to a table whose records of ``family`` were measured on another one.

    Args:
        table: the table read from ``path``.
        family: the family name the records carry.
        ident: ``network_identity`` of the network about to be profiled.
        path: the table's file (named in the message).

    Returns:
        None; a table with records of ``family`` but no recorded network (an older version) is accepted with a
        warning (it cannot be checked) and records this network from its next save on.

    Raises:
        NetworkMismatchError: the table recorded another network for ``family`` (says what differs).
    """
    saved = table_network(table, family)
    if saved is not None and saved.get("graph") != ident["graph"]:
        raise NetworkMismatchError(
            f"The latency table {str(path)!r} holds measurements of another network under the family name "
            f"{family!r}: {identity_differences(saved, ident)}. Profile into another file (another family name or "
            "work_dir), or delete it to profile this network.")
    if saved is None and any(r.get("meta", {}).get("family") == family for r in table.records):
        warnings.warn(f"The latency table {str(path)!r} has records of family {family!r} but no record of the "
                      "network they were measured on (written by an older version of compress): it cannot be "
                      "checked against this network and is taken as this network's. Delete it if it is not.",
                      stacklevel=3)


def annotate_fused_activations(records: Sequence[dict], onnx_paths: Mapping[str, str | os.PathLike]) -> None:
    """Mark conv kernels into which onnxruntime fused a HardSwish (``kernel["activation"]``).

    A fused Relu or Clip names the kernel after itself (".../Relu_output_0_nchwc"), a fused HardSwish does not:
    the kernel keeps the conv's output name, like a bare conv, though it runs 40-60% slower (mobilenet_v3). The
    exported graph says which conv outputs feed a HardSwish."""
    import onnx

    from .features import CONV_OPS

    for rec in records:
        path = onnx_paths.get(rec["model"])
        if path is None:
            continue
        consumers: dict[str, list[str]] = defaultdict(list)
        for node in onnx.load(str(path), load_external_data=False).graph.node:
            for name in node.input:
                consumers[name].append(node.op_type)
        for k in rec["kernels"]:
            if k["op"] in CONV_OPS and consumers.get(k["name"].removesuffix("_nchwc")) == ["HardSwish"]:
                k["activation"] = "HardSwish"


def unseen_kernel_mass(predictor, net, configs: Sequence[Mapping[str, int]]) -> np.ndarray:
    """Predicted time (us) of each config's kernels that the tables never measured exactly."""
    nk = predictor.kernels_of(net)
    widths = np.stack([net.space.widths(c) for c in configs])
    raw, _, _ = nk.raw(widths, predictor.block_)
    mass = np.zeros(len(configs))
    for fam, r in raw.items():
        n, k, d = r.shape
        flat = r.reshape(n * k, d).astype(np.int64)
        hit = np.array([(fam,) + tuple(row) in predictor.exact_ for row in flat.tolist()]).reshape(n, k)
        per = np.stack([predictor.kernel_us(fam, r[:, j:j + 1]) for j in range(k)], axis=1)
        mass += (per * ~hit).sum(axis=1)
    return mass


def profile_family(net, family: str, out: str | os.PathLike, n_initial: int = 40, rounds: int = 2,
                   per_round: int = 20, pool: int = 300, seed: int = 0, threads: int = 1,
                   progress: bool = True, reference: str = "small") -> LatencyTable:
    """In-context table for one model: random subnets first, then adaptively the configs whose kernels
    the table covers worst (largest predicted time of kernels never measured).

    The kernel-level profiling of nn-Meter (Zhang et al. 2021, "nn-Meter"), sampled adaptively for one model:
    after the full, the smallest and ``n_initial - 2`` random subnets, each round fits a small
    :class:`LatencyPredictor` and profiles the ``per_round`` configs of ``pool`` random candidates with the most
    predicted kernel time (us) the table has never measured exactly.

    Args:
        net: a ``compress.SlimmableNetwork``; its ``example_inputs`` (1 x C x H x W) fix the profiled input shape.
        family: the model family's name (record names ``family/NNNN``; the predictor's ``family=``).
        out: the latency table (JSON) to write; resumable (see :func:`profile_configs`).
        n_initial: subnets profiled first (full, smallest and random ones), >= 2.
        rounds: adaptive rounds after them.
        per_round: configs profiled per adaptive round.
        pool: random candidate configs scored per round.
        seed: seed of the random configs.
        threads: onnxruntime intra-op threads, int > 0.
        progress: show the profiler's progress.
        reference: the reference model's name, a key of ``predictors.reference.REFERENCES``.

    Returns:
        The table in ``out`` (latencies in ms, kernel times in us).

    Raises:
        InvalidConfigError, ExportError, ExportMismatchError, ValueError, ProfileInputError, CorruptTableError,
            SchemaVersionError, FingerprintMismatchError, NetworkMismatchError, NewerSchemaVersionError, WriteError: as
            :func:`profile_configs`.
    """
    from .latency import LatencyPredictor

    space = net.space
    configs = [space.max_config(), space.min_config()] + [space.random_config(seed + i) for i in range(n_initial - 2)]
    table = profile_configs(net, configs, family, out, threads, quiet=not progress, reference=reference)
    start = len(configs)
    for r in range(rounds):
        pred = LatencyPredictor(n_trees=20).fit(table, nets={family: net})
        candidates = [space.random_config(10_000 * (r + 1) + seed + i) for i in range(pool)]
        mass = unseen_kernel_mass(pred, net, candidates)
        chosen = [candidates[i] for i in np.argsort(-mass)[:per_round]]
        table = profile_configs(net, chosen, family, out, threads, start=start, quiet=not progress,
                                reference=reference)
        start += len(chosen)
    return table
