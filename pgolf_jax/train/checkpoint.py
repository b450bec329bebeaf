"""Training checkpoints with orbax: the whole TrainState (params, optimizer state, EMA, step)
plus the loop's position (data stream, elapsed training time, schedule flags, log offsets) as JSON.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
crash mid-write leaves the previous checkpoints intact; only the newest `keep` are kept. After
orbax finishes, the crc32 of every file of the step is recorded beside them; a resume restores
the newest checkpoint whose files all still match (a damaged newer one is skipped and named)."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from pgolf_jax.data.shards import file_checksum
from pgolf_jax.fsio import WriteError, write_error, write_json

CHECKSUMS = "pgolf_checksums.json"


def has_checkpoint(directory: Path) -> bool:
    """Whether `directory` holds a finished checkpoint step: orbax names it by its step number (a
    save killed midway leaves only a `<step>.orbax-checkpoint-tmp-*` folder), and the save is done
    once its checksum record is written."""
    d = Path(directory)
    return d.is_dir() and any(p.is_dir() and p.name.isdigit() and (p / CHECKSUMS).is_file() for p in d.iterdir())


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one could not be written; the message names the directory."""


@dataclass
class Restore:
    """The checkpoint a resume will load: its step, its meta, and the newer ones skipped (why)."""
    step: int
    meta: dict
    skipped: list = field(default_factory=list)


@contextlib.contextmanager
def _quiet():
    """Orbax, tensorstore and their asyncio threads print whole tracebacks (to the loggers and to
    sys.stderr, from other threads too) for an I/O error that is also raised here; the caller
    reports that error in one line instead (PGOLF_TRACEBACK=1 shows what was printed)."""
    loggers = [logging.getLogger(n) for n in ("absl", "orbax", "asyncio", "jax")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    stderr, sys.stderr = sys.stderr, io.StringIO()
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        # Writes still in flight finish within moments and print "Event loop is closed" from their
        # threads; let them, then collect the failed tasks (which log "exception was never
        # retrieved"), all while stderr is still held here.
        time.sleep(1.0)
        # Their never-awaited coroutines would also warn when collected at exit.
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
        gc.collect()
        raise
    finally:
        held, sys.stderr = sys.stderr.getvalue(), stderr
        if os.environ.get("PGOLF_TRACEBACK") and held:
            sys.stderr.write(held)
        for lg, lv in zip(loggers, levels):
            # After a failure, orbax's leftover tasks may still complain at exit: keep asyncio quiet.
            lg.setLevel(lv if not (failed and lg.name == "asyncio") else logging.CRITICAL + 1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _reason(exc: BaseException) -> str:
    """The OS reason inside a tensorstore/orbax error (its os_error_code), else its first line."""
    m = re.search(r"os_error_code='?(\d+)", str(exc))
    if m:
        return os.strerror(int(m.group(1)))
    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
    return _first_line(exc)


class Checkpointer:
    def __init__(self, directory: Path, keep: int = 3):
        self.directory = Path(directory).resolve()
        try:
            with _quiet():
                self._mgr = ocp.CheckpointManager(self.directory, item_names=("state", "meta"),
                                                  options=ocp.CheckpointManagerOptions(max_to_keep=keep))
        except Exception as exc:
            raise CheckpointError(f"cannot open checkpoints in {self.directory}: {_first_line(exc)}") from None

    def save(self, step: int, state, meta: dict) -> None:
        """Blocking save (the next train step donates `state`'s buffers), then its checksums."""
        try:
            with _quiet():
                self._mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                             meta=ocp.args.JsonSave(meta)))
                self._mgr.wait_until_finished()
        except Exception as exc:
            for tmp in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):  # the half-written step
                shutil.rmtree(tmp, ignore_errors=True)
            raise WriteError(f"cannot write checkpoint step {step} to {self.directory}: {_reason(exc)} "
                             "(the earlier checkpoints are intact)") from None
        step_dir = self.directory / str(step)
        sums = {p.relative_to(step_dir).as_posix(): file_checksum(p)
                for p in sorted(step_dir.rglob("*")) if p.is_file() and p.name != CHECKSUMS}
        try:
            write_json(step_dir / CHECKSUMS, sums)
        except OSError as exc:
            raise write_error(step_dir / CHECKSUMS, exc) from None

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def _damage(self, step: int) -> str | None:
        """Why checkpoint `step` cannot be trusted, or None when every file matches its record."""
        step_dir = self.directory / str(step)
        try:
            sums = json.loads((step_dir / CHECKSUMS).read_text(encoding="utf-8"))
            if not isinstance(sums, dict) or not sums:
                return f"{CHECKSUMS} is not a checksum record"
        except FileNotFoundError:
            return f"no {CHECKSUMS} (written by an older version, or interrupted)"
        except (OSError, ValueError) as exc:
            return f"{CHECKSUMS} is unreadable ({_first_line(exc)})"
        for rel, want in sums.items():
            path = step_dir / rel
            if not path.is_file():
                return f"{rel} is missing"
            if file_checksum(path) != want:
                return f"{rel} does not match its checksum"
        # A file the record does not name: a damaged record (a flipped name can duplicate another
        # entry and drop one) or a foreign file; either way the step is not vouched for.
        unrecorded = sorted(p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*")
                            if p.is_file() and p.name != CHECKSUMS and p.relative_to(step_dir).as_posix() not in sums)
        return f"{unrecorded[0]} has no checksum in {CHECKSUMS}" if unrecorded else None

    def select(self) -> Restore:
        """The newest intact checkpoint (its meta read), naming each newer one skipped and why."""
        skipped = []
        for step in sorted(self._mgr.all_steps(), reverse=True):
            why = self._damage(step)
            if why is None:
                try:
                    with _quiet():
                        meta = self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
                    if not isinstance(meta, dict) or meta.get("step") != step:
                        raise ValueError(f"its meta does not describe step {step}")
                    return Restore(step, meta, skipped)
                except Exception as exc:
                    why = f"its meta is unreadable ({_first_line(exc)})"
            skipped.append(f"{step} ({why})")
        if skipped:
            raise CheckpointError(f"no intact checkpoint in {self.directory}: " + "; ".join(skipped))
        raise CheckpointError(f"no checkpoint in {self.directory} to resume from")

    def restore(self, state_like, step: int):
        """(state, meta) of checkpoint `step`, shaped and sharded like state_like."""
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state_like)
        try:
            with _quiet():
                out = self._mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                      meta=ocp.args.JsonRestore()))
        except Exception as exc:
            raise CheckpointError(f"cannot restore checkpoint {self.directory / str(step)}: "
                                  f"{_first_line(exc)}") from None
        return out.state, out.meta

    def close(self) -> None:
        self._mgr.close()
