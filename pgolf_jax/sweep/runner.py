"""`run.py sweep FILE`: every (variant, seed) row of a sweep file through the main job.

The sweep folder (default runs/sweeps/<file stem>) holds:
    presets/<run_id>.py   the exact preset each row ran (BASE + overrides): rerun one by hand
    runs/<run_id>/        each row's run directory (log.txt, metrics.jsonl, artifact, ...)
    logs/<run_id>.txt     the row's console output
    rows/<run_id>.json    the row's result, written atomically when the row is done
    results.csv, results.md, *.png   the tables and pictures (report.py), rebuilt from rows/

    keys/<run_id>.json    what the row is made from (keys.py), written when it starts
    sweep.json            which sweep file the folder belongs to

A row whose rows/*.json exists is skipped, so a killed sweep continues where it stopped (a finished
run directory is recorded, a checkpoint resumed); a row that failed is recorded with its error and
retried only with --retry-failed. Nothing is reused unless it was made from the same inputs (keys.py):
a row made from another config or data is refused, or with --rerun-changed moved to replaced/ and run
again; one made by other code is refused unless --allow-code-change (reuse) or --rerun-changed.
With --shard I/N a machine runs rows I, I+N, ... of the file's order; machines sharing the folder
merge their rows (the report reads every row present). Rows that differ only in scalar hyperparameters train
together as one group with one compiled step (group.py: vmapped, or looped on CPU) unless --no-vmap.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

from pgolf_jax.errors import OutputRefused
from pgolf_jax.fsio import check_output, read_json, write_json
from pgolf_jax.runlog import fmt_seconds
from pgolf_jax.sweep import group, keys
from pgolf_jax.sweep.rows import result_row, row_path, run_row, set_aside_row
from pgolf_jax.sweep.spec import Row, Sweep

REPORT_FILES = ("results.md", "results.csv", "pareto.png", "time.png", "curves.png")


@dataclasses.dataclass(frozen=True)
class Reuse:
    """What may be done with a row whose recorded inputs are not this row's (command-line flags)."""
    rerun_changed: bool = False  # move it to replaced/ and run it again
    allow_code_change: bool = False  # reuse it although other code made it
    accept_unkeyed: bool = False  # reuse a row that records no inputs (made before rows were keyed)


def say(msg: str) -> None:
    print(msg, flush=True)  # a pipe reading the sweep sees each line as it happens


def default_out(sweep: Sweep) -> Path:
    return Path("runs") / "sweeps" / sweep.name


def folder_sweep(out: Path) -> str | None:
    """The sweep a folder belongs to: its sweep.json, else the title of the results.md it holds
    (folders from before sweep.json); None when it says nothing."""
    record = out / "sweep.json"
    if record.is_file():
        data = read_json(record, "the sweep folder's record")
        return str(data.get("sweep")) if isinstance(data, dict) else None
    md = out / "results.md"
    if md.is_file():
        with open(md, encoding="utf-8", errors="replace") as f:
            m = re.match(r"# Sweep `([^`]*)`", f.readline())
        return m[1] if m else None
    return None


def check_folder(sweep: Sweep, out: Path, force: bool = False) -> None:
    """Refuse a folder that belongs to another sweep file (its rows and tables are not this sweep's),
    or that holds tables this sweep did not make, unless force; never a run directory."""
    owner = folder_sweep(out)
    if owner is not None and owner != sweep.name and not force:
        raise OutputRefused(f"--out {out}: holds sweep {owner!r}, not {sweep.name!r} ({sweep.path}): use another "
                            "--out, or --force to add this sweep's rows and tables there")
    for name in REPORT_FILES:
        check_output(out / name, "--out", force=force, ours=lambda p: owner == sweep.name)


def _reused(out: Path, row: Row, retry_failed: bool) -> str | None:
    """What of an earlier attempt this row would reuse: 'row' (its result), 'finished' (a run
    directory with its submission.json), 'checkpoint' (to resume from), or None."""
    from pgolf_jax.train.checkpoint import has_checkpoint

    p = row_path(out, row)
    if p.is_file():
        done = read_json(p, "a sweep row")
        if isinstance(done, dict) and (done.get("status") == "ok" or not retry_failed):
            return "row"
    run_dir = out / "runs" / row.run_id
    if (run_dir / "submission.json").is_file():
        return "finished"
    if has_checkpoint(run_dir / "checkpoints"):
        return "checkpoint"
    return None


def _problem(out: Path, row: Row, key: dict, reuse: Reuse) -> str | None:
    """Why this row's earlier attempt may not be reused (a one-line message), or None."""
    old = keys.recorded(out, row.run_id)
    where = f"sweep row {row.run_id} in {out}"
    if old is None:
        # Rows from before keys were recorded: their inputs are unknown, so they count as changed
        # unless --accept-unkeyed vouches for them.
        if reuse.accept_unkeyed:
            return None
        return (f"{where} records no inputs (made before sweep rows were keyed): pass --accept-unkeyed to reuse "
                "it as it is, --rerun-changed to move it aside and run it again, or use another --out")
    diff = keys.input_difference(old, key)
    if diff:
        return (f"{where} was made from other inputs ({diff}): use another --out, or --rerun-changed to move "
                f"the changed rows to {out / 'replaced'} and run them again")
    if old.get("code") != key["code"] and not reuse.allow_code_change:
        return (f"{where} was made by other code (pgolf_jax source {old.get('code')} there, {key['code']} now): "
                "pass --allow-code-change to reuse it, --rerun-changed to run it again, or use another --out")
    return None


