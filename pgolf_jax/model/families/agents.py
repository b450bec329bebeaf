"""Communicating agents (#1589, spec 4.9): agent A, a causal encoder (model.num_layers x
model.model_dim, no q/k norm), turns the context into a message per position: the causal
cumulative mean of its final-normed outputs, projected to model.agents.msg_dim. Agent B, an MLP
(hidden model.agents.decoder_hidden: Linear, GELU, RMSNorm, Linear, GELU, RMSNorm, Linear to the
vocabulary, soft-capped), predicts the next token from the message and its own embeddings of the
last model.agents.local_ctx tokens (token 0 before the start, as the PR pads).

Training scores every model.agents.loss_stride-th position only, starting at position local_ctx
(the PR's positions), through the family's per-position loss weights; evaluation scores every
position (the PR's eval skipped the first local_ctx positions but divided by all of them). The
logits are computed at every position (the objective reads (B, T, V)), so the decoder runs there
too; the loss weights decide what trains. Everything on the adamw group (#1589: AdamW lr 3e-4,
wd 0.01, clip 1.0); the two token tables start N(0, 1) like torch's nn.Embedding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.model.affine import torch_uniform
from pgolf_jax.model.families import Family, flops
from pgolf_jax.model.families.encoder import encode, encoder_matmul_params, make_blocks
from pgolf_jax.model.gpt import resolve_dtype
from pgolf_jax.model.layers import rms_norm, softcap
from pgolf_jax.model.params import param


def loss_weights(T: int, local_ctx: int, stride: int):
    """1 at the trained positions local_ctx, local_ctx + stride, ... (the PR's), 0 elsewhere."""
    t = jnp.arange(T)
    return ((t >= local_ctx) & ((t - local_ctx) % stride == 0)).astype(jnp.float32)


class Agents(Family):
    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.cfg = cfg
        D, V, M, K, Hd = (cfg.model_dim, cfg.vocab_size, cfg.agents.msg_dim, cfg.agents.local_ctx,
                          cfg.agents.decoder_hidden)
        table = lambda: param(jax.random.normal(rngs.params(), (V, D), jnp.float32), group="adamw",  # noqa: E731
                              quant="lookup")
        weight = lambda i, o: param(torch_uniform(rngs.params(), (o, i), i), group="adamw", quant="other")  # noqa: E731
        self.tok_emb = table()
        self.blocks = make_blocks(cfg, qk_norm=False, rngs=rngs)
        self.msg_proj = weight(D, M)
        self.local_emb = table()
        self.dec_in, self.dec_mid, self.dec_out = weight(M + K * D, Hd), weight(Hd, Hd), weight(Hd, V)

    def outputs(self, ids_BT, looped: bool, rng):
        cfg = self.cfg
        dt = resolve_dtype(cfg.compute_dtype)
        B, T = ids_BT.shape
        K = cfg.agents.local_ctx
        x = rms_norm(encode(self.blocks, jnp.take(self.tok_emb[...], ids_BT, axis=0).astype(dt), cfg.rope_base))
        pooled = jnp.cumsum(x.astype(jnp.float32), axis=1) / jnp.arange(1, T + 1, dtype=jnp.float32)[None, :, None]
        msg_BTM = pooled.astype(dt) @ self.msg_proj[...].astype(dt).T
        # The last K tokens up to and including t: a (B, T, K) window of the left-padded ids.
        padded = jnp.pad(ids_BT, ((0, 0), (K - 1, 0)))
        window_BTK = jnp.stack([padded[:, k:k + T] for k in range(K)], axis=-1)
        local = jnp.take(self.local_emb[...], window_BTK, axis=0).astype(dt).reshape(B, T, -1)
        h = jnp.concatenate([msg_BTM, local], axis=-1)
        h = rms_norm(jax.nn.gelu(h @ self.dec_in[...].astype(dt).T, approximate=False))
        h = rms_norm(jax.nn.gelu(h @ self.dec_mid[...].astype(dt).T, approximate=False))
        logits = softcap((h @ self.dec_out[...].astype(dt).T).astype(jnp.float32), cfg.logit_softcap)
        weights = jnp.broadcast_to(loss_weights(T, K, cfg.agents.loss_stride), (B, T))
        return logits, {}, weights

    @staticmethod
    def flops_per_token(cfg, seq_len: int, looped: bool = True) -> dict[str, float]:
        D, Hd = cfg.model_dim, cfg.agents.decoder_hidden
        n = cfg.num_layers * encoder_matmul_params(cfg) + D * cfg.agents.msg_dim \
            + (cfg.agents.msg_dim + cfg.agents.local_ctx * D) * Hd + Hd * Hd + Hd * cfg.vocab_size
        return flops(n, cfg.num_layers, D, seq_len)
