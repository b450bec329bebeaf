"""The seams: every entry of every registry (registry.FIELDS) trains two steps through run.py's entry
point (cli.main, in-process), quantizes, packs and round-trips; orthogonal entries share a run. A
variant registered at runtime from its own module is picked up the same way (the test of the seam)."""

import functools
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_PRESET
from pgolf_jax import config as C
from pgolf_jax import registry
from pgolf_jax.cli import main

# Each run names the entries it is for; together they cover every registry entry (checked below).
RUNS = {
    "base": {"model.mlp_linear": "dense", "model.mixers": "attn", "eval.final_modes": "plain,lora_ttt",
             "eval.lora_ttt.rank": 2, "eval.lora_ttt.batch_docs": 4,
             # the records' phased global SGD (#1610: one phase at 2000 documents; here at 2 of the sample's 7)
             "eval.lora_ttt.phases": 1, "eval.lora_ttt.phase_style": "records", "eval.lora_ttt.phase_prefix_docs": 2,
             "eval.lora_ttt.phase_chunk_tokens": 2048, "eval.lora_ttt.phase_batch_seqs": 32,
             # VarLen (#1530): document-masked attention in training, eval and TTT, on packed spans
             "model.doc_mask": True, "data.loader": "doc_packed"},
    "mla_lowrank": {"model.attention": "mla", "model.mla.latent_dim": 16, "model.attn_gate": "gated_attn",
                    "quant.gate_int8": True, "model.linear": "lowrank",
                    "model.lowrank.rank": 8, "model.activation": "geglu", "optim.orthogonalizer": "gram_newton_schulz",
                    "quant.scheme": "gptq", "quant.gptq.calibration_batches": 1, "quant.grid": "nf",
                    "eval.final_modes": "plain,sliding",
                    "eval.eval_stride": 32, "eval.ngram_tilt": "token_tilt",
                    # two lanes through a looped U-Net (decoder slots 0, 1: below and from the start)
                    "model.parallel_residual": "two_lane", "model.parallel_residual_start": 1,
                    "model.num_loops": 1, "model.loop_start": 0, "model.loop_end": 0,
                    "optim.wd_schedule": "taper", "optim.muon_wd": 0.04, "optim.ns_coefficients": "you"},
    "monarch_ssm": {"model.topology": "plain", "model.linear": "monarch", "model.monarch.blocks": 4,
                    "model.mixers": "s4d_lin*1", "model.s4d_lin.kernel": 8, "model.activation": "leaky_relu2",
                    "model.attn_gate": "sparse_gate", "model.sparse_gate.scale": 0.5, "quant.gate_int8": True,
                    "quant.scheme": "rtn", "quant.grid": "affine", "eval.final_modes": "ttt", "eval.ttt.chunk_tokens": 4096,
                    "eval.ttt.epochs": 1, "train.lr_schedule": "cosine", "data.loader": "shuffled",
                    "optim.ns_coefficients": "polar_express_modded"},
    "ut_rlma": {"model.topology": "ut_shared", "model.num_layers": 3, "model.ut_shared.iterations": 2,
                "model.linear": "rlma", "model.rlma.rank": 8, "model.mlp_linear": "lowrank", "model.lowrank.rank": 8,
                "optim.ns_coefficients": "polar_express_paper"},
    "act_monarch_mlp": {"model.topology": "act", "model.num_layers": 1, "model.act.max_steps": 3,
                        "model.mlp_linear": "monarch", "model.monarch.blocks": 4,
                        "train.objective": "ce_chunked", "train.ce_chunked.vocab_chunk": 256},
    "denseformer_recur": {"model.topology": "denseformer", "model.block_schedule": "repeat_in_place",
                          "model.num_loops": 1, "model.loop_start": 0, "model.loop_end": 1,
                          "model.mlp_linear": "rlma", "model.rlma.rank": 8},
    "basis": {"model.weight_source": "basis", "model.basis.rank": 8, "quant.compressor": "zlib",
              "quant.scheme": "gptq", "quant.gptq.calibration_batches": 1},
    "hypernet": {"model.weight_source": "hypernet", "model.hypernet.rank": 4, "model.hypernet.hidden": 16,
                 "model.attn_gate": "output_gate",
                 "model.hypernet.embed_dim": 8, "quant.compressor": "brotli"},
    "siren": {"model.weight_source": "siren", "model.siren.hidden": 16, "model.siren.chunk": 8192},
    "nca": {"model.weight_source": "nca", "model.nca.steps": 3, "model.nca.hidden": 16},
    "seed": {"model.weight_source": "seed", "model.seed.dim": 16, "model.seed.chunk": 8192},
    "surge_m": {"model.family": "surge_m", "model.num_layers": 3, "model.surge_m.layer": 1,
                "model.surge_m.chunk": 16, "model.surge_m.d_err": 8, "model.surge_m.d_state": 8},
    "mps": {"model.family": "mps", "model.mps.bond_dim": 6, "model.mps.pos_dim": 4, "model.mps.max_len": 64,
            "quant.scheme": "rtn"},
    "hopfield": {"model.family": "hopfield", "model.hopfield.refine_steps": 1},
    "agents": {"model.family": "agents", "model.agents.local_ctx": 4, "model.agents.decoder_hidden": 32,
               "model.agents.loss_stride": 8},
    # a student of another shape than its teacher (the base run), as the distill presets have
    "distill": {"train.objective": "distill", "train.distill.teacher": "<base>", "model.model_dim": 32,
                "model.num_heads": 2, "model.num_kv_heads": 1,
                # every matrix as int8 codes, so that pergroup's lrzip groups are filled
                "quant.compressor": "pergroup", "quant.keep_float_max_numel": 0},
}
STEPS = {"train.iterations": 2, "train.warmdown_iters": 1, "train.train_log_every": 1, "train.progress": False,
         "eval.val_tokens_limit": 8192}


