"""Tensor-network (matrix product state) LM (#1589, spec 4.9): one core A shared by all positions,
A[v] a (chi x chi) matrix per token (stored (V, chi^2): one row per token for per-row
quantization), modulated per position by diag(m_l) A[v] diag(m_r) with m = 1 + 0.5 tanh(MLP(p_t))
(32-d position embeddings p, MLP pos_dim -> 2 pos_dim (GELU) -> 2 chi, xavier-uniform gain 0.1).
A bond state h runs left to right by lax.scan: h_t = LayerNorm((h_{t-1} * m_l,t) A[x_t] * m_r,t),
from a learned h_{-1}; the logits at t are (h_t * m_l,t) A[v] m_r,t + b_v for every v.

Order: here h_t has read x_t before it predicts x_{t+1}. The PR scores position t with the state
before reading x_t (its logits never see the current token, a one-token lag), which is part of why
its run ended at 15.38 bpb. Everything on the adamw group (#1589: Adam lr 3e-4, betas (0.9,
0.999), weight decay 0.01 (coupled L2 there, decoupled here), clip 1.0).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.model.families import Family, flops, layer_norm
from pgolf_jax.model.params import param


def _xavier(key, out_f: int, in_f: int, gain: float):
    bound = gain * math.sqrt(6.0 / (in_f + out_f))
    return jax.random.uniform(key, (out_f, in_f), jnp.float32, -bound, bound)


class MPS(Family):
    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.cfg = cfg
        chi, V, P = cfg.mps.bond_dim, cfg.vocab_size, cfg.mps.pos_dim
        p = lambda value, quant="other": param(value, group="adamw", quant=quant)  # noqa: E731
        self.core = p(jax.random.normal(rngs.params(), (V, chi * chi), jnp.float32) / math.sqrt(chi))
        self.h0 = p(0.01 * jax.random.normal(rngs.params(), (chi,), jnp.float32))
        self.pos_embed = p(0.02 * jax.random.normal(rngs.params(), (cfg.mps.max_len, P), jnp.float32))
        self.mod_in = p(_xavier(rngs.params(), 2 * P, P, 0.1))
        self.mod_in_b = p(jnp.zeros((2 * P,), jnp.float32))
        self.mod_out = p(_xavier(rngs.params(), 2 * chi, 2 * P, 0.1))
        self.mod_out_b = p(jnp.zeros((2 * chi,), jnp.float32))
        self.out_bias = p(jnp.zeros((V,), jnp.float32))
        self.norm_w = p(jnp.ones((chi,), jnp.float32), "control")
        self.norm_b = p(jnp.zeros((chi,), jnp.float32), "control")

    def modulation(self, T: int):
        """(m_l, m_r), each (T, chi), near 1 at init."""
        u = jax.nn.gelu(self.pos_embed[...][:T] @ self.mod_in[...].T + self.mod_in_b[...], approximate=False)
        m = 1.0 + 0.5 * jnp.tanh(u @ self.mod_out[...].T + self.mod_out_b[...])
        return jnp.split(m, 2, axis=-1)

    def bond_states(self, ids_BT):
        """h_t for every t, (B, T, chi): the left-to-right contraction, one lax.scan step a token."""
        chi = self.cfg.mps.bond_dim
        B, T = ids_BT.shape
        A_VCC = self.core[...].reshape(-1, chi, chi)
        ml_TC, mr_TC = self.modulation(T)
        w, b = self.norm_w[...], self.norm_b[...]

        @jax.checkpoint  # the backward re-gathers A[x_t] instead of keeping (T, B, chi, chi)
        def step(h_BC, xs):
            x_B, ml, mr = xs
            h_BC = layer_norm(jnp.einsum("bi,bij->bj", h_BC * ml, jnp.take(A_VCC, x_B, axis=0)) * mr, w, b)
            return h_BC, h_BC

        h0 = jnp.broadcast_to(self.h0[...], (B, chi))
        return jax.lax.scan(step, h0, (ids_BT.T, ml_TC, mr_TC))[1].transpose(1, 0, 2)

    def outputs(self, ids_BT, looped: bool, rng):
        chi = self.cfg.mps.bond_dim
        h_BTC = self.bond_states(ids_BT)
        ml_TC, mr_TC = self.modulation(ids_BT.shape[1])
        # (h m_l) A[v] m_r for all v: contract A with m_r once per position, then with h.
        read_TCV = jnp.einsum("vij,tj->tiv", self.core[...].reshape(-1, chi, chi), mr_TC)
        logits = jnp.einsum("bti,tiv->btv", h_BTC * ml_TC, read_TCV) + self.out_bias[...]
        return logits.astype(jnp.float32), {}, None

    @staticmethod
    def flops_per_token(cfg, seq_len: int, looped: bool = True) -> dict[str, float]:
        chi, V = cfg.mps.bond_dim, cfg.vocab_size
        # Per token: the bond update (chi^2) and the read-out (chi V); plus the core's contraction
        # with m_r (chi^2 V per position, shared by the batch's sequences: an upper bound here).
        return flops(chi * chi + chi * V + chi * chi * V, 0, chi, seq_len)
