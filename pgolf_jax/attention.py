"""Causal attention: one core function with interchangeable implementations, and the
attention-module registry (GQA now; MLA / XSA / gated variants plug in as entries)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.layers import LINEAR, apply_rotary, rms_norm

# Query chunk for the "chunked" CPU path: each chunk attends only to the keys up to its end,
# so the masked upper triangle is never computed (about (n+1)/2n of the full square's FLOPs).
CHUNK = 256


def _xla_attention(q_BTHK, k_BTGK, v_BTGK, scale):
    """Reference path: full T x T logits with a causal mask, softmax in fp32; the test oracle."""
    B, T, H, K = q_BTHK.shape
    G = k_BTGK.shape[2]
    q_BTGRK = q_BTHK.reshape(B, T, G, H // G, K)
    logits_BGRTS = jnp.einsum("btgrk,bsgk->bgrts", q_BTGRK, k_BTGK).astype(jnp.float32) * scale
    mask_TS = jnp.tril(jnp.ones((T, T), dtype=bool))
    logits_BGRTS = jnp.where(mask_TS, logits_BGRTS, -jnp.inf)
    probs = jax.nn.softmax(logits_BGRTS, axis=-1).astype(v_BTGK.dtype)
    out_BTGRK = jnp.einsum("bgrts,bsgk->btgrk", probs, v_BTGK)
    return out_BTGRK.reshape(B, T, H, K)


def _chunked_attention(q_BTHK, k_BTGK, v_BTGK, scale):
    """Exact causal attention by query chunks; each chunk's softmax sees all of its keys at once."""
    T = q_BTHK.shape[1]
    if T <= CHUNK:
        return _xla_attention(q_BTHK, k_BTGK, v_BTGK, scale)
    B, _, H, K = q_BTHK.shape
    G = k_BTGK.shape[2]
    outs = []
    for start in range(0, T, CHUNK):
        stop = min(start + CHUNK, T)
        q_BCGRK = q_BTHK[:, start:stop].reshape(B, stop - start, G, H // G, K)
        k_BSGK, v_BSGK = k_BTGK[:, :stop], v_BTGK[:, :stop]
        logits = jnp.einsum("bcgrk,bsgk->bgrcs", q_BCGRK, k_BSGK).astype(jnp.float32) * scale
        mask_CS = jnp.arange(stop)[None, :] <= jnp.arange(start, stop)[:, None]
        logits = jnp.where(mask_CS, logits, -jnp.inf)
        probs = jax.nn.softmax(logits, axis=-1).astype(v_BTGK.dtype)
        outs.append(jnp.einsum("bgrcs,bsgk->bcgrk", probs, v_BSGK).reshape(B, stop - start, H, K))
    return jnp.concatenate(outs, axis=1)


def _cudnn_attention(q_BTHK, k_BTGK, v_BTGK, scale):
    """Flash attention through cuDNN (GPU, bf16/fp16); skips the masked half, handles GQA."""
    return jax.nn.dot_product_attention(q_BTHK, k_BTGK, v_BTGK, scale=scale, is_causal=True,
                                        implementation="cudnn")


ATTENTION_IMPLS = {"xla": _xla_attention, "chunked": _chunked_attention, "cudnn": _cudnn_attention}


def resolve_impl(impl: str, dtype) -> str:
    """'auto' = cuDNN flash attention on GPU in half precision, chunked XLA elsewhere."""
    if impl != "auto":
        return impl
    if jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return "chunked"


def causal_attention(q_BTHK, k_BTGK, v_BTGK, impl: str = "auto", scale: float | None = None):
    """softmax(q k^T * scale + causal mask) v with GQA (query head h reads kv head h // (H/G))."""
    scale = 1.0 / math.sqrt(q_BTHK.shape[-1]) if scale is None else scale
    return ATTENTION_IMPLS[resolve_impl(impl, q_BTHK.dtype)](q_BTHK, k_BTGK, v_BTGK, scale)


# ---------------------------------------------------------------------------------------------
# Attention modules. Each takes the normalized block input x_BTD and a context dict holding the
# rotary tables, and returns the pre-residual output (after the output projection).

class GQA(nnx.Module):
    """Grouped-query attention with QK RMSNorm, RoPE and a learned per-head query gain."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        D, H, G = cfg.model_dim, cfg.num_heads, cfg.num_kv_heads
        self.num_heads, self.num_kv_heads, self.head_dim = H, G, D // H
        self.impl = cfg.attention_impl
        linear = LINEAR[cfg.linear]
        self.c_q = linear(D, D, rngs=rngs)
        self.c_k = linear(D, G * self.head_dim, rngs=rngs)
        self.c_v = linear(D, G * self.head_dim, rngs=rngs)
        self.proj = linear(D, D, init="zeros", rngs=rngs)
        self.q_gain = nnx.Param(jnp.full((H,), cfg.qk_gain_init, jnp.float32))

    def __call__(self, x_BTD, ctx):
        B, T, _ = x_BTD.shape
        H, G, K = self.num_heads, self.num_kv_heads, self.head_dim
        q_BTHK = rms_norm(self.c_q(x_BTD).reshape(B, T, H, K))
        k_BTGK = rms_norm(self.c_k(x_BTD).reshape(B, T, G, K))
        v_BTGK = self.c_v(x_BTD).reshape(B, T, G, K)
        cos, sin = ctx["rope"]
        q_BTHK = apply_rotary(q_BTHK, cos, sin)
        k_BTGK = apply_rotary(k_BTGK, cos, sin)
        q_BTHK = q_BTHK * self.q_gain[...].astype(q_BTHK.dtype)[:, None]
        y_BTHK = causal_attention(q_BTHK, k_BTGK, v_BTGK, self.impl)
        return self.proj(y_BTHK.reshape(B, T, H * K))


ATTENTION = {"gqa": GQA}
