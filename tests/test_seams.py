"""The model seams and their first entries, each by its defining property: low-rank linears
(Eigenweight), MLA, pause tokens, UT + ACT, the plain topology and distillation; the #1589
presets' parameter counts; and every new entry through run.py (train, quantize, pack, round-trip)."""

import dataclasses
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgolf_jax import config as C
from pgolf_jax.cli import main
from pgolf_jax.data.tokenizer import ByteLuts
from pgolf_jax.evaluation.evaluate import Evaluator
from pgolf_jax.model import pause
from pgolf_jax.model.act import ACT
from pgolf_jax.model.flops import analytic_flops_per_token
from pgolf_jax.model.gpt import build_model, count_params
from pgolf_jax.model.params import flat_specs
from pgolf_jax.model.topology import BlockRunner
from pgolf_jax.quant.export import quantize_mixed
from pgolf_jax.quant.interop import flatten_params
from pgolf_jax.train.objectives import CrossEntropy, Distill
from pgolf_jax.train.step import TrainState, initial_rng, make_train_step
from conftest import TINY_PRESET, perturbed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = C.ModelConfig(vocab_size=96, num_layers=3, model_dim=64, num_heads=4, num_kv_heads=2, attention_impl="xla")




def ids(B=2, T=32, seed=0, vocab=96):
    return jax.random.randint(jax.random.key(seed), (B, T), 0, vocab)


# ---------------------------------------------------------------------------------------------
# #1589 presets: --dry-run prints the counts the spec implies

@pytest.mark.parametrize("preset,count", [("baseline", 17_059_912), ("mla128", 15_880_264), ("mla64", 15_290_440),
                                          ("pause4x64", 17_061_960), ("eigen_r64", 4_382_152),
                                          ("eigen_r128", 8_219_464), ("eigen_r256", 15_894_088)])
def test_pr1589_preset_parameter_counts(preset, count, capsys):
    assert main(["--config", str(ROOT / "configs" / "pr1589" / f"{preset}.py"), "--dry-run"]) == 0
    assert f"model_params:{count}" in capsys.readouterr().out


def test_every_pr1589_preset_resolves():
    for path in sorted((ROOT / "configs" / "pr1589").glob("*.py")):
        m = C.load(path).model
        assert count_params(jax.eval_shape(build_model(m).init, jax.random.key(0))) > 0, path.name


# ---------------------------------------------------------------------------------------------
# linear=lowrank

LOWRANK = TINY.replace(linear='lowrank', lowrank=dict(rank=8, attn_rank=6))


def test_lowrank_weight_is_the_factored_product_of_rank_r():
    model = build_model(LOWRANK)
    params = perturbed(model)
    gpt = model.module(params)
    fc = gpt.blocks.mlp.fc  # stacked: (L, ...) factors
    U, s, V = (np.asarray(getattr(fc, k)[...]) for k in ("U", "sigma", "V"))
    assert U.shape == (3, 128, 8) and s.shape == (3, 8) and V.shape == (3, 8, 64)
    assert gpt.blocks.attn.c_q.U[...].shape[-1] == 6  # per-site rank
    assert gpt.blocks.attn.c_k.U[...].shape[-1] == 6  # clipped at min(in, out) only when smaller
    x = np.asarray(jax.random.normal(jax.random.key(3), (5, 64)))
    for layer in range(3):
        W = (U[layer] * s[layer]) @ V[layer]
        assert np.linalg.matrix_rank(W, tol=1e-5) <= 8
        layer_fc = jax.tree.map(lambda a: a[layer], nnx_state(fc))
        y = np.asarray(model_apply(fc, layer_fc, x))
        np.testing.assert_allclose(y, x @ W.T, rtol=1e-4, atol=1e-5)


def nnx_state(module):
    from flax import nnx
    return nnx.split(module)[1]


def model_apply(module, state, x):
    from flax import nnx
    graphdef, _ = nnx.split(module)
    return nnx.merge(graphdef, state)(jnp.asarray(x))


def test_lowrank_rank_clipped_and_svd_initialised():
    cfg = TINY.replace(linear='lowrank', lowrank=dict(rank=500))
    gpt = build_model(cfg).module(jax.jit(build_model(cfg).init)(jax.random.key(0)))
    assert gpt.blocks.attn.c_k.U[...].shape[-1] == 32  # min(in 64, out 32)
    # SVD init: orthonormal columns of U, orthonormal rows of V, descending sigma, no zero init
    U, V, s = (np.asarray(a[...][0]) for a in (gpt.blocks.mlp.proj.U, gpt.blocks.mlp.proj.V, gpt.blocks.mlp.proj.sigma))
    np.testing.assert_allclose(U.T @ U, np.eye(U.shape[1]), atol=1e-4)
    np.testing.assert_allclose(V @ V.T, np.eye(V.shape[0]), atol=1e-4)
    assert np.all(np.diff(s) <= 0) and s[-1] > 0


