"""Cross-layer basis sharing (#1589, spec 4.7): per weight type t one shared U_t (out, r) and per
layer coefficients C_t,i (r, in), W_t,i = U_t C_t,i, applied factored as (x C_i^T) U_t^T.

U_t is a parameter of the source (under `gen`, stored once, Muon); each block linear holds its
C_i (a block parameter, Adam at scalar_lr: #1589's coefficient group, lr 0.04) and a Generated
slot the source fills with U_t for every layer, so the layer scan sees a plain per-layer linear.
Init: L random N(0, 0.02^2) matrices per type concatenated column-wise, U_t = their top-r left
singular vectors, C_i = U_t^T W_i; the output projections' (o, proj) C are zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.model.generators import Generated, attr_name, generated_slots
from pgolf_jax.model.layers import OUTSIDE, Pass
from pgolf_jax.model.params import param

INIT_STD = 0.02


class BasisLinear(nnx.Module):
    """y = (x C^T) U^T with r = min(model.basis.rank, in, out); C and U are quantized however
    small (factor matrices, like Eigenweight's)."""

    def __init__(self, in_f: int, out_f: int, *, init: str, quant: str, cfg, rngs: nnx.Rngs):
        del rngs  # Basis.create sets C from the shared SVD
        r = min(cfg.basis.rank, in_f, out_f)
        self.C = param(jnp.zeros((r, in_f), jnp.float32), group="scalar", quant=quant, always_quantize=True)
        self.U = Generated(jnp.zeros((out_f, r), jnp.float32), site=quant)
        self.zero_init = init == "zeros"
        self.tap = None

    def __call__(self, x, ctx: Pass = OUTSIDE):
        # GPTQ calibrates C on the layer input; the shared U (no per-layer Hessian) is rounded.
        ctx.record(self, "C", x)
        z = jnp.einsum("...i,ri->...r", x, self.C[...].astype(x.dtype))
        return jnp.einsum("...r,or->...o", z, self.U[...].astype(x.dtype))


class Bases(nnx.Module):
    """The shared U of every weight type, as attributes named by site (attn_c_q, ...)."""


class Basis:
    linear = BasisLinear

    @staticmethod
    def create(gpt, cfg, rngs) -> None:
        gpt.gen = Bases()
        for slot, (L, out_f, r) in generated_slots(gpt).items():
            lin = gpt.blocks
            for part in slot.split(".")[:-1]:
                lin = getattr(lin, part)
            in_f = lin.C.get_value().shape[-1]
            W_LOI = INIT_STD * jax.random.normal(rngs.params(), (L, out_f, in_f), jnp.float32)
            U, _, _ = jnp.linalg.svd(W_LOI.transpose(1, 0, 2).reshape(out_f, L * in_f), full_matrices=False)
            U = U[:, :r]
            C = jnp.zeros((L, r, in_f), jnp.float32) if lin.zero_init else jnp.einsum("or,loi->lri", U, W_LOI)
            lin.C[...] = C
            setattr(gpt.gen, attr_name(slot), param(U, group="matrix", quant=lin.U.get_metadata()["site"],
                                                     always_quantize=True))

    @staticmethod
    def generate(gpt, rng) -> dict:
        del rng
        return {slot: jnp.broadcast_to(getattr(gpt.gen, attr_name(slot))[...], shape)
                for slot, shape in generated_slots(gpt).items()}
