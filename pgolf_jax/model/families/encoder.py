"""The small causal transformer encoder of #1589's Hopfield and communicating-agents models
(spec 4.9): pre-norm blocks x + Attn(norm x), x + MLP(norm x); multi-head (or grouped-query)
attention with RoPE (optionally RMS-normed q and k: the Hopfield encoder has it, the agents'
does not), GELU MLP of width 2D, torch-default inits, no q gain / residual mix / branch scales.
Stacked like the GPT's blocks (one leading layer axis, under the family's `blocks`) and run by
lax.scan. q, k and v are separate projections (the agents' PR fuses them into one D -> 3D matrix:
the same weights, split)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.model.affine import torch_uniform
from pgolf_jax.model.attention import causal_attention
from pgolf_jax.model.layers import apply_rotary, rms_norm, rotary_tables
from pgolf_jax.model.params import param


def _linear(key, in_f: int, out_f: int, site: str):
    return param(torch_uniform(key, (out_f, in_f), in_f), group="adamw", quant=site)


class EncoderBlock(nnx.Module):
    def __init__(self, D: int, H: int, G: int, qk_norm: bool, impl: str, *, rngs: nnx.Rngs):
        kv = G * (D // H)
        self.c_q = _linear(rngs.params(), D, D, "attn")
        self.c_k = _linear(rngs.params(), D, kv, "attn")
        self.c_v = _linear(rngs.params(), D, kv, "attn")
        self.proj = _linear(rngs.params(), D, D, "attn")
        self.fc = _linear(rngs.params(), D, 2 * D, "mlp")
        self.fc_out = _linear(rngs.params(), 2 * D, D, "mlp")
        self.H, self.G, self.qk_norm, self.impl = H, G, qk_norm, impl

    def __call__(self, x_BTD, rope):
        B, T, D = x_BTD.shape
        K = D // self.H
        n = rms_norm(x_BTD)
        mm = lambda a, w: jnp.einsum("...i,oi->...o", a, w[...].astype(a.dtype))  # noqa: E731
        q, k = mm(n, self.c_q).reshape(B, T, self.H, K), mm(n, self.c_k).reshape(B, T, self.G, K)
        if self.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        y = causal_attention(q, k, mm(n, self.c_v).reshape(B, T, self.G, K), self.impl)
        x_BTD = x_BTD + mm(y.reshape(B, T, D), self.proj)
        return x_BTD + mm(jax.nn.gelu(mm(rms_norm(x_BTD), self.fc), approximate=False), self.fc_out)


def make_blocks(cfg, qk_norm: bool, rngs: nnx.Rngs):
    """model.num_layers encoder blocks of model.model_dim, stacked on a leading axis."""
    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
        return EncoderBlock(cfg.model_dim, cfg.num_heads, cfg.num_kv_heads, qk_norm, cfg.attention_impl, rngs=rngs)

    return make(rngs)


def encode(blocks, x_BTD, rope_base: float):
    """Run the stacked blocks over x (B, T, D) by lax.scan."""
    graphdef, state = nnx.split(blocks)
    K = x_BTD.shape[-1] // blocks.H
    rope = rotary_tables(x_BTD.shape[1], K, rope_base, x_BTD.dtype)
    return jax.lax.scan(lambda x, s: (nnx.merge(graphdef, s)(x, rope), None), x_BTD, state)[0]


def encoder_matmul_params(cfg) -> int:
    """Weights a token multiplies in one encoder block."""
    D = cfg.model_dim
    return D * D * 2 + 2 * D * cfg.num_kv_heads * (D // cfg.num_heads) + 4 * D * D
