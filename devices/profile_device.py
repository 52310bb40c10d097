#!/usr/bin/env python3
"""Profile a bundle of ONNX models on this device into a latency table.

Runs on an edge board with nothing but Python 3, numpy and onnxruntime (no
torch, no onnx package, nothing from this project), so copy this one file to
the board with the bundle the host wrote:

    python3 profile_device.py bundle.zip --out board.json --threads 4

For every model of the bundle it measures the whole-model latency (warm-up,
then at least 50 runs until the median is stable; median, p25, p75 and raw
samples) and the time of every kernel as onnxruntime executes it (fused nodes of
the optimised graph, from onnxruntime's profiler). Models are timed in batches
(``--batch``), in rounds of short bursts in rotating order, so that a slow phase
of the machine does not land on one model only. If the bundle has a reference model
and/or an anchor (say the full model whose subnets are being profiled), they are timed
in every batch too, and each record keeps its round-by-round ratio to them
(``reference_ratio``, ``anchor_ratio``, and the anchor's ``anchor_reference_ratio``):
ratios repeat within 1-3% on a host whose absolute latency drifts by 15%. Each finished
batch is flushed to ``--out`` atomically (temporary file, then rename), so a crash or
Ctrl-C loses nothing finished, and running the same command again resumes with the
models not yet measured.

Exit codes: 0 done, 1 a file could not be written or read (the message names it and the
OS's reason), 2 bad input (unknown bundle schema, unreadable bundle, output from another
device or bundle), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import zipfile

BUNDLE_SCHEMA_VERSION = 1
TABLE_SCHEMA_VERSION = 1
BUNDLE_KIND = "compress-profiling-bundle"
TABLE_KIND = "compress-latency-table"
OPT_LEVELS = ("disable", "basic", "extended", "all")


class ProfileInputError(Exception):
    """Bad input to the profiler: says what is wrong and what to do."""


# ---- device fingerprint ----------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("model name", "hardware", "cpu model"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint(threads: int, opt_level: str) -> dict:
    """What identifies the timing conditions: CPU, cores, runtime version, optimisation, threads."""
    import onnxruntime as ort

    return {"cpu": cpu_model(), "machine": platform.machine(), "cores": os.cpu_count(),
            "runtime": "onnxruntime", "runtime_version": ort.__version__, "opt_level": opt_level,
            "threads": threads}


# ---- measurement protocol ----------------------------------------------------------------
def measure(run, warmup: int = 10, min_runs: int = 50, max_runs: int = 400, rel_tol: float = 0.01) -> dict:
    """Time ``run()``: warm up, then at least ``min_runs`` runs until the median is stable.

    Stable means adding the last 10 runs moved the median by less than ``rel_tol``.
    Returns median, p25, p75 (ms) and the raw samples.
    """
    for _ in range(warmup):
        run()
    samples: list[float] = []
    while len(samples) < max_runs:
        t = time.perf_counter()
        run()
        samples.append((time.perf_counter() - t) * 1e3)
        if len(samples) >= min_runs and len(samples) > 10 and len(samples) % 10 == 0:
            before = statistics.median(samples[:-10])
            now = statistics.median(samples)
            if abs(now - before) <= rel_tol * now:
                break
    q = statistics.quantiles(samples, n=4)
    return {"median_ms": statistics.median(samples), "p25_ms": q[0], "p75_ms": q[2], "runs": len(samples),
            "samples_ms": [round(s, 5) for s in samples]}


def measure_interleaved(runs: list, warmup: int = 10, min_runs: int = 50, burst: int = 2,
                        max_runs: int = 400, rel_tol: float = 0.01) -> list[dict]:
    """Time several callables in rounds: each round runs every model for a short burst, the order rotated
    by one model per round, so a slow phase of a shared machine hits every model alike, every model takes every
    place in the order equally often, and none runs twice in a row across rounds (an alternating order let the
    models at the turns run twice in a row, weights still in cache: that slot measured up to 28% off on ~1 ms
    models).

    Each model gets at least ``min_runs`` runs; rounds continue (up to ``max_runs`` per model) until
    another round moves no model's median by more than ``rel_tol``. Samples stay in round order (``burst``
    per round), so ``round_ratio`` can compare two models round by round.
    """
    for run in runs:
        for _ in range(warmup):
            run()
    samples: list[list[float]] = [[] for _ in runs]
    rounds = 0
    while True:
        before = [statistics.median(s) if s else None for s in samples]
        for j in ((rounds + k) % len(runs) for k in range(len(runs))):
            for _ in range(burst):
                t = time.perf_counter()
                runs[j]()
                samples[j].append((time.perf_counter() - t) * 1e3)
        rounds += 1
        n = len(samples[0])
        if n >= max_runs:
            break
        if n >= min_runs and all(b is not None and abs(statistics.median(s) - b) <= rel_tol * statistics.median(s)
                                 for b, s in zip(before, samples)):
            break
    out = []
    for s in samples:
        q = statistics.quantiles(s, n=4)
        out.append({"median_ms": statistics.median(s), "p25_ms": q[0], "p75_ms": q[2], "runs": len(s),
                    "burst": burst, "samples_ms": [round(v, 5) for v in s]})
    return out


def round_ratio(a: dict, b: dict) -> float:
    """Median over rounds of (a's burst median / b's burst median) for two models timed by
    ``measure_interleaved`` in the same call: each ratio compares runs a few milliseconds apart, so a host
    whose speed drifts between rounds cancels out (docs/measurement_noise.md: 1-3% between repeats where
    absolute medians differ by 15%)."""
    burst = int(a.get("burst", 1))
    sa, sb = a["samples_ms"], b["samples_ms"]
    n = min(len(sa), len(sb)) // burst
    if n == 0:
        return a["median_ms"] / b["median_ms"]
    return statistics.median(statistics.median(sa[i * burst:(i + 1) * burst]) /
                             statistics.median(sb[i * burst:(i + 1) * burst]) for i in range(n))


def session_options(threads: int, opt_level: str, profile_prefix: str | None = None):
    import onnxruntime as ort

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = levels[opt_level]
    so.log_severity_level = 3
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def random_feeds(session, shapes: dict, seed: int = 0) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in session.get_inputs():
        shape = shapes.get(inp.name) or [d if isinstance(d, int) else 1 for d in inp.shape]
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def profile_model(model: bytes | str, shapes: dict, threads: int = 1, opt_level: str = "all",
                  kernel_runs: int = 20, **measure_kw) -> dict:
    """Whole-model latency (no profiler attached) and per-kernel times (profiler on)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model, session_options(threads, opt_level), providers=["CPUExecutionProvider"])
    feeds = random_feeds(sess, shapes)
    total = measure(lambda: sess.run(None, feeds), **measure_kw)
    return {**total, "kernels": profile_kernels(model, shapes, threads, opt_level, kernel_runs)}


