"""Seam: the presets (configs/): --dry-run parameter counts, validity at tiny shapes, config errors, and
end-to-end runs through run.py (train, quantize, pack, round-trip)."""

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
from conftest import TINY_PRESET  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
PR1589 = CONFIGS / "pr1589"


# ---------------------------------------------------------------------------------------------
# --dry-run parameter counts (each checked against the spec / the PR's arithmetic)


@pytest.mark.parametrize("preset,count", [("baseline", 17_059_912), ("mla128", 15_880_264), ("mla64", 15_290_440),
                                          ("pause4x64", 17_061_960), ("eigen_r64", 4_382_152),
                                          ("eigen_r128", 8_219_464), ("eigen_r256", 15_894_088)])
def test_pr1589_preset_parameter_counts(preset, count, capsys):
    assert main(["--config", str(ROOT / "configs" / "pr1589" / f"{preset}.py"), "--dry-run"]) == 0
    assert f"model_params:{count}" in capsys.readouterr().out


@pytest.mark.parametrize("preset,count", [
    ("basis_r128", 5_066_824), ("basis_r64", 2_805_832), ("hypernet_r32", 110_106_248), ("siren_h256", 677_833),
    ("nca_50", 569_672), ("seed_d2048", 546_888), ("mps_b64", 4_238_720), ("hopfield_e128", 638_978),
    ("agents_m64", 1_269_760), ("surge_m_v2_twopass", 5_131_174), ("surge_m_v2_single", 5_131_174)])
def test_issue13_preset_parameter_counts(preset, count, capsys):
    assert main(["--config", str(ROOT / "configs" / "pr1589" / f"{preset}.py"), "--dry-run"]) == 0
    assert f"model_params:{count}" in capsys.readouterr().out


def test_record_presets_parameter_counts(capsys):
    from pgolf_jax.cli import main
    assert main(["--config", str(CONFIGS / "record_1809.py"), "--dry-run"]) == 0
    assert "model_params:35944536" in capsys.readouterr().out
    r1493 = C.load(CONFIGS / "record_1493.py")
    assert (r1493.optim.ns_coefficients, r1493.optim.muon_backend_steps, r1493.train.min_lr) == ("ns5", 5, 0.0)
    assert r1493.model == C.load(CONFIGS / "record_1809.py").model


# The frontier records (issue 25 item 10): the model_params line of each record's own train log.
FRONTIER_COUNTS = {"record_1530": 35_944_602, "record_1736": 35_989_658, "record_1787": 35_945_658,
                   "record_1855": 35_945_671}


@pytest.mark.parametrize("preset,count", sorted(FRONTIER_COUNTS.items()))
def test_frontier_preset_parameter_counts(preset, count, capsys):
    assert main(["--config", str(CONFIGS / f"{preset}.py"), "--dry-run"]) == 0
    assert f"model_params:{count}" in capsys.readouterr().out


def test_record_1855_is_1787_plus_its_nine_hyperparameters_and_pieces():
    """#1855's README: nine hyperparameters over #1787, plus SmearGate (BOS fix), LQER and per-group
    compression; nothing else differs."""
    base, top = C.flat_dict(C.load(CONFIGS / "record_1787.py")), C.flat_dict(C.load(CONFIGS / "record_1855.py"))
    nine = {"optim.beta2": 0.99, "eval.lora_ttt.beta2": 0.99, "eval.lora_ttt.wd": 0.5, "eval.lora_ttt.rank": 80,
            "train.warmdown_frac": 0.85, "quant.mlp_clip_sigmas": 11.5, "quant.embed_clip_sigmas": 14.0,
            "model.sparse_gate.scale": 0.5, "eval.lora_ttt.phase_prefix_docs": 2500}
    pieces = {"model.smear_gate": "v2", "quant.lqer_rank": 4, "quant.compressor": "pergroup"}
    changed = {k: v for k, v in top.items() if base.get(k) != v and not k.startswith("quant.pergroup.")}
    assert changed == {**nine, **pieces}


