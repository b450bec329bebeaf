"""One sweep row: its preset file, its run as its own process, and its result record."""

from __future__ import annotations

import datetime
import shutil
import subprocess
import sys
from pathlib import Path

from pgolf_jax.fsio import read_json, write_bytes
from pgolf_jax.sweep.spec import Row


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
    }


def failed_row(row: Row, code: int, error: str) -> dict:
    return {"variant": row.variant, "seed": row.seed, "run_id": row.run_id, "status": "failed", "exit_code": code,
            "error": error, "overrides": {k: v for k, v in row.overrides.items() if k != "train.seed"}}


def _set_aside(run_dir: Path) -> None:
    """A run directory a killed sweep left without a result or checkpoint: keep it, out of the way."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    dest = run_dir.parent / ".incomplete" / f"{run_dir.name}-{stamp}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while dest.exists():  # set aside twice in one second: a new name, never a move into the first
        dest, n = dest.with_name(f"{run_dir.name}-{stamp}.{n}"), n + 1
    shutil.move(str(run_dir), dest)


def run_row(row: Row, out: Path, say) -> dict:
    """Run one row as its own process (a crash or an over-cap artifact fails that row only)."""
    run_dir = out / "runs" / row.run_id
    sub = run_dir / "submission.json"
    if sub.is_file():  # finished, but the sweep was killed before it recorded the row
        return result_row(row, run_dir, out, read_json(sub))
    preset = write_row_preset(out, row)
    cmd = [sys.executable, "-m", "pgolf_jax", "--config", str(preset)]
    if run_dir.is_dir():
        from pgolf_jax.train.checkpoint import has_checkpoint

        if has_checkpoint(run_dir / "checkpoints"):
            cmd += ["--resume", str(run_dir)]
            say(f"sweep: {row.run_id}: resuming the killed run from its checkpoint")
        else:
            _set_aside(run_dir)
    log_path = out / "logs" / f"{row.run_id}.txt"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if code == 0 and sub.is_file():
        return result_row(row, run_dir, out, read_json(sub))
    lines = [ln for ln in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.startswith("error:")]
    return failed_row(row, code, lines[-1] if lines else f"exit code {code} (see {log_path})")
