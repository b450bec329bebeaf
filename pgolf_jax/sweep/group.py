"""Sweep rows that differ only in scalar hyperparameters and seeds, trained as one group with one
compiled step (train/group.py: vmapped, or looped on CPU) in this process; each row still gets its
own run directory, logs, artifact, round-trip score and submission.json, as `run.py --config` does."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pgolf_jax import pipeline
from pgolf_jax.data.source import dataset_paths
from pgolf_jax.packing.select import package_tooling
from pgolf_jax.runlog import RunLog
from pgolf_jax.sweep import keys
from pgolf_jax.sweep.rows import TRAINING, _set_aside, result_row, run_row, write_row_preset
from pgolf_jax.sweep.spec import Row
from pgolf_jax.train.group import group_key, resolve_mode, train_group, training_key
from pgolf_jax.train.run_dir import claim_run_dir

MAX_GROUP = 8  # members per program: memory grows with K, the compile does not


class Tee:
    """One training's log lines and metrics, written to the run log of every row that shares it;
    on_line(msg) sees each line once."""

    def __init__(self, logs: list[RunLog], on_line=None):
        self.logs, self.on_line = logs, on_line

    def __call__(self, msg: str, console: bool = True) -> None:
        for log in self.logs:
            log(msg, console)
        if self.on_line is not None:
            self.on_line(msg)

    def metric(self, event: str, **values) -> None:
        for log in self.logs:
            log.metric(event, **values)


def plan(rows: list[Row]) -> list[list[Row]]:
    """Rows in batches: each vmappable set (equal group_key) in groups of up to MAX_GROUP, the rest alone;
    the file's order is kept within a batch and batches start where their first row stood."""
    batches, open_ = [], {}
    for row in rows:
        key = group_key(row.cfg)
        if key is None:
            batches.append([row])
            continue
        if key not in open_ or len(open_[key]) >= MAX_GROUP:
            open_[key] = []
            batches.append(open_[key])
        open_[key].append(row)
    return batches


def _announcer(rows: list[Row], say):
    """on_line for the group's logs: one console line when the group's first training step is logged."""
    said = []

    def on_line(msg: str) -> None:
        if not said and TRAINING.match(msg.encode()):
            said.append(True)
            say(f"sweep: {', '.join(r.run_id for r in rows)}: training (as one group)")
    return on_line


def run_group(rows: list[Row], out: Path, say, mode: str = "auto", row_keys: list[dict] | None = None) -> list[dict]:
    """Train rows together and finish each as its own run; if the group fails, run them one by one.
    A group keeps no checkpoint: on SIGTERM or ^C the run directories of its unfinished rows (made by
    this call) are removed and the interrupt raised again, so a rerun starts those rows over."""
    from pgolf_jax import config as config_lib

    cfgs = [config_lib.override(r.cfg, {"train.out_dir": str((out / "runs").resolve()), "train.run_id": r.run_id,
                                        "train.progress": False}) for r in rows]
    run_dirs = [out / "runs" / r.run_id for r in rows]
    for k, (r, d) in enumerate(zip(rows, run_dirs)):
        if d.exists():  # left by a killed process (no result, no checkpoint): kept, out of the way
            _set_aside(d)
        if row_keys is not None:
            keys.write_key(out, r.run_id, row_keys[k])
        write_row_preset(out, r)
    try:
        return _run_group(rows, cfgs, run_dirs, out, say, mode, row_keys or [None] * len(rows))
    except KeyboardInterrupt:
        from pgolf_jax.train.checkpoint import has_checkpoint

        for d in run_dirs:  # a finished row, or one run alone after a failed group and checkpointed, stays
            if not (d / "submission.json").is_file() and not has_checkpoint(d / "checkpoints"):
                shutil.rmtree(d, ignore_errors=True)
        raise


def _run_group(rows: list[Row], cfgs: list, run_dirs: list[Path], out: Path, say, mode: str,
               row_keys: list) -> list[dict]:
    logs = []
    try:
        for cfg, d in zip(cfgs, run_dirs):
            claim_run_dir(d, cfg)
            logs.append(RunLog(d, echo=False))
            pipeline.log_header(cfg, logs[-1], f"sweep {out.name} (a group of {len(rows)} rows)")
        t0 = time.perf_counter()
        data_path, tok_path = dataset_paths(cfgs[0], logs[0])
        tooling = package_tooling()
        factory = pipeline.make_evaluator_factory(cfgs[0], data_path, tok_path, logs[0], tooling.unigram)
        pattern = str(data_path / cfgs[0].data.train_files)
        # Rows whose training is identical (they differ only in the export or the final evals)
        # train once; every one of them gets the training's log lines.
        first = {}
        for k, cfg in enumerate(cfgs):
            first.setdefault(training_key(cfg), []).append(k)
        members = list(first.values())
        if len(members) < len(cfgs):
            say(f"sweep: {len(cfgs)} rows share {len(members)} trainings (they differ only after training)")
        trained_mode = resolve_mode(mode)
        on_line = _announcer(rows, say)
        trained = train_group([cfgs[m[0]] for m in members], [Tee([logs[k] for k in m], on_line) for m in members],
                              pattern, factory, mode=mode)
        results = [None] * len(cfgs)
        for m, res in zip(members, trained):
            for k in m:
                results[k] = res
        rows_out = []
        for row, cfg, d, log, res in zip(rows, cfgs, run_dirs, logs, results):
            try:
                summary = pipeline.finish_run(cfg, res, d, log, None, factory, pattern, t0, tooling,
                                              vmap_group=len(members), group_mode=trained_mode)
                rows_out.append(result_row(row, d, out, summary) | {"group_mode": trained_mode})
            except Exception as exc:  # noqa: BLE001  one member's export failing fails that row only
                rows_out.append({"variant": row.variant, "seed": row.seed, "run_id": row.run_id, "status": "failed",
                                 "error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"})
        return rows_out
    except Exception as exc:  # noqa: BLE001
        say(f"sweep: the group failed ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); "
            "running its rows one by one")
        for log in logs:
            log.close()
        for d in run_dirs:
            shutil.rmtree(d, ignore_errors=True)
        return [run_row(r, out, say, key) for r, key in zip(rows, row_keys)]
    finally:
        for log in logs:
            log.close()
