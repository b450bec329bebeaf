"""Seam: the input extras and activations: pause tokens, smear gates, bigram hash, GEGLU and leaky ReLU^2."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pgolf_jax import config as C
from pgolf_jax.data.tokenizer import ByteLuts
from pgolf_jax.evaluation.evaluate import Evaluator
from pgolf_jax.model import pause
from pgolf_jax.model.embeddings import BigramHash, SmearGateV1, SmearGateV2, bigram_hash
from pgolf_jax.model.gpt import MLP, build_model
from pgolf_jax.model.layers import leaky_relu2
from conftest import perturbed  # noqa: E402

TINY = C.ModelConfig(vocab_size=96, num_layers=3, model_dim=64, num_heads=4, num_kv_heads=2, attention_impl="xla")
STACK = C.ModelConfig(vocab_size=96, num_layers=5, model_dim=64, num_heads=4, num_kv_heads=2, mlp_mult=4.0,
                      activation="leaky_relu2", rope_dims=8, qk_gain_init=5.25, ln_scale=True, xsa_last_n=5,
                      skip_gates_enabled=True, num_loops=2, loop_start=2, loop_end=3, enable_looping_at=0.35,
                      parallel_residual_start=3, ortho_init=True, attention_impl="xla")


def ids(B=2, T=32, seed=0, vocab=96):
    return jax.random.randint(jax.random.key(seed), (B, T), 0, vocab)


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
    assert jax.eval_shape(lambda p, x: model.module(p).embed(x), params, ids()).shape == (2, 32 + 4 * 3, 64)
    assert jax.eval_shape(model.logits, params, ids()).shape == (2, 32, 96)  # real positions only
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
# smear gates, bigram hash


def test_smear_gates():
    x = jax.random.normal(jax.random.key(7), (2, 5, 16))
    v1 = SmearGateV1(16)
    out = v1(x)  # gate 0 -> sigmoid 0.5
    np.testing.assert_allclose(out[:, 0], 0.5 * x[:, 0], rtol=1e-6)
    np.testing.assert_allclose(out[:, 1:], 0.5 * x[:, 1:] + 0.5 * x[:, :-1], rtol=1e-6)
    ids = jnp.asarray([[5, 1, 7, 8, 1], [1, 3, 4, 5, 6]])
    v2 = SmearGateV2(bos_fix=True)
    np.testing.assert_array_equal(v2(x, ids), x)  # identity at init
    v2.smear_lambda[...] = jnp.ones((1,))
    out = v2(x, ids)
    bos = np.asarray(ids == 1)
    np.testing.assert_array_equal(np.asarray(out)[bos], np.asarray(x)[bos])  # never smear into a BOS
    np.testing.assert_allclose(out[0, 2], x[0, 2] + 0.5 * x[0, 1], rtol=1e-6)
    v2.bos_fix = False
    assert not np.allclose(v2(x, ids)[0, 1], x[0, 1])


def test_bigram_hash():
    ids = np.asarray([[3, 700, 12, 12]])
    got = np.asarray(bigram_hash(jnp.asarray(ids), 2048))
    want = [2047] + [((36313 * ids[0, i]) ^ (27191 * ids[0, i - 1])) % 2047 for i in range(1, 4)]
    np.testing.assert_array_equal(got[0], want)
    cfg = dataclasses.replace(STACK, bigram_vocab_size=2048, bigram_dim=32)
    bh = BigramHash(cfg, jnp.float32, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(bh(jnp.asarray(ids), jnp.float32), 0.0)  # zero table: no effect at init
    p = build_model(cfg).init(jax.random.key(0))
    assert p["bigram"]["embed"]["weight"].shape == (2048, 32) and p["bigram"]["scale"] == pytest.approx(0.05)


@pytest.mark.parametrize("extra", [{"smear_gate": "v1"}, {"smear_gate": "v2"}, {"bigram_vocab_size": 512}])
def test_embedding_extras_train(extra):
    from pgolf_jax.optim.optimizers import labels_from_specs
    cfg = dataclasses.replace(STACK, **extra)
    model = build_model(cfg)
    params = perturbed(model)
    ids = jax.random.randint(jax.random.key(8), (2, 16), 0, cfg.vocab_size)
    grads = jax.jit(jax.grad(lambda p: model.loss(p, ids, ids)))(params)
    extra_params = {k: v for k, v in grads.items() if k in ("smear", "bigram")}
    assert extra_params and all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(extra_params))
    labels = labels_from_specs(model.param_specs())
    if "bigram" in labels:
        assert labels["bigram"] == {"embed": {"weight": "embed"}, "proj": {"weight": "matrix"}, "scale": "scalar"}
    else:
        assert set(jax.tree.leaves(labels["smear"])) == {"scalar"}


# ---------------------------------------------------------------------------------------------
# activations


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


def test_leaky_relu_squared():
    x = jnp.asarray([-2.0, -0.5, 0.0, 1.5])
    np.testing.assert_allclose(leaky_relu2(x), [1.0, 0.0625, 0.0, 2.25])