def _resolved(overrides: dict) -> C.Config:
    """The run's config (validated), loaded once per distinct overrides."""
    return _load(tuple(sorted((k, "resolved-later" if v == "<base>" else v) for k, v in overrides.items())))


@functools.lru_cache(maxsize=None)
def _load(items: tuple) -> C.Config:
    return C.load(TINY_PRESET, dict(items))


def seam_cases() -> list[tuple[str, str]]:
    """(field, entry) of every registry entry, as registered now."""
    return [(key, name) for key, reg in registry.FIELDS.items() for name in reg]


def covering_run(field: str, name: str, runs: dict) -> str:
    """The first run whose resolved config selects `name` for `field`; an entry no run names (a new
    variant) gets its own run, `field=name` on the base run (so a new entry needs no test edit)."""
    section, attr = field.split(".")
    for run, over in runs.items():
        if name in registry.names(field, getattr(getattr(_resolved(over), section), attr)):
            return run
    auto = f"auto-{field}-{name}"
    runs.setdefault(auto, {**runs.get("base", {}), field: name})
    return auto


@pytest.fixture(scope="module")
def seam_runs(sample_data, tmp_path_factory):
    """run(name, runs=RUNS) -> (run_dir, submission, log text); each run trains once per module."""
    out, done = tmp_path_factory.mktemp("seams"), {}

    def run(name: str, runs: dict = RUNS):
        if name not in done:
            over = {**STEPS, **sample_data["overrides"], **runs[name]}
            if over.get("train.distill.teacher") == "<base>":
                over["train.distill.teacher"] = str(run("base")[0])
            argv = ["--config", TINY_PRESET, *[f"{k}={v}" for k, v in over.items()], f"train.out_dir={out}",
                    f"train.run_id={name}"]
            assert main(argv) == 0, name
            run_dir = out / name
            done[name] = (run_dir, json.loads((run_dir / "submission.json").read_text()),
                          (run_dir / "log.txt").read_text())
        return done[name]

    return run


def check_seam(field: str, name: str, run_dir: Path, sub: dict, log: str) -> None:
    """What selecting `name` for `field` must show in a finished run."""
    assert np.isfinite(sub["val_bpb"]) and sub["val_bpb"] < 9
    cfg = C.load_run_config(run_dir)
    section, attr = field.split(".")
    assert name in registry.names(field, getattr(getattr(cfg, section), attr))
    assert "final_roundtrip_exact" in log
    if field == "eval.final_modes":  # each mode scores the round-tripped weights, in order
        assert f"final_{name}_exact val_loss:" in log and name in sub["final_modes"]
    if field == "eval.final_modes" and name == "lora_ttt" and cfg.eval.lora_ttt.phase_style == "records":
        trained = re.findall(r"lora_ttt:phase \d+/\d+ global SGD over \d+ scored docs \((\d+) targets", log)
        assert len(trained) == cfg.eval.lora_ttt.phases and int(trained[0]) > 0, trained
    if field == "quant.scheme":  # the artifact carries the scheme's tag
        tag = registry.resolve(registry.QUANT_SCHEMES, name).tag
        assert (run_dir / f"final_model.{tag}.{cfg.quant.compressor}").is_file()
    if field == "quant.compressor":  # the artifact's name and header carry the codec
        artifact = next(run_dir.glob(f"final_model.*.{name}"))
        assert artifact.read_bytes()[8] == registry.resolve(registry.COMPRESSORS, name).id
    if field == "model.weight_source" and name != "params":  # generated block weights are never parameters
        with np.load(run_dir / "final_model.npz") as z:
            names = set(z.files)
        assert any(n.startswith("gen.") for n in names)
        # (an attention gate is a stored parameter of its own, not a generated block linear)
        assert not any(re.fullmatch(r"blocks\.\d+\.(attn|mlp)\.(?!attn_gate\.)\w+\.weight", n) for n in names)
        if cfg.quant.scheme == "gptq":  # the generator's / shared basis' tensors take RTN, and say so
            assert "gptq:round-to-nearest for" in log
    if field == "model.attn_gate":  # one gate weight per attention layer, saved with the model
        with np.load(run_dir / "final_model.npz") as z:
            assert any(n.endswith(".attn.attn_gate.weight") for n in z.files)
    if field == "eval.ngram_tilt":  # a tilted score on top of each final mode
        for mode in registry.names("eval.final_modes", cfg.eval.final_modes):
            assert f"final_{mode}+tilt val_loss:" in log and f"{mode}+tilt" in sub["final_modes"]
    if field == "train.objective":
        assert f"objective:{name}" in log or name == "ce"
    if field == "model.topology" and name == "act":  # the loss line splits CE and the ponder cost
        assert re.search(r"step:\d+/\d+ train_loss:[\d.]+ ce:[\d.]+ ponder:[\d.]+", log)


