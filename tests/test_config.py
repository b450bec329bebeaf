import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from pgolf_jax import config as C
from pgolf_jax.cli import main as cli_main
from pgolf_jax.renames import RENAMES

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.py"))

# train_gpt.py's Hyperparameters defaults (reference-spec.md section 3.1), under our section names.
REFERENCE_DEFAULTS = {
    "data.data_path": "./data/datasets/fineweb10B_sp1024",
    "data.tokenizer_path": "./data/tokenizers/fineweb_1024_bpe.model",
    "train.seed": 1337, "eval.val_batch_size": 524_288, "eval.val_loss_every": 1000,
    "train.train_log_every": 200, "train.iterations": 20000, "train.warmdown_iters": 1200,
    "train.warmup_steps": 20, "train.train_batch_tokens": 524_288, "train.train_seq_len": 1024,
    "train.max_wallclock_seconds": 600.0, "model.qk_gain_init": 1.5, "model.vocab_size": 1024,
    "model.num_layers": 9, "model.num_kv_heads": 4, "model.model_dim": 512, "model.num_heads": 8,
    "model.mlp_mult": 2, "model.tie_embeddings": True, "model.rope_base": 10000.0,
    "model.logit_softcap": 30.0, "optim.embed_lr": 0.6, "optim.head_lr": 0.008,
    "optim.tied_embed_lr": 0.05, "model.tied_embed_init_std": 0.005, "optim.matrix_lr": 0.04,
    "optim.scalar_lr": 0.04, "optim.muon_momentum": 0.95, "optim.muon_backend_steps": 5,
    "optim.muon_momentum_warmup_start": 0.85, "optim.muon_momentum_warmup_steps": 500,
    "optim.beta1": 0.9, "optim.beta2": 0.95, "optim.adam_eps": 1e-8, "optim.grad_clip_norm": 0.0,
    "quant.clip_percentile": 99.99984, "quant.keep_float_max_numel": 65_536,
    "train.batch_spans": 8,  # world_size * grad_accum_steps is always 8 in the reference
}


def get(cfg, key):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_preset_loads(path):
    cfg = C.load(path)
    assert isinstance(cfg, C.Config)
    assert C.from_dict(C.to_dict(cfg)) == cfg


def test_baseline_preset_is_the_reference():
    cfg = C.load(Path(__file__).resolve().parent.parent / "configs" / "baseline_sp1024.py")
    assert cfg == C.Config()
    for key, value in REFERENCE_DEFAULTS.items():
        assert get(cfg, key) == value, key


def test_overrides_are_typed():
    cfg = C.override(C.Config(), ["model.num_layers=11", "optim.matrix_lr=0.02", "model.tie_embeddings=false",
                                  "train.train_batch_tokens=786_432", "train.max_wallclock_seconds=0",
                                  "data.source=sample:brown"])
    assert cfg.model.num_layers == 11 and isinstance(cfg.model.num_layers, int)
    assert cfg.optim.matrix_lr == 0.02
    assert cfg.model.tie_embeddings is False
    assert cfg.train.train_batch_tokens == 786_432
    assert cfg.train.max_wallclock_seconds == 0.0 and isinstance(cfg.train.max_wallclock_seconds, float)
    assert cfg.data.source == "sample:brown"


