"""Monarch matrices (#1227, spec 5.3; Dao et al. 2022) as a block-linear parameterization:
W = BD(L) P BD(R), two block-diagonal factors with b blocks around the perfect shuffle P.

With in = b p, out = b s and q = min(in, out) / b: R's block i maps input slice i (p) to q
features, P hands block c of L the c-th feature of every R block (the (q, b) transpose of the
b q intermediate features), L's block c maps those q features to output slice c (s). Weights
q (in + out) instead of in out: at out = 2 in that is 2b/3 x smaller (b = 12..16: 8-11x, the
spec's 8-12x). Both factors are stored as 2-D matrices of their stacked blocks, R (b q, p) and
L (b s, q), so per-row quantization and Muon read them as matrices; they are quantized however
small, and since each block of rows multiplies its own input slice, no single input Hessian
fits them: GPTQ rounds them to nearest (ParamSpec.hessian=False) and the export log says so.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.model.params import param


class MonarchLinear(nnx.Module):
    """model.linear=monarch / model.mlp_linear=monarch with model.monarch.blocks blocks.

    Init: R ~ U(+-1/sqrt(p)) and L ~ U(+-sqrt(3/q)), so W x has the variance of torch's default
    dense init U(+-1/sqrt(in)); a zero-init projection zeroes L only (R keeps a gradient path)."""

    def __init__(self, in_f: int, out_f: int, *, init: str, quant: str, cfg, rngs: nnx.Rngs):
        b = cfg.monarch.blocks
        self.blocks, self.p, self.s, self.q = b, in_f // b, out_f // b, min(in_f, out_f) // b
        k_r, k_l = jax.random.split(rngs.params())
        r = jax.random.uniform(k_r, (b * self.q, self.p), jnp.float32, -1.0, 1.0) / math.sqrt(self.p)
        bound = 0.0 if init == "zeros" else math.sqrt(3.0 / self.q)
        lf = bound * jax.random.uniform(k_l, (b * self.s, self.q), jnp.float32, -1.0, 1.0)
        spec = dict(group="matrix", quant=quant, always_quantize=True, hessian=False)
        self.R = param(r, **spec)
        self.L = param(lf, **spec)
        self.tap = None

    def __call__(self, x: jax.Array, ctx=None) -> jax.Array:
        del ctx  # no position, and nothing GPTQ calibrates (hessian=False)
        b, p, q, s = self.blocks, self.p, self.q, self.s
        lead = x.shape[:-1]
        x_Nbp = x.reshape(-1, b, p)
        z_Nbq = jnp.einsum("nbp,bqp->nbq", x_Nbp, self.R[...].astype(x.dtype).reshape(b, q, p))
        z_Nbq = z_Nbq.reshape(-1, q, b).transpose(0, 2, 1)  # the perfect shuffle
        y_Nbs = jnp.einsum("ncq,csq->ncs", z_Nbq, self.L[...].astype(x.dtype).reshape(b, s, q))
        return y_Nbs.reshape(*lead, b * s)

    def materialize(self) -> jax.Array:
        """The dense (out, in) matrix the factors stand for."""
        return self(jnp.eye(self.blocks * self.p, dtype=jnp.float32)).T
