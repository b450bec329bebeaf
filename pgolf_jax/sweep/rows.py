"""One sweep row: its preset file, its run as its own process, and its result record."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from pgolf_jax.errors import signum_of
from pgolf_jax.fsio import read_json, write_bytes
from pgolf_jax.sweep import keys
from pgolf_jax.sweep.spec import Row

# The first line a row's process logs once it trains (or continues training from a checkpoint).
TRAINING = re.compile(rb"^(step:\d+/\d+ train_loss|resume:step )")


def row_path(out: Path, row: Row) -> Path:
    return out / "rows" / f"{row.run_id}.json"


def write_row_preset(out: Path, row: Row) -> Path:
    """presets/<run_id>.py: the row's BASE and overrides (run dir inside the sweep folder)."""
    over = {**row.overrides, "train.out_dir": str((out / "runs").resolve()), "train.run_id": row.run_id,
            "train.progress": False}
    text = (f'"""Row {row.run_id} of sweep {out.name} (written by run.py sweep)."""\n\n'
            f"BASE = {str(row.base)!r}\nOVERRIDES = {over!r}\n")
    path = out / "presets" / f"{row.run_id}.py"
    write_bytes(path, text.encode(), fsync=False)
    return path


def result_row(row: Row, run_dir: Path, out: Path, submission: dict) -> dict:
    """The row's record from its finished run: sizes, steps, times and scores."""
    from pgolf_jax.plots import read_events

    events = read_events(run_dir)
    train = events.get("train", [])
    steps = submission.get("steps") or 0
    k = submission.get("vmap_group") or 1  # a vmapped group's time is shared: amortized per member
    return {
        "variant": row.variant, "seed": row.seed, "run_id": row.run_id, "status": "ok",
        "run_dir": run_dir.relative_to(out).as_posix(),
        "params": submission.get("model_params"), "artifact_bytes": submission.get("bytes_total"),
        "bytes_model": submission.get("bytes_model"), "bytes_code": submission.get("bytes_code"),
        "steps": steps, "train_time_ms": submission.get("train_time_ms"),
        "step_ms": round(submission["train_time_ms"] / steps / k, 2) if steps else None, "vmap_group": k,
        "final_train_loss": train[-1]["train_loss"] if train else None,
        "pre_quant_val_bpb": submission.get("pre_quant_val_bpb"), "val_bpb": submission.get("val_bpb"),
        "val_loss": submission.get("val_loss"), "wall_seconds": submission.get("wall_seconds"),
        "overrides": {k: v for k, v in row.overrides.items() if k != "train.seed"},
        **({"group_mode": submission["group_mode"]} if submission.get("group_mode") else {}),
    }


def failed_row(row: Row, code: int, error: str) -> dict:
    return {"variant": row.variant, "seed": row.seed, "run_id": row.run_id, "status": "failed", "exit_code": code,
            "error": error, "overrides": {k: v for k, v in row.overrides.items() if k != "train.seed"}}


def _stamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def _free(dest: Path) -> Path:
    """dest, or dest.1, dest.2, ... : set aside twice in one second gets a new name, never a move into the first."""
    n, base = 1, dest
    while dest.exists():
        dest, n = base.with_name(f"{base.name}.{n}"), n + 1
    return dest


def _set_aside(run_dir: Path) -> None:
    """A run directory a killed sweep left without a result or checkpoint: keep it, out of the way."""
    dest = _free(run_dir.parent / ".incomplete" / f"{run_dir.name}-{_stamp()}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run_dir), dest)


def set_aside_row(out: Path, run_id: str) -> Path:
    """Move everything a row left (result, inputs, run directory, log, preset) to
    replaced/<run_id>-<time>/, keeping their places below it; nothing is deleted."""
    dest = _free(out / "replaced" / f"{run_id}-{_stamp()}")
    for rel in (f"rows/{run_id}.json", f"keys/{run_id}.json", f"runs/{run_id}", f"logs/{run_id}.txt",
                f"presets/{run_id}.py"):
        if (out / rel).exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(out / rel), dest / rel)
    return dest


def _copy(proc: subprocess.Popen, log, on_training=None) -> None:
    """The process's output into its log as it comes; on_training(pid) at its first training line."""
    for line in proc.stdout:
        log.write(line)
        log.flush()
        if on_training is not None and TRAINING.match(line):
            on_training(proc.pid)
            on_training = None


def _stop(proc: subprocess.Popen, log, signum: int) -> None:
    """Pass the signal on and wait for the process to exit (a training run writes a checkpoint
    first), still copying its output so a full pipe cannot block it; asked twice, kill it."""
    try:
        proc.send_signal(signum)
        _copy(proc, log)
        proc.wait()
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()


def run_child(cmd: list[str], log_path: Path, on_training=None) -> int:
    """Run a row's process, its output into log_path; its exit code. SIGTERM or ^C here is passed on
    to it and waited for, then raised again: the row records nothing, and no process outlives the
    sweep. The child has its own session, so a terminal's ^C reaches it only this way, once."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        with proc.stdout:
            try:
                _copy(proc, log, on_training)
                return proc.wait()
            except KeyboardInterrupt as exc:
                _stop(proc, log, signum_of(exc))
                raise


def run_row(row: Row, out: Path, say, key: dict | None = None) -> dict:
    """Run one row as its own process (a crash or an over-cap artifact fails that row only); `key`
    (keys.made_from) is recorded first, so a run directory or checkpoint it leaves is keyed."""
    run_dir = out / "runs" / row.run_id
    sub = run_dir / "submission.json"
    if sub.is_file():  # finished, but the sweep was killed before it recorded the row
        return result_row(row, run_dir, out, read_json(sub))
    if key is not None:
        keys.write_key(out, row.run_id, key)
    preset = write_row_preset(out, row)
    cmd = [sys.executable, "-m", "pgolf_jax", "--config", str(preset)]
    if run_dir.is_dir():
        from pgolf_jax.train.checkpoint import has_checkpoint

        if has_checkpoint(run_dir / "checkpoints"):
            # The sweep compared the row's recorded code version already (refused, or allowed by
            # --allow-code-change): the run's own check would only repeat it.
            cmd += ["--resume", str(run_dir), "--allow-code-change"]
            say(f"sweep: {row.run_id}: resuming the killed run from its checkpoint")
        else:
            _set_aside(run_dir)
    log_path = out / "logs" / f"{row.run_id}.txt"
    code = run_child(cmd, log_path, lambda pid: say(f"sweep: {row.run_id}: training (pid {pid}, output in {log_path})"))
    if code == 0 and sub.is_file():
        return result_row(row, run_dir, out, read_json(sub))
    text = log_path.read_text(encoding="utf-8", errors="replace")
    lines = [ln for ln in text.splitlines() if ln.startswith("error:")]
    return failed_row(row, code, lines[-1] if lines else f"exit code {code} (see {log_path})")