@pytest.mark.parametrize("item,match", [
    ("model.num_layer=3", "unknown config key 'model.num_layer'.*model.num_layers"),
    ("modle.num_layers=3", "unknown config key"),
    ("model.num_layers=three", "model.num_layers: expected int"),
    ("model.num_layers=1.5", "model.num_layers: expected int"),
    ("model.tie_embeddings=maybe", "expected a boolean"),
    ("model.num_heads=7", "not divisible by model.num_heads=7"),
    ("model.num_kv_heads=3", "not divisible by model.num_kv_heads=3"),
    ("train.train_batch_tokens=1000", "must split into"),
    ("model.vocab_size=70000", r"model.vocab_size=70000 must be in \[1, 65536\]"),
    ("train.iterations=-5", r"train.iterations=-5 must be >= 1"),
    ("train.iterations=0", r"must be >= 1 \(to score existing weights without training use `run.py eval`\)"),
    ("optim.matrix_lr=1e999", "expected a finite number"),
    ("optim.beta2=1.0", r"optim.beta2=1.0 must be in \[0, 1\)"),
    ("model.attention=nope", "model.attention='nope' is not registered; choose from gqa"),
    ("model.activation=gelu", "model.activation='gelu' is not registered; choose from relu2, leaky_relu2"),
    ("model.linear=sparse", "model.linear='sparse' is not registered; choose from dense"),
    ("model.block_schedule=ring", "is not registered; choose from unet, repeat_in_place"),
    ("model.attention_impl=fast", "is not registered; choose from auto, xla"),
    ("optim.orthogonalizer=svd", "is not registered; choose from newton_schulz, gram_newton_schulz"),
    ("optim.ns_coefficients=ns9", "optim.ns_coefficients='ns9' is not registered"),
    ("data.source=sample:wiki", "unknown sample corpus; choose from sample:brown, sample:nlp-corpus"),
    ("train.run_id=../x", "train.run_id='../x': use letters"),
    ("model.num_layers", "not of the form"),
    ("model.mla.latent_dim=16", r"model.mla.\* is set but model.attention does not select mla"),
    ("model.mla_latent=16", "'model.mla_latent' was renamed: use 'model.mla.latent_dim'"),
    ("model.linear_rank=16", "use 'model.lowrank.rank' or 'model.rlma.rank'"),
    ("model.nope.rank=1", "unknown config key 'model.nope.rank'"),
    ("eval.final_modes=plain,nope", "'nope' is not registered; choose from plain, sliding, ttt, lora_ttt"),
    ("quant.scheme=int4", "quant.scheme='int4' is not registered; choose from int8_per_row, gptq, rtn"),
])
def test_bad_overrides_name_the_culprit(item, match):
    with pytest.raises(C.ConfigError, match=match):
        C.override(C.Config(), [item])


def test_variant_options_follow_their_variant(tmp_path):
    """Options inherited from a BASE are dropped with their variant; old config.json keys load."""
    base = tmp_path / "base.py"
    base.write_text("OVERRIDES = {'model.attention': 'mla', 'model.mla.latent_dim': 64}\n")
    child = tmp_path / "child.py"
    child.write_text("BASE = 'base.py'\nOVERRIDES = {'model.attention': 'gqa'}\n")
    assert C.load(base).model.mla.latent_dim == 64
    cfg = C.load(child)
    assert cfg.model.options == () and C.to_dict(cfg)["model"].get("mla") is None
    old = C.to_dict(C.Config())
    old["model"].update({"attention": "mla", "mla_latent": 32, "linear_rank": 7, "surge_layer": 2})
    old["eval"].update({"final_modes": "lora_ttt", "lora_rank": 5, "ttt_momentum": 0.5, "lora_targets": "q,o,head"})
    with pytest.raises(C.ConfigError, match="'model.mla_latent' was renamed"):  # a packed file's config is current
        C.from_dict(old)
    loaded = C.from_dict(old, RENAMES)  # what loading a run directory's config.json does
    assert loaded.model.mla.latent_dim == 32 and loaded.eval.lora_ttt.rank == 5
    assert loaded.eval.lora_ttt.momentum == 0.5 and loaded.model.options == (("mla", loaded.model.mla),)
    assert C.from_dict(C.to_dict(loaded)) == loaded
    assert C.flat_dict(loaded)["eval.lora_ttt.rank"] == 5