def test_lowrank_groups_quant_rules_and_hessians():
    model = build_model(LOWRANK)
    params = perturbed(model)
    sp = model.param_specs()
    fc = sp["blocks"]["mlp"]["fc"]
    assert (fc["U"].group, fc["V"].group, fc["sigma"].group) == ("matrix", "matrix", "scalar")
    assert fc["U"].quant == "mlp" and fc["U"].always_quantize and sp["blocks"]["attn"]["c_q"]["V"].quant == "attn"
    # GPTQ statistics: V sees the layer input (H), U sees (sigma V) x, i.e. (sigma V) H (sigma V)^T.
    H = jax.jit(model.input_hessians)(params, ids())
    HV, HU = np.asarray(H["blocks.mlp.fc.V"]), np.asarray(H["blocks.mlp.fc.U"])
    V, s = np.asarray(params["blocks"]["mlp"]["fc"]["V"]), np.asarray(params["blocks"]["mlp"]["fc"]["sigma"])
    for layer in range(3):
        sv = s[layer][:, None] * V[layer]
        np.testing.assert_allclose(HU[layer], sv @ HV[layer] @ sv.T, rtol=2e-3, atol=2e-3)
    # The factors are quantized although far below keep_float_max_numel; sigma passes through.
    named = flatten_params(params)
    q = C.QuantConfig(scheme="rtn")
    obj, _ = quantize_mixed(named, q, rules=flat_specs(sp, params))
    assert "blocks.0.mlp.fc.U" in obj["quantized"] and "blocks.0.mlp.fc.V" in obj["quantized"]
    assert "blocks.0.mlp.fc.sigma" in obj["passthrough"]


# ---------------------------------------------------------------------------------------------
# attention=mla

def test_mla_kv_have_rank_at_most_latent_and_its_size():
    cfg = TINY.replace(attention='mla', mla=dict(latent_dim=8))
    model = build_model(cfg)
    params = perturbed(model)
    a = params["blocks"]["attn"]
    assert "c_k" not in a and "c_v" not in a and set(a) >= {"c_q", "kv_down", "k_up", "v_up", "proj", "q_gain"}
    for layer in range(3):
        for up in ("k_up", "v_up"):
            W = np.asarray(a[up]["weight"][layer]) @ np.asarray(a["kv_down"]["weight"][layer])  # (kv, D)
            assert np.linalg.matrix_rank(W, tol=1e-6) <= 8
    init = jax.jit(model.init)(jax.random.key(0))["blocks"]["attn"]["kv_down"]["weight"][0]
    np.testing.assert_allclose(np.asarray(init @ init.T), np.eye(8), atol=1e-5)  # orthonormal rows
    # #1589's shapes: D 512, kv 256 -> 512 l + 2 * 256 l = 1024 l weights per layer.
    full = build_model(C.ModelConfig().replace(attention='mla', mla=dict(latent_dim=128)))
    shapes = jax.eval_shape(full.init, jax.random.key(0))["blocks"]["attn"]
    assert sum(int(np.prod(shapes[k]["weight"].shape[1:])) for k in ("kv_down", "k_up", "v_up")) == 1024 * 128


# ---------------------------------------------------------------------------------------------
# pause tokens

PAUSE = dataclasses.replace(TINY, pause_tokens=3, pause_interval=8)