def profile_kernels(model: bytes | str, shapes: dict, threads: int = 1, opt_level: str = "all",
                    kernel_runs: int = 20) -> list[dict]:
    """Per-kernel times of the optimised graph from onnxruntime's profiler (median over runs)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        prof = ort.InferenceSession(model, session_options(threads, opt_level, os.path.join(tmp, "p")),
                                    providers=["CPUExecutionProvider"])
        feeds = random_feeds(prof, shapes)
        for _ in range(5):
            prof.run(None, feeds)
        path = prof.end_profiling()  # discard warm-up events
        prof = ort.InferenceSession(model, session_options(threads, opt_level, os.path.join(tmp, "q")),
                                    providers=["CPUExecutionProvider"])
        for _ in range(kernel_runs):
            prof.run(None, feeds)
        path = prof.end_profiling()
        with open(path) as f:
            events = json.load(f)
    return kernels_from_profile(events, kernel_runs)


def kernels_from_profile(events: list, runs: int) -> list[dict]:
    """One record per executed kernel, in execution order, with its median time over the runs."""
    order: list[str] = []
    by_name: dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        if name not in by_name:
            args = e.get("args", {})
            by_name[name] = {"name": name, "op": args.get("op_name", "?"),
                             "inputs": [list(s.values())[0] for s in args.get("input_type_shape", [])],
                             "outputs": [list(s.values())[0] for s in args.get("output_type_shape", [])],
                             "durs": []}
            order.append(name)
        by_name[name]["durs"].append(float(e.get("dur", 0)))
    out = []
    for name in order:
        rec = by_name[name]
        durs = rec.pop("durs")
        rec["us"] = statistics.median(durs)
        rec["calls"] = len(durs) / max(1, runs)
        out.append(rec)
    return out


# ---- bundles and tables ------------------------------------------------------------------
def read_manifest(bundle: str) -> dict:
    """The bundle's manifest, checked field by field against the files the zip holds (:func:`check_manifest`)."""
    try:
        with zipfile.ZipFile(bundle) as z:
            manifest = json.loads(z.read("manifest.json"))
            members = set(z.namelist())
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ProfileInputError(f"Cannot read bundle {bundle!r}: {exc}. Pass a bundle written by "
                                "devices.write_bundle on the host.") from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != BUNDLE_KIND:
        kind = f"of kind {manifest.get('kind')!r}" if isinstance(manifest, dict) else f"a JSON {type(manifest).__name__}"
        raise ProfileInputError(f"{bundle!r} is not a profiling bundle (its manifest.json is {kind}, not an object "
                                f"of kind {BUNDLE_KIND!r}). Pass a bundle written by devices.write_bundle on the host.")
    version = manifest.get("schema_version")
    if version != BUNDLE_SCHEMA_VERSION:
        raise ProfileInputError(
            f"Bundle {bundle!r} has schema version {version!r}; this profile_device.py reads version "
            f"{BUNDLE_SCHEMA_VERSION}. Copy the profile_device.py that came with the compress version that "
            "wrote the bundle, or write the bundle again with this version.")
    check_manifest(manifest, members, bundle)
    return manifest


