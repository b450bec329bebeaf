"""RLMA, random-base low-rank adapters (#2114, spec 3.2): W = alpha R + U V, where R ~ N(0, 1) /
sqrt(in) is a frozen random matrix regenerated inside every forward pass and never stored, and
U (out, r), V (r, in) and the scalar alpha are learned. U starts at 0 and V ~ N(0, 1/r), so the
initial weight is exactly alpha R; alpha starts at 1.

R's key is folded from a stable hash of the linear's name (blake2b-64 of e.g. "attn.c_q", as
#2114; Python's hash() is salted per process), the block's physical layer and its virtual slot:
a shared block applied K times sees a different base at every iteration while sharing alpha, U
and V. The slot counts from 0, so #2114's iteration index k = slot - 1 (-1 for Block_in, K for
Block_out under topology=ut_shared). The bits of R need not match torch's generator: the same
function runs at training and after loading the artifact, which holds no byte of R.
"""

from __future__ import annotations

import hashlib
import math

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.model.layers import OUTSIDE, Pass
from pgolf_jax.model.params import param


def name_seed(name: str) -> int:
    """blake2b-64 of the name, low 32 bits: the same in every process and on every machine."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") & 0xFFFFFFFF


def random_base(name: str, layer, slot, out_f: int, in_f: int, dtype=jnp.float32) -> jax.Array:
    """R (out, in) ~ N(0, 1) / sqrt(in) for this linear at (physical layer, virtual slot)."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(name_seed(name)), layer), slot)
    return jax.random.normal(key, (out_f, in_f), dtype) / math.sqrt(in_f)


class RLMALinear(nnx.Module):
    """model.linear=rlma: rank model.rlma.rank (or attn_rank / mlp_rank), clipped at min(in, out).
    U and V are Muon matrices quantized however small; alpha is a scalar on the Adam group. GPTQ
    calibrates V on the layer input and U on x V^T (the fixed alpha R is not quantized)."""

    def __init__(self, in_f: int, out_f: int, *, init: str, quant: str, cfg, rngs: nnx.Rngs):
        del init  # U = 0 is the init; R carries the signal
        r = min(cfg.rlma.site_rank(quant), in_f, out_f)
        self.in_f, self.out_f = in_f, out_f
        self.U = param(jnp.zeros((out_f, r), jnp.float32), group="matrix", quant=quant, always_quantize=True)
        self.V = param(jax.random.normal(rngs.params(), (r, in_f), jnp.float32) / math.sqrt(r), group="matrix",
                       quant=quant, always_quantize=True)
        self.alpha = param(jnp.ones((), jnp.float32), group="scalar", quant="control")
        self.tap = None
        self.matmul_extra = in_f * out_f  # x R^T: a dense product per token that no parameter stores

    def base(self, layer, slot, dtype=jnp.float32) -> jax.Array:
        if self.tap is None:
            raise RuntimeError("RLMALinear needs its name (name_taps) to seed its random base")
        return random_base(self.tap, layer, slot, self.out_f, self.in_f, dtype)

    def __call__(self, x: jax.Array, ctx: Pass = OUTSIDE) -> jax.Array:
        R = self.base(*ctx.position(), dtype=x.dtype)
        ctx.record(self, "V", x)
        z = jnp.einsum("...i,ri->...r", x, self.V[...].astype(x.dtype))
        ctx.record(self, "U", z)
        y = jnp.einsum("...r,or->...o", z, self.U[...].astype(x.dtype))
        return y + self.alpha[...].astype(x.dtype) * jnp.einsum("...i,oi->...o", x, R)

    def materialize(self, layer, slot) -> jax.Array:
        """The (out, in) weight at (physical layer, virtual slot): alpha R + U V."""
        return self.alpha[...] * self.base(layer, slot) + self.U[...] @ self.V[...]
