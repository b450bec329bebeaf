"""Every #1589 preset of issue 13 through run.py at tiny CPU shapes: train, quantize, pack,
round-trip (the presets' own settings, shapes shrunk by overrides)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pgolf_jax.cli import main

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ROOT / "configs" / "pr1589"
# configs/tiny.py's shapes and schedule (its data paths come from the sample_data fixture).
TINY = {"model.num_layers": 2, "model.model_dim": 64, "model.num_heads": 4, "model.num_kv_heads": 2,
        "train.train_seq_len": 64, "train.train_batch_tokens": 1024, "train.iterations": 4, "train.warmdown_iters": 2,
        "train.warmup_steps": 1, "train.max_wallclock_seconds": 0.0, "train.train_log_every": 1,
        "train.progress": "false", "eval.val_batch_size": 4096, "eval.val_loss_every": 0,
        "eval.val_tokens_limit": 8192}
SHAPES = {
    "basis_r128": {"model.basis.rank": 8, "quant.scheme": "gptq", "quant.gptq.calibration_batches": 1},
    "basis_r64": {"model.basis.rank": 4},
    "hypernet_r32": {"model.hypernet.rank": 4, "model.hypernet.hidden": 32, "model.hypernet.embed_dim": 8},
    "siren_h256": {"model.siren.hidden": 16, "model.siren.chunk": 8192},
    "nca_50": {"model.nca.steps": 4, "model.nca.hidden": 16},
    "seed_d2048": {"model.seed.dim": 64, "model.seed.chunk": 8192},
    "mps_b64": {"model.mps.bond_dim": 8, "model.mps.pos_dim": 8, "model.mps.max_len": 64, "quant.scheme": "rtn"},
    "hopfield_e128": {"model.model_dim": 64, "model.num_layers": 2},
    "agents_m64": {"model.model_dim": 64, "model.num_layers": 2, "model.agents.local_ctx": 4,
                   "model.agents.decoder_hidden": 32, "model.agents.loss_stride": 8},
    "surge_m_v2_twopass": {"model.num_layers": 3, "model.surge_m.layer": 1, "model.surge_m.chunk": 16,
                           "model.surge_m.d_err": 8, "model.surge_m.d_state": 8},
    "surge_m_v2_single": {"model.num_layers": 3, "model.surge_m.layer": 1, "model.surge_m.chunk": 16,
                          "model.surge_m.d_err": 8, "model.surge_m.d_state": 8},
}


def run_preset(name, sample_data, out, *extra, code=0):
    overrides = {**TINY, **sample_data["overrides"], **SHAPES[name], "train.out_dir": out, "train.run_id": name}
    argv = ["--config", str(PRESETS / f"{name}.py"), *[f"{k}={v}" for k, v in overrides.items()], *extra]
    assert main(argv) == code
    return out / name


@pytest.mark.parametrize("name", [
    "basis_r128", "seed_d2048", "mps_b64", "agents_m64", "surge_m_v2_twopass",
    *[pytest.param(n, marks=pytest.mark.slow) for n in ("basis_r64", "hypernet_r32", "siren_h256", "nca_50",
                                                         "hopfield_e128", "surge_m_v2_single")]])
def test_pr1589_presets_run_end_to_end(name, sample_data, tmp_path):
    run_dir = run_preset(name, sample_data, tmp_path)
    sub = json.loads((run_dir / "submission.json").read_text())
    log = (run_dir / "log.txt").read_text()
    assert np.isfinite(sub["val_bpb"]) and sub["val_bpb"] < 8 and "final_roundtrip_exact" in log
    assert re.search(r"step:4/4 train_loss:[\d.]+", log)
    with np.load(run_dir / "final_model.npz") as z:
        names = set(z.files)
    # Generated block weights are never parameters: nothing of them is saved or packed.
    if name in ("hypernet_r32", "siren_h256", "nca_50", "seed_d2048"):
        assert not any(re.fullmatch(r"blocks\.\d+\.(attn|mlp)\.\w+\.weight", n) for n in names)
        assert any(n.startswith("gen.") for n in names)
    if SHAPES[name].get("quant.scheme") == "gptq":
        assert "gptq:round-to-nearest for" in log  # the generator's / shared basis' tensors: RTN
    if name == "basis_r128":
        assert "blocks.0.attn.c_q.C" in names and "gen.attn_c_q" in names


def test_hypernet_over_the_cap_is_the_clear_size_error(sample_data, tmp_path, capsys):
    """At #1589's shapes the hypernetwork holds ~110 M parameters; the artifact check refuses it with
    its one-line size error (exit 3), here forced by a small cap at tiny shapes."""
    run_preset("hypernet_r32", sample_data, tmp_path, "quant.max_artifact_bytes=100000", code=3)
    err = capsys.readouterr().err
    assert re.search(r"artifact is [\d,]+ bytes .* over the 100,000-byte cap", err) and "Traceback" not in err