def _is_shape(value) -> bool:
    return (isinstance(value, list) and 0 < len(value) <= 8
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value))


def check_manifest(manifest: dict, members: set, bundle: str) -> None:
    """Refuse a manifest whose fields are not what ``devices.write_bundle`` writes, naming the field: ``models`` a
    non-empty list of objects with a unique non-empty ``name``, a ``file`` the zip holds, ``inputs`` (input name ->
    list of positive ints) and ``meta`` (an object); ``anchor`` / ``reference`` absent or such an object."""
    def bad(field: str, problem: str, value) -> ProfileInputError:
        return ProfileInputError(f"Bundle {bundle!r}: manifest field {field} {problem}; got {value!r:.80}. Write the "
                                 "bundle again with devices.write_bundle on the host.")

    def check_entry(entry, field: str, named: bool) -> None:
        if not isinstance(entry, dict):
            raise bad(field, "must be an object", entry)
        if named and not (isinstance(entry.get("name"), str) and entry["name"]):
            raise bad(f"{field}.name", "must be a non-empty string", entry.get("name"))
        if entry.get("file") not in members:
            raise bad(f"{field}.file", "must name a file of the zip", entry.get("file"))
        inputs = entry.get("inputs", {})
        if not isinstance(inputs, dict) or not all(isinstance(k, str) and _is_shape(v) for k, v in inputs.items()):
            raise bad(f"{field}.inputs", "must map input names to shapes (lists of positive ints)", inputs)
        if not isinstance(entry.get("meta", {}), dict):
            raise bad(f"{field}.meta", "must be an object", entry.get("meta"))

    models = manifest.get("models")
    if not isinstance(models, list) or not models:
        raise bad("models", "must be a non-empty list", models)
    seen: set = set()
    for i, entry in enumerate(models):
        check_entry(entry, f"models[{i}]", True)
        if entry["name"] in seen:
            raise bad(f"models[{i}].name", "must be unique (results are resumed by name)", entry["name"])
        seen.add(entry["name"])
    for role in ("anchor", "reference"):
        if manifest.get(role) is not None:
            check_entry(manifest[role], role, False)


