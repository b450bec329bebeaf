"""Seam: the model families (model.family): MPS, Hopfield, agents and SURGE-M v2."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgolf_jax import config as C
from pgolf_jax.model.gpt import build_model
from conftest import perturbed  # noqa: E402

TINY = C.ModelConfig(vocab_size=96, num_layers=3, model_dim=64, num_heads=4, num_kv_heads=2, attention_impl="xla")


def ids(B=2, T=32, seed=0, vocab=96):
    return jax.random.randint(jax.random.key(seed), (B, T), 0, vocab)


def assert_causal(logits_fn, params, vocab=96, positions=(0, 9, 20)):
    x = np.asarray(ids(vocab=vocab))
    base = np.asarray(logits_fn(params, x))
    for t in positions:
        y = x.copy()
        y[:, t + 1:] = (y[:, t + 1:] * 7 + 3) % vocab
        other = np.asarray(logits_fn(params, y))
        np.testing.assert_allclose(other[:, :t + 1], base[:, :t + 1], rtol=1e-4, atol=1e-4)
        assert not np.allclose(other[:, t + 1:], base[:, t + 1:])


# ---------------------------------------------------------------------------------------------
# family=mps, family=hopfield, family=agents


MPS = TINY.replace(family='mps', mps=dict(bond_dim=6, pos_dim=4, max_len=32))


def test_mps_is_the_left_to_right_bond_contraction():
    model = build_model(MPS)
    params = perturbed(model)
    x = np.asarray(ids(B=1, T=12))
    logits = np.asarray(jax.jit(model.logits)(params, x))[0]
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    A = p["core"].reshape(96, 6, 6)
    u = np.asarray(jax.nn.gelu(p["pos_embed"][:12] @ p["mod_in"].T + p["mod_in_b"], approximate=False))
    ml, mr = np.split(1 + 0.5 * np.tanh(u @ p["mod_out"].T + p["mod_out_b"]), 2, -1)
    h = p["h0"]
    for t in range(12):  # read x_t, then score x_{t+1}
        h = (h * ml[t]) @ A[x[0, t]] * mr[t]
        h = (h - h.mean()) / np.sqrt(h.var() + 1e-5) * p["norm_w"] + p["norm_b"]
        ref = np.einsum("i,vij,j->v", h * ml[t], A, mr[t]) + p["out_bias"]
        np.testing.assert_allclose(logits[t], ref, rtol=2e-4, atol=2e-4)
    assert_causal(jax.jit(model.logits), params)
    assert {sp.group for sp in jax.tree.leaves(model.param_specs())} == {"adamw"}


def test_hopfield_logits_are_the_negative_energy_and_all_on_adamw():
    from pgolf_jax.model.families.encoder import encode
    from pgolf_jax.model.layers import rms_norm

    cfg = dataclasses.replace(TINY, family="hopfield", num_layers=2, num_kv_heads=4, logit_softcap=1e6)
    model = build_model(cfg)
    params = perturbed(model)
    x = ids()

    def by_hand(p):
        m = model.module(p)
        h = rms_norm(encode(m.blocks, rms_norm(p["tok_emb"][x]), cfg.rope_base))
        h0 = h
        for _ in range(3):
            h = h - p["alpha"] * (jax.nn.gelu(jnp.concatenate([h, h0], -1) @ p["refine_in"].T, approximate=False)
                                  @ p["refine_out"].T)
        E = p["tok_emb"]
        return p["gamma"] * (h @ p["W"] @ E.T - jnp.sum(E * E, -1))

    np.testing.assert_allclose(np.asarray(jax.jit(model.logits)(params, x)), np.asarray(jax.jit(by_hand)(params)),
                               rtol=1e-4, atol=1e-4)
    assert {sp.group for sp in jax.tree.leaves(model.param_specs())} == {"adamw"}
    grads = jax.jit(jax.grad(lambda p: jnp.mean(model.forward(p, x, True, None)[0] ** 2)))(params)
    assert float(jnp.abs(grads["alpha"])) > 0 and float(jnp.abs(grads["refine_out"]).sum()) > 0
    assert_causal(jax.jit(model.logits), params)


def test_agents_train_on_every_strided_position_and_evaluate_on_all():
    from pgolf_jax.train.objectives import CrossEntropy, weighted_mean
    from pgolf_jax.model.gpt import token_nll

    cfg = TINY.replace(family='agents', num_layers=2, agents=dict(local_ctx=4, loss_stride=8, decoder_hidden=32))
    model = build_model(cfg)
    params = perturbed(model)
    x, y = ids(), ids(seed=1)
    logits, aux, w = jax.jit(lambda p: model.forward(p, x, True, None))(params)
    assert np.flatnonzero(np.asarray(w[0])).tolist() == [4, 12, 20, 28] and aux == {}
    nll = np.asarray(token_nll(logits, y))
    loss, metrics = jax.jit(lambda p: CrossEntropy(None)(model, p, x, y, True, None))(params)
    assert float(loss) == pytest.approx(float(nll[:, [4, 12, 20, 28]].mean()), rel=1e-5)
    assert float(jax.jit(model.loss)(params, x, y)) == pytest.approx(float(nll.mean()), rel=1e-5)  # eval: all
    assert float(weighted_mean(jnp.asarray(nll), None)) == pytest.approx(float(nll.mean()), rel=1e-6)
    assert_causal(jax.jit(model.logits), params)


# ---------------------------------------------------------------------------------------------
# family=surge_m (SURGE-M v2)


SURGE = TINY.replace(family='surge_m', surge_m=dict(layer=1, chunk=8, d_err=8, d_state=8))


def test_wy_correction_equals_the_explicit_per_chunk_matrices():
    from pgolf_jax.model.families.surge import wy_correction

    rng = np.random.default_rng(0)
    B, C, K, D = 2, 5, 3, 4
    z = rng.normal(size=(B, C * K, D))
    u, v = rng.normal(size=(B, C, D)), rng.normal(size=(B, C, D))
    g = rng.uniform(0.1, 0.9, size=(B, C, 1))
    for a in (np.ones((B, C, 1)), rng.uniform(0.5, 1.0, size=(B, C, 1))):
        corr = np.asarray(wy_correction(*(jnp.asarray(t, jnp.float32) for t in (z, u, v, g, a)), K))
        for b in range(B):
            M = np.eye(D)
            product = np.eye(D)
            for c in range(C):
                zc = z[b, c * K:(c + 1) * K]
                np.testing.assert_allclose(corr[b, c * K:(c + 1) * K], zc @ (M - np.eye(D)).T, rtol=1e-4, atol=1e-4)
                step = np.eye(D) + g[b, c] * np.outer(u[b, c], v[b, c])
                if np.all(a == 1):  # no forgetting: M_c is the plain product of the chunks' matrices
                    np.testing.assert_allclose(M, product, rtol=1e-6, atol=1e-8)
                    product = product @ step
                M = np.eye(D) + a[b, c] ** 2 * (M - np.eye(D)) + M @ (step - np.eye(D))


def test_min_gru_associative_scan_is_the_sequential_recurrence():
    from pgolf_jax.model.affine import Affine
    from pgolf_jax.model.families.surge import min_gru

    rng = np.random.default_rng(1)
    gru = Affine(rng.normal(size=(6, 5)), rng.normal(size=(6,)))
    x = rng.normal(size=(2, 9, 5)).astype(np.float32)
    got = np.asarray(min_gru(jnp.asarray(x), gru))
    zh = 1 / (1 + np.exp(-(x @ np.asarray(gru.weight[...]).T + np.asarray(gru.bias[...]))))
    z, ht = zh[..., :3], zh[..., 3:]
    s = np.zeros((2, 3))
    for t in range(9):
        s = (1 - z[:, t]) * s + z[:, t] * ht[:, t]
        np.testing.assert_allclose(got[:, t], s, rtol=1e-5, atol=1e-6)


def test_surge_uv_zero_init_is_the_symmetry_trap():
    x = ids()

    def grads(std):
        model = build_model(SURGE.replace(surge_m=dict(uv_init_std=std)))
        params = perturbed(model, scale=0.05)
        meta = params["meta"]
        for head in ("u_head", "v_head"):
            meta[head] = jax.tree.map(lambda a: a * std, meta[head]) if std == 0 else meta[head]
        return jax.jit(jax.grad(lambda p: model.loss(p, x, x)))(params)["meta"]

    zero = grads(0.0)
    assert all(float(jnp.abs(a).max()) == 0.0 for h in ("u_head", "v_head") for a in jax.tree.leaves(zero[h]))
    live = grads(0.01)
    assert all(float(jnp.abs(a).max()) > 0.0 for h in ("u_head", "v_head") for a in jax.tree.leaves(live[h]))
    assert float(jnp.abs(zero["gru"]["weight"]).max()) == 0.0  # nothing reaches the controller either


def test_surge_single_pass_with_no_update_is_the_gpt_and_both_modes_are_causal():
    single = SURGE.replace(surge_m=dict(mode='single'))
    model, gpt = build_model(single), build_model(TINY)
    params = perturbed(model)
    params["meta"]["u_head"] = jax.tree.map(jnp.zeros_like, params["meta"]["u_head"])
    x = ids()
    base = {k: v for k, v in params.items() if k != "meta"}
    np.testing.assert_allclose(np.asarray(jax.jit(model.logits)(params, x)), np.asarray(jax.jit(gpt.logits)(base, x)),
                               rtol=1e-5, atol=1e-5)
    for cfg in (single, SURGE):
        m = build_model(cfg)
        assert_causal(jax.jit(m.logits), perturbed(m))
    assert {sp.group for sp in jax.tree.leaves(model.param_specs()["meta"])} == {"adamw"}
