"""Files written atomically: the one host-side writer (:func:`atomic_write`) and what is built on it.

Every file the host writes (ONNX exports, ``result.json``, search paths, supernet checkpoints, latency tables,
predictors, profiling bundles) goes through :func:`atomic_write`: the content is written to a temporary file beside
the target, flushed to disk, given the mode a plain ``open(path, "w")`` would give it (``0o666 & ~umask``, so not
the owner-only 0600 of ``tempfile.mkstemp``), renamed onto the target with ``os.replace`` and the folder is synced.
A reader sees the old file or the new one, never a half-written one, and a crash (or an error in the writer)
leaves no temporary file behind. The standalone board profiler (``devices/profile_device.py``) cannot import this
package and keeps a standard-library copy with the same behaviour (``write_json_atomic``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch

from compress.errors import CompressError, InvalidParameterError, WorkDirBusyError, WriteError

try:
    import fcntl
except ImportError:  # Windows: work directories are not locked
    fcntl = None

F = TypeVar("F", bound=Callable[..., Any])
LOCK_NAME = ".lock"  # inside a work directory: who holds it

# What to do about the most common reasons a write fails (errno -> advice); anything else gets the generic advice.
WRITE_ADVICE: dict[int, str] = {
    errno.EACCES: "Pass a path in a folder you can write to, or change the folder's permissions.",
    errno.EPERM: "Pass a path in a folder you can write to, or change the folder's permissions.",
    errno.EROFS: "The file system is read-only: pass a path on a writable one.",
    errno.ENOSPC: "The disk is full: free some space or pass a path on another disk.",
    errno.EDQUOT: "The disk quota is exhausted: free some space or pass a path on another disk.",
    errno.ENOENT: "Create the folder first, or pass a path in an existing folder.",
    errno.ENOTDIR: "A part of the path is a file, not a folder: pass another path.",
    errno.EISDIR: "The path is a folder: pass a file path.",
    errno.ENAMETOOLONG: "Pass a shorter path.",
}
GENERIC_WRITE_ADVICE = "Check that the folder exists and is writable and that the disk has space."

# fsync on a folder is not supported everywhere (some file systems, Windows): then it is skipped.
_DIR_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EACCES, errno.EPERM}

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask (an int such as ``0o022``), read without changing it where the OS tells it
    (``/proc/self/status`` on Linux 4.7+); elsewhere set and restored under a lock, so no two threads of this
    module race on it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` minus the umask (0o644 under umask 022)."""
    return 0o666 & ~current_umask()


def _write_message(path: Path, exc: OSError, doing: str) -> str:
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = f" ({errno.errorcode.get(exc.errno, exc.errno)})" if exc.errno is not None else ""
    advice = WRITE_ADVICE.get(exc.errno, GENERIC_WRITE_ADVICE)
    return f"Cannot write {str(path)!r}: {reason}{code} while {doing}. {advice}"


