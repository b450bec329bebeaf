"""Hopfield "attractor" energy LM (#1589, spec 4.9): a causal encoder (model.num_layers x
model.model_dim, RMS-normed q/k) gives a context h; h is refined model.hopfield.refine_steps times,
h <- h - alpha MLP([h; stopgrad(h0)]) (alpha learned, init model.hopfield.refine_alpha; MLP
2D -> 2D -> D with GELU and a zero-init last layer); the logits are the negative Hopfield energy
gamma (h W e_v^T - ||e_v||^2) over the token embeddings e it shares with the input (W orthogonal,
gamma learned from 1), soft-capped. Every parameter is on the adamw group (#1589: AdamW lr 3e-4,
wd 0.1, clip 1.0): a family chooses its optimizer by the groups it declares.
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

EMBED_STD = 0.02


class Hopfield(Family):
    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.cfg = cfg
        D, V = cfg.model_dim, cfg.vocab_size
        self.tok_emb = param(EMBED_STD * jax.random.normal(rngs.params(), (V, D), jnp.float32), group="adamw",
                             quant="embed")
        self.blocks = make_blocks(cfg, qk_norm=True, rngs=rngs)
        self.W = param(jax.nn.initializers.orthogonal()(rngs.params(), (D, D), jnp.float32), group="adamw",
                       quant="other")
        self.gamma = param(jnp.ones((), jnp.float32), group="adamw", quant="control")
        self.refine_in = param(torch_uniform(rngs.params(), (2 * D, 2 * D), 2 * D), group="adamw", quant="other")
        self.refine_out = param(jnp.zeros((D, 2 * D), jnp.float32), group="adamw", quant="other")
        self.alpha = param(jnp.asarray(cfg.hopfield.refine_alpha, jnp.float32), group="adamw", quant="control")

    def outputs(self, ids_BT, looped: bool, rng):
        dt = resolve_dtype(self.cfg.compute_dtype)
        E_VD = self.tok_emb[...]
        h = rms_norm(encode(self.blocks, rms_norm(jnp.take(E_VD, ids_BT, axis=0).astype(dt)), self.cfg.rope_base))
        h0 = jax.lax.stop_gradient(h)
        for _ in range(self.cfg.hopfield.refine_steps):
            u = jax.nn.gelu(jnp.concatenate([h, h0], -1) @ self.refine_in[...].astype(dt).T, approximate=False)
            h = h - self.alpha[...].astype(dt) * (u @ self.refine_out[...].astype(dt).T)
        E = E_VD.astype(jnp.float32)
        energy = jnp.einsum("btd,de,ve->btv", h.astype(jnp.float32), self.W[...], E) - jnp.sum(E * E, -1)
        return softcap(self.gamma[...] * energy, self.cfg.logit_softcap), {}, None

    @staticmethod
    def flops_per_token(cfg, seq_len: int, looped: bool = True) -> dict[str, float]:
        D = cfg.model_dim
        n = cfg.num_layers * encoder_matmul_params(cfg) + cfg.hopfield.refine_steps * 6 * D * D + D * D \
            + cfg.vocab_size * D
        return flops(n, cfg.num_layers, D, seq_len)
