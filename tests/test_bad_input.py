"""Bad input, through `run.py` as a user runs it: every case exits non-zero (or does nothing and
says so), prints one error line naming the culprit and no traceback, never prints a score, and
leaves every file that existed before byte-identical. Plus a seeded corruption fuzz of a shard,
an artifact and a checkpoint."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest

from pgolf_jax.data.shards import write_shard

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.py")
DS, TOK = "data/datasets/fineweb10B_sp1024", "data/tokenizers/fineweb_1024_bpe.model"
# stderr lines that are progress, not errors (prepare prints them before it fails)
PROGRESS = re.compile(r"^(prepare: |download: |train_sentencepiece: )")


def tiny(d: Path, *extra: str) -> list[str]:
    """The tiny preset on the case's own copy of the dataset, writing runs under the case dir."""
    return ["--config", TINY, f"data.data_path={d / DS}", f"data.tokenizer_path={d / TOK}", "data.source=",
            f"train.out_dir={d / 'runs'}", "train.progress=false", *extra]


def run_args(world: Path, *extra: str) -> list[str]:
    """The exact command line the world's runs were made with (a resume must repeat it)."""
    return tiny(world, "train.iterations=3", "train.checkpoint_every=1", *extra)


@dataclasses.dataclass
class Case:
    name: str
    argv: Callable[[Path, Path], list[str]]  # (case dir, world dir) -> run.py arguments
    code: int
    error: str  # regex the one stderr line must match
    setup: Callable[[Path], None] | None = None
    new_files_ok: bool = False  # a run that trained keeps its log and float weights, never an artifact
    limit_file_bytes: int = 0  # RLIMIT_FSIZE: every file write past this size fails (a full disk)


def _flip_token(path: Path, offset_from_end: int = 2, value: int = 0x7FFF) -> None:
    raw = bytearray(path.read_bytes())
    raw[-offset_from_end:len(raw) - offset_from_end + 2] = value.to_bytes(2, "little")
    path.write_bytes(bytes(raw))


