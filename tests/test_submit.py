"""The packed train_gpt.py (runs in a clean folder without pgolf_jax to the same score; its size is
the counted code bytes), `run.py submit` (the records folder, its refusals, the record test) and
`run.py export` (the reference's formats, read back with torch)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pgolf_jax.cli import main
from pgolf_jax.config import ConfigError
from pgolf_jax.submit import significance, submit

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.py")
# Runs a file with the package made unimportable (its editable-install finder and any path entry
# holding pgolf_jax removed), from a clean folder.
GUARD = """import importlib.util, os, runpy, sys
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "pgolf_jax"))]
assert importlib.util.find_spec("pgolf_jax") is None, "pgolf_jax is importable"
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def seeds(sample_data, tmp_path_factory):
    """Three finished tiny runs (seeds 1, 2, 3)."""
    out = tmp_path_factory.mktemp("runs")
    data = [f"{k}={v}" for k, v in sample_data["overrides"].items()]
    for s in (1, 2, 3):
        assert main(["--config", TINY, *data, f"train.out_dir={out}", f"train.run_id=seed{s}", f"train.seed={s}",
                     "train.iterations=6", "train.progress=false"]) == 0
    return out, data


def test_packed_train_gpt_runs_without_the_package_to_the_same_score(seeds, tmp_path):
    out, data = seeds
    run = out / "seed1"
    sub = json.loads((run / "submission.json").read_text())
    packed = (run / "train_gpt.py").read_bytes()
    assert len(packed) == sub["bytes_code"] == sub["bytes_code_packed"]  # the counted code is this file
    assert hashlib.sha256(packed).hexdigest() == sub["code_sha256"]
    assert packed.startswith(b"#coding:latin-1\n")
    clean = tmp_path / "records_folder"
    clean.mkdir()
    shutil.copyfile(run / "train_gpt.py", clean / "train_gpt.py")
    (clean / "guard.py").write_text(GUARD)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    paths = [a for a in data if a.startswith(("data.data_path=", "data.tokenizer_path="))]  # config.PLACE_KEYS
    proc = subprocess.run([sys.executable, "guard.py", "train_gpt.py", *paths, "train.progress=false",
                           "train.run_id=again"], cwd=clean, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    again = json.loads((clean / "runs" / "again" / "submission.json").read_text())
    assert again["val_bpb"] == sub["val_bpb"] and again["pre_quant_val_bpb"] == sub["pre_quant_val_bpb"]
    assert again["bytes_code"] == len(packed) and again["bytes_total"] == sub["bytes_total"]
    assert (clean / "runs" / "again" / "train_gpt.py").read_bytes() == packed
    assert "config:<packed>" in (clean / "runs" / "again" / "log.txt").read_text()


def test_submit_writes_a_records_folder(seeds, tmp_path, capsys):
    out, _ = seeds
    runs = [out / f"seed{s}" for s in (3, 1, 2)]
    assert main(["submit", *map(str, runs), "--name", "Tiny GPT, 3 seeds", "--author", "A. Golfer", "--github-id",
                 "agolfer", "--track", "non_record_16mb", "--out", str(tmp_path / "records"), "--vs", "9.0"]) == 0
    folder = next((tmp_path / "records" / "track_non_record_16mb").iterdir())
    assert folder.name.endswith("_Tiny_GPT_3_seeds")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "requirements.txt", "submission.json",
                                                        "train_gpt.py", "train_seed1.log", "train_seed2.log",
                                                        "train_seed3.log"]
    sub = json.loads((folder / "submission.json").read_text())
    for key in ("author", "github_id", "name", "date", "track", "val_bpb", "val_bpb_std", "seeds", "seed_results",
                "hardware", "technique_summary", "compliance", "attribution"):
        assert key in sub, key
    per = [json.loads((out / f"seed{s}" / "submission.json").read_text()) for s in (1, 2, 3)]
    assert sub["seeds"] == [1, 2, 3] and sub["val_bpb"] == round(float(np.mean([p["val_bpb"] for p in per])), 5)
    assert sub["seed_results"]["2"]["artifact_bytes"] == per[1]["bytes_total"]
    c = sub["compliance"]
    assert c["artifact_under_16mb"] and c["three_seeds"] and not c["score_first_ttt"]
    assert "a lower bound for 8xH100" in c["eval_time_basis"]  # measured on a CPU: labelled a FLOP bound
    assert sub["significance"]["record"] and "p=" in capsys.readouterr().out
    assert (folder / "train_gpt.py").read_bytes() == (out / "seed1" / "train_gpt.py").read_bytes()
    assert "python train_gpt.py train.seed=2" in (folder / "README.md").read_text()
    assert "jax==" in (folder / "requirements.txt").read_text()