def test_every_seam_run_is_a_valid_config():
    """Every run (the listed ones and any an unlisted entry gets) validates before anything trains."""
    runs = dict(RUNS)
    for field, name in seam_cases():
        covering_run(field, name, runs)
    assert len(runs) == len(RUNS), sorted(set(runs) - set(RUNS))  # today every entry is in a listed run
    for over in runs.values():
        _resolved(over)


@pytest.mark.parametrize("field,name", seam_cases(), ids=[f"{f}={n}" for f, n in seam_cases()])
def test_registry_entry_runs_end_to_end(field, name, seam_runs):
    run = covering_run(field, name, RUNS)
    check_seam(field, name, *seam_runs(run))


def test_distill_student_of_another_shape(seam_runs):
    """The distill run's student (32 wide) learns from the base run (64 wide, its run dir as
    train.distill.teacher); a teacher may also be a packed artifact: its dequantized weights."""
    import jax

    from pgolf_jax.train.objectives import load_teacher

    (teacher, base, _), (_, sub, log) = seam_runs("base"), seam_runs("distill")
    assert "objective:distill teacher:" in log and re.search(r"kl:[\d.]+", log)
    assert sub["model_params"] < base["model_params"]
    _, from_dir = load_teacher(teacher)
    _, from_art = load_teacher(next(teacher.glob("final_model.int8.*")))
    for a, b in zip(jax.tree.leaves(from_dir), jax.tree.leaves(from_art)):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=0.02)


TOY_MODULE = '''
"""Toy variants, one of each kind, registered at runtime by the seam test."""
import dataclasses
from pgolf_jax.model.attention import GQA
from pgolf_jax.evaluation.modes import ModeResult, _score
from pgolf_jax.quant.schemes import RTN


class HalfGainAttention(GQA):
    """GQA at half the output: a different function, the same parameters."""
    def __call__(self, *args, **kwargs):
        return 0.5 * super().__call__(*args, **kwargs)


class ToyScheme(RTN):
    tag = "toy"

    @staticmethod
    def describe(q):
        return "toy RTN"


def half_windows(ctx) -> ModeResult:
    return _score(ctx, "half_windows", ctx.seq_len // 2)


@dataclasses.dataclass(frozen=True)
class HalfWindowsOptions:
    note: str = ""
'''


def test_a_toy_variant_of_each_kind_is_picked_up(tmp_path, monkeypatch, seam_runs):
    """One module and one registry line per kind: the seam cases, the config and the run take it."""
    (tmp_path / "toy_seam_variants.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.ATTENTION, "half_gain", "toy_seam_variants:HalfGainAttention")
    monkeypatch.setitem(registry.QUANT_SCHEMES, "toy", "toy_seam_variants:ToyScheme")
    monkeypatch.setitem(registry.EVAL_MODES, "half_windows",
                        registry.Variant("toy_seam_variants:half_windows", "toy_seam_variants:HalfWindowsOptions"))
    toys = [("model.attention", "half_gain"), ("quant.scheme", "toy"), ("eval.final_modes", "half_windows")]
    assert set(toys) <= set(seam_cases())
    runs = {"toys": {"model.attention": "half_gain", "quant.scheme": "toy", "eval.final_modes": "plain,half_windows",
                     "eval.half_windows.note": "set only while selected"}}
    assert covering_run("model.attention", "half_gain", dict(RUNS)) == "auto-model.attention-half_gain"
    with pytest.raises(C.ConfigError, match="eval.half_windows.* is set but eval.final_modes does not select"):
        _resolved({"eval.half_windows.note": "x"})
    run_dir, sub, log = seam_runs("toys", runs)
    for field, name in toys:
        assert covering_run(field, name, runs) == "toys"
        check_seam(field, name, run_dir, sub, log)
    assert sub["val_bpb"] != seam_runs("base")[1]["val_bpb"]  # the toy attention changed the function
    sys.modules.pop("toy_seam_variants", None)
