"""#2114's pieces, each by its defining property: the shared-block UT (Block_in, K passes with depth
embeddings, Block_out; delta vs contraction residuals), RLMA linears (a random base regenerated
per pass, never stored; alpha R at init), the warmdown fix, and sliding-window attention at eval
(also at seq 8192 on the CPU kernel path)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pgolf_jax import config as C
from pgolf_jax.model import attention
from pgolf_jax.model.flops import analytic_flops_per_token, layer_matmul_weights
from pgolf_jax.model.gpt import build_model, count_params
from pgolf_jax.model.layers import Pass, rotary_tables
from pgolf_jax.model.params import flat_specs
from pgolf_jax.model.rlma import RLMALinear, name_seed, random_base
from pgolf_jax.model.topology import BlockRunner
from pgolf_jax.model.ut import ParallelBlock, UTShared
from pgolf_jax.optim.schedule import warmdown_multiplier
from pgolf_jax.quant import artifact
from pgolf_jax.quant.export import quantize_mixed
from pgolf_jax.quant.interop import flatten_params
from conftest import perturbed  # noqa: E402

UT = C.ModelConfig().replace(vocab_size=96, num_layers=3, model_dim=32, num_heads=2, num_kv_heads=1, attention_impl='xla', topology='ut_shared', tied_embed_init_std=0.02, ut_shared=dict(iterations=3))




# ---------------------------------------------------------------------------------------------
# topology=ut_shared

@pytest.mark.parametrize("residual", ["delta", "contraction"])
def test_parallel_block_residual_rule(residual):
    cfg = UT.replace(ut_shared=dict(residual=residual))
    block = ParallelBlock(cfg, rngs=nnx.Rngs(params=0))
    assert np.all(np.asarray(block.attn_scale[...]) == 0.6) and not hasattr(block, "resid_mix")
    block.attn.proj.weight[...] = 0.1 * jax.random.normal(jax.random.key(1), (32, 32))
    block.mlp.proj.weight[...] = 0.1 * jax.random.normal(jax.random.key(2), (32, 64))
    x = jax.random.normal(jax.random.key(3), (2 * 8, 32))
    ctx = Pass(shape_BT=(2, 8), rope=rotary_tables(8, 16, 1e4, jnp.float32))
    n = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + jnp.finfo(jnp.float32).eps)
    b = nnx.jit(lambda blk, n: 0.6 * blk.attn(n, ctx) + 0.6 * blk.mlp(n))(block, n)
    rs = 1 / math.sqrt(3 + 2)
    want = x + rs * b if residual == "delta" else rs * (x + b)
    got = nnx.jit(lambda blk, x: blk(x, x, 0, ctx))(block, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_ut_shared_walks_in_shared_out_with_depth_embeddings():
    model = build_model(UT)
    assert model.num_slots() == 5 and UTShared.layers(UT) == (0, 1, 1, 1, 2)
    params = perturbed(model)
    assert params["depth_emb"].shape == (3, 32) and "skip_weights" not in params
    assert "resid_mix" not in params["blocks"] and params["blocks"]["attn_scale"].shape == (3, 32)
    x = jax.random.randint(jax.random.key(0), (2, 8), 0, 96)

    def manual(p):  # Block_in, (x + e_k -> shared) x K, Block_out, one block application at a time
        gpt = model.module(p)
        h = gpt.embed(x).reshape(-1, 32)
        run = BlockRunner(gpt, h, gpt._context(8, 2))
        h = run.raw(h, run.layer(0, 0), 0)
        for k in range(3):
            h = run.raw(h + p["depth_emb"][k], run.layer(1, k + 1), 1)
        return run.raw(h, run.layer(2, 4), 2)

    def hidden(p, scan):
        m = build_model(dataclasses.replace(UT, scan_layers=scan))
        gpt = m.module(p)
        h = gpt.embed(x).reshape(-1, 32)
        return UTShared.run(gpt, h, h, gpt._context(8, 2), gpt.layers)[0]

    want = jax.jit(manual)(params)
    for scan in (True, False):
        np.testing.assert_allclose(np.asarray(jax.jit(lambda p: hidden(p, scan))(params)), np.asarray(want),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(C.ConfigError, match="set model.num_layers=3"):
        C.Config(model=dataclasses.replace(UT, num_layers=4))


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
    obj, _ = quantize_mixed(flatten_params(params), C.QuantConfig(scheme="rtn"), rules=specs)
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


# ---------------------------------------------------------------------------------------------
# the warmdown fix

def test_capped_run_that_stops_on_iterations_ends_at_the_floor():
    t = C.TrainConfig(iterations=100, warmdown_iters=20, max_wallclock_seconds=600.0, min_lr=0.1)
    step_ms = 10.0  # the cap (600 s) is far away: the iteration limit binds
    muls = [warmdown_multiplier(s, s * step_ms, t) for s in range(100)]
    assert muls[79] == 1.0 and muls[90] == pytest.approx(0.5) and muls[-1] == pytest.approx(0.1)
    # The wall-clock branch alone (the reference's rule) never decays this run.
    assert warmdown_multiplier(99, 99 * step_ms, dataclasses.replace(t, iterations=10**9, min_lr=0.0)) == 1.0
    # When the cap binds first both branches agree: the reference's schedule is unchanged.
    ref = dataclasses.replace(t, iterations=20_000, warmdown_iters=1200, min_lr=0.0)
    assert warmdown_multiplier(12874, 560_000.0, ref) == pytest.approx(40_000 / (1200 * 560_000 / 12874), rel=1e-9)


# ---------------------------------------------------------------------------------------------
# sliding-window attention

def masked_reference(q, k, v, window):
    T = q.shape[1]
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    mask = (j <= i) & (j > i - window)
    G, H = k.shape[2], q.shape[2]
    kq, vq = (np.repeat(a, H // G, axis=2) for a in (k, v))
    logits = np.einsum("bthk,bshk->bhts", q, kq) / math.sqrt(q.shape[-1])
    logits = np.where(mask, logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bhts,bshk->bthk", p / p.sum(-1, keepdims=True), vq)


def test_windowed_attention_is_the_sliding_causal_mask():
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 300, h, 8)).astype(np.float32) for h in (4, 2, 2))
    fn = jax.jit(attention.causal_attention, static_argnames=("impl", "window"))
    for window in (1, 7, 200, 300):  # one block, a halo of one and of two blocks, and the full causal square
        got = fn(*map(jnp.asarray, (q, k, v)), impl="xla", window=window)
        np.testing.assert_allclose(np.asarray(got), masked_reference(q, k, v, window), rtol=2e-4, atol=2e-5)


def test_train_and_windowed_eval_at_seq_8192_on_the_cpu_kernel_path():
    """One layer, tiny width: a training gradient through the native kernel at T = 8192, and the
    512-window eval, whose logits at t depend on tokens t - 511 .. t only (one layer)."""
    cfg = C.ModelConfig(vocab_size=96, num_layers=1, model_dim=16, num_heads=2, num_kv_heads=1, topology="plain",
                        mlp_mult=1.0)
    model, windowed = build_model(cfg), build_model(dataclasses.replace(cfg, attention_window=512))
    params = perturbed(model)
    x = jax.random.randint(jax.random.key(0), (1, 8192), 0, 96)
    loss, g = jax.jit(jax.value_and_grad(model.loss))(params, x, x)
    assert np.isfinite(float(loss)) and all(np.all(np.isfinite(a)) for a in jax.tree.leaves(g))
    logits = np.asarray(jax.jit(windowed.logits)(params, x))[0]
    short = jax.jit(model.logits)
    for t in (600, 8191):
        ref = np.asarray(short(params, x[:, t - 511:t + 1]))[0, -1]
        np.testing.assert_allclose(logits[t], ref, rtol=1e-4, atol=1e-4)
    full = np.asarray(jax.jit(model.logits)(params, x))[0]
    assert not np.allclose(full[8191], logits[8191], atol=1e-4)  # the window really cuts context
