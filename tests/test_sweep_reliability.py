"""Sweep folders reuse nothing made from other inputs (config, data, code; issue 23), belong to one
sweep file, and stop cleanly on SIGTERM: one line, exit 143, no process left, nothing finished
lost, and a rerun of the same command gives the uninterrupted sweep's numbers."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tree_sums
from pgolf_jax.sweep import keys, runner
from pgolf_jax.sweep.spec import load_sweep

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.py"
OK = "VARIANTS = {'a': {}, 'b': {'optim.matrix_lr': 0.02}}\nSEEDS = [1, 2]\n"
OTHER = "VARIANTS = {'a': {'optim.matrix_lr': 0.05}, 'b': {'model.num_layers': 3}}\nSEEDS = [1, 2]\n"


def _sweep(tmp_path: Path, sample_data, name: str, body: str, iterations: int = 6) -> Path:
    over = {**sample_data["overrides"], "train.iterations": iterations}
    path = tmp_path / f"{name}.py"
    path.write_text(f"BASE = {str(TINY)!r}\nOVERRIDES = {over!r}\n" + body)
    return path


def _folder(out: Path, sweep_file: Path, keyed: bool = True, status: str = "failed") -> dict:
    """A sweep folder as sweep_file's run would leave it (rows recorded, no training): the rows are
    failed ones, which a rerun reuses as they are without --retry-failed."""
    sw = load_sweep(sweep_file)
    code = keys.code_version()
    out.mkdir(parents=True)
    (out / "sweep.json").write_text(json.dumps({"sweep": sw.name, "file": str(sweep_file)}))
    recs = {}
    for row in sw.rows:
        rec = {"variant": row.variant, "seed": row.seed, "run_id": row.run_id, "status": status, "error": "made up"}
        if keyed:
            rec["made_from"] = keys.made_from(row.cfg, code)
        (out / "rows").mkdir(exist_ok=True)
        (out / "rows" / f"{row.run_id}.json").write_text(json.dumps(rec))
        recs[row.run_id] = rec
    return recs


def test_bad_seeds_and_reference_are_one_line_before_any_row(tmp_path, sample_data, refused):
    out = tmp_path / "out"
    for body, pattern in [
        ("SEEDS = [2**64]", r"SEEDS: seed 18446744073709551616 is out of range: .*in \[0, 4294967295\]"),
        ("SEEDS = [-1]", r"SEEDS: seed -1 is out of range"),
        ("SEEDS = [1, True]", r"SEEDS: True is not an integer seed"),
        ("SEEDS = [1]\nCONTROL_SEEDS = [1, 2**40]", r"CONTROL_SEEDS: seed 1099511627776 is out of range"),
        ("REFERENCE = {'a': '1.31'}", r"REFERENCE\['a'\] = '1\.31': expected a finite positive number"),
        ("REFERENCE = {'a': float('nan')}", r"REFERENCE\['a'\] = nan"),
        ("REFERENCE = {'a': True}", r"REFERENCE\['a'\] = True"),
        ("REFERENCE = {'zz': 1.3}", r"REFERENCE: 'zz' is not one of the VARIANTS"),
        ("REFERENCE = [1.3]", r"REFERENCE must be a dict"),
    ]:
        path = _sweep(tmp_path, sample_data, "bad", "VARIANTS = {'a': {}}\n" + body + "\n")
        for extra in (["--dry-run"], ["--out", out]):
            refused(["sweep", path, *extra], 2, pattern)
        assert not out.exists()


def test_another_sweeps_folder_is_refused(tmp_path, sample_data, refused):
    """The issue's case: a folder of sw/ok.py reused by sw/other.py reported ok's numbers as other's."""
    ok, other = _sweep(tmp_path, sample_data, "ok", OK), _sweep(tmp_path, sample_data, "other", OTHER)
    out = tmp_path / "S"
    _folder(out, ok)
    refused(["sweep", other, "--out", out], 1, r"--out .*S: holds sweep 'ok', not 'other' .*use another --out, "
            r"or --force", watch=[out])
    refused(["sweep", other, "--out", out, "--report-only"], 1, r"holds sweep 'ok'", watch=[out])
    # --force lets it in, but no row of ok's is taken for other's: the first differing key is named.
    line = refused(["sweep", other, "--out", out, "--force"], 1, r"sweep row a-s1 in .*S was made from other inputs "
                   r"\(optim\.matrix_lr: 0\.04 there, 0\.05 now\): use another --out, or --rerun-changed", watch=[out])
    assert "(and 3 more rows)" in line
    # A folder from before sweep.json: its results.md's title says whose it is.
    old = tmp_path / "old"
    (old / "rows").mkdir(parents=True)
    (old / "results.md").write_text("# Sweep `ok`\n\nrows\n")
    refused(["sweep", other, "--out", old], 1, r"holds sweep 'ok', not 'other'", watch=[old])
    # Tables nobody's sweep made, or a run directory as the folder: refused, --force or not for the run.
    mine = tmp_path / "mine"
    (mine / "rows").mkdir(parents=True)
    (mine / "results.md").write_text("my notes\n")
    refused(["sweep", other, "--out", mine, "--report-only"], 1, r"results\.md: exists and was not written by this "
            r"command; pass --force", watch=[mine])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "log.txt").write_text("")
    refused(["sweep", other, "--out", run, "--force"], 1, r"inside run directory", watch=[run])


