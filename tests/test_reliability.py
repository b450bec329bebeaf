"""Reliability of the main job and the data commands: seeds and presets checked before any work, a
dataset without recorded checksums never verified as OK, non-UTF-8 docs named by line, SIGTERM as
^C (staging removed, exit 143), a resume refused on other data or other code, and what a finished
run leaves behind (no empty checkpoints/, its provenance, honest progress)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, tree_sums

TINY = str(ROOT / "configs" / "tiny.py")
DS = "datasets/fineweb10B_sp1024"


def _tiny(sample_data, out: Path, *extra: str) -> list[str]:
    return ["--config", TINY, *(f"{k}={v}" for k, v in sample_data["overrides"].items()),
            f"train.out_dir={out}", "train.progress=false", *extra]


@pytest.mark.parametrize("seed", [-1, 2**32, 2**63, 2**64])
def test_seed_out_of_range(refused, tmp_path, seed):
    refused(["--config", TINY, f"train.seed={seed}", "--dry-run"], 2,
            rf"^error: config: train\.seed={seed} must be in \[0, 4294967295\]$", watch=[tmp_path])


@pytest.mark.parametrize("text, pattern", [
    ("BASE = 42\nOVERRIDES = {}\n", r"BASE = 42 must be the path of another preset file"),
    ("BASE = ''\nOVERRIDES = {}\n", r"BASE = '' must be the path of another preset file"),
    ("OVERRIDES = {1: 2}\n", r"OVERRIDES key 1 is not a 'section\.field' string"),
    ("OVERRIDES = [1]\n", r"a preset must define OVERRIDES = "),
])
def test_bad_preset_shapes(refused, tmp_path, text, pattern):
    (tmp_path / "p.py").write_text(text)
    refused(["--config", tmp_path / "p.py", "--dry-run"], 2, r"^error: config: .*p\.py: " + pattern, watch=[tmp_path])


def _own_dataset(sample_data, d: Path) -> Path:
    """The sample dataset's shards copied without their manifest (nothing records checksums)."""
    ds = d / DS
    ds.mkdir(parents=True)
    for f in (Path(sample_data["root"]) / DS).glob("*.bin"):
        shutil.copy(f, ds / f.name)
    return ds


def test_verify_without_manifest_is_not_ok(sample_data, tmp_path, refused):
    ds = _own_dataset(sample_data, tmp_path)
    shard = ds / "fineweb_train_000000.bin"
    raw = bytearray(shard.read_bytes())
    raw[-2:] = (7).to_bytes(2, "little")  # a flipped token no header or id check can see
    shard.write_bytes(bytes(raw))
    refused(["data", "verify", ds], 1, r"^error: data verify: .*fineweb10B_sp1024: \d+ shard\(s\) \(fineweb_train_000000"
            r"\.bin, \.\.\.\) have no recorded checksum \(.*manifest\.json does not exist\), so their contents cannot "
            r"be checked; pass --structure-only", watch=[tmp_path])


def test_verify_structure_only(sample_data, tmp_path, capfd):
    from pgolf_jax.cli import main

    ds = _own_dataset(sample_data, tmp_path)
    assert main(["data", "verify", str(ds), "--structure-only"]) == 0
    n = len(list(ds.glob("*.bin")))
    assert f"structure only: {n} shard(s) have no recorded checksum" in capfd.readouterr().out
    assert main(["data", "verify", str(Path(sample_data["root"]) / DS)]) == 0  # a manifest: checked in full
    assert "structure only" not in capfd.readouterr().out


def test_prepare_non_utf8_names_file_and_line(tmp_path, refused):
    (tmp_path / "d.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    refused(["data", "prepare", "--docs", tmp_path / "d.jsonl", "--out", tmp_path / "out", "--num-val-docs", "1",
             "--variants", "byte260"], 1,
            r"^error: data prepare: .*d\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 14\)$", watch=[tmp_path])
    assert not (tmp_path / "out").exists()


def _docs(tmp_path: Path, n: int = 800) -> Path:
    from pgolf_jax.data import samples

    src, dst = samples.find_sample_docs("nlp-corpus"), tmp_path / "docs.jsonl"
    with open(src, encoding="utf-8") as f:
        dst.write_text("".join(line for _, line in zip(range(n), f)), encoding="utf-8")
    return dst


