"""Seam: the block topologies: U-Net (the record schedule), plain, ACT, DenseFormer and ut_shared."""

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pgolf_jax import config as C
from pgolf_jax.model.act import ACT
from pgolf_jax.model.flops import analytic_flops_per_token
from pgolf_jax.model.gpt import build_model
from pgolf_jax.model.layers import Pass, rms_norm, rotary_tables
from pgolf_jax.model.topology import BlockRunner, num_skips, repeat_in_place_layers, unet_layers
from pgolf_jax.model.ut import ParallelBlock, UTShared
from pgolf_jax.train.objectives import CrossEntropy
from conftest import perturbed  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TINY = C.ModelConfig(vocab_size=96, num_layers=3, model_dim=64, num_heads=4, num_kv_heads=2, attention_impl="xla")
STACK = C.ModelConfig(vocab_size=96, num_layers=5, model_dim=64, num_heads=4, num_kv_heads=2, mlp_mult=4.0,
                      activation="leaky_relu2", rope_dims=8, qk_gain_init=5.25, ln_scale=True, xsa_last_n=5,
                      skip_gates_enabled=True, num_loops=2, loop_start=2, loop_end=3, enable_looping_at=0.35,
                      parallel_residual_start=3, ortho_init=True, attention_impl="xla")

UT = C.ModelConfig().replace(vocab_size=96, num_layers=3, model_dim=32, num_heads=2, num_kv_heads=1,
                             attention_impl='xla', topology='ut_shared', tied_embed_init_std=0.02,
                             ut_shared=dict(iterations=3))


def ids(B=2, T=32, seed=0, vocab=96):
    return jax.random.randint(jax.random.key(seed), (B, T), 0, vocab)


# ---------------------------------------------------------------------------------------------
# topology=unet: the record schedule, looped scan == unrolled, the block rules


def test_record_schedule_is_17_virtual_layers():
    cfg = C.load(CONFIGS / "record_1809.py").model
    layers = unet_layers(cfg)
    assert layers == (0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10)
    assert layers[:8] == (0, 1, 2, 3, 4, 5, 3, 4) and layers[8:] == (5, 3, 4, 5, 6, 7, 8, 9, 10)
    assert num_skips(layers) == 8
    in_place = dataclasses.replace(cfg, num_layers=9, loop_start=3, loop_end=4, num_loops=1)
    assert repeat_in_place_layers(in_place) == (0, 1, 2, 3, 3, 4, 4, 5, 6, 7, 8)
    assert build_model(cfg).has_two_schedules


def reference_forward(model, params, ids, layers):
    """An explicit U-Net walk written from the spec (not model._run_unet): blocks called one by
    one in virtual order, encoder outputs pushed, popped in reverse with lerp-gated skips."""
    gpt = model.module(params)
    B, T = ids.shape
    cfg = model.cfg
    x = gpt.embed(ids).reshape(B * T, cfg.model_dim)
    x0 = x
    ctx = Pass(shape_BT=(B, T), rope=rotary_tables(T, cfg.rope_dims, cfg.rope_base, jnp.float32))
    graphdef, stacked = nnx.split(gpt.blocks)
    n_enc = len(layers) // 2
    enc, dec = layers[:n_enc], layers[n_enc:]
    w, g = params["skip_weights"], jax.nn.sigmoid(params["skip_gates"])
    skips = []
    for i in enc:
        x = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], stacked))(x, x0, i, ctx)
        skips.append(x)
    for k, i in enumerate(dec):
        if skips:
            s = w[k] * skips.pop()
            x = s + g[k] * (x - s)  # torch.lerp(s, x, g)
        x = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], stacked))(x, x0, i, ctx)
    return rms_norm(x).reshape(B, T, cfg.model_dim)


@pytest.mark.parametrize("looped", [True, False])
def test_looped_scan_equals_explicit_unrolled_reference(looped):
    model = build_model(STACK)
    params = perturbed(model)
    ids = jax.random.randint(jax.random.key(2), (2, 24), 0, STACK.vocab_size)
    layers = unet_layers(STACK) if looped else tuple(range(STACK.num_layers))
    want = jax.jit(lambda p, i: reference_forward(model, p, i, layers))(params, ids)
    for scan in (True, False):
        m = build_model(dataclasses.replace(STACK, scan_layers=scan))
        got = jax.jit(lambda p, i: m.hidden(p, i, looped))(params, ids)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    # Gradients through the looped scan reach every physical layer.
    grads = jax.jit(jax.grad(lambda p: model.loss(p, ids, ids, looped)))(params)
    assert np.all(np.abs(np.asarray(grads["blocks"]["attn"]["c_q"]["weight"])).sum(axis=(1, 2)) > 0)


def block_reference(block, x, x0, layer, ctx, cfg):
    """The record block (spec 2.2 item 5) with XSA and parallel residual rules by physical index."""
    c = 1.0 / np.sqrt(layer + 1)
    mix = block.resid_mix[...]
    x_in = mix[0] * x + mix[1] * x0
    xsa = 1.0 if layer >= cfg.num_layers - cfg.xsa_last_n else 0.0
    a = block.attn(rms_norm(x_in) * c, ctx, xsa=xsa)
    if layer >= cfg.parallel_residual_start:
        return x_in + block.attn_scale[...] * a + block.mlp_scale[...] * block.mlp(rms_norm(x_in) * c)
    h = x_in + block.attn_scale[...] * a
    return h + block.mlp_scale[...] * block.mlp(rms_norm(h) * c)


def test_block_rules_follow_the_physical_layer():
    cfg = dataclasses.replace(STACK, xsa_last_n=2, parallel_residual_start=3)
    model = build_model(cfg)
    params = perturbed(model)
    gpt = model.module(params)
    graphdef, stacked = nnx.split(gpt.blocks)
    B, T = 2, 16
    x = jax.random.normal(jax.random.key(3), (B * T, cfg.model_dim))
    x0 = jax.random.normal(jax.random.key(4), (B * T, cfg.model_dim))
    ctx = Pass(shape_BT=(B, T), rope=rotary_tables(T, cfg.rope_dims, cfg.rope_base, jnp.float32))
    for layer in range(cfg.num_layers):
        block = nnx.merge(graphdef, jax.tree.map(lambda a: a[layer], stacked))
        want = block_reference(block, x, x0, layer, ctx, cfg)
        np.testing.assert_allclose(block(x, x0, layer, ctx), want, rtol=1e-5, atol=1e-5)
        traced = jax.jit(lambda l: block(x, x0, l, ctx))(jnp.int32(layer))  # as under scan
        np.testing.assert_allclose(traced, want, rtol=1e-5, atol=1e-5)


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
# topology=denseformer


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