def test_changed_data_code_and_unkeyed_rows_are_refused(tmp_path, sample_data, refused, monkeypatch, capfd):
    ok = _sweep(tmp_path, sample_data, "ok", OK)
    out = tmp_path / "S"
    recs = _folder(out, ok)
    # Another dataset under the same paths: a shard checksum differs.
    rec = json.loads(json.dumps(recs["b-s2"]))
    rec["made_from"]["data"]["digest"] = "0" * 16
    (out / "rows" / "b-s2.json").write_text(json.dumps(rec))
    refused(["sweep", ok, "--out", out], 1, r"sweep row b-s2 in .* was made from other inputs \(data fineweb10B_sp1024: "
            r"shard digest 0{16} there \(\d+ shards\), [0-9a-f]{16} now", watch=[out])
    (out / "rows" / "b-s2.json").write_text(json.dumps(recs["b-s2"]))
    # Other code: refused unless --allow-code-change reuses the rows.
    monkeypatch.setattr(keys, "code_version", lambda: "0123456789abcdef")
    refused(["sweep", ok, "--out", out], 1, r"sweep row a-s1 in .* was made by other code \(pgolf_jax source "
            r"[0-9a-f]{16} there, 0123456789abcdef now\): pass --allow-code-change", watch=[out])
    from pgolf_jax.cli import main

    capfd.readouterr()
    assert main(["sweep", str(ok), "--out", str(out), "--allow-code-change"]) == 0
    assert "ran:0 skipped:4" in capfd.readouterr().out
    # Rows from before keys: unknown inputs, reused only with --accept-unkeyed.
    old = tmp_path / "old"
    _folder(old, ok, keyed=False)
    refused(["sweep", ok, "--out", old], 1, r"sweep row a-s1 in .* records no inputs .*--accept-unkeyed", watch=[old])
    assert main(["sweep", str(ok), "--out", str(old), "--accept-unkeyed"]) == 0
    assert "ran:0 skipped:4" in capfd.readouterr().out


def test_rerun_changed_moves_old_rows_aside_and_runs_them(tmp_path, sample_data, monkeypatch, capsys):
    from pgolf_jax.cli import main
    from pgolf_jax.sweep import group

    ok, other = _sweep(tmp_path, sample_data, "ok", OK), _sweep(tmp_path, sample_data, "other", OTHER)
    out = tmp_path / "S"
    _folder(out, ok)
    for rel in ("runs/a-s1/log.txt", "logs/a-s1.txt", "presets/a-s1.py", "keys/a-s1.json"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(rel)
    before = {str(Path(p).relative_to(out)): s for p, s in tree_sums(out).items()}
    ran = []

    def fake(rows):
        ran.extend(r.run_id for r in rows)
        return [{"variant": r.variant, "seed": r.seed, "run_id": r.run_id, "status": "failed", "error": "fake"}
                for r in rows]

    monkeypatch.setattr(group, "run_group", lambda rows, *a, **k: fake(rows))
    monkeypatch.setattr(runner, "run_row", lambda row, *a, **k: fake([row])[0])
    assert main(["sweep", str(other), "--out", str(out), "--force", "--rerun-changed"]) == 0
    assert sorted(ran) == ["a-s1", "a-s2", "b-s1", "b-s2"] and "ran:4 skipped:0" in capsys.readouterr().out
    moved = {}
    for d in (out / "replaced").iterdir():
        moved.update({str(Path(p).relative_to(d)): s for p, s in tree_sums(d).items()})
    assert moved == {k: v for k, v in before.items() if k != "sweep.json"}  # every old file kept, moved
    new = json.loads((out / "rows" / "a-s1.json").read_text())
    assert new["made_from"]["config"]["optim.matrix_lr"] == 0.05
    assert json.loads((out / "sweep.json").read_text())["sweep"] == "other"


def test_finished_run_without_its_row_is_recorded_not_rerun(tmp_path, sample_data, monkeypatch):
    """Killed after a row's run finished but before its row was written: recorded, if keyed alike."""
    path = _sweep(tmp_path, sample_data, "one", "VARIANTS = {'a': {}}\nSEEDS = [1]\n")
    sw, out = load_sweep(path), tmp_path / "S"
    row = sw.rows[0]
    run_dir = out / "runs" / row.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "submission.json").write_text(json.dumps({"steps": 6, "train_time_ms": 60.0, "val_bpb": 3.5,
                                                         "bytes_total": 1000, "model_params": 10}))
    event = {"event": "train", "step": 6, "train_loss": 5.0, "train_time_ms": 60.0}
    (run_dir / "metrics.jsonl").write_text(json.dumps(event) + "\n")
    monkeypatch.setattr(runner, "run_row", lambda *a, **k: pytest.fail("a finished row was run again"))
    keys.write_key(out, row.run_id, keys.made_from(row.cfg, keys.code_version()))
    assert runner.run_sweep(sw, out, say=lambda m: None) == {"ran": 0, "skipped": 1, "failed": 0}
    rec = json.loads((out / "rows" / "a-s1.json").read_text())
    assert rec["val_bpb"] == 3.5 and rec["made_from"]["config"]["train.seed"] == 1
    # The same finished run under a changed config is not recorded: refused.
    (out / "rows" / "a-s1.json").unlink()
    other = _sweep(tmp_path, sample_data, "one", "VARIANTS = {'a': {'optim.matrix_lr': 0.07}}\nSEEDS = [1]\n")
    with pytest.raises(FileExistsError, match=r"optim\.matrix_lr: 0\.04 there, 0\.07 now"):
        runner.run_sweep(load_sweep(other), out, say=lambda m: None)
    assert not (out / "rows" / "a-s1.json").exists()