def test_pause_inserts_floor_t_over_i_slots():
    for T, P, I in [(32, 3, 8), (30, 3, 8), (1024, 4, 64), (1024, 8, 32)]:
        source, real = pause.layout(T, P, I)
        assert len(source) == T + (T // I) * P and len(real) == T
        assert (source[real] == np.arange(T)).all()
    assert len(pause.layout(1024, 4, 64)[0]) == 1088 and len(pause.layout(1024, 8, 32)[0]) == 1280
    model = build_model(PAUSE)
    params = perturbed(model)
    assert model.module(params).embed(ids()).shape == (2, 32 + 4 * 3, 64)
    assert model.logits(params, ids()).shape == (2, 32, 96)  # real positions only
    assert model.param_specs()["pause"].group == "scalar"


def test_pause_real_positions_are_causal():
    model = build_model(PAUSE)
    params = perturbed(model)
    x = np.asarray(ids())
    logits = jax.jit(model.logits)(params, x)
    for t in (0, 7, 8, 20):
        y = x.copy()
        y[:, t + 1:] = (y[:, t + 1:] * 7 + 3) % 96
        other = jax.jit(model.logits)(params, y)
        np.testing.assert_allclose(np.asarray(other[:, :t + 1]), np.asarray(logits[:, :t + 1]), rtol=1e-5, atol=1e-5)
        assert not np.allclose(np.asarray(other[:, t + 1:]), np.asarray(logits[:, t + 1:]))


def test_pause_bpb_counts_exactly_the_real_tokens():
    luts = ByteLuts(np.r_[np.zeros(4, np.int16), np.arange(1, 93) % 4 + 1].astype(np.int16), np.zeros(96, bool),
                    np.r_[np.ones(4, bool), np.zeros(92, bool)])
    tokens = np.asarray(jax.random.randint(jax.random.key(9), (32 * 6 + 1,), 4, 96), np.int32)
    base, paused = build_model(TINY), build_model(PAUSE)
    ev_base, ev_pause = (Evaluator(m, tokens, luts, 32, 32 * 2) for m in (base, paused))
    assert ev_pause.byte_count == ev_base.byte_count == int(ev_base.target_bytes.sum())
    res = ev_pause(perturbed(paused))
    assert res.val_tokens == 32 * 6 and res.val_bytes == ev_base.byte_count and np.isfinite(res.val_bpb)


# ---------------------------------------------------------------------------------------------
# topology=act, topology=plain

ACT_CFG = TINY.replace(topology='act', num_layers=1, act=dict(max_steps=5, halt_bias=-1.0))


def _act_run(cfg, seed=2, halt_b=None, once=False):
    """(ACT output, aux with per-token weights and ponder[, one plain block application])."""
    model = build_model(cfg)
    params = perturbed(model, seed=seed)
    if halt_b is not None:
        params["halt_b"] = jnp.asarray(halt_b, jnp.float32)

    def fn(p, x):
        gpt = model.module(p)
        h = gpt.embed(x).reshape(-1, cfg.model_dim)
        ctx = gpt._context(x.shape[1], x.shape[0])
        y, aux = ACT.run(gpt, h, h, ctx, gpt.layers, return_weights=True)
        run = BlockRunner(gpt, h, ctx)
        return y, aux, run.block(h, run.layer(0, 0), 0)

    return jax.jit(fn)(params, ids(T=16))


def test_act_halting_weights_sum_to_one_and_ponder_counts_steps():
    _, aux, _ = _act_run(ACT_CFG)
    w = np.asarray(aux["weights"])  # (steps, N)
    np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-5)
    steps_run = (w > 0).sum(0)
    ponder = np.asarray(aux["ponder_per_token"])
    natural = steps_run < ACT_CFG.act.max_steps  # stopped by the threshold: ponder = steps run
    assert natural.any() and (~natural).any()
    np.testing.assert_allclose(ponder[natural], steps_run[natural])
    forced = ~natural  # stopped by the last iteration: steps plus the remainder it took
    np.testing.assert_allclose(ponder[forced], steps_run[forced] + w[-1, forced], atol=1e-5)
    assert float(aux["ponder"]) == pytest.approx(float(ponder.mean()))


def test_act_forced_to_one_step_is_one_block_application():
    y, aux, once = _act_run(ACT_CFG, halt_b=30.0)
    np.testing.assert_allclose(np.asarray(y), np.asarray(once), rtol=1e-5, atol=1e-5)
    assert float(aux["ponder"]) == pytest.approx(1.0)


def test_act_ponder_cost_enters_the_objective_and_flops_count_every_step():
    model = build_model(ACT_CFG)
    params = perturbed(model)
    x = ids(T=16)
    loss, metrics = jax.jit(lambda p: CrossEntropy(None)(model, p, x, x, True, None))(params)
    assert model.aux_weights == {"ponder": 0.01}
    assert float(loss) == pytest.approx(float(metrics["ce"] + 0.01 * metrics["ponder"]), rel=1e-6)
    g = jax.jit(jax.grad(lambda p: CrossEntropy(None)(model, p, x, x, True, None)[0]))(params)
    assert float(jnp.abs(g["halt_w"]).sum()) > 0  # the halting head learns
    one = analytic_flops_per_token(dataclasses.replace(TINY, num_layers=1), 16)["matmul"]
    full = analytic_flops_per_token(ACT_CFG, 16)["matmul"]
    emb = 6 * 96 * 64
    assert (full - emb) == pytest.approx(5 * (one - emb))


def test_plain_topology_has_no_skip_parameters():
    cfg = dataclasses.replace(TINY, topology="plain")
    model = build_model(cfg)
    params = perturbed(model)
    assert "skip_weights" not in params and "skip_gates" not in params
    assert "skip_weights" in build_model(TINY).init(jax.random.key(0))
    assert np.isfinite(float(jax.jit(model.loss)(params, ids(), ids())))


# ---------------------------------------------------------------------------------------------
# objective=distill