def input_shape_problem(session, shapes: dict) -> str | None:
    """What is wrong with ``shapes`` (input name -> shape) for an onnxruntime session, or None: a name the model
    lacks, another rank, or a size that differs from a fixed one of the model."""
    expected = {i.name: [d if isinstance(d, int) else None for d in i.shape] for i in session.get_inputs()}
    for name, shape in shapes.items():
        if name not in expected:
            return f"the model has no input {name!r}; its inputs are {expected} (None: any size)"
        ok = isinstance(shape, (list, tuple)) and len(shape) == len(expected[name]) and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 and (e is None or d == e)
            for d, e in zip(shape, expected[name]))
        if not ok:
            return (f"input {name!r} of the model has shape {expected[name]} (None: any size), the shape given is "
                    f"{shape!r}")
    return None


def open_checked(z, entry: dict, what: str, threads: int, opt_level: str, bundle: str, ort):
    """An onnxruntime session of a bundle entry and its feeds, run once: a file onnxruntime cannot load, input
    shapes the model does not take, or a model that fails on them is a ProfileInputError naming the entry."""
    where = f"Bundle {bundle!r}: {what} ({entry['file']})"
    try:
        sess = ort.InferenceSession(z.read(entry["file"]), session_options(threads, opt_level),
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
        raise ProfileInputError(f"{where} cannot be loaded by onnxruntime ({exc}). Write the bundle again with "
                                "devices.write_bundle on the host.") from exc
    problem = input_shape_problem(sess, entry.get("inputs", {}))
    if problem is not None:
        raise ProfileInputError(f"{where}: {problem}. Write the bundle again with the input shapes the model was "
                                "exported for.")
    feeds = random_feeds(sess, entry.get("inputs", {}))
    try:
        sess.run(None, feeds)
    except Exception as exc:  # onnxruntime's InvalidArgument / RuntimeException
        raise ProfileInputError(f"{where} does not run on inputs of shapes "
                                f"{ {n: list(f.shape) for n, f in feeds.items()} } ({exc}). Write the bundle again "
                                "with the input shapes the model was exported for.") from exc
    return sess, feeds


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def current_umask() -> int:
    """The process's umask, read from /proc/self/status where the OS tells it, else set and restored."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # this script runs one thread: no race
    os.umask(mask)
    return mask


def write_json_atomic(path: str, data: dict) -> None:
    """Write JSON to ``path`` atomically, as the host's ``compress.io.atomic_write`` does (this script cannot import
    it): a temporary file in the same folder (created with the folder if missing), mode ``0o666 & ~umask`` (as
    ``open(path, "w")`` would give, not mkstemp's 0600), fsync, rename over ``path`` with ``os.replace``, fsync of
    the folder where the OS allows. On any error the temporary file is removed and ``path`` is left as it was; an
    ``OSError`` is raised again with a message naming ``path`` and the OS's reason."""
    folder = os.path.dirname(os.path.abspath(path))
    doing, tmp = "creating its folder", None
    try:
        os.makedirs(folder, exist_ok=True)
        doing = "creating a temporary file beside it"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        doing = "writing it"
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            doing = "flushing it to disk"
            f.flush()
            os.chmod(tmp, 0o666 & ~current_umask())
            os.fsync(f.fileno())
        doing = "renaming the temporary file onto it"
        os.replace(tmp, path)
        tmp = None
        doing = "syncing its folder (the new file is in place)"
        if os.name != "nt":
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EACCES,
                                     errno.EPERM):
                    raise
            finally:
                os.close(dir_fd)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        code = f" ({errno.errorcode.get(exc.errno, exc.errno)})" if exc.errno is not None else ""
        raise OSError(exc.errno, f"Cannot write {path!r}: {reason}{code} while {doing}. Check that the folder "
                      "exists and is writable and that the disk has space.") from exc
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def load_resumable(out: str, bundle_hash: str, fp: dict) -> dict | None:
    """The table already at ``out`` (None if there is none), checked: a latency table of this script (an object
    with a ``records`` list of objects each naming its ``model``), of the same bundle and fingerprint."""
    if not os.path.exists(out):
        return None
    try:
        with open(out) as f:
            table = json.load(f)
    except ValueError as exc:
        raise ProfileInputError(f"{out!r} exists but is not a readable table ({exc}); move it away to start "
                                "afresh.") from exc

    def bad(field: str, problem: str, value) -> ProfileInputError:
        return ProfileInputError(f"{out!r} exists but is not a latency table of profile_device.py: {field} "
                                 f"{problem}; got {value!r:.80}. Move it away to start afresh, or pass another "
                                 "--out path.")

    if not isinstance(table, dict) or table.get("kind") != TABLE_KIND:
        raise bad("the file", f"must be a JSON object of kind {TABLE_KIND!r}",
                  table.get("kind") if isinstance(table, dict) else table)
    if table.get("bundle_sha256") != bundle_hash:
        raise ProfileInputError(f"{out!r} holds results of another bundle; pass a new --out path.")
    if table.get("fingerprint") != fp:
        raise ProfileInputError(f"{out!r} was measured under other conditions ({table.get('fingerprint')}); "
                                f"now {fp}. Pass a new --out path.")
    records = table.get("records")
    if not isinstance(records, list):
        raise bad("field records", "must be a list", records)
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get("model"), str):
            raise bad(f"field records[{i}]", "must be an object with a string 'model'", rec)
    return table


