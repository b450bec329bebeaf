"""Model families other than the reference GPT (registry.FAMILIES): #1589's SURGE-M (a GPT with a
meta-network), and three that are not GPTs at all: the tensor-network MPS LM, the Hopfield energy
LM and the communicating agents.

Every family is an nnx.Module the functional `Model` (model/gpt.py) wraps, with
`outputs(ids, looped, rng) -> (logits, auxiliary losses, per-position loss weights or None)` for
training, `__call__(ids, looped, hook) -> logits` for evaluation and
`aux_weights(cfg)`; a family that is not a GPT also has `flops_per_token(cfg, seq_len, looped)`.
Each parameter declares its optimizer group, so a family chooses its optimizer (all of
#1589's non-GPT models train on the `adamw` group).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

LN_EPS = 1e-5  # torch nn.LayerNorm's


class Family(nnx.Module):
    """Base of the non-GPT families: no test-time adapters, no auxiliary losses by default."""

    @staticmethod
    def aux_weights(cfg) -> dict[str, float]:
        return {}

    def __call__(self, ids_BT, looped: bool = True, hook=None):
        if hook is not None:
            raise ValueError(f"model.family={self.cfg.family} has no block linears for test-time adapters")
        return self.outputs(ids_BT, looped, None)[0]

    def outputs(self, ids_BT, looped: bool, rng):
        raise NotImplementedError


def flops(matmul_params: float, attn_layers: int, width: int, seq_len: int) -> dict[str, float]:
    """analytic_flops_per_token's keys for a family: 6 N matmul FLOPs per token (forward and
    backward), causal attention over `attn_layers` layers of `width`."""
    attn_full = 3 * attn_layers * 2 * 2 * seq_len * width
    return {"matmul": 6.0 * matmul_params, "attn_causal": attn_full / 2, "attn_full": attn_full,
            "n_matmul_params": float(matmul_params)}


def layer_norm(h, w, b):
    """LayerNorm over the last axis with weight w and bias b (torch's eps)."""
    mu = jnp.mean(h, -1, keepdims=True)
    var = jnp.mean(jnp.square(h - mu), -1, keepdims=True)
    return (h - mu) * jax.lax.rsqrt(var + LN_EPS) * w + b
