"""Token-input modules: the tied embedding, BigramHash (spec 4.10) and SmearGate (spec 4.9)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.model.layers import OUTSIDE, DenseLinear, Pass
from pgolf_jax.model.params import param

BOS_ID = 1  # the challenge's tokenizers put <s> at id 1


class Embedding(nnx.Module):
    """A token table on the embedding lr; quant "embed" when it is also the (tied) head, which
    gives it a Hessian, else "lookup" (round-to-nearest: no activation multiplies it)."""

    def __init__(self, vocab: int, dim: int, std: float, dtype, *, rngs: nnx.Rngs, quant: str = "embed"):
        self.weight = param((std * jax.random.normal(rngs.params(), (vocab, dim))).astype(dtype), group="embed",
                            quant=quant)

    def __call__(self, ids_BT):
        return jnp.take(self.weight[...], ids_BT, axis=0)


def bigram_hash(ids_BT, buckets: int):
    """((36313 t_i) xor (27191 t_{i-1})) mod (buckets - 1) in int32; position 0 -> buckets - 1."""
    t = ids_BT.astype(jnp.int32)
    h = jnp.bitwise_xor(36313 * t[:, 1:], 27191 * t[:, :-1]) % (buckets - 1)
    return jnp.concatenate([jnp.full_like(t[:, :1], buckets - 1), h], axis=1)


class BigramHash(nnx.Module):
    """A hashed (previous, current) token-pair embedding added to the token embedding.
    Table zero-init, projection orthogonal scaled by 1/sqrt(2L), learned scale init 0.05."""

    def __init__(self, cfg, dtype, *, rngs: nnx.Rngs):
        self.buckets = cfg.bigram_vocab_size
        self.embed = Embedding(cfg.bigram_vocab_size, cfg.bigram_dim, 0.0, dtype, rngs=rngs, quant="lookup")
        self.proj = DenseLinear(cfg.bigram_dim, cfg.model_dim, init="orthogonal", rngs=rngs)  # Muon (03-22)
        self.proj.weight[...] = self.proj.weight[...] / math.sqrt(2 * cfg.num_layers)
        self.scale = param(jnp.asarray(0.05, jnp.float32), group="scalar", quant="other")

    def __call__(self, ids_BT, dtype, ctx: Pass = OUTSIDE):
        h = self.embed(bigram_hash(ids_BT, self.buckets)).astype(dtype)
        return self.proj(h, ctx) * self.scale[...].astype(dtype)


def previous_token(x_BTD):
    """x shifted one position later in each sequence, zeros at position 0."""
    return jnp.concatenate([jnp.zeros_like(x_BTD[:, :1]), x_BTD[:, :-1]], axis=1)


class SmearGateV1(nnx.Module):
    """x_t <- (1 - s) x_t + s x_{t-1} with s = sigmoid(gate), gate in R^D init 0 (03-19..03-25)."""

    def __init__(self, dim: int):
        self.gate = param(jnp.zeros((dim,), jnp.float32), group="scalar", quant="control")

    def __call__(self, x_BTD):
        B, T, D = x_BTD.shape
        # Mix on the flat (B*T, D) view: the gate's gradient then reduces over a leading axis.
        x, prev = x_BTD.reshape(B * T, D), previous_token(x_BTD).reshape(B * T, D)
        s = jax.nn.sigmoid(self.gate[...].astype(x.dtype))
        return ((1 - s) * x + s * prev).reshape(B, T, D)


class SmearGateV2(nnx.Module):
    """x_t <- x_t + lambda sigmoid(w . x_t[:12]) x_{t-1} on the raw embedding (PR #1667 lineage);
    w and lambda init 0 (identity at init). With bos_fix the gate is 0 where x_t is a BOS token,
    so a document never reads the previous document's last token (PR #1851)."""

    WIDTH = 12

    def __init__(self, bos_fix: bool):
        self.smear_gate = DenseLinear(self.WIDTH, 1, init="zeros", rngs=None, group="scalar", quant="control")
        self.smear_lambda = param(jnp.zeros((1,), jnp.float32), group="scalar", quant="control")
        self.bos_fix = bos_fix

    def __call__(self, x_BTD, ids_BT):
        gate_BT1 = jax.nn.sigmoid(self.smear_gate(x_BTD[..., :self.WIDTH]))
        if self.bos_fix:
            gate_BT1 = jnp.where((ids_BT == BOS_ID)[..., None], 0.0, gate_BT1)
        return x_BTD + self.smear_lambda[...].astype(x_BTD.dtype) * gate_BT1 * previous_token(x_BTD)