def _survivors(text: str) -> list[str]:
    """Command lines of live processes that mention text (zombies have none)."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmd:
                found.append(cmd.replace(b"\0", b" ").decode(errors="replace"))
    return found


def _columns(out: Path, bytes_column: str = "artifact_bytes") -> list[tuple]:
    """results.csv's val_bpb and bytes columns (bytes_column from each row's record)."""
    with open(out / "results.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    recs = [json.loads((out / "rows" / f"{r['variant']}-s{r['seed']}.json").read_text()) for r in rows]
    return [(r["variant"], r["seed"], r["status"], r["val_bpb"], r["artifact_bytes"] if bytes_column == "artifact_bytes"
             else rec[bytes_column]) for r, rec in zip(rows, recs)]


def _same_numbers(a: Path, b: Path) -> None:
    """Equal val_bpb and artifact bytes; where the code changed between the runs (others editing the
    working tree meanwhile), its packed code's size did too, and the model bytes are compared."""
    codes = {json.loads(p.read_text())["made_from"]["code"] for d in (a, b) for p in (d / "rows").glob("*.json")}
    column = "artifact_bytes" if len(codes) == 1 else "bytes_model"
    assert _columns(a, column) == _columns(b, column) and len(_columns(a)) == 2, column


@pytest.mark.parametrize("mode,wait_for", [  # three sweeps each (two in this process): ~40-90 s on 2 cores
    pytest.param(["--no-vmap"], "sweep: a-s2: training", marks=pytest.mark.slow),  # the 2nd row's process, training
    (["--group-mode", "loop"], ": training (as one group)"),
    pytest.param(["--group-mode", "vmap"], ": training (as one group)", marks=pytest.mark.slow),
], ids=["no-vmap", "loop", "vmap"])
def test_sigterm_stops_the_sweep_and_a_rerun_finishes_it(tmp_path, sample_data, mode, wait_for, capfd):
    from pgolf_jax.cli import main

    # --allow-code-change: others editing the working tree while this runs must not fail it.
    # 20 steps a row: the signal (sent at the first step's line) still lands well inside training.
    path = _sweep(tmp_path, sample_data, "sig", "VARIANTS = {'a': {}}\nSEEDS = [1, 2]\n", iterations=20)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))

    def argv(out):
        return ["sweep", str(path), "--out", str(out), *mode, "--allow-code-change"]

    def sweep(out):
        """The uninterrupted sweep and the rerun: run.py's entry point in this process (only the victim
        needs a process of its own), so they pay no interpreter start and share this process's compiles."""
        capfd.readouterr()
        code = main(argv(out))
        got, err = capfd.readouterr()
        assert code == 0, got[-2000:] + err[-2000:]
        return got

    base = tmp_path / "base"
    sweep(base)
    out = tmp_path / "out"
    victim = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *argv(out)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in victim.stdout:
        seen.append(line)
        if wait_for in line:
            victim.send_signal(signal.SIGTERM)
            break
    rest, err = victim.communicate(timeout=300)
    assert victim.returncode == 128 + signal.SIGTERM, "".join(seen) + rest + err
    errors = [ln for ln in err.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: interrupted (SIGTERM)"), err
    assert not _survivors(str(out)), _survivors(str(out))
    finished = tree_sums(out / "rows")
    if mode == ["--no-vmap"]:
        # a-s1 finished before the signal; a-s2 was stopped in training and left a checkpoint.
        assert [Path(p).name for p in finished] == ["a-s1.json"]
        assert any((out / "runs" / "a-s2" / "checkpoints").iterdir())
    else:  # a group keeps no checkpoint: its unfinished run directories are gone, nothing recorded
        assert not finished and not any((out / "runs").iterdir())
    log = sweep(out)
    assert ("resuming the killed run from its checkpoint" in log) == (mode == ["--no-vmap"]), log
    assert {p: s for p, s in tree_sums(out / "rows").items() if p in finished} == finished  # kept as it was
    _same_numbers(out, base)
