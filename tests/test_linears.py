"""Seam: the block linears (linear / mlp_linear): lowrank (Eigenweight), Monarch and RLMA."""

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
from pgolf_jax.model.gpt import build_model, count_params
from pgolf_jax.model.layers import Pass
from pgolf_jax.model.monarch import MonarchLinear
from pgolf_jax.model.params import flat_specs
from pgolf_jax.model.rlma import RLMALinear, name_seed, random_base
from pgolf_jax.quant import artifact
from pgolf_jax.quant.export import quantize_mixed
from pgolf_jax.quant.interop import flatten_params, split_layers
from conftest import perturbed  # noqa: E402

TINY = C.ModelConfig(vocab_size=96, num_layers=3, model_dim=64, num_heads=4, num_kv_heads=2, attention_impl="xla")
UT = C.ModelConfig().replace(vocab_size=96, num_layers=3, model_dim=32, num_heads=2, num_kv_heads=1,
                             attention_impl='xla', topology='ut_shared', tied_embed_init_std=0.02,
                             ut_shared=dict(iterations=3))


def ids(B=2, T=32, seed=0, vocab=96):
    return jax.random.randint(jax.random.key(seed), (B, T), 0, vocab)


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
    obj, _ = quantize_mixed(named, flat_specs(sp, params), q)
    assert "blocks.0.mlp.fc.U" in obj["quantized"] and "blocks.0.mlp.fc.V" in obj["quantized"]
    assert "blocks.0.mlp.fc.sigma" in obj["passthrough"]


# ---------------------------------------------------------------------------------------------
# mlp_linear=monarch


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
    obj, _ = quantize_mixed(flatten_params(params), specs, C.QuantConfig(scheme="gptq", keep_float_max_numel=2048),
                            hess, log=lines.append)
    assert obj["qmeta"]["blocks.0.mlp.fc.R"]["method"] == "rtn" and obj["qmeta"]["blocks.0.attn.c_q.weight"]["method"] == "gptq"
    assert any(line.startswith("gptq:round-to-nearest for 12 tensors") for line in lines)  # R, L of fc, proj x 3


# ---------------------------------------------------------------------------------------------
# linear=rlma


def test_rlma_random_base_is_stable_per_pass_and_the_init_is_alpha_r():
    assert name_seed("attn.c_q") == 1390987446  # blake2b-64: the same in every process
    R = np.asarray(random_base("attn.c_q", 1, 2, 48, 64))
    np.testing.assert_array_equal(R, np.asarray(random_base("attn.c_q", 1, 2, 48, 64)))
    for other in (random_base("attn.c_q", 1, 3, 48, 64), random_base("attn.c_q", 0, 2, 48, 64),
                  random_base("attn.c_k", 1, 2, 48, 64)):
        assert np.abs(np.asarray(other) - R).mean() > 0.1  # another pass, layer or linear: another base
    assert R.std() * 8 == pytest.approx(1.0, rel=0.05)  # N(0, 1) / sqrt(in)
    cfg = UT.replace(linear='rlma', rlma=dict(rank=6))
    lin = RLMALinear(64, 48, init="uniform", quant="attn", cfg=cfg, rngs=nnx.Rngs(params=0))
    lin.tap = "attn.c_q"
    assert not np.any(lin.U[...]) and float(lin.alpha[...]) == 1.0 and lin.V[...].shape == (6, 64)
    assert np.asarray(lin.V[...]).std() * math.sqrt(6) == pytest.approx(1.0, rel=0.15)  # V ~ N(0, 1/r)
    np.testing.assert_array_equal(np.asarray(lin.materialize(1, 2)), R)  # alpha R + 0 V
    lin.alpha[...] = jnp.asarray(0.5)
    x = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(lin(jnp.asarray(x), Pass().at(1, 2))), x @ (0.5 * R).T, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="block position"):
        lin(jnp.asarray(x))


def test_rlma_stores_no_base_and_quantizes_its_factors():
    cfg = UT.replace(linear='rlma', rlma=dict(rank=6))
    model = build_model(cfg)
    params = perturbed(model)
    q = params["blocks"]["attn"]["c_q"]
    assert set(q) == {"U", "V", "alpha"} and q["U"].shape == (3, 32, 6)
    D, kv, F, r = 32, 16, 64, 6
    factors = r * ((D + D) * 2 + (D + kv) * 2 + (D + F) * 2)  # q, proj, k, v, fc, proj
    scalars = 6 + 2 * D + 2  # alphas, branch scales, q gains
    assert count_params(params) == 96 * D + 3 * (factors + scalars) + 3 * D  # + depth embedding
    specs = flat_specs(model.param_specs(), params)
    obj, _ = quantize_mixed(flatten_params(params), specs, C.QuantConfig(scheme="rtn"))
    assert "blocks.1.mlp.fc.U" in obj["quantized"] and "blocks.1.mlp.fc.alpha" in obj["passthrough"]
    blob = artifact.unpack(artifact.pack(obj))
    stored = sum(np.asarray(a).size for slot in ("quantized", "passthrough") for a in blob[slot].values())
    assert stored == count_params(params)  # every stored number is a parameter: 0 bytes of R
    x = jax.random.randint(jax.random.key(0), (2, 8), 0, 96)
    H = jax.jit(model.input_hessians)(params, x)
    assert H["blocks.attn.c_q.V"].shape == (3, 32, 32) and H["blocks.attn.c_q.U"].shape == (3, 6, 6)
    # FLOPs count what a token multiplies: the factors and the dense R product of every pass.
    dense = 2 * D * D + 2 * D * kv + 2 * D * F
    assert layer_matmul_weights(cfg) == {0: dense + factors, 1: dense + factors, 2: dense + factors}
    fl = analytic_flops_per_token(cfg, 64)
    assert fl["n_matmul_params"] == 5 * (dense + factors) + 96 * D  # 5 passes (K = 3) + the head
    windowed = analytic_flops_per_token(dataclasses.replace(cfg, attention_window=16), 64)
    assert windowed["attn_causal"] == pytest.approx(fl["attn_full"] * 16 / 64)