def test_submit_refuses_mixed_configs_over_cap_and_duplicate_seeds(seeds, tmp_path, sample_data):
    out, data = seeds
    assert main(["--config", TINY, *data, f"train.out_dir={tmp_path}", "train.run_id=other", "train.iterations=6",
                 "train.progress=false", "optim.matrix_lr=0.05"]) == 0
    with pytest.raises(ConfigError, match=r"not the same config .* optim\.matrix_lr \(0\.04 vs 0\.05\)"):
        submit([out / "seed1", tmp_path / "other"], "x", "a", "b", out=tmp_path / "r")
    big = tmp_path / "big"
    shutil.copytree(out / "seed2", big)
    sub = json.loads((big / "submission.json").read_text())
    sub["bytes_total"] = 16_000_001  # as an over-cap run would have recorded it
    (big / "submission.json").write_text(json.dumps(sub))
    with pytest.raises(ConfigError, match=r"16,000,001 bytes, over the 16,000,000-byte cap"):
        submit([out / "seed1", big], "x", "a", "b", out=tmp_path / "r")
    with pytest.raises(ConfigError, match="share train.seed"):
        submit([out / "seed1", out / "seed1"], "x", "a", "b", out=tmp_path / "r")
    (big / "train_gpt.py").write_bytes(b"print('not what ran')\n")
    with pytest.raises(ValueError, match="differs from the code the run counted"):
        submit([big], "x", "a", "b", out=tmp_path / "r")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.json"))


def test_record_significance_converts_the_nat_margin():
    nats_per_bpb = 0.5  # margin 0.005 nats = 0.01 bpb
    sig = significance([1.060, 1.061, 1.059], 1.0810, nats_per_bpb)
    assert sig["margin_bpb"] == pytest.approx(0.01) and sig["record"] and sig["p_value"] < 0.01
    assert not significance([1.075, 1.072, 1.078], 1.0810, nats_per_bpb)["record"]


def test_export_to_the_reference_formats_reads_back(seeds, tmp_path):
    torch = pytest.importorskip("torch")
    from pgolf_jax.quant.export import dequantize_int8, name_rules, quantize_int8
    from pgolf_jax.quant.interop import load_reference_int8_ptz, load_torch_state_dict

    run = seeds[0] / "seed1"
    assert main(["export", str(run), "--torch", str(tmp_path / "final_model.pt"),
                 "--reference-ptz", str(tmp_path / "final_model.int8.ptz")]) == 0
    with np.load(run / "final_model.npz") as z:
        named = {k: z[k] for k in z.files}
    sd = torch.load(tmp_path / "final_model.pt", weights_only=True)
    assert set(sd) == set(named)
    for k, v in named.items():
        np.testing.assert_array_equal(sd[k].numpy(), v)
    np.testing.assert_array_equal(load_torch_state_dict(tmp_path / "final_model.pt")["tok_emb.weight"],
                                  named["tok_emb.weight"])
    obj, _ = quantize_int8(named, name_rules(named))
    want, got = dequantize_int8(obj), load_reference_int8_ptz(tmp_path / "final_model.int8.ptz")
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_export_refuses_a_non_reference_architecture(sample_data, tmp_path):
    data = [f"{k}={v}" for k, v in sample_data["overrides"].items()]
    assert main(["--config", TINY, *data, f"train.out_dir={tmp_path}", "train.run_id=plain", "train.iterations=2",
                 "train.progress=false", "model.topology=plain"]) == 0
    from pgolf_jax.submit import export

    with pytest.raises(ConfigError, match=r"not a reference-architecture run \(model\.topology='plain'\)"):
        export(tmp_path / "plain", tmp_path / "x.pt")


REF_PATH = os.environ.get("PGOLF_REFERENCE_TRAIN_GPT")


@pytest.mark.skipif(not REF_PATH, reason="set PGOLF_REFERENCE_TRAIN_GPT=path/to/train_gpt.py")
def test_reference_loads_the_exported_ptz_to_the_same_loss(sample_data, tmp_path):
    """The reference's own dequantizer and GPT, on our exported int8+zlib file, give our loss."""
    import io
    import zlib

    import jax

    from pgolf_jax import config as C
    from pgolf_jax.model.gpt import build_model
    from pgolf_jax.quant.export import dequantize_int8, name_rules, quantize_int8
    from pgolf_jax.quant.interop import reference_gpt_kwargs, unflatten_params

    torch = pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("reference_train_gpt", REF_PATH)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    data = [f"{k}={v}" for k, v in sample_data["overrides"].items()]
    assert main(["--config", TINY, *data, f"train.out_dir={tmp_path}", "train.run_id=r", "train.iterations=4",
                 "train.progress=false", "model.attention_impl=xla"]) == 0
    assert main(["export", str(tmp_path / "r"), "--reference-ptz", str(tmp_path / "m.ptz")]) == 0
    state = torch.load(io.BytesIO(zlib.decompress((tmp_path / "m.ptz").read_bytes())), map_location="cpu")
    cfg = C.load_run_config(tmp_path / "r")
    gpt = ref.GPT(**reference_gpt_kwargs(cfg.model)).float()
    gpt.load_state_dict(ref.dequantize_state_dict_int8(state), strict=True)
    ids = np.random.default_rng(0).integers(0, cfg.model.vocab_size, (2, 65))
    with torch.no_grad():
        ref_loss = float(gpt(torch.from_numpy(ids[:, :-1]), torch.from_numpy(ids[:, 1:])))
    with np.load(tmp_path / "r" / "final_model.npz") as z:
        named = {k: z[k] for k in z.files}
    obj, _ = quantize_int8(named, name_rules(named))
    model = build_model(cfg.model)
    params = unflatten_params(dequantize_int8(obj), jax.eval_shape(model.init, jax.random.key(0)))
    ours = float(model.loss(params, ids[:, :-1], ids[:, 1:]))
    assert abs(ours - ref_loss) < 1e-4, (ours, ref_loss)
