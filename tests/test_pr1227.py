"""#1227's pieces, each by its defining property: the S4D-Lin mixer (causal, the kernel formula,
blocked conv = direct sum) in its own stacked segment, DenseFormer (the plain stack at init),
Monarch (the factored product, its size), GEGLU (three matrices), AdamW on matrices and the
cosine schedule, and the min-max QAT grids (what is trained against ships; "learned" NF
centroids get no gradient)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from flax import nnx

from pgolf_jax import config as C
from pgolf_jax.model.flops import analytic_flops_per_token, layer_matmul_weights
from pgolf_jax.model.gpt import MLP, build_model, count_params
from pgolf_jax.model.monarch import MonarchLinear
from pgolf_jax.model.params import flat_specs
from pgolf_jax.model.ssm import RATE_MAX, RATE_MIN, causal_conv, decay_kernel
from pgolf_jax.optim.optimizers import make_optimizer
from pgolf_jax.optim.schedule import cosine_multiplier, schedule_multiplier, warmup_factor
from pgolf_jax.quant import grid as grids
from pgolf_jax.quant.export import dequantize_mixed, quantize_mixed
from pgolf_jax.quant.gptq import hessian_error
from pgolf_jax.quant.qat import fake_quant_tensor, straight_through
from pgolf_jax.quant.interop import flatten_params, split_layers
from conftest import perturbed  # noqa: E402

TINY = C.ModelConfig(vocab_size=96, num_layers=3, model_dim=64, num_heads=4, num_kv_heads=2, attention_impl="xla")




# ---------------------------------------------------------------------------------------------
# S4D-Lin hybrid

def direct_conv(u, k):
    """y[t, c] = sum_s k[c, s] u[t - s, c], term by term."""
    T, L = u.shape[1], k.shape[1]
    y = np.zeros_like(u)
    for t in range(T):
        for s in range(min(L, t + 1)):
            y[:, t] += k[:, s] * u[:, t - s]
    return y


def test_s4d_kernel_formula_blocked_conv_and_causality():
    C_, log_r = jnp.asarray([0.5, 1.0, 2.0]), jnp.log(jnp.asarray([0.05, 0.3, 2.0]))
    K = np.asarray(decay_kernel(C_, log_r, 8))
    t = np.arange(8)
    np.testing.assert_allclose(K, np.asarray(C_)[:, None] * np.exp(-np.exp(np.asarray(log_r))[:, None] * t), rtol=1e-6)
    rng = np.random.default_rng(0)
    k = rng.normal(size=(3, 8)).astype(np.float32)
    for T in (5, 8, 29):  # shorter than, equal to and not a multiple of the kernel (blocks of 8)
        u = rng.normal(size=(2, T, 3)).astype(np.float32)
        y = np.asarray(causal_conv(jnp.asarray(u), jnp.asarray(k[:, :min(8, T)])))
        np.testing.assert_allclose(y, direct_conv(u, k[:, :min(8, T)]), rtol=1e-5, atol=1e-5)
    impulse = np.zeros((1, 29, 3), np.float32)
    impulse[0, 3] = 1.0  # the response to a unit at t = 3 is the kernel itself, then nothing
    y = np.asarray(causal_conv(jnp.asarray(impulse), jnp.asarray(K)))[0]
    np.testing.assert_allclose(y[3:11].T, K, rtol=1e-6)
    assert not y[:3].any() and not y[11:].any()


def test_ssm_hybrid_layers_are_their_own_segment_and_causal():
    cfg = TINY.replace(mixers='s4d_lin*2', s4d_lin=dict(kernel=8))
    assert C.layer_mixers(cfg) == ("s4d_lin", "s4d_lin", "attn")
    model = build_model(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    ssm, attn = shapes["blocks_s4d_lin"], shapes["blocks"]
    assert "attn" not in ssm and "ssm" not in attn  # no layer holds both mixers' weights
    assert ssm["ssm"]["in_proj"]["weight"].shape == (2, 128, 64) and attn["attn"]["c_q"]["weight"].shape[0] == 1
    # The honest count: the attention model minus two layers' attention plus two S4D-Lin mixers.
    dense = count_params(jax.eval_shape(build_model(TINY).init, jax.random.key(0)))
    attn_weights = 64 * 64 * 2 + 2 * 64 * 32 + 4  # q, proj, k, v, q_gain
    mixer = 64 * 128 + 64 * 64 + 2 * 64  # in_proj, out_proj, C, log rate
    assert count_params(shapes) == dense - 2 * attn_weights + 2 * mixer
    params = perturbed(model)
    rates = np.exp(np.asarray(jax.jit(model.init)(jax.random.key(0))["blocks_s4d_lin"]["ssm"]["log_rate"][0]))
    np.testing.assert_allclose(rates[[0, -1]], [RATE_MIN, RATE_MAX], rtol=1e-6)
    assert np.all(np.diff(np.log(rates)) > 0) and np.ptp(np.diff(np.log(rates))) < 1e-5  # log-spaced
    names = flatten_params(params)
    assert "blocks_s4d_lin.1.ssm.in_proj.weight" in names and "blocks.0.attn.c_q.weight" in names
    assert flat_specs(model.param_specs(), params)["blocks_s4d_lin.0.ssm.in_proj.weight"].quant == "attn"
    x = np.asarray(jax.random.randint(jax.random.key(0), (2, 24), 0, 96))
    logits_fn = jax.jit(model.logits)
    base = np.asarray(logits_fn(params, x))
    y = x.copy()
    y[:, 13:] = (y[:, 13:] * 7 + 3) % 96
    other = np.asarray(logits_fn(params, y))
    np.testing.assert_allclose(other[:, :13], base[:, :13], rtol=1e-5, atol=1e-5)
    assert not np.allclose(other[:, 13:], base[:, 13:])
    H = jax.jit(model.input_hessians)(params, x)
    assert H["blocks_s4d_lin.ssm.in_proj.weight"].shape == (2, 64, 64)  # GPTQ statistics per segment
    per_layer = layer_matmul_weights(cfg)  # FLOPs: the conv's 2 L taps per channel, no attention there
    assert per_layer[0] == per_layer[1] == 64 * 128 + 64 * 64 + 2 * 8 * 64 + 2 * 64 * 128
    one_attn = analytic_flops_per_token(TINY, 24)["attn_full"] / 3
    assert analytic_flops_per_token(cfg, 24)["attn_full"] == pytest.approx(one_attn)


def test_mixers_are_checked_at_config_time():
    with pytest.raises(C.ConfigError, match="names 4 layers; model.num_layers=3"):
        C.Config(model=dataclasses.replace(TINY, mixers="s4d_lin*4"))
    with pytest.raises(C.ConfigError, match=r"'conv\*2' is not <mixer>"):
        C.Config(model=dataclasses.replace(TINY, mixers="conv*2"))
    with pytest.raises(C.ConfigError, match="xsa_last_n=3 reaches layers whose mixer is not attention"):
        C.Config(model=dataclasses.replace(TINY, mixers="s4d_lin", xsa_last_n=3))


# ---------------------------------------------------------------------------------------------
# DenseFormer

def test_denseformer_at_init_is_the_plain_stack():
    cfg = dataclasses.replace(TINY, topology="denseformer")
    model, plain = build_model(cfg), build_model(dataclasses.replace(TINY, topology="plain"))
    params = perturbed(model)
    params["dwa_weights"] = jax.jit(model.init)(jax.random.key(0))["dwa_weights"]  # the identity init
    np.testing.assert_array_equal(np.asarray(params["dwa_weights"]), np.eye(3, 4, k=1))
    x = jax.random.randint(jax.random.key(3), (2, 16), 0, 96)
    plain_params = {k: v for k, v in params.items() if k != "dwa_weights"}
    logits = jax.jit(model.logits)
    np.testing.assert_allclose(np.asarray(logits(params, x)), np.asarray(jax.jit(plain.logits)(plain_params, x)),
                               rtol=1e-5, atol=1e-5)
    mixed = dict(params, dwa_weights=params["dwa_weights"].at[2, 0].set(0.5))  # the embedding reaches the top
    assert not np.allclose(np.asarray(logits(mixed, x)), np.asarray(logits(params, x)))
    assert model.param_specs()["dwa_weights"].group == "scalar"


# ---------------------------------------------------------------------------------------------
# Monarch, GEGLU

def test_monarch_is_the_factored_product_and_its_size():
    cfg = TINY.replace(monarch=dict(blocks=4))
    for in_f, out_f in ((8, 16), (16, 8)):
        lin = MonarchLinear(in_f, out_f, init="uniform", quant="mlp", cfg=cfg, rngs=nnx.Rngs(params=0))
        b, p, s, q = 4, in_f // 4, out_f // 4, min(in_f, out_f) // 4
        R, L = np.asarray(lin.R[...]), np.asarray(lin.L[...])
        BD_R = scipy.linalg.block_diag(*R.reshape(b, q, p))  # (b q, in)
        BD_L = scipy.linalg.block_diag(*L.reshape(b, s, q))  # (out, b q)
        perm = np.arange(b * q).reshape(q, b).T.reshape(-1)  # block c of L reads feature c of every R block
        P = np.eye(b * q)[perm]
        W = BD_L @ P @ BD_R
        x = np.random.default_rng(0).normal(size=(5, in_f)).astype(np.float32)
        dense, y = nnx.jit(lambda m, x: (m.materialize(), m(x)))(lin, jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(dense), W, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(y), x @ W.T, rtol=1e-5, atol=1e-5)
        assert R.size + L.size == q * (in_f + out_f)
        assert np.linalg.matrix_rank(W) > q  # the shuffle mixes blocks: not a block-diagonal matrix
    # #1227's local MLP (192 -> 384 and back) at 16 blocks: 10.7x fewer weights than dense.
    local = dataclasses.replace(TINY, model_dim=192, num_heads=6, num_kv_heads=6, mlp_linear="monarch")
    fc = MonarchLinear(192, 384, init="uniform", quant="mlp", cfg=local, rngs=nnx.Rngs(params=0))
    ratio = 192 * 384 / (fc.R[...].size + fc.L[...].size)
    assert 8 <= ratio <= 12 and ratio == pytest.approx(32 / 3)
    zero = MonarchLinear(16, 32, init="zeros", quant="mlp", cfg=cfg, rngs=nnx.Rngs(params=0))
    assert not np.any(zero.L[...]) and np.any(zero.R[...])  # a zero projection keeps R's gradient path


def test_monarch_factors_are_quantized_by_rtn_when_gptq_has_no_hessian():
    cfg = TINY.replace(mlp_linear='monarch', monarch=dict(blocks=4))
    model = build_model(cfg)
    params = perturbed(model)
    specs = flat_specs(model.param_specs(), params)
    sp = specs["blocks.0.mlp.fc.R"]
    assert (sp.group, sp.quant, sp.always_quantize, sp.hessian) == ("matrix", "mlp", True, False)
    H = jax.jit(model.input_hessians)(params, jax.random.randint(jax.random.key(0), (2, 16), 0, 96))
    hess = {}
    for name, h in H.items():
        hess.update(split_layers(name, np.asarray(h, np.float64)))
    lines = []
    obj, _ = quantize_mixed(flatten_params(params), C.QuantConfig(scheme="gptq", keep_float_max_numel=2048),
                            hess, log=lines.append, rules=specs)
    assert obj["qmeta"]["blocks.0.mlp.fc.R"]["method"] == "rtn" and obj["qmeta"]["blocks.0.attn.c_q.weight"]["method"] == "gptq"
    assert any(line.startswith("gptq:round-to-nearest for 12 tensors") for line in lines)  # R, L of fc, proj x 3


def test_geglu_mlp_has_three_matrices_and_gates_with_gelu():
    cfg = dataclasses.replace(TINY, activation="geglu", mlp_mult=2.0)
    mlp = MLP(cfg, rngs=nnx.Rngs(params=0))
    assert mlp.gate.weight[...].shape == mlp.fc.weight[...].shape == (128, 64) and mlp.proj.weight[...].shape == (64, 128)
    mlp.proj.weight[...] = 0.1 * jax.random.normal(jax.random.key(1), (64, 128))
    x = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    g, u, d = (np.asarray(m.weight[...]) for m in (mlp.gate, mlp.fc, mlp.proj))
    gelu = 0.5 * (x @ g.T) * (1 + np.vectorize(math.erf)((x @ g.T) / math.sqrt(2)))  # exact GELU
    np.testing.assert_allclose(np.asarray(mlp(jnp.asarray(x))), (gelu * (x @ u.T)) @ d.T, rtol=1e-4, atol=1e-5)
    assert build_model(cfg).param_specs()["blocks"]["mlp"]["gate"]["weight"].quant == "mlp"


# ---------------------------------------------------------------------------------------------
# AdamW on every parameter, cosine with warm-up

def test_matrix_optimizer_adamw_steps_matrices_like_adamw():
    cfg = C.Config(optim=C.OptimConfig(matrix_optimizer="adamw", matrix_lr=0.01, muon_wd=0.1, beta2=0.999))
    params = {"blocks": {"w": jnp.ones((1, 4, 6), jnp.float32)}}
    grads = {"blocks": {"w": jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, 6)), jnp.float32)}}
    tx = make_optimizer(cfg, jnp.float32, {"blocks": {"w": "matrix"}})
    upd, _ = tx.update(grads, tx.init(params), params, lr_mul=0.5)
    g = np.asarray(grads["blocks"]["w"])
    want = -0.01 * 0.5 * (g / (np.abs(g) + 1e-8) + 0.1 * 1.0)  # Adam's first step is g / |g|; decoupled wd
    np.testing.assert_allclose(np.asarray(upd["blocks"]["w"]), want, rtol=1e-5)
    muon = make_optimizer(C.Config(), jnp.float32, {"blocks": {"w": "matrix"}})
    assert not np.allclose(np.asarray(muon.update(grads, muon.init(params), params)[0]["blocks"]["w"]), want)


def test_cosine_schedule_with_linear_warmup():
    t = C.TrainConfig(iterations=110, lr_schedule="cosine", lr_warmup_steps=10, min_lr=0.1, max_wallclock_seconds=0.0)
    assert [warmup_factor(s, t) for s in (0, 4, 9, 50)] == [0.1, 0.5, 1.0, 1.0]
    assert cosine_multiplier(10, 0.0, t) == pytest.approx(1.0)
    assert cosine_multiplier(60, 0.0, t) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cosine_multiplier(110, 0.0, t) == pytest.approx(0.1)
    torch_like = dataclasses.replace(t, lr_warmup_steps=0, min_lr=0.0, iterations=1500)  # CosineAnnealingLR(T_max)
    assert schedule_multiplier(375, 0.0, torch_like) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    capped = dataclasses.replace(t, max_wallclock_seconds=100.0)
    assert cosine_multiplier(3, 50_000.0, capped) == pytest.approx(0.1 + 0.9 * 0.5)  # by the time budget


# ---------------------------------------------------------------------------------------------
# QAT grids: affine min-max and NormalFloat, the export storing the same grid

def test_affine_grid_is_1227s_minmax_formula_and_ships_as_trained():
    w = np.random.default_rng(0).normal(size=(6, 40)).astype(np.float32)
    fq = np.asarray(fake_quant_tensor(jnp.asarray(w), 5, "affine", 0.0))
    lo, step = grids.minmax_params(w, "affine", 5)
    lo32, s32 = lo.astype(np.float32)[:, None], step.astype(np.float32)[:, None]
    np.testing.assert_allclose(s32[:, 0], (w.max(1) - w.min(1)) / 31, rtol=1e-3)  # s = (max - min) / (2^b - 1)
    want = np.clip(np.round((w - lo32) / s32), 0, 31) * s32 + lo32  # q = clamp(round((w - min) / s)), w = q s + min
    np.testing.assert_allclose(fq, want, rtol=1e-6, atol=1e-6)
    assert max(len(np.unique(r)) for r in fq) <= 32
    q = C.QuantConfig(scheme="rtn", grid="affine", mlp_bits=5, keep_float_max_numel=0)
    obj, _ = quantize_mixed({"blocks.0.mlp.fc.weight": w}, q)
    np.testing.assert_allclose(dequantize_mixed(obj)["blocks.0.mlp.fc.weight"], fq, rtol=1e-6, atol=1e-6)
    assert obj["quantized"]["blocks.0.mlp.fc.weight"].dtype == np.int8 and "blocks.0.mlp.fc.weight" in obj["offsets"]


def test_nf5_levels_and_gptq_on_the_grid():
    lv = grids.nf_levels(5)
    z0 = -2.1538746940614555  # Phi^-1(0.5 / 32)
    assert lv[0] == 0 and lv[-1] == 1 and np.all(np.diff(lv) > 0)
    np.testing.assert_allclose(lv + lv[::-1], 1.0, atol=1e-6)  # symmetric quantiles
    assert lv[16] == pytest.approx((0.03917608550309764 - z0) / (-2 * z0), rel=1e-6)  # Phi^-1(16.5 / 32)
    rng = np.random.default_rng(1)
    w = rng.normal(size=(8, 48)).astype(np.float32)
    X = rng.normal(size=(256, 48)) @ rng.normal(size=(48, 48)) * 0.3
    H = X.T @ X
    rtn, _ = quantize_mixed({"blocks.0.attn.c_q.weight": w}, C.QuantConfig(scheme="rtn", grid="nf", attn_bits=5,
                                                                             keep_float_max_numel=0))
    gq, _ = quantize_mixed({"blocks.0.attn.c_q.weight": w}, C.QuantConfig(scheme="gptq", grid="nf", attn_bits=5,
                                                                            keep_float_max_numel=0),
                           {"blocks.0.attn.c_q.weight": H})
    d_rtn, d_gq = (dequantize_mixed(o)["blocks.0.attn.c_q.weight"] for o in (rtn, gq))
    np.testing.assert_allclose(d_rtn, np.asarray(fake_quant_tensor(jnp.asarray(w), 5, "nf", 0.0)), atol=1e-6)
    lo, step = grids.minmax_params(w, "nf", 5)
    on_grid = (d_gq - lo.astype(np.float32)[:, None]) / step.astype(np.float32)[:, None]
    assert np.abs(on_grid[..., None] - lv).min(-1).max() < 1e-5  # GPTQ moves codes, never off the grid
    assert hessian_error(w, d_gq, H) < hessian_error(w, d_rtn, H)


def test_learned_nf_centroids_get_exactly_zero_gradient():
    """#1227's 'learned centroid' QAT: the lookup sits inside the straight-through stop-gradient,
    so the centroids never move (hence no such option); without the STE they would."""
    w = jnp.asarray(np.random.default_rng(2).normal(size=(4, 32)), jnp.float32)
    target = jnp.asarray(np.random.default_rng(3).normal(size=(4, 32)), jnp.float32)

    def loss(levels, ste=True):
        fq = fake_quant_tensor(w, 5, "nf", 0.0, levels=levels)
        return jnp.sum((straight_through(w, fq) if ste else fq) * target)

    levels = jnp.asarray(grids.nf_levels(5))
    g = jax.grad(loss)(levels)
    assert np.all(np.asarray(g) == 0.0)
    assert np.abs(np.asarray(jax.grad(lambda c: loss(c, ste=False))(levels))).sum() > 0
    g_w = jax.grad(lambda w_: jnp.sum(straight_through(w_, fake_quant_tensor(w_, 5, "nf", 0.0)) * target))(w)
    np.testing.assert_array_equal(np.asarray(g_w), np.asarray(target))  # the weights get the identity gradient