def _prepare_data(rows: list[Row]) -> None:
    """Every dataset the rows read, prepared now (data.source), so its checksums key the rows."""
    from pgolf_jax.data.source import dataset_paths

    seen = set()
    for row in rows:
        data = repr(row.cfg.data)
        if data not in seen:
            seen.add(data)
            dataset_paths(row.cfg, lambda *a, **k: None)


def _triage(sweep: Sweep, out: Path, rows: list[Row], row_keys: dict, retry_failed: bool, reuse: Reuse):
    """(done, record, replace): rows whose result stands, finished runs to record, rows to move aside
    and rerun; refuses (one line, nothing changed) when a row may not be reused."""
    done, record, replace, problems = [], [], [], []
    for row in rows:
        kind = _reused(out, row, retry_failed)
        if kind is None:
            continue
        problem = _problem(out, row, row_keys[row.run_id], reuse)
        if problem is not None:
            if reuse.rerun_changed:
                replace.append(row)
                continue
            problems.append(problem)
        elif kind == "row":
            done.append(row)
        elif kind == "finished":
            record.append(row)
    if problems:
        more = f" (and {len(problems) - 1} more rows)" if len(problems) > 1 else ""
        raise OutputRefused(problems[0] + more)
    return done, record, replace


def run_sweep(sweep: Sweep, out: Path, shard: tuple[int, int] = (0, 1), retry_failed: bool = False,
              vmap: bool = True, say=say, group_mode: str = "auto", reuse: Reuse = Reuse(),
              force: bool = False) -> dict:
    """Run every row of this shard that has no result yet; returns {'ran', 'skipped', 'failed'}."""
    check_folder(sweep, out, force)
    rows = sweep.shard(*shard)
    _prepare_data(rows)
    code = keys.code_version()
    row_keys = {row.run_id: keys.made_from(row.cfg, code) for row in rows}
    done, record, replace = _triage(sweep, out, rows, row_keys, retry_failed, reuse)
    write_json(out / "sweep.json", {"sweep": sweep.name, "file": str(sweep.path.resolve())})
    for row in replace:
        dest = set_aside_row(out, row.run_id)
        say(f"sweep: {row.run_id}: made from other inputs; the old row moved to {dest}, running it again")
    for row in record:  # finished, but the sweep was stopped before it recorded the row
        run_dir = out / "runs" / row.run_id
        res = result_row(row, run_dir, out, read_json(run_dir / "submission.json", "a row's submission"))
        write_json(row_path(out, row), res | {"made_from": row_keys[row.run_id]})
    kept = {r.run_id for r in done + record}
    todo = [r for r in rows if r.run_id not in kept]
    say(f"sweep:{sweep.name} rows:{len(sweep.rows)} shard:{shard[0]}/{shard[1]} this_shard:{len(rows)} "
        f"to_run:{len(todo)} out:{out}")
    batches = _batches(out, todo, vmap)
    t0, ran, failed = time.perf_counter(), 0, 0
    for batch in batches:
        if len(batch) > 1:
            say(f"sweep: training {len(batch)} rows as one compiled group ({group.resolve_mode(group_mode)}): "
                f"{', '.join(r.run_id for r in batch)}")
            results = group.run_group(batch, out, say, group_mode, [row_keys[r.run_id] for r in batch])
        else:
            results = [run_row(batch[0], out, say, row_keys[batch[0].run_id])]
        for row, res in zip(batch, results):
            write_json(row_path(out, row), res | {"made_from": row_keys[row.run_id]})
            ran += 1
            failed += res["status"] != "ok"
            elapsed = time.perf_counter() - t0
            eta = elapsed / ran * (len(todo) - ran)
            score = (f"val_bpb:{res['val_bpb']:.4f} bytes:{res['artifact_bytes']}" if res["status"] == "ok"
                     else f"FAILED {res['error']}")
            say(f"sweep: [{ran}/{len(todo)}] {row.run_id} {score} elapsed {fmt_seconds(elapsed)} "
                f"eta {fmt_seconds(eta)}")
    return {"ran": ran, "skipped": len(rows) - len(todo), "failed": failed}


def _batches(out: Path, todo: list[Row], vmap: bool) -> list[list[Row]]:
    """group.plan's batches; a row with a checkpoint to resume runs alone (a group keeps none)."""
    from pgolf_jax.train.checkpoint import has_checkpoint

    if not vmap:
        return [[r] for r in todo]
    alone = {r.run_id for r in todo if has_checkpoint(out / "runs" / r.run_id / "checkpoints")}
    return [[r] for r in todo if r.run_id in alone] + group.plan([r for r in todo if r.run_id not in alone])