# The frontier presets at tiny shapes: 3 layers x 64 (two lanes in the decoder's last layer, layer 1
# looped), GPTQ, LQER and per-group compression on real int codes, 3 records-style TTT phases over 3
# of the 5 val documents. With the sample data's overrides each runs 2 steps end to end through
# run.py in about 2 CPU minutes (issue 25 item 10's check, run by hand: too slow for the suite).
TINY_FRONTIER = {"model.num_layers": 3, "model.model_dim": 64, "model.num_heads": 2, "model.num_kv_heads": 1,
                 "model.xsa_last_n": 3, "model.loop_start": 1, "model.loop_end": 1,
                 "model.parallel_residual_start": 2, "model.vocab_size": 1024, "model.rope_train_seq_len": 64,
                 "train.train_seq_len": 64, "train.train_batch_tokens": 512, "train.iterations": 2,
                 "train.warmup_steps": 0, "train.max_wallclock_seconds": 0.0, "train.gptq_reserve_seconds": 0.0,
                 "eval.val_tokens_limit": 6144, "eval.val_batch_size": 2048, "eval.eval_seq_len": 64,
                 "eval.eval_stride": 32, "eval.lora_ttt.rank": 4, "eval.lora_ttt.batch_docs": 2,
                 "eval.lora_ttt.phase_prefix_docs": 3, "eval.lora_ttt.phase_chunk_tokens": 512,
                 "eval.lora_ttt.phase_batch_seqs": 4, "data.val_byte_sidecar": "auto",
                 "quant.keep_float_max_numel": 1024, "quant.gptq.calibration_batches": 2}


@pytest.mark.parametrize("preset", sorted(FRONTIER_COUNTS))
def test_frontier_presets_are_valid_at_tiny_shapes(preset):
    cfg = C.load(CONFIGS / f"{preset}.py", TINY_FRONTIER)
    assert 0 < count_params(jax.eval_shape(build_model(cfg.model).init, jax.random.key(0))) < 250_000


def test_param_count_matches_record_inventory():
    """reference-spec.md 5.8 inventory, for the #1809 shapes (no banks, no gates)."""
    cfg = C.load(CONFIGS / "record_1809.py").model
    shapes = jax.eval_shape(build_model(cfg).init, jax.random.key(0))
    per_layer = 512 * 512 * 2 + 256 * 512 * 2 + 2048 * 512 * 2
    assert count_params(shapes) == 8192 * 512 + 11 * per_layer + 11 * (8 + 512 + 512 + 1024) + 2 * 8 * 512


PR1227, PR2114 = ROOT / "configs" / "pr1227", ROOT / "configs" / "pr2114"


COUNTS = {
    PR1227 / "local.py": 2_413_092, PR1227 / "ssm2_hybrid.py": 2_340_120, PR1227 / "denseformer.py": 2_413_134,
    PR1227 / "monarch_mlp.py": 1_210_404, PR1227 / "qat_int5.py": 2_413_092, PR1227 / "qat_nf5.py": 2_413_092,
    PR2114 / "ut7_rlma320.py": 23_146_538,  # the PR's count
    PR2114 / "residual_delta.py": 20_197_418, PR2114 / "residual_contraction.py": 20_197_418,  # its ablation log's
}


def test_preset_parameter_counts(capsys):
    for preset, count in COUNTS.items():
        assert main(["--config", str(preset), "--dry-run"]) == 0
        assert f"model_params:{count}" in capsys.readouterr().out, preset.name
    assert set(COUNTS) == set(PR2114.glob("*.py")) | (set(PR1227.glob("*.py")) - {PR1227 / "teacher.py",
                                                                                   PR1227 / "distill.py"})


# ---------------------------------------------------------------------------------------------
# presets valid at tiny shapes; config errors


def test_every_pr1589_preset_resolves():
    for path in sorted((ROOT / "configs" / "pr1589").glob("*.py")):
        m = C.load(path).model
        assert count_params(jax.eval_shape(build_model(m).init, jax.random.key(0))) > 0, path.name


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


def test_every_preset_is_valid_at_tiny_shapes():
    for preset in COUNTS:
        cfg = C.load(preset, tiny(preset))
        assert 0 < count_params(jax.eval_shape(build_model(cfg.model).init, jax.random.key(0))) < 200_000, preset.name