def _own_dataset(d: Path, bad_split: str) -> None:
    """A user dataset without a manifest (nothing records checksums), one shard holding id 2000."""
    mine = d / "mine" / "datasets" / "fineweb10B_sp1024"
    for split in ("val", "train"):
        src = sorted((d / DS).glob(f"fineweb_{split}_*.bin"))[0]
        tokens = bytearray(src.read_bytes()[1024:])
        import numpy as np
        ids = np.frombuffer(bytes(tokens), "<u2").copy()
        if split == bad_split:
            ids[len(ids) // 2] = 2000
        write_shard(mine / f"fineweb_{split}_000000.bin", ids)
    (d / "mine" / "tokenizers").mkdir(parents=True)
    shutil.copy(d / TOK, d / "mine" / "tokenizers" / "fineweb_1024_bpe.model")


def _mine(d: Path, *extra: str) -> list[str]:
    return tiny(d, f"data.data_path={d / 'mine/datasets/fineweb10B_sp1024'}",
                f"data.tokenizer_path={d / 'mine/tokenizers/fineweb_1024_bpe.model'}", *extra)


def _write(rel: str, text: str):
    def setup(d: Path) -> None:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return setup


def _corrupt_all_checkpoints(d: Path) -> None:
    for f in (d / "runs" / "ck" / "checkpoints").glob("*/state/ocdbt.process_0/d/*"):
        raw = bytearray(f.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        f.write_bytes(bytes(raw))


def _truncate(rel: str, keep: int):
    def setup(d: Path) -> None:
        p = d / rel
        p.write_bytes(p.read_bytes()[:keep] if keep >= 0 else p.read_bytes()[:keep])
    return setup


def _first(rel_glob: str, d: Path) -> Path:
    return sorted(d.glob(rel_glob))[0]


def _artifact(d: Path) -> str:
    return str(_first("runs/done/final_model.*.zstd", d))


# 1,200 distinct characters: more than a 1024-piece vocab can hold
CJK = "".join(json.dumps({"text": "".join(chr(0x4E00 + 400 * k + i) for i in range(400))}) + "\n" for k in range(3))

CASES = [
    # --- config: checked before anything is read or written -----------------------------------
    Case("iterations_negative", lambda d, w: tiny(d, "train.iterations=-5", "--dry-run"), 2,
         r"train\.iterations=-5 must be >= 1"),
    Case("iterations_zero", lambda d, w: tiny(d, "train.iterations=0"), 2,
         r"train\.iterations=0 must be >= 1 \(to score existing weights without training use `run\.py eval`\)"),
    Case("unknown_key", lambda d, w: tiny(d, "model.num_layerz=3"), 2,
         r"unknown config key 'model\.num_layerz' \(did you mean 'model\.num_layers'\?\)"),
    Case("wrong_type", lambda d, w: tiny(d, "model.num_layers=three"), 2, r"model\.num_layers: expected int"),
    Case("non_finite_float", lambda d, w: tiny(d, "optim.matrix_lr=1e999"), 2, r"optim\.matrix_lr: expected a finite"),
    # --- variant options: only while the variant is selected; old flat keys name their new spelling
    Case("option_of_unselected", lambda d, w: tiny(d, "model.mla.latent_dim=16"), 2,
         r"model\.mla\.\* is set but model\.attention does not select mla"),
    Case("option_old_key", lambda d, w: tiny(d, "eval.lora_rank=4"), 2,
         r"config key 'eval\.lora_rank' was renamed: use 'eval\.lora_ttt\.rank'"),
    Case("option_unknown_field", lambda d, w: tiny(d, "model.attention=mla", "model.mla.latnt_dim=8"), 2,
         r"unknown config key 'model\.mla\.latnt_dim' \(did you mean 'model\.mla\.latent_dim'\?\)"),
    Case("option_out_of_range", lambda d, w: tiny(d, "eval.final_modes=ttt", "eval.ttt.momentum=1.5"), 2,
         r"eval\.ttt\.momentum=1\.5 must be in \[0, 1\)"),
    Case("registry_attention", lambda d, w: tiny(d, "model.attention=nope"), 2,
         r"model\.attention='nope' is not registered; choose from gqa"),
    Case("registry_activation", lambda d, w: tiny(d, "model.activation=gelu"), 2,
         r"model\.activation='gelu' is not registered; choose from relu2, leaky_relu2"),
    Case("registry_linear", lambda d, w: tiny(d, "model.linear=sparse"), 2,
         r"model\.linear='sparse' is not registered; choose from dense"),
    Case("registry_block_schedule", lambda d, w: tiny(d, "model.block_schedule=ring"), 2,
         r"model\.block_schedule='ring' is not registered; choose from unet, repeat_in_place"),
    Case("registry_orthogonalizer", lambda d, w: tiny(d, "optim.orthogonalizer=svd"), 2,
         r"optim\.orthogonalizer='svd' is not registered; choose from newton_schulz, gram_newton_schulz"),
    Case("registry_attention_impl", lambda d, w: tiny(d, "model.attention_impl=fast"), 2,
         r"model\.attention_impl='fast' is not registered; choose from auto, xla, flash"),
    Case("distill_missing_teacher", lambda d, w: tiny(d, "train.objective=distill",
                                                      f"train.distill.teacher={d / 'no_teacher'}"), 1,
         r"train\.distill\.teacher=.*no_teacher not found"),
    Case("unknown_sample", lambda d, w: tiny(d, "data.source=sample:wiki"), 2,
         r"data\.source='sample:wiki': unknown sample corpus; choose from sample:brown, sample:nlp-corpus"),
    Case("run_id_escapes", lambda d, w: tiny(d, "train.run_id=../elsewhere"), 2, r"train\.run_id='\.\./elsewhere'"),
    Case("missing_preset", lambda d, w: ["--config", str(d / "nope.py")], 2, r"config file not found: .*nope\.py"),
    Case("broken_preset", lambda d, w: ["--config", str(d / "broken.py")], 2,
         r"broken\.py: failed to load preset: SyntaxError", setup=_write("broken.py", "OVERRIDES = {\n")),
    Case("data_path_typo_with_source",
         lambda d, w: tiny(d, "data.source=sample:nlp-corpus", f"data.data_path={d / DS}_typo"), 2,
         r"data\.source='sample:nlp-corpus' prepares sp1024 under .* as .*/fineweb10B_sp1024 and "
         r".*fineweb_1024_bpe\.model, but data\.data_path=.*fineweb10B_sp1024_typo .*nothing was written"),
    Case("data_path_two_levels_up", lambda d, w: tiny(d, "data.source=sample:nlp-corpus", "data.data_path=x"), 2,
         r"prepares sp1024 under \. .*but data\.data_path=x"),
    # --- data -----------------------------------------------------------------------------------
    Case("missing_dataset", lambda d, w: tiny(d, f"data.data_path={d / 'nowhere'}"), 1,
         r"nowhere not found: download the challenge data"),
    Case("missing_tokenizer", lambda d, w: tiny(d, f"data.tokenizer_path={d / 'missing.model'}"), 1,
         r"missing\.model not found"),
    Case("val_id_above_vocab", lambda d, w: _mine(d), 1,
         r"mine/datasets/fineweb10B_sp1024/fineweb_val_000000\.bin: token id 2000 >= model\.vocab_size=1024",
         setup=lambda d: _own_dataset(d, "val")),
    Case("train_id_above_vocab", lambda d, w: _mine(d), 1,
         r"fineweb_train_000000\.bin: token id 2000 >= model\.vocab_size=1024", setup=lambda d: _own_dataset(d, "train")),
    Case("shard_bit_flip", lambda d, w: tiny(d), 1,
         r"fineweb_val_000000\.bin: checksum crc32:\w+ differs from crc32:\w+ recorded in .*manifest\.json",
         setup=lambda d: _flip_token(d / DS / "fineweb_val_000000.bin")),
    Case("shard_truncated", lambda d, w: tiny(d), 1, r"fineweb_train_000000\.bin: truncated",
         setup=lambda d: _truncate(f"{DS}/fineweb_train_000000.bin", -7)(d)),
    Case("shard_bad_magic", lambda d, w: tiny(d), 1, r"fineweb_train_000000\.bin: bad magic 12345",
         setup=lambda d: (d / DS / "fineweb_train_000000.bin").write_bytes(
             (12345).to_bytes(4, "little") + (d / DS / "fineweb_train_000000.bin").read_bytes()[4:])),
    Case("empty_train_glob", lambda d, w: tiny(d, "data.train_files=nothing_*.bin"), 1, r"no shard files match"),
    Case("vocab_mismatch", lambda d, w: tiny(d, "model.vocab_size=512"), 1, r"does not match model vocab_size=512"),
    Case("val_shorter_than_a_sequence", lambda d, w: tiny(d, "train.train_seq_len=512", "train.train_batch_tokens=4096",
                                                           "eval.val_tokens_limit=300"), 1, r"shorter than one sequence"),
    # --- data prepare / verify / download: the root stays byte-identical -----------------------
    Case("prepare_malformed_jsonl", lambda d, w: ["data", "prepare", "--docs", str(d / "bad.jsonl"), "--out",
                                                  str(d / "data"), "--num-val-docs", "1", "--force"], 1,
         r"^error: data prepare: .*bad\.jsonl:2: not a JSON object \(", setup=_write("bad.jsonl", '{"text": "a"}\n{"t'),),
    Case("prepare_vocab_too_small", lambda d, w: ["data", "prepare", "--docs", str(d / "cjk.jsonl"), "--out",
                                                  str(d / "data"), "--num-val-docs", "1", "--force"], 1,
         r"vocab_size=1024 is too small .*needs \d+ pieces for its characters", setup=_write("cjk.jsonl", CJK * 10)),
    Case("prepare_split_above_docs", lambda d, w: ["data", "prepare", "--docs", str(d / "data/docs_selected.jsonl"),
                                                   "--out", str(d / "data"), "--num-val-docs", "100000", "--force"], 1,
         r"num_val_docs=100000 but .*docs_selected\.jsonl has 800 docs"),
    Case("prepare_other_settings_without_force",
         lambda d, w: ["data", "prepare", "--docs", str(d / "data/docs_selected.jsonl"), "--out", str(d / "data"),
                       "--num-val-docs", "99", "--shard-size", "50000"], 1,
         r"fineweb10B_sp1024 in .* was built differently: num_val_docs 100 vs 99.*--force` \(nothing was changed\)"),
    Case("prepare_missing_docs", lambda d, w: ["data", "prepare", "--docs", str(d / "missing.jsonl"), "--out",
                                               str(d / "data")], 1, r"docs jsonl not found: .*missing\.jsonl"),
    Case("verify_flipped_shard", lambda d, w: ["data", "verify", str(d / DS)], 1, r"fineweb_train_000000\.bin: checksum",
         setup=lambda d: _flip_token(d / DS / "fineweb_train_000000.bin", 10, 7)),
    Case("download_http_source", lambda d, w: ["data", "download", "--out", str(d / "data"), "--source",
                                               "http://mirror.example"], 1,
         r"for a hub mirror set HF_ENDPOINT=http://mirror\.example instead"),
    # --- runs: ids, resume, eval, quantize ------------------------------------------------------
    Case("run_id_taken", lambda d, w: tiny(d, "train.run_id=done"), 1, r"run directory .*runs/done already holds a run"),
    Case("resume_finished_run", lambda d, w: run_args(w, "--resume", str(d / "runs/done")), 0,
         r"^resume: .*runs/done finished already \(its submission\.json is written\); nothing to resume"),
    Case("resume_other_config", lambda d, w: run_args(w, "train.seed=7", "--resume", str(d / "runs/ck")), 2,
         r"the config differs from the run's: train\.seed: run has 1337, command line gives 7"),
    Case("resume_invalid_config_json", lambda d, w: run_args(w, "--resume", str(d / "runs/ck")), 1,
         r"runs/ck/config\.json: not valid JSON", setup=_truncate("runs/ck/config.json", 50)),
    Case("resume_every_checkpoint_corrupt", lambda d, w: run_args(w, "--resume", str(d / "runs/ck")), 1,
         r"no intact checkpoint in .*runs/ck/checkpoints: 2 \(state/.* does not match its checksum\); 1 \(",
         setup=_corrupt_all_checkpoints),
    Case("eval_run_invalid_config_json", lambda d, w: ["eval", "--run", str(d / "runs/done")], 1,
         r"runs/done/config\.json: not valid JSON", setup=_write("runs/done/config.json", "{oops")),
    Case("eval_run_config_wrong_shape", lambda d, w: ["eval", "--run", str(d / "runs/done")], 2,
         r"runs/done/config\.json: unknown config key 'model\.nope'",
         setup=_write("runs/done/config.json", '{"model": {"nope": 1}}')),
    Case("eval_truncated_artifact", lambda d, w: ["eval", "--artifact", _artifact(d), *tiny(d)[:6]], 1,
         r"final_model\.int8\.zstd: corrupt or truncated compressed body",
         setup=lambda d: _truncate(str(_first("runs/done/final_model.*.zstd", d).relative_to(d)), -100)(d)),
    Case("eval_not_an_artifact", lambda d, w: ["eval", "--artifact", str(d / TOK), *tiny(d)[:6]], 1,
         r"fineweb_1024_bpe\.model: bad magic"),
    Case("quantize_half_written_npz", lambda d, w: ["quantize", "--run", str(d / "runs/done")], 1,
         r"runs/done/final_model\.npz: not a readable weights file",
         setup=_truncate("runs/done/final_model.npz", 5000)),
    Case("quantize_model_override", lambda d, w: ["quantize", "--run", str(d / "runs/done"), "model.num_layers=3"], 2,
         r"'model\.num_layers=3': quantize only changes quant\.\*, eval\.\* or data\.\*"),
    # --- never a wrong score, never a half-written file -----------------------------------------
    Case("diverged_fp16_overflow", lambda d, w: tiny(d, "train.run_id=nan", "optim.matrix_lr=1e6",
                                                     "optim.scalar_lr=1e6"), 1,
         r"FloatingPointError: export: .* has \d+ non-finite values; the float weights reach \|w\| = .* "
         r"\(float16 max 65504\).*no artifact was written", new_files_ok=True),
    Case("artifact_over_cap", lambda d, w: tiny(d, "train.run_id=big", "train.iterations=1",
                                                "quant.max_artifact_bytes=1000"), 3,
         r"artifact is [\d,]+ bytes .* over the 1,000-byte cap", new_files_ok=True),
    Case("disk_full_weights", lambda d, w: tiny(d, "train.run_id=full", "train.iterations=2"), 1,
         r"WriteError: cannot write .*runs/full/final_model\.npz: File too large", new_files_ok=True,
         limit_file_bytes=300_000),
    Case("disk_full_checkpoint", lambda d, w: tiny(d, "train.run_id=fullck", "train.iterations=3",
                                                   "train.checkpoint_every=1"), 1,
         r"cannot write checkpoint step 1 to .*runs/fullck/checkpoints: File too large \(the earlier checkpoints "
         r"are intact\)", new_files_ok=True, limit_file_bytes=300_000),
]


def _snapshot(d: Path) -> dict[str, str]:
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _run(case: Case, d: Path, world: Path) -> dict:
    if case.setup:
        case.setup(d)
    argv = case.argv(d, world)
    before = _snapshot(d)
    env = {k: v for k, v in os.environ.items() if k != "PGOLF_TRACEBACK"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")

    cmd = [sys.executable, str(ROOT / "run.py"), *argv]
    if case.limit_file_bytes:  # set in a launcher that then execs run.py (the limit survives exec)
        n = case.limit_file_bytes
        cmd = [sys.executable, "-c", f"import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({n}, {n})); "
               "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])", *cmd[1:]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=600)
    return {"seconds": time.perf_counter() - t0, "code": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "before": before,
            "after": _snapshot(d), "argv": argv}


def _run_in_process(case: Case, d: Path, world: Path) -> dict:
    """_run through cli.main in this process, in the case's folder, with the same environment."""
    import contextlib
    import io

    from pgolf_jax.cli import main

    if case.setup:
        case.setup(d)
    argv = case.argv(d, world)
    before = _snapshot(d)
    out, err, cwd = io.StringIO(), io.StringIO(), os.getcwd()
    saved = {k: os.environ.get(k) for k in ("PGOLF_TRACEBACK", "HF_HUB_OFFLINE")}
    os.environ.pop("PGOLF_TRACEBACK", None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    t0 = time.perf_counter()
    try:
        os.chdir(d)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        os.chdir(cwd)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return {"seconds": time.perf_counter() - t0, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
            "before": before, "after": _snapshot(d), "argv": argv}


@pytest.fixture(scope="module")
def world(sample_data, tmp_path_factory):
    """A dataset (with its manifest and docs) and two runs of the tiny preset on it: `done`
    (finished) and `ck` (its checkpoints 1 and 2, as if killed before the end)."""
    from pgolf_jax.cli import main

    w = tmp_path_factory.mktemp("world")
    shutil.copytree(sample_data["root"], w / "data")
    assert main(run_args(w, "train.run_id=done")) == 0
    shutil.copytree(w / "runs" / "done", w / "runs" / "ck")
    for name in ("submission.json", "final_model.npz", *[p.name for p in (w / "runs/ck").glob("final_model.*")]):
        (w / "runs" / "ck" / name).unlink(missing_ok=True)
    assert sorted(p.name for p in (w / "runs/ck/checkpoints").iterdir()) == ["1", "2"]
    return w


@pytest.fixture(scope="module")
def results(world, tmp_path_factory):
    """Every case run once, two at a time (the machine has two cores), each in a copy of the world."""
    base = tmp_path_factory.mktemp("cases")

    def one(case: Case):
        d = base / case.name
        shutil.copytree(world, d)
        return case.name, _run(case, d, world)

    def here(case: Case):
        d = base / case.name
        shutil.copytree(world, d)
        return case.name, _run_in_process(case, d, world)

    # Cases that train (or need a file-size limit) run as processes, two at a time; the rest fail
    # before any training and run in this process meanwhile (no interpreter and JAX start each).
    spawned = [c for c in CASES if c.new_files_ok or c.limit_file_bytes]
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = pool.map(one, spawned)
        done = dict(here(c) for c in CASES if c not in spawned)
        return {**done, **dict(pending)}


def test_at_least_thirty_cases():
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, results):
    r = results[case.name]
    out = r["stdout"] + r["stderr"]
    lines = [line for line in r["stderr"].splitlines() if line.strip() and not PROGRESS.match(line)]
    assert r["code"] == case.code, f"{r['argv']}\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    assert len(lines) == 1, r["stderr"][-3000:]
    assert re.search(case.error, lines[0]), lines[0]
    if os.environ.get("PGOLF_PRINT_CASES"):  # the table of messages for a closing note: pytest -s
        print(f"\n| {case.name} | {r['code']} | {lines[0]} | {r['seconds']:.1f}s |")
    assert case.code == 0 or lines[0].startswith("error: ")
    assert not re.search(r"val_bpb:\d", r["stderr"]) and "final_roundtrip_exact" not in r["stdout"]
    changed = [f for f, h in r["before"].items() if r["after"].get(f) != h]
    assert not changed, f"files changed or removed: {changed}"
    new = sorted(set(r["after"]) - set(r["before"]))
    if case.new_files_ok:  # the record of a failed run, but never a score, an artifact or half a file
        assert not [f for f in new if re.search(r"final_model\.\w+\.(zstd|zlib|brotli)$|submission\.json$|summary\.json$"
                                                r"|\.tmp|/\.", f)], new
        if "disk_full" in case.name:
            assert not [f for f in new if f.endswith("final_model.npz")], new
    else:
        assert not new, f"new files: {new}"


# ---------------------------------------------------------------------------------------------
# Corruption fuzz: seeded byte flips and truncations, in-process through cli.main (fast).

def _corruptions(rng: random.Random, data: bytes, n: int):
    for i in range(n):
        b = bytearray(data)
        if i % 4 == 3:
            yield f"truncate to {(k := rng.randrange(len(b)))}", bytes(b[:k])
        else:
            flips = [rng.randrange(len(b)) for _ in range(rng.choice((1, 1, 2, 8)))]
            for off in flips:
                b[off] ^= rng.randrange(1, 256)
            yield f"flip at {flips}", bytes(b)


def _fuzz(target: Path, argv: list[str], capfd, n: int, seed: int, expect: str) -> list[str]:
    from pgolf_jax.cli import main

    original = target.read_bytes()
    rng = random.Random(seed)
    seen = []
    try:
        for what, data in _corruptions(rng, original, n):
            target.write_bytes(data)
            # A later change gets a later mtime (a process re-checks a shard whose size, mtime or
            # inode changed); rewrites within one clock tick here would share it.
            st = target.stat()
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000 * (len(seen) + 1)))
            code = main(argv)
            out, err = capfd.readouterr()
            lines = [x for x in err.splitlines() if x.strip() and not PROGRESS.match(x)]
            ctx = f"{target.name} {what}: code {code}\n{out[-1500:]}{err[-1500:]}"
            assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), ctx
            assert "Traceback" not in out + err and not re.search(r"val_bpb:\d", out + err), ctx
            assert re.search(expect, lines[0]), ctx
            seen.append(lines[0])
    finally:
        target.write_bytes(original)
    return seen