def _env() -> dict:
    return {**{k: v for k, v in os.environ.items() if k != "PGOLF_TRACEBACK"}, "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": str(ROOT)}


def test_sigterm_data_prepare(tmp_path):
    """SIGTERM after the first variant is built: exit 143, one error line, no staging left, the root
    as it was (here: an existing manifest and dataset untouched); the rerun equals a clean build.
    The signal lands while the second variant's tokenizer trains (~0.8 s on 3,000 docs): with a fast
    second variant the prepare could finish first (byte260 after sp1024 left ~25 ms)."""
    docs = _docs(tmp_path, 3000)
    root = tmp_path / "data"
    args = ["data", "prepare", "--docs", str(docs), "--num-val-docs", "50", "--shard-size", "50000"]
    cmd = [sys.executable, str(ROOT / "run.py"), *args, "--out", str(root)]
    assert subprocess.run([*cmd, "--variants", "byte260"], env=_env(), capture_output=True).returncode == 0
    before = tree_sums(root)
    proc = subprocess.Popen([*cmd, "--variants", "sp1024,sp4096", "--force"], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # the named line: the first variant is built in staging
        seen.append(line)
        if re.match(r"prepare: fineweb10B_sp1024: \d+ val \+", line):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    code = proc.wait(timeout=120)
    errors = [ln for ln in rest.splitlines() if ln.strip() and not ln.startswith("prepare: ")]
    assert code == 128 + signal.SIGTERM, "".join(seen) + rest
    assert errors == ["error: data prepare: interrupted (SIGTERM); a prepare changes nothing until it is complete"]
    assert tree_sums(root) == before and not list(root.glob(".prepare-*"))
    assert subprocess.run([*cmd, "--variants", "sp1024,sp4096", "--force"], env=_env(),
                          capture_output=True).returncode == 0
    clean = tmp_path / "clean"
    assert subprocess.run([*cmd[:-1], str(clean), "--variants", "byte260,sp1024,sp4096"], env=_env(),
                          capture_output=True).returncode == 0
    sums = {name: {d["name"]: d["checksums"] for d in json.loads((name / "manifest.json").read_text())["datasets"]}
            for name in (root, clean)}
    assert sums[root] == sums[clean]


@pytest.fixture(scope="module")
def ck_run(sample_data, tmp_path_factory):
    """A finished tiny run and a copy cut back to its checkpoints (as if killed at step 2)."""
    from pgolf_jax.cli import main

    out = tmp_path_factory.mktemp("runs")
    assert main(_tiny(sample_data, out, "train.iterations=3", "train.run_id=done", "train.checkpoint_every=1")) == 0
    assert main(_tiny(sample_data, out, "train.iterations=3", "train.run_id=plain", "train.checkpoint_every=0")) == 0
    return out


def _killed_copy(ck_run: Path, dest: Path) -> Path:
    shutil.copytree(ck_run / "done", dest)
    for f in dest.glob("final_model.*"):
        f.unlink()
    (dest / "submission.json").unlink()
    return dest


def test_finished_run_leaves_no_empty_checkpoints_and_records_provenance(ck_run, sample_data):
    from pgolf_jax import provenance

    run = ck_run / "plain"
    assert not (run / "checkpoints").exists()
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["code_version"] == provenance.code_version()
    assert prov["data"]["keyed_by"] == "checksums" and prov["data"]["shards"] == len(list((Path(sample_data["root"]) / DS).glob("*.bin")))
    assert json.loads((run / "submission.json").read_text())["code_version"] == provenance.code_version()


def test_log_times_steps_when_they_finish(ck_run):
    """The log's step times are taken when the step's loss is fetched, so they grow with the steps."""
    ms = [float(m) for m in re.findall(r"^step:\d/3 train_loss:\S+ train_time:(\d+)ms",
                                       (ck_run / "plain" / "log.txt").read_text(), re.M)]
    assert len(ms) == 3 and ms[0] < ms[1] < ms[2]


def test_first_progress_line_claims_no_speed(sample_data, tmp_path, capfd):
    from pgolf_jax.cli import main

    assert main(_tiny(sample_data, tmp_path, "train.iterations=2", "train.progress=true")) == 0
    err = capfd.readouterr().err
    first = next(ln for ln in err.splitlines() if ln.startswith("train ["))
    assert re.search(r"1/2 .* eta \? step_avg \? ", first), first


@pytest.mark.parametrize("edit, pattern", [
    ({"code_version": "0000000000000000"}, r"the code changed since the run started \(0000000000000000 -> \w+\); "
                                           r"pass --allow-code-change"),
    ({"data": {"digest": "ffff"}}, r"the dataset .* differs from the one the run trained on \(shard digest \w+ vs ffff\)"),
    (None, r"no provenance\.json records the code and data it was made with; pass --allow-code-change"),
])
def test_resume_refuses_other_code_or_data(sample_data, ck_run, tmp_path, refused, edit, pattern):
    run = _killed_copy(ck_run, tmp_path / "done")
    prov = json.loads((run / "provenance.json").read_text())
    if edit is None:
        (run / "provenance.json").unlink()
    else:
        (run / "provenance.json").write_text(json.dumps({**prov, **edit}))
    refused([*_tiny(sample_data, ck_run, "train.iterations=3", "train.checkpoint_every=1"), "--resume", run], 2,
            r"^error: config: --resume .*done: " + pattern, watch=[run])


def test_resume_without_the_checkpoint_code_is_one_line(sample_data, ck_run, tmp_path, monkeypatch, capsys):
    """A packed file holds the checkpoint and resume code only when its run checkpoints (registry.CHECKPOINTS
    as packing/select.py reduces it): without it the file offers no --resume, refused in one line, the run
    left as it was."""
    from conftest import tree_sums

    from pgolf_jax import registry
    from pgolf_jax.cli import packed_main

    run = _killed_copy(ck_run, tmp_path / "done")
    before = tree_sums(run)
    monkeypatch.setattr(registry, "CHECKPOINTS", {})
    assert packed_main(["--resume", str(run)], {}) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--resume" in lines[0], lines
    assert tree_sums(run) == before


def test_resume_with_allowed_code_change(sample_data, ck_run, tmp_path, capfd):
    from pgolf_jax.cli import main

    run = _killed_copy(ck_run, tmp_path / "done")
    prov = json.loads((run / "provenance.json").read_text())
    (run / "provenance.json").write_text(json.dumps({**prov, "code_version": "0000000000000000"}))
    assert main([*_tiny(sample_data, ck_run, "train.iterations=3", "train.checkpoint_every=1"), "--resume", str(run),
                 "--allow-code-change"]) == 0
    want = json.loads((ck_run / "done" / "submission.json").read_text())
    got = json.loads((run / "submission.json").read_text())
    assert got["val_bpb"] == want["val_bpb"] and got["bytes_model"] == want["bytes_model"]
    assert json.loads((run / "provenance.json").read_text())["code_version"] == prov["code_version"]


def test_run_inside_another_run_refused(sample_data, ck_run, refused):
    refused(_tiny(sample_data, ck_run / "plain", "train.iterations=1"), 1,
            r"^error: OutputRefused: train\.out_dir=.*plain: inside run directory .*plain; write runs elsewhere",
            watch=[ck_run / "plain"])


@pytest.mark.parametrize("argv, pattern", [
    (["bench", "--config", TINY, "--steps", "0"], r"run\.py bench: argument --steps: '0' is not an integer >= 1"),
    (["bench", "--config", TINY, "--batch", "-2"], r"run\.py bench: argument --batch: '-2' is not an integer >= 1"),
    (["bench", "--config", TINY, "--micro", "0"], r"run\.py bench: argument --micro: '0' is not an integer >= 1"),
    (["bench", "--config", TINY, "--attention", "nope"], r"config: --attention: unknown implementation\(s\) \['nope'\]"),
    (["plot"], r"run\.py plot: the following arguments are required: RUN_DIR"),
    (["data", "verify"], r"run\.py data verify: the following arguments are required: dir"),
    (["data", "prepare", "--docs", "x", "--nope"], r"run\.py data: unrecognized arguments: --nope"),
    (["--config", TINY, "--bogus"], r"run\.py: unrecognized arguments: --bogus"),
])
def test_usage_errors_are_one_line(refused, tmp_path, argv, pattern):
    refused(argv, 2, r"^error: " + pattern, watch=[tmp_path])
