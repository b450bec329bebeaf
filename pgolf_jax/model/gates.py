"""The attention gates (registry.ATTN_GATES, selected by model.attn_gate): a per-token, per-head
multiplier of the attention output, after XSA and before the output projection, read from the
block's normalized input n (the attention's input). The three the leaderboard's records use:

- output_gate (#1667): 2 sigmoid(W_h . n[:width]), W (heads, width) zero-init: 1 (the identity) at init.
- gated_attn (#1736): sigmoid(W_h . n), W (heads, model_dim) ~ N(0, init_std^2): about 0.5 at init.
- sparse_gate (#1787, #1855): sigmoid(scale W_h . n[:width]), W zero-init: exactly 0.5 at init.

Each gate's weight is one parameter `attn_gate.weight` per layer, on the scalar Adam group (the
records route it there by name), with quant rule "gate": fp16 like any small tensor, or int8 rows
with quant.gate_int8 (QuantGate, #1736). The gate runs in the compute dtype, as under the records'
autocast; it sits outside the attention kernel, so every model.attention_impl takes it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.model.params import param


class _Gate(nnx.Module):
    """gate(n_ND) -> (N, heads) multipliers; `width` = how many leading channels of n it reads."""

    def __init__(self, w_HW, width: int):
        # hessian=False: no calibration pass sees the gate's input; GPTQ rounds a large one to nearest.
        self.weight = param(w_HW, group="scalar", quant="gate", hessian=False)
        self.width = width

    def logits(self, n_ND):
        return jnp.einsum("ni,hi->nh", n_ND[:, :self.width], self.weight[...].astype(n_ND.dtype))


class OutputGate(_Gate):
    def __init__(self, cfg, *, rngs: nnx.Rngs):
        width = cfg.output_gate.width
        super().__init__(jnp.zeros((cfg.num_heads, width), jnp.float32), width)

    def __call__(self, n_ND):
        return 2.0 * jax.nn.sigmoid(self.logits(n_ND))


class GatedAttn(_Gate):
    def __init__(self, cfg, *, rngs: nnx.Rngs):
        D, std = cfg.model_dim, cfg.gated_attn.init_std
        super().__init__(std * jax.random.normal(rngs.params(), (cfg.num_heads, D), jnp.float32), D)

    def __call__(self, n_ND):
        return jax.nn.sigmoid(self.logits(n_ND))


class SparseGate(_Gate):
    def __init__(self, cfg, *, rngs: nnx.Rngs):
        width = cfg.sparse_gate.width
        super().__init__(jnp.zeros((cfg.num_heads, width), jnp.float32), width)
        self.scale = cfg.sparse_gate.scale

    def __call__(self, n_ND):
        return jax.nn.sigmoid(self.scale * self.logits(n_ND))