def test_fuzz_val_and_train_shards(world, tmp_path, capfd):
    d = tmp_path / "w"
    shutil.copytree(world / "data", d / "data")
    art = _first("runs/done/final_model.*.zstd", world)
    val, train = d / DS / "fineweb_val_000000.bin", d / DS / "fineweb_train_000000.bin"
    expect = r"(ShardError|FileNotFoundError): .*fineweb_(val|train)_000000\.bin"
    _fuzz(val, ["eval", "--artifact", str(art), *tiny(d)[:6]], capfd, 100, 1, expect)
    _fuzz(train, tiny(d, "train.run_id=fz"), capfd, 100, 2, expect)
    assert not (d / "runs" / "fz").exists()


def test_fuzz_artifact(world, tmp_path, capfd):
    art = tmp_path / "final_model.int8.zstd"
    shutil.copy(_first("runs/done/final_model.*.zstd", world), art)
    _fuzz(art, ["eval", "--artifact", str(art), *tiny(world)[:6]], capfd, 100, 3, r"ArtifactError: .*final_model")


def test_fuzz_checkpoint(world, tmp_path, capfd):
    """Corrupt one file of the newest checkpoint at a time: a resume never loads it (it falls back
    to checkpoint 1, checked here without training) and never prints a traceback."""
    from pgolf_jax.train.checkpoint import Checkpointer

    run = tmp_path / "ck"
    shutil.copytree(world / "runs" / "ck", run)
    shutil.rmtree(run / "checkpoints" / "1")  # the only checkpoint: a corrupt one is an error
    files = sorted(p for p in (run / "checkpoints" / "2").rglob("*") if p.is_file())
    rng = random.Random(4)
    for i in range(100):
        target = files[rng.randrange(len(files))]
        _fuzz(target, run_args(world, "--resume", str(run)), capfd, 1, 100 + i,
              r"CheckpointError: (no intact checkpoint|cannot open checkpoints|no checkpoint in)")
    ck = Checkpointer(run / "checkpoints")
    assert ck.select().step == 2  # every file restored: intact again
    ck.close()