def _add_ratios(rec: dict, total: dict, fixed: dict, names: dict) -> None:
    """Ratios of a model to the batch's reference and anchor (round by round), and of the anchor to the
    reference, so the host can put every record on one drift-free scale."""
    if "reference" in fixed:
        rec["reference"] = names["reference"]
        rec["reference_ms"] = fixed["reference"]["median_ms"]
        rec["reference_ratio"] = round_ratio(total, fixed["reference"])
    if "anchor" in fixed:
        rec["anchor"] = names["anchor"]
        rec["anchor_ms"] = fixed["anchor"]["median_ms"]
        rec["anchor_ratio"] = round_ratio(total, fixed["anchor"])
        if "reference" in fixed:
            rec["anchor_reference_ratio"] = round_ratio(fixed["anchor"], fixed["reference"])


def run(bundle: str, out: str, threads: int, opt_level: str, quiet: bool = False, min_runs: int = 50,
        kernel_runs: int = 20, batch: int = 8) -> dict:
    if threads <= 0:
        raise ProfileInputError(f"--threads must be a positive int. Got {threads}.")
    if batch <= 0:
        raise ProfileInputError(f"--batch must be a positive int. Got {batch}.")
    if opt_level not in OPT_LEVELS:
        raise ProfileInputError(f"--opt-level must be one of {OPT_LEVELS}. Got {opt_level!r}.")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise ProfileInputError(f"The folder of --out {out!r} does not exist ({parent}); create it or pass another "
                                f"path (checked before anything is measured).")
    if os.path.isdir(out):
        raise ProfileInputError(f"--out {out!r} is a folder; pass the path of a file (the table is written there).")
    manifest = read_manifest(bundle)
    fp = fingerprint(threads, opt_level)
    bundle_hash = sha256_file(bundle)
    table = load_resumable(out, bundle_hash, fp) or {
        "schema_version": TABLE_SCHEMA_VERSION, "kind": TABLE_KIND, "fingerprint": fp,
        "bundle_sha256": bundle_hash, "bundle_meta": manifest.get("meta", {}), "records": []}
    done = {r["model"] for r in table["records"]}
    todo = [m for m in manifest["models"] if m["name"] not in done]
    total_models = len(manifest["models"])
    if not quiet:
        print(f"{len(done)} of {total_models} models already measured; {len(todo)} to go", file=sys.stderr)
    import onnxruntime as ort

    with out_lock(out), zipfile.ZipFile(bundle) as z:
        try:
            roles = [(role, manifest[role]) for role in ("anchor", "reference") if manifest.get(role)]
            for what, entry in [*((f"model {e['name']!r}", e) for e in todo), *roles]:  # before measuring anything
                open_checked(z, entry, what, threads, opt_level, bundle, ort)
            measure_all(z, manifest, todo, table, out, threads, opt_level, quiet, min_runs, kernel_runs, batch,
                        len(done), total_models, ort, bundle)
        except KeyboardInterrupt:  # Ctrl-C: the models finished in the current batch are kept too
            if table["records"]:
                write_json_atomic(out, table)
            raise KeyboardInterrupt(len(table["records"])) from None
    return table