@pytest.mark.parametrize("overrides,message", [
    ({"model.family": "mps", "model.pause_tokens": 2}, "is not a GPT: model.pause_tokens"),
    ({"model.family": "hopfield", "quant.scheme": "gptq"}, "use quant.scheme=rtn"),
    ({"model.family": "agents", "eval.final_modes": "lora_ttt"}, "lora_ttt adapts a GPT"),
    ({"model.weight_source": "seed", "model.linear": "lowrank"}, "makes the block linears itself"),
    ({"model.weight_source": "nca", "eval.final_modes": "lora_ttt"}, "stores none"),
    ({"model.family": "surge_m", "model.num_loops": 1, "model.loop_end": 1}, "model.num_loops=1 is not supported"),
    ({"model.family": "surge_m", "model.surge_m.layer": 9}, "model.surge_m.layer=9"),
    ({"model.family": "mps", "train.train_seq_len": 2048, "train.train_batch_tokens": 16384},
     "model.mps.max_len=1024"),
    ({"model.weight_source": "nope"}, "is not registered"),
])
def test_issue13_config_errors_name_the_field(overrides, message):
    with pytest.raises(C.ConfigError, match=message.replace("(", r"\(")):
        C.override(C.Config(), overrides)


# ---------------------------------------------------------------------------------------------
# end to end: the seams' first entries on configs/tiny.py


def _run_tiny(sample_data, out, run_id, *extra):
    argv = ["--config", TINY_PRESET, *[f"{k}={v}" for k, v in sample_data["overrides"].items()],
            f"train.out_dir={out}", f"train.run_id={run_id}", "train.iterations=6", "train.progress=false", *extra]
    assert main(argv) == 0
    sub = json.loads((out / run_id / "submission.json").read_text())
    assert np.isfinite(sub["val_bpb"]) and sub["val_bpb"] < 8
    return sub


class TestTinyPresetEntries:
    """A class only so that this test keeps its name, which the #1227 / #2114 runs below also bear."""

    @pytest.mark.parametrize("name,extra", [
        ("pause", ["model.pause_tokens=2", "model.pause_interval=16"]),
    ])  # act (its ce/ponder log line): test_registry_seams' act_monarch_mlp run
    def test_new_entries_run_end_to_end(self, name, extra, sample_data, tmp_path):
        _run_tiny(sample_data, tmp_path, name, *extra)
        log = (tmp_path / name / "log.txt").read_text()
        assert "final_roundtrip_exact" in log


# A student of another shape distilled from a teacher run: test_registry_seams' distill run
# (test_distill_student_of_another_shape), which shares the seams' base run as its teacher.


# ---------------------------------------------------------------------------------------------
# end to end: the #1227 and #2114 presets' own combinations (each registry entry alone: test_registry_seams)


def _run_1227_2114(sample_data, out: Path, run_id: str, preset: Path, extra: dict) -> tuple[dict, str]:
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


@pytest.mark.parametrize("run_id,preset,extra", RUNS, ids=[r[0] for r in RUNS])
def test_new_entries_run_end_to_end(run_id, preset, extra, sample_data, tmp_path):
    sub, log = _run_1227_2114(sample_data, tmp_path, run_id, preset, extra)
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


# ---------------------------------------------------------------------------------------------
# end to end: a #1589 preset over the cap (each weight source and family: test_registry_seams)

# configs/tiny.py's shapes and schedule (its data paths come from the sample_data fixture).
TINY_1589 = {"model.num_layers": 2, "model.model_dim": 64, "model.num_heads": 4, "model.num_kv_heads": 2,
        "train.train_seq_len": 64, "train.train_batch_tokens": 1024, "train.iterations": 4, "train.warmdown_iters": 2,
        "train.warmup_steps": 1, "train.max_wallclock_seconds": 0.0, "train.train_log_every": 1,
        "train.progress": "false", "eval.val_batch_size": 4096, "eval.val_loss_every": 0,
        "eval.val_tokens_limit": 8192}
SHAPES = {"hypernet_r32": {"model.hypernet.rank": 4, "model.hypernet.hidden": 32, "model.hypernet.embed_dim": 8}}


def run_preset(name, sample_data, out, *extra, code=0):
    overrides = {**TINY_1589, **sample_data["overrides"], **SHAPES[name], "train.out_dir": out, "train.run_id": name}
    argv = ["--config", str(PR1589 / f"{name}.py"), *[f"{k}={v}" for k, v in overrides.items()], *extra]
    assert main(argv) == code
    return out / name


def test_hypernet_over_the_cap_is_the_clear_size_error(sample_data, tmp_path, capsys):
    """At #1589's shapes the hypernetwork holds ~110 M parameters; the artifact check refuses it with
    its one-line size error (exit 3), here forced by a small cap at tiny shapes."""
    run_preset("hypernet_r32", sample_data, tmp_path, "quant.max_artifact_bytes=100000", code=3)
    err = capsys.readouterr().err
    assert re.search(r"artifact is [\d,]+ bytes .* over the 100,000-byte cap", err) and "Traceback" not in err
