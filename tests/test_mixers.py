"""Seam: the sequence mixers (model.mixers): the S4D-Lin mixer in its own stacked segment."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgolf_jax import config as C
from pgolf_jax.model.flops import analytic_flops_per_token, layer_matmul_weights
from pgolf_jax.model.gpt import build_model, count_params
from pgolf_jax.model.params import flat_specs
from pgolf_jax.model.ssm import RATE_MAX, RATE_MIN, causal_conv, decay_kernel
from pgolf_jax.quant.interop import flatten_params
from conftest import perturbed  # noqa: E402

TINY = C.ModelConfig(vocab_size=96, num_layers=3, model_dim=64, num_heads=4, num_kv_heads=2, attention_impl="xla")


# ---------------------------------------------------------------------------------------------
# mixer=s4d_lin


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
