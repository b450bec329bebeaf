"""Multi-head latent attention on K/V only (#1589, spec 4.3): c = x W_down (D -> l, shared by K
and V), k = c W_upK, v = c W_upV (l -> kv each); RoPE on the up-projected k (no decoupled rope
key); Q and the output projection stay full rank. Per layer 1024 l weights at D 512 / kv 256."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.model.attention import GQA
from pgolf_jax.model.layers import DenseLinear, svd_factors

UP_STD = 0.02


class MLA(GQA):
    """GQA with K and V made from one rank-l latent (so each has rank <= l)."""

    def make_kv(self, cfg, D: int, kv: int, rngs: nnx.Rngs) -> None:
        latent = cfg.mla.latent_dim
        # W_down: the top-l right singular vectors of a random [W_K; W_V] (2kv x D, N(0, 1/D)),
        # orthonormal rows; the up-projections N(0, 0.02^2). All Muon matrices, and quantized
        # however small (they are the attention's K/V weights).
        _, _, vt = svd_factors(rngs.params(), 2 * kv, D, latent, D ** -0.5)
        self.kv_down = DenseLinear(D, latent, init="zeros", rngs=rngs, quant="attn", always_quantize=True)
        self.kv_down.weight[...] = vt
        self.k_up = DenseLinear(latent, kv, init="zeros", rngs=rngs, quant="attn", always_quantize=True)
        self.k_up.weight[...] = UP_STD * jax.random.normal(rngs.params(), (kv, latent), jnp.float32)
        self.v_up = DenseLinear(latent, kv, init="zeros", rngs=rngs, quant="attn", always_quantize=True)
        self.v_up.weight[...] = UP_STD * jax.random.normal(rngs.params(), (kv, latent), jnp.float32)

    def __call__(self, x_ND, ctx, xsa=0.0):
        B, T = ctx.shape_BT
        c_NL = self.kv_down(x_ND, ctx)
        shape = (B, T, self.num_kv_heads, self.head_dim)
        return self.attend(x_ND, self.k_up(c_NL, ctx).reshape(shape), self.v_up(c_NL, ctx).reshape(shape), ctx, xsa)