def test_distill_with_alpha_one_is_ce_and_the_teacher_gets_no_gradient():
    student, teacher = build_model(TINY), build_model(dataclasses.replace(TINY, num_layers=1, model_dim=32, num_heads=2,
                                                                          num_kv_heads=1))
    sp, tp = perturbed(student), perturbed(teacher, seed=5)
    x, y = ids(), ids(seed=1)
    base = C.Config(train=C.TrainConfig().replace(objective='distill', distill=dict(teacher='unused', alpha=1.0)))
    ce, _ = jax.jit(lambda p: CrossEntropy(base)(student, p, x, y, True, None))(sp)
    d1, m1 = jax.jit(lambda p, t: Distill(base, teacher)(student, p, x, y, True, None, t))(sp, tp)
    assert float(d1) == pytest.approx(float(ce), rel=1e-6) and float(m1["kl"]) > 0
    half = dataclasses.replace(base, train=base.train.replace(distill=dict(alpha=0.5)))
    obj = Distill(half, teacher)
    d5, m5 = jax.jit(lambda p, t: obj(student, p, x, y, True, None, t))(sp, tp)
    assert float(d5) == pytest.approx(0.5 * float(ce) + 0.5 * 4.0 * float(m5["kl"]), rel=1e-5)
    g_teacher = jax.jit(jax.grad(lambda t: obj(student, sp, x, y, True, None, t)[0]))(tp)
    assert all(float(jnp.abs(g).sum()) == 0.0 for g in jax.tree.leaves(g_teacher))
    # The teacher is an argument of the compiled step: another teacher, same compile, other loss.
    from pgolf_jax.optim.optimizers import labels_from_specs, make_optimizer
    tx = make_optimizer(half, jnp.float32, labels_from_specs(student.param_specs()))
    step = jax.jit(make_train_step(student, tx, obj))
    state = TrainState(jnp.zeros((), jnp.int32), sp, tx.init(sp), None, initial_rng(0))
    xb, yb = x[None], y[None]
    _, ma = step(state, xb, yb, 1.0, 0.0, tp)
    _, mb = step(state, xb, yb, 1.0, 0.0, jax.tree.map(lambda a: a * 0.5, tp))
    assert float(ma["kl"]) != float(mb["kl"]) and step._cache_size() == 1


# ---------------------------------------------------------------------------------------------
# Every new entry through run.py: train, quantize, pack, round-trip



def _run(sample_data, out, run_id, *extra):
    argv = ["--config", TINY_PRESET, *[f"{k}={v}" for k, v in sample_data["overrides"].items()],
            f"train.out_dir={out}", f"train.run_id={run_id}", "train.iterations=6", "train.progress=false", *extra]
    assert main(argv) == 0
    sub = json.loads((out / run_id / "submission.json").read_text())
    assert np.isfinite(sub["val_bpb"]) and sub["val_bpb"] < 8
    return sub


@pytest.mark.parametrize("name,extra", [
    ("mla", ["model.attention=mla", "model.mla.latent_dim=16"]),
    ("lowrank_gptq", ["model.linear=lowrank", "model.lowrank.rank=8", "quant.scheme=gptq",
                      "quant.gptq.calibration_batches=2"]),
    ("pause", ["model.pause_tokens=2", "model.pause_interval=16"]),
    ("act", ["model.topology=act", "model.num_layers=1", "model.act.max_steps=3"]),
    ("plain", ["model.topology=plain"]),
])
def test_new_entries_run_end_to_end(name, extra, sample_data, tmp_path):
    sub = _run(sample_data, tmp_path, name, *extra)
    log = (tmp_path / name / "log.txt").read_text()
    assert "final_roundtrip_exact" in log
    if name == "act":
        assert re.search(r"step:6/6 train_loss:[\d.]+ ce:[\d.]+ ponder:[\d.]+", log)
    if name == "lowrank_gptq":
        assert "quant:mlp" in log and sub["bytes_model"] > 0


def test_distill_preset_shape_end_to_end(sample_data, tmp_path):
    """A teacher run, then a student distilled from it (its run dir as train.distill.teacher)."""
    _run(sample_data, tmp_path, "teacher", "model.num_layers=3")
    sub = _run(sample_data, tmp_path, "student", "train.objective=distill", f"train.distill.teacher={tmp_path / 'teacher'}",
               "model.model_dim=32", "model.num_heads=2", "model.num_kv_heads=1")
    log = (tmp_path / "student" / "log.txt").read_text()
    assert "objective:distill teacher:" in log and re.search(r"kl:[\d.]+", log)
    # The teacher may also be a packed artifact (config.json beside it): its dequantized weights.
    from pgolf_jax.train.objectives import load_teacher
    _, from_dir = load_teacher(tmp_path / "teacher")
    _, from_art = load_teacher(next((tmp_path / "teacher").glob("final_model.int8.*")))
    for a, b in zip(jax.tree.leaves(from_dir), jax.tree.leaves(from_art)):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=0.02)
    assert sub["model_params"] < json.loads((tmp_path / "teacher" / "submission.json").read_text())["model_params"]
