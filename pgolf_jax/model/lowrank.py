"""Eigenweight (#1589, spec 4.5): every block linear as y = ((x V^T) * sigma) U^T, a rank-r
factorization kept factored. U (out, r) and V (r, in) are stored in the (out, in) layout like any
linear (so Muon, per-row quantization and GPTQ read them as matrices), sigma (r,) is a vector."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.model.layers import OUTSIDE, Pass, svd_factors
from pgolf_jax.model.params import param

INIT_STD = 0.02  # the random matrix whose leading singular triplets initialise U, sigma, V




class LowRankLinear(nnx.Module):
    """Rank min(r, in, out). U and V are Muon matrices, sigma is on the scalar Adam group; all three
    come from the SVD of one random matrix, and there is no zero init (`init` is ignored: a zero
    U would freeze V's gradient). U and V are quantized however small (always_quantize)."""

    def __init__(self, in_f: int, out_f: int, *, init: str, quant: str, cfg, rngs: nnx.Rngs):
        del init
        r = min(cfg.lowrank.site_rank(quant), in_f, out_f)
        u, s, vt = svd_factors(rngs.params(), out_f, in_f, r, INIT_STD)
        self.U = param(u, group="matrix", quant=quant, always_quantize=True)
        self.sigma = param(s, group="scalar", quant="other")
        self.V = param(vt, group="matrix", quant=quant, always_quantize=True)
        self.tap = None

    def __call__(self, x: jax.Array, ctx: Pass = OUTSIDE) -> jax.Array:
        # GPTQ calibrates V on the layer input and U on its own input, (sigma V) x: that Hessian is
        # (sigma V) H (sigma V)^T of the input Hessian H.
        ctx.record(self, "V", x)
        z = jnp.einsum("...i,ri->...r", x, self.V[...].astype(x.dtype)) * self.sigma[...].astype(x.dtype)
        ctx.record(self, "U", z)
        return jnp.einsum("...r,or->...o", z, self.U[...].astype(x.dtype))

    def materialize(self) -> jax.Array:
        """The (out, in) weight the factors stand for: U diag(sigma) V."""
        return (self.U[...] * self.sigma[...]) @ self.V[...]