def test_corrupt_newest_checkpoint_falls_back(world, tmp_path, capfd):
    from pgolf_jax.train.checkpoint import Checkpointer

    run = tmp_path / "ck"
    shutil.copytree(world / "runs" / "ck", run)
    target = sorted((run / "checkpoints" / "2" / "state").rglob("d/*"))[0]
    target.write_bytes(target.read_bytes()[:-1])
    ck = Checkpointer(run / "checkpoints")
    r = ck.select()
    ck.close()
    assert r.step == 1 and re.fullmatch(r"2 \(state/.* does not match its checksum\)", r.skipped[0])


def test_a_checksum_record_that_lost_a_file_is_not_trusted(world, tmp_path):
    """A record damaged so that it still parses but names one file twice (a flipped character in a
    name turning it into another file's) no longer vouches for every file: the step is skipped."""
    from pgolf_jax.train.checkpoint import CHECKSUMS, Checkpointer

    run = tmp_path / "ck"
    shutil.copytree(world / "runs" / "ck", run)
    record = run / "checkpoints" / "2" / CHECKSUMS
    sums = json.loads(record.read_text())
    first, second = sorted(sums)[:2]
    text = record.read_text().replace(json.dumps(first), json.dumps(second), 1)  # two entries for `second`
    record.write_text(text)
    assert json.loads(text) == {k: v for k, v in sums.items() if k != first} | {second: sums[second]}
    ck = Checkpointer(run / "checkpoints")
    r = ck.select()
    ck.close()
    assert r.step == 1 and r.skipped == [f"2 ({first} has no checksum in {CHECKSUMS})"]