def _fsync_file(name: str) -> None:
    fd = os.open(name, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; skipped where folders cannot be opened or synced."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        if exc.errno in _DIR_FSYNC_UNSUPPORTED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` to fill a temporary file beside ``path``, then put it in place atomically.

    Steps: create the parent folder if missing; ``write(tmp_path)`` (it may open the path itself or hand it to a
    library, e.g. ``torch.save``, ``torch.onnx.export``); give the file mode ``0o666 & ~umask``; ``fsync`` it;
    ``os.replace`` it onto ``path``; ``fsync`` the folder where the OS allows. On any error the temporary file is
    removed and ``path`` is left as it was.

    Args:
        path: the file to write.
        write: called once with the temporary file's path (a str in the target's folder).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        WriteError: an ``OSError`` on the way (read-only or missing folder that cannot be created, disk full,
            permission denied); the message names the path and the OS's reason. Errors of ``write`` that are not
            ``OSError``, named errors of this package and ``OSError``s of ``write`` about another file (an input
            it reads) propagate unchanged.
    """
    path = Path(path)
    folder = path.parent
    doing = "creating its folder"
    tmp: str | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        doing = "creating a temporary file beside it"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        doing = "writing it"
        write(tmp)
        doing = "flushing it to disk"
        os.chmod(tmp, default_file_mode())
        _fsync_file(tmp)
        doing = "renaming the temporary file onto it"
        os.replace(tmp, path)
        tmp = None
        doing = "syncing its folder (the new file is in place)"
        _fsync_dir(folder)
    except OSError as exc:
        if isinstance(exc, CompressError):  # a named error of the writer (e.g. ExportError) says more already
            raise
        if doing == "writing it" and exc.filename not in (None, tmp):  # about an input the writer read
            raise
        raise WriteError(_write_message(path, exc, doing), errno=exc.errno, strerror=exc.strerror,
                         filename=str(path)) from exc
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:  # already gone, or the folder became unwritable: nothing more to do
                pass
    return path


def save_json(obj: Any, path: str | os.PathLike, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (:func:`atomic_write`); ``indent=None`` writes one line."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent)
    return atomic_write(path, write)


def save_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`): a report or marker file a reader, or an
    interrupted run, never sees half-written."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return atomic_write(path, write)


def weights_digest(module: torch.nn.Module) -> str:
    """A short hash of the parameters of ``module`` (names, shapes, values). Buffers are left out: BN
    recalibration rewrites them without changing what was trained."""
    h = hashlib.sha1()
    for name, t in sorted(module.named_parameters()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Tensors and plain Python values only (loaded back with ``weights_only=True``); written atomically."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def make_work_dir(work_dir: str | os.PathLike, owner: str) -> Path:
    """The work directory as a Path, created if missing.

    Raises:
        InvalidParameterError: ``work_dir`` is not a path, is a file, or cannot be created (names the path and the
            OS's reason).
    """
    if not isinstance(work_dir, (str, os.PathLike)):
        raise InvalidParameterError(f"The 'work_dir' parameter of {owner} must be a folder path (str or Path) or "
                                    f"None. Got {work_dir!r} instead.")
    path = Path(work_dir)
    if path.exists() and not path.is_dir():
        raise InvalidParameterError(f"The work_dir of {owner} must be a folder. Got {str(path)!r}, which is a file: "
                                    f"pass a folder path (it is created if missing).")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidParameterError(f"Cannot create the work_dir {str(path)!r} of {owner}: {e.strerror}. Pass a "
                                    f"folder you can write to.") from e
    return path


@contextlib.contextmanager
def work_dir_lock(work_dir: str | os.PathLike | None, owner: str) -> Iterator[None]:
    """Hold an exclusive lock on ``work_dir`` (``<work_dir>/.lock``, ``flock``) for the duration of the block.

    A second run on the same folder, in this process or another, gets :class:`WorkDirBusyError` naming the
    process that holds it, instead of interleaving its files with the first run's. The lock goes away with the
    process (also on SIGKILL): a stale ``.lock`` file never blocks. ``work_dir=None`` locks nothing (every run
    then gets its own temporary folder).

    Raises:
        WorkDirBusyError: another run holds the folder.
        InvalidParameterError: ``work_dir`` is a file, or cannot be created.
    """
    if work_dir is None or fcntl is None:  # no flock (Windows): no lock
        yield
        return
    path = make_work_dir(work_dir, owner)
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise InvalidParameterError(f"Cannot write in the work_dir {str(path)!r} of {owner}: {e.strerror}. Pass a "
                                    f"folder you can write to.") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise WorkDirBusyError(
            f"The work_dir {str(path)!r} is in use by another run ({holder}). Wait for it to finish, or pass "
            f"another work_dir to this {owner} run.") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{owner}, process {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def locks_work_dir(owner: str) -> Callable[[F], F]:
    """Decorator: the call holds :func:`work_dir_lock` on its ``work_dir`` keyword argument while it runs."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with work_dir_lock(kwargs.get("work_dir"), owner):
                return fn(*args, **kwargs)
        return locked  # type: ignore[return-value]
    return wrap
