"""S4D-Lin, the token mixer of #1227's SSM hybrid (spec 5.3, PR #1013): a gated causal depthwise
convolution with an exponentially decaying kernel, in place of attention in the first layers
(model.mixers="s4d_lin*N").

    [g | u] = x W_in (D -> 2 I),   y = sigmoid(g) * conv(u, K),   out = y W_out (I -> D)
    K[c, t] = C_c exp(-r_c t),  t < ssm_kernel,  rates r log-spaced over 0.05 .. 2.0

The block around it is the GPT's (RMSNorm first, resid_mix, branch scales, then the MLP).
The learned kernel parameters are C and log r per channel, so K follows the formula at every
step (PR #1013's table counts the materialized I x 64 kernel). The convolution runs in blocks of
ssm_kernel positions: two (L x L) Toeplitz products per block, its own and the previous block,
so a long sequence costs T L I multiply-adds and no FFT (the kernel is short).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pgolf_jax.model.gpt import Block
from pgolf_jax.model.layers import block_linear, linear_init
from pgolf_jax.model.params import param

RATE_MIN, RATE_MAX = 0.05, 2.0


def decay_kernel(C_I, log_rate_I, length: int):
    """K (I, length): C_c exp(-r_c t) for t = 0 .. length - 1."""
    t = jnp.arange(length, dtype=jnp.float32)
    return C_I[:, None] * jnp.exp(-jnp.exp(log_rate_I)[:, None] * t[None, :])


def causal_conv(u_BTC, k_CL):
    """y[t, c] = sum_{s < L} k[c, s] u[t - s, c] (zero before the start), blocked: the sequence is
    cut in blocks of L and each output block is T0 u_n + T1 u_{n-1} with the lower (lags 0..L-1)
    and strictly upper (lags L + i - j) Toeplitz matrices of the kernel."""
    B, T, C = u_BTC.shape
    L = k_CL.shape[1]
    nb = -(-T // L)
    u = jnp.pad(u_BTC, ((0, 0), (0, nb * L - T), (0, 0))).reshape(B, nb, L, C)
    prev = jnp.concatenate([jnp.zeros_like(u[:, :1]), u[:, :-1]], axis=1)
    lag = np.arange(L)[:, None] - np.arange(L)[None, :]  # i - j
    k = k_CL.astype(u_BTC.dtype)
    t0_CLL = jnp.where(lag >= 0, k[:, np.clip(lag, 0, L - 1)], 0)
    t1_CLL = jnp.where(lag < 0, k[:, np.clip(lag + L, 0, L - 1)], 0)
    y = jnp.einsum("bnjc,cij->bnic", u, t0_CLL) + jnp.einsum("bnjc,cij->bnic", prev, t1_CLL)
    return y.reshape(B, nb * L, C)[:, :T]


class S4DLin(nnx.Module):
    """The mixer: in_proj and out_proj are block linears (model.linear, quant group attn: they sit
    where attention's projections do), C and the log rates are scalars on the Adam group. C starts
    at 1 / sum_t exp(-r t), so every channel begins as an exponential moving average (the spec
    leaves C's init open; this keeps the conv output at the input's scale)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        D = cfg.model_dim
        self.inner, self.kernel = cfg.s4d_lin.inner or D, cfg.s4d_lin.kernel
        inner = self.inner
        self.in_proj = block_linear(cfg, D, 2 * inner, site="attn", init=linear_init(cfg, D, 2 * inner), rngs=rngs)
        self.out_proj = block_linear(cfg, inner, D, site="attn", init="zeros", rngs=rngs)
        rates = np.geomspace(RATE_MIN, RATE_MAX, inner)
        norm = np.exp(-rates[:, None] * np.arange(self.kernel)[None, :]).sum(1)
        self.log_rate = param(jnp.asarray(np.log(rates), jnp.float32), group="scalar", quant="control")
        self.C = param(jnp.asarray(1.0 / norm, jnp.float32), group="scalar", quant="control")
        # What a token multiplies in the conv: 2 L taps per channel (the two Toeplitz blocks).
        self.matmul_extra = 2 * self.kernel * inner

    def kernel_IL(self, T: int):
        return decay_kernel(self.C[...], self.log_rate[...], min(self.kernel, T))

    def __call__(self, x_ND, ctx, xsa=0.0):
        del xsa  # attention-only (validation keeps XSA layers on attention)
        B, T = ctx.shape_BT
        gu_BTI = self.in_proj(x_ND, ctx).reshape(B, T, 2 * self.inner)
        g, u = gu_BTI[..., :self.inner], gu_BTI[..., self.inner:]
        y = jax.nn.sigmoid(g) * causal_conv(u, self.kernel_IL(T))
        return self.out_proj(y.reshape(B * T, self.inner), ctx)


class SSMBlock(Block):
    """The GPT block with S4D-Lin as its mixer (registry.MIXERS["s4d_lin"])."""

    def make_mixer(self, cfg, rngs: nnx.Rngs) -> None:
        self.ssm = S4DLin(cfg, rngs=rngs)

    def mix(self, n_ND, ctx, xsa):
        return self.ssm(n_ND, ctx)

