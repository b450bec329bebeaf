"""Seam: attention: MLA, the sliding-window mask, XSA, partial RoPE with NTK rescaling, q gain and init."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from pgolf_jax import config as C
from pgolf_jax.model import attention
from pgolf_jax.model.attention import exclusive_self_attention
from pgolf_jax.model.gpt import build_model
from pgolf_jax.model.layers import apply_rotary, rotary_tables
from conftest import perturbed  # noqa: E402

TINY = C.ModelConfig(vocab_size=96, num_layers=3, model_dim=64, num_heads=4, num_kv_heads=2, attention_impl="xla")
STACK = C.ModelConfig(vocab_size=96, num_layers=5, model_dim=64, num_heads=4, num_kv_heads=2, mlp_mult=4.0,
                      activation="leaky_relu2", rope_dims=8, qk_gain_init=5.25, ln_scale=True, xsa_last_n=5,
                      skip_gates_enabled=True, num_loops=2, loop_start=2, loop_end=3, enable_looping_at=0.35,
                      parallel_residual_start=3, ortho_init=True, attention_impl="xla")


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


# ---------------------------------------------------------------------------------------------
# XSA, partial RoPE / NTK, orthogonal init and q gain


def test_xsa_removes_the_own_value_component():
    key = jax.random.split(jax.random.key(5), 2)
    y = jax.random.normal(key[0], (2, 7, 4, 16))
    v = jax.random.normal(key[1], (2, 7, 2, 16))
    out = exclusive_self_attention(y, v)
    vn = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    for h in range(4):
        dots = jnp.sum(out[:, :, h] * vn[:, :, h // 2], axis=-1)
        np.testing.assert_allclose(dots, 0.0, atol=1e-5)
        # The orthogonal part is untouched.
        resid = y[:, :, h] - jnp.sum(y[:, :, h] * vn[:, :, h // 2], -1, keepdims=True) * vn[:, :, h // 2]
        np.testing.assert_allclose(out[:, :, h], resid, atol=1e-5)


def test_partial_rope_and_ntk_rescale():
    T, K, rd = 10, 32, 8
    x = jax.random.normal(jax.random.key(6), (1, T, 2, K))
    cos, sin = rotary_tables(T, rd, 10000.0, jnp.float32)
    out = apply_rotary(x, cos, sin)
    np.testing.assert_array_equal(out[..., rd:], x[..., rd:])  # dims past rope_dims pass through
    assert not np.allclose(out[..., :rd], x[..., :rd])
    # Beyond the training length the base becomes base * (T/train)^(rd/(rd-2)).
    cos2, _ = rotary_tables(T, rd, 10000.0, jnp.float32, train_seq_len=5)
    base = 10000.0 * 2.0 ** (rd / (rd - 2))
    inv = 1.0 / base ** (np.arange(0, rd, 2) / rd)
    np.testing.assert_allclose(cos2, np.cos(np.arange(T)[:, None] * inv[None]), rtol=1e-5, atol=1e-6)
    cos3, _ = rotary_tables(T, rd, 10000.0, jnp.float32, train_seq_len=T)
    np.testing.assert_array_equal(cos3, cos)  # not longer than training: unchanged


def test_orthogonal_init_and_qk_gain():
    params = jax.jit(build_model(STACK).init)(jax.random.key(0))
    fc = np.asarray(params["blocks"]["mlp"]["fc"]["weight"])  # (L, 256, 64): tall
    for w in fc:
        np.testing.assert_allclose(w.T @ w, np.eye(64), atol=1e-5)
    assert not np.allclose(fc[0], fc[1])
    q = np.asarray(params["blocks"]["attn"]["c_q"]["weight"][0])
    np.testing.assert_allclose(q @ q.T, np.eye(64), atol=1e-5)
    kv = np.asarray(params["blocks"]["attn"]["c_k"]["weight"][0])  # (32, 64): a dim < 64, torch default
    assert np.abs(kv).max() <= 1 / np.sqrt(64)
    assert not np.any(params["blocks"]["mlp"]["proj"]["weight"])
    np.testing.assert_array_equal(params["blocks"]["attn"]["q_gain"], 5.25)
    np.testing.assert_array_equal(params["skip_gates"], 0.0)
