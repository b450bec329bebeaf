"""Every file the project writes goes through here: a temp file beside the target, renamed over it
only when complete, so a crash or a full disk never leaves half a file and the previous good file
stays. JSON is strict (no NaN/Infinity). Errors are one line naming the path."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path

# mkstemp creates 0600 files; written files should get the usual umask-based permissions instead.
_UMASK = os.umask(0)
os.umask(_UMASK)


class WriteError(OSError):
    """Writing a file failed (disk full, permissions...); the message names the file."""


def write_error(path, exc: OSError) -> WriteError:
    err = WriteError(f"cannot write {path}: {exc.strerror or exc}")
    err.errno = exc.errno
    return err


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb", fsync: bool = False):
    """Open a temp file beside `path` for writing; on success it replaces `path` in one rename."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Same directory, so os.replace is a rename on one filesystem and readers never see half a file.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
        tmp = None
    except WriteError:
        raise
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_bytes(path, data: bytes, fsync: bool = True) -> None:
    with atomic_output(path, "wb", fsync=fsync) as f:
        f.write(data)


def _nonfinite(obj, where: str = ""):
    """The dotted key of the first NaN/inf float in a JSON-able object, or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "<value>"
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for k, v in items:
        found = _nonfinite(v, f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


def dumps(obj, what: str = "JSON", **kw) -> str:
    """json.dumps that refuses NaN/Infinity (invalid strict JSON), naming the key that holds it."""
    bad = _nonfinite(obj)
    if bad:
        raise ValueError(f"{what}: {bad} is not a finite number; refusing to write it")
    return json.dumps(obj, allow_nan=False, **kw)


def write_json(path, obj) -> None:
    text = dumps(obj, what=str(path), indent=2) + "\n"
    with atomic_output(path, "w") as f:
        f.write(text)


def read_json(path, what: str = "") -> object:
    """Parse a JSON file; a missing or invalid file is one error naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found{f' ({what})' if what else ''}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text{f' ({what})' if what else ''}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def is_run_dir(path) -> bool:
    """A main-job (or quantize) run directory: its config.json beside its log or metrics."""
    p = Path(path)
    return (p / "config.json").is_file() and ((p / "log.txt").is_file() or (p / "metrics.jsonl").is_file())


def run_dir_holding(path) -> Path | None:
    """The run directory `path` is in (or is), or None."""
    p = Path(path).resolve()
    for d in (p, *p.parents):
        if is_run_dir(d):
            return d
    return None


def check_output(path, flag: str, force: bool = False, ours=None, allow_inside: Path | None = None) -> Path:
    """Refuse, in one line naming `flag`, a write the command has no right to: into a run directory
    (runs are scored evidence; only `allow_inside`, a folder the command itself creates inside the run
    it derives from, may be written) or over an existing file this command did not make (`ours(path)`
    says when it did; `force` replaces anything but a run's files). Returns the path."""
    from pgolf_jax.errors import OutputRefused

    path = Path(path)
    if path.is_dir():
        raise OutputRefused(f"{flag} {path}: is a directory; name a file")
    run = run_dir_holding(path.parent)
    allowed = allow_inside is not None and path.resolve().is_relative_to(Path(allow_inside).resolve())
    if run is not None and not allowed:
        raise OutputRefused(f"{flag} {path}: inside run directory {run}, which holds a run's scored files; "
                            "write it outside the run")
    if path.exists() and not force and not (ours is not None and ours(path)):
        raise OutputRefused(f"{flag} {path}: exists and was not written by this command; "
                            "pass --force to replace it")
    return path