def test_preset_chain_and_errors(tmp_path):
    base = tmp_path / "base.py"
    base.write_text("OVERRIDES = {'model.num_layers': 4}\n")
    child = tmp_path / "child.py"
    child.write_text("BASE = 'base.py'\nOVERRIDES = {'model.model_dim': 256}\n")
    cfg = C.load(child, ["train.seed=7"])
    assert (cfg.model.num_layers, cfg.model.model_dim, cfg.train.seed) == (4, 256, 7)
    bad = tmp_path / "bad.py"
    bad.write_text("OVERRIDES = {'model.nope': 1}\n")
    with pytest.raises(C.ConfigError, match=r"bad.py: unknown config key 'model.nope'"):
        C.load(bad)
    with pytest.raises(C.ConfigError, match="config file not found"):
        C.load(tmp_path / "missing.py")
    broken = tmp_path / "broken.py"
    broken.write_text("OVERRIDES = {\n")
    with pytest.raises(C.ConfigError, match="broken.py: failed to load preset"):
        C.load(broken)


def test_cli_rejects_unknown_key_with_exit_code(capsys):
    code = cli_main(["--config", str(CONFIGS[0]), "model.num_layerz=3", "--dry-run"])
    assert code == 2
    assert "unknown config key 'model.num_layerz'" in capsys.readouterr().err


def test_dry_run_prints_resolved_config_and_params(capsys):
    base = [p for p in CONFIGS if p.name == "baseline_sp1024.py"][0]
    assert cli_main(["--config", str(base), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert '"num_layers": 9' in out
    assert "model_params:17059912" in out


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        C.Config().model.num_layers = 3


def test_validation_imports_no_jax():
    """Every preset in configs/ and every sweep row resolves and validates without importing JAX."""
    code = ("import glob, sys\n"
            "from pgolf_jax import config as C\n"
            "from pgolf_jax.sweep.spec import load_sweep\n"
            "n = sum(1 for p in sorted(glob.glob('configs/**/*.py', recursive=True)) if C.load(p))\n"
            "rows = sum(len(load_sweep(p).rows) for p in sorted(glob.glob('sweeps/*.py')))\n"
            "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if m.startswith('jax'))[:5]\n"
            "print(n, rows)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    presets, rows = map(int, out.stdout.split())
    assert presets >= 40 and rows >= 40


@pytest.mark.parametrize("items,match", [
    (["model.linear=rlma", "eval.final_modes=lora_ttt"], "k, o, q, v adapt the attention's stored dense weights, "
                                                          "which rlma does not have"),
    (["model.mlp_linear=monarch", "eval.final_modes=lora_ttt", "eval.lora_ttt.targets=q,mlp"],
     "mlp adapt the MLP's stored dense weights, which monarch does not have"),
    (["model.attention=mla", "model.mla.latent_dim=16", "eval.final_modes=lora_ttt"], "mla has no K / V weights"),
])
def test_lora_targets_need_the_weights_they_adapt(items, match):
    """Before, these ended in an internal KeyError at the first adapted document."""
    with pytest.raises(C.ConfigError, match=match):
        C.override(C.Config(), items)
    assert C.override(C.Config(), items[:-1] + ["eval.final_modes=lora_ttt", "eval.lora_ttt.targets=o_par,head"])


def test_migrate_config_keys_rewrites_a_preset_and_refuses_a_missing_file(tmp_path):
    """scripts/migrate_config_keys.py: old keys -> their variant options (the file then loads); a missing
    file is one line and changes no file."""
    preset = tmp_path / "old.py"
    preset.write_text("OVERRIDES = {'model.linear': 'rlma', 'model.linear_rank': 16, 'eval.final_modes': 'ttt', "
                      "'eval.ttt_lr': 0.01}\n")
    script = [sys.executable, str(ROOT / "scripts" / "migrate_config_keys.py")]
    before = preset.read_text()
    bad = subprocess.run([*script, str(preset), str(tmp_path / "missing.py")], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "missing.py" in bad.stderr
    assert preset.read_text() == before
    assert subprocess.run([*script, str(preset)], capture_output=True, text=True).returncode == 0
    cfg = C.load(preset)
    assert cfg.model.rlma.rank == 16 and cfg.eval.ttt.lr == 0.01
