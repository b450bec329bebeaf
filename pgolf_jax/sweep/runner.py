"""`run.py sweep FILE`: every (variant, seed) row of a sweep file through the main job.

The sweep folder (default runs/sweeps/<file stem>) holds:
    presets/<run_id>.py   the exact preset each row ran (BASE + overrides): rerun one by hand
    runs/<run_id>/        each row's run directory (log.txt, metrics.jsonl, artifact, ...)
    logs/<run_id>.txt     the row's console output
    rows/<run_id>.json    the row's result, written atomically when the row is done
    results.csv, results.md, *.png   the tables and pictures (report.py), rebuilt from rows/

A row whose rows/*.json exists is skipped, so a killed sweep continues where it stopped; a row
that failed is recorded with its error and retried only with --retry-failed. With --shard I/N a
machine runs rows I, I+N, ... of the file's order; machines sharing the folder merge their rows
(the report reads every row present). Rows that differ only in scalar hyperparameters train
together as one group with one compiled step (group.py: vmapped, or looped on CPU) unless --no-vmap.
"""

from __future__ import annotations

import time
from pathlib import Path

from pgolf_jax.fsio import read_json, write_json
from pgolf_jax.runlog import fmt_seconds
from pgolf_jax.sweep import group
from pgolf_jax.sweep.rows import row_path, run_row
from pgolf_jax.sweep.spec import Sweep


def default_out(sweep: Sweep) -> Path:
    return Path("runs") / "sweeps" / sweep.name


def run_sweep(sweep: Sweep, out: Path, shard: tuple[int, int] = (0, 1), retry_failed: bool = False,
              vmap: bool = True, say=print, group_mode: str = "auto") -> dict:
    """Run every row of this shard that has no result yet; returns {'ran', 'skipped', 'failed'}."""
    rows = sweep.shard(*shard)
    todo = []
    for row in rows:
        p = row_path(out, row)
        if p.is_file():
            done = read_json(p, "a sweep row")
            if isinstance(done, dict) and (done.get("status") == "ok" or not retry_failed):
                continue
        todo.append(row)
    say(f"sweep:{sweep.name} rows:{len(sweep.rows)} shard:{shard[0]}/{shard[1]} this_shard:{len(rows)} "
        f"to_run:{len(todo)} out:{out}")
    batches = group.plan(todo) if vmap else [[r] for r in todo]
    t0, done, failed = time.perf_counter(), 0, 0
    for batch in batches:
        if len(batch) > 1:
            say(f"sweep: training {len(batch)} rows as one compiled group ({group.resolve_mode(group_mode)}): "
                f"{', '.join(r.run_id for r in batch)}")
            results = group.run_group(batch, out, say, group_mode)
        else:
            results = [run_row(batch[0], out, say)]
        for row, res in zip(batch, results):
            write_json(row_path(out, row), res)
            done += 1
            failed += res["status"] != "ok"
            elapsed = time.perf_counter() - t0
            eta = elapsed / done * (len(todo) - done)
            score = (f"val_bpb:{res['val_bpb']:.4f} bytes:{res['artifact_bytes']}" if res["status"] == "ok"
                     else f"FAILED {res['error']}")
            say(f"sweep: [{done}/{len(todo)}] {row.run_id} {score} elapsed {fmt_seconds(elapsed)} "
                f"eta {fmt_seconds(eta)}")
    return {"ran": done, "skipped": len(rows) - len(todo), "failed": failed}