@contextlib.contextmanager
def out_lock(out: str):
    """Hold ``<out>.lock`` (flock) while profiling into ``out``: a second profiler on the same --out is refused
    with the other's process id instead of both reporting success with one's results gone. The lock goes with
    the process (also on SIGKILL). No lock where the platform has no flock. The same flock protocol as
    ``compress.io.work_dir_lock``, written out here because this file runs on a board without the project."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(out + ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise ProfileInputError(f"{out!r} is being written by another profile_device.py ({holder}); wait for it "
                                f"to finish or pass another --out.") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()}".encode(), 0)
        yield
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def measure_all(z, manifest: dict, todo: list, table: dict, out: str, threads: int, opt_level: str, quiet: bool,
                min_runs: int, kernel_runs: int, batch: int, n_done: int, total_models: int, ort,
                bundle: str = "bundle") -> None:
    """Time ``todo`` in batches interleaved with the anchor and reference; each finished batch is written to
    ``out`` before the next starts (records are appended to ``table`` model by model)."""
    fixed = {}  # the reference and the anchor: timed in every batch, interleaved with the others
    for role in ("anchor", "reference"):
        if manifest.get(role):
            r = manifest[role]
            sess, feeds = open_checked(z, r, role, threads, opt_level, bundle, ort)
            fixed[role] = (r.get("name", role), lambda s=sess, f=feeds: s.run(None, f))
    for b in range(0, len(todo), batch):
        entries = todo[b:b + batch]
        start = time.perf_counter()
        models = [z.read(e["file"]) for e in entries]
        opened = [open_checked(z, e, f"model {e['name']!r}", threads, opt_level, bundle, ort) for e in entries]
        runs = [lambda s=s, f=f: s.run(None, f) for s, f in opened]
        totals = measure_interleaved(runs + [run for _, run in fixed.values()], min_runs=min_runs)
        stats_of = dict(zip(fixed, totals[len(entries):]))
        del opened, runs
        for k, (entry, model, total) in enumerate(zip(entries, models, totals[:len(entries)])):
            kernels = profile_kernels(model, entry.get("inputs", {}), threads, opt_level, kernel_runs)
            rec = {"model": entry["name"], "meta": entry.get("meta", {}), **total, "kernels": kernels}
            _add_ratios(rec, total, stats_of, {role: name for role, (name, _) in fixed.items()})
            table["records"].append(rec)
            if not quiet:
                i = n_done + b + k + 1
                print(f"[{i}/{total_models}] {entry['name']}: {total['median_ms']:.3f} ms ({len(kernels)} kernels)",
                      file=sys.stderr, flush=True)
        write_json_atomic(out, table)  # a finished batch is on disk before the next one starts
        if not quiet:
            print(f"  batch of {len(entries)} saved ({time.perf_counter() - start:.1f} s)", file=sys.stderr,
                  flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", help="bundle .zip written on the host")
    ap.add_argument("--out", required=True, help="latency table to write (JSON); resumed if it exists")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    ap.add_argument("--opt-level", default="all", choices=OPT_LEVELS)
    ap.add_argument("--min-runs", type=int, default=50)
    ap.add_argument("--batch", type=int, default=8,
                    help="models timed together in round-robin bursts (finished batches are saved)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        run(args.bundle, args.out, args.threads, args.opt_level, args.quiet, args.min_runs, batch=args.batch)
    except ProfileInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. --out cannot be written (the message names the path and the reason)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        saved = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        print(f"\ninterrupted; {saved} finished models are saved in {args.out}. Run the same command to resume."
              if saved else "\ninterrupted before any model was finished; nothing was saved. Run the same command "
              "to start again.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
