"""The #1227 and #2114 presets: the parameter counts --dry-run prints (#2114's own count among them),
every preset valid at tiny shapes, and every new entry through run.py at tiny scale (train,
quantize, pack, round-trip), grouped into few runs; the remaining presets as-is under `slow`."""

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest

from pgolf_jax import config as C
from pgolf_jax.cli import main
from pgolf_jax.model.gpt import build_model, count_params
from pgolf_jax.quant import artifact

ROOT = Path(__file__).resolve().parent.parent
PR1227, PR2114 = ROOT / "configs" / "pr1227", ROOT / "configs" / "pr2114"
COUNTS = {
    PR1227 / "local.py": 2_413_092, PR1227 / "ssm2_hybrid.py": 2_340_120, PR1227 / "denseformer.py": 2_413_134,
    PR1227 / "monarch_mlp.py": 1_210_404, PR1227 / "qat_int5.py": 2_413_092, PR1227 / "qat_nf5.py": 2_413_092,
    PR2114 / "ut7_rlma320.py": 23_146_538,  # the PR's count
    PR2114 / "residual_delta.py": 20_197_418, PR2114 / "residual_contraction.py": 20_197_418,  # its ablation log's
}

# Tiny shapes for each family (the sample data's paths come from the sample_data fixture).
COMMON = {"train.train_seq_len": 64, "train.train_batch_tokens": 1024, "train.iterations": 4, "train.warmup_steps": 1,
          "train.max_wallclock_seconds": 0.0, "train.train_log_every": 1, "eval.val_batch_size": 4096,
          "eval.val_tokens_limit": 16384, "eval.val_loss_every": 0, "quant.keep_float_max_numel": 1024}
GPTQ = {"quant.scheme": "gptq", "quant.gptq.calibration_batches": 2}
TINY_1227 = {**COMMON, "model.num_layers": 3, "model.model_dim": 48, "model.num_heads": 3, "model.num_kv_heads": 3}
TINY_2114 = {**COMMON, "model.vocab_size": 1024, "model.model_dim": 32, "model.num_heads": 2, "model.num_kv_heads": 1,
             "model.mlp_mult": 2.0, "model.rlma.rank": 4, "model.ut_shared.iterations": 2, "train.lr_warmup_steps": 2,
             "train.warmdown_iters": 2, "eval.attention_window": 16}


def tiny(preset: Path) -> dict:
    return TINY_1227 if preset.parent == PR1227 else TINY_2114


def test_preset_parameter_counts(capsys):
    for preset, count in COUNTS.items():
        assert main(["--config", str(preset), "--dry-run"]) == 0
        assert f"model_params:{count}" in capsys.readouterr().out, preset.name
    assert set(COUNTS) == set(PR2114.glob("*.py")) | (set(PR1227.glob("*.py")) - {PR1227 / "teacher.py",
                                                                                   PR1227 / "distill.py"})


def test_every_preset_is_valid_at_tiny_shapes():
    for preset in COUNTS:
        cfg = C.load(preset, tiny(preset))
        assert 0 < count_params(jax.eval_shape(build_model(cfg.model).init, jax.random.key(0))) < 200_000, preset.name


def _run(sample_data, out: Path, run_id: str, preset: Path, extra: dict) -> tuple[dict, str]:
    overrides = {**tiny(preset), **sample_data["overrides"], **extra, "train.out_dir": str(out),
                 "train.run_id": run_id, "train.progress": False}
    assert main(["--config", str(preset), *[f"{k}={v}" for k, v in overrides.items()]]) == 0
    sub = json.loads((out / run_id / "submission.json").read_text())
    assert np.isfinite(sub["val_bpb"]) and sub["val_bpb"] < 8
    log = (out / run_id / "log.txt").read_text()
    assert "final_roundtrip_exact" in log
    return sub, log


def _quant_meta(run_dir: Path) -> dict:
    return artifact.read(next(run_dir.glob("final_model.*.zstd")))["qmeta"]


# (run id, preset, extra overrides): the default runs cover every new entry between them.
RUNS = [
    # s4d_lin mixer, GEGLU, AdamW on matrices, cosine; Monarch MLP under GPTQ (its RTN fallback).
    ("ssm_monarch", PR1227 / "ssm2_hybrid.py", {"model.mlp_linear": "monarch", **GPTQ,
                                                "train.lr_warmup_steps": 1}),
    # DenseFormer, QAT on the affine int5 grid that the RTN export stores.
    ("denseformer_qat_int5", PR1227 / "denseformer.py", {"quant.qat": True, "quant.grid": "affine",
                                                         "quant.scheme": "rtn", "quant.mlp_bits": 5}),
    ("qat_nf5_gptq", PR1227 / "qat_nf5.py", GPTQ),
    # ut_shared + RLMA with GPTQ on U/V, the 16-token eval window, the contraction residual.
    ("ut7_contraction_gptq", PR2114 / "ut7_rlma320.py", {"model.ut_shared.residual": "contraction", **GPTQ}),
]
SLOW_RUNS = [(p.stem, p, {}) for p in (PR1227 / "local.py", PR1227 / "ssm2_hybrid.py", PR1227 / "denseformer.py",
                                       PR1227 / "monarch_mlp.py", PR1227 / "qat_int5.py", PR2114 / "ut7_rlma320.py",
                                       PR2114 / "residual_delta.py", PR2114 / "residual_contraction.py")]


@pytest.mark.parametrize("run_id,preset,extra", RUNS + [pytest.param(*r, marks=pytest.mark.slow) for r in SLOW_RUNS],
                         ids=[r[0] for r in RUNS] + [f"as_is-{r[0]}" for r in SLOW_RUNS])
def test_new_entries_run_end_to_end(run_id, preset, extra, sample_data, tmp_path):
    sub, log = _run(sample_data, tmp_path, run_id, preset, extra)
    run_dir = tmp_path / run_id
    if run_id == "ssm_monarch":
        meta = _quant_meta(run_dir)
        assert meta["blocks_s4d_lin.0.ssm.in_proj.weight"]["method"] == "gptq"
        assert meta["blocks.0.mlp.gate.R"]["method"] == "rtn"
        assert "gptq:round-to-nearest for 18 tensors" in log  # R and L of gate, fc and proj in 3 layers
    if run_id == "denseformer_qat_int5":
        assert "qat:enabled step:0" in log
        assert {m["grid"] for m in _quant_meta(run_dir).values()} == {"affine"}
    if run_id == "qat_nf5_gptq":
        assert {(m["grid"], m["method"]) for n, m in _quant_meta(run_dir).items() if ".mlp." in n} == {("nf", "gptq")}
    if run_id == "ut7_contraction_gptq":
        assert "eval:attention_window:16" in log and "round-to-nearest for" not in log
        assert re.search(r"quant:attn \d+ tensors int8 gptq", log)
        assert not any(".R" in name for name in _quant_meta(run_dir))
