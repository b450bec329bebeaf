"""HyperNetwork weight generation (#1589 "neurogenesis", spec 4.9): learned layer embeddings
e_l (L, E) -> trunk Linear(E, H) GELU Linear(H, H) GELU -> one linear head per weight type emitting
the flattened low-rank factors A (out, r) and B (r, in); W_l = A B, regenerated every forward.

Its real size (spec [I]): each head is an H x r (in + out) matrix (+ bias), 512 x 32,768 = 16.8 M
for q at #1589's shapes, and the six heads hold ~109.3 M parameters, far more than the 17 M-weight
GPT they generate (the report's "~500 K stored params" is wrong). The artifact check refuses it at
16 MB; the run itself is #1589's (everything on Adam, lr 3e-4, clip 1.0: configs/pr1589/hypernet_r32).
Inits as the PR: embeddings N(0, 0.02^2), trunk N(0, 1/fan_in) with zero bias, heads N(0, 0.01^2)
with zero bias.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.model.affine import Affine
from pgolf_jax.model.generators import Source, attr_name, generated_slots
from pgolf_jax.model.params import param

HEAD_STD = 0.01
EMBED_STD = 0.02


class HyperParams(nnx.Module):
    """Layer embeddings, trunk and one head per block linear (attributes named by site)."""

    def __init__(self, cfg, slots: dict, key):
        E, H, r = cfg.hypernet.embed_dim, cfg.hypernet.hidden, cfg.hypernet.rank
        L = cfg.num_layers
        k_emb, k1, k2, *k_heads = jax.random.split(key, 3 + len(slots))
        self.layer_embed = param(EMBED_STD * jax.random.normal(k_emb, (L, E), jnp.float32), group="adamw",
                                 quant="other")
        # kaiming_normal(nonlinearity="linear"): std 1/sqrt(fan_in).
        self.trunk1 = Affine(jax.random.normal(k1, (H, E)) / E ** 0.5, jnp.zeros((H,)))
        self.trunk2 = Affine(jax.random.normal(k2, (H, H)) / H ** 0.5, jnp.zeros((H,)))
        for (slot, (_, out_f, in_f)), k in zip(slots.items(), k_heads):
            n = r * (out_f + in_f)
            setattr(self, attr_name(slot), Affine(HEAD_STD * jax.random.normal(k, (n, H)), jnp.zeros((n,))))


class HyperNet(Source):
    @staticmethod
    def create(gpt, cfg, rngs) -> None:  # its heads are shaped by the slots
        gpt.gen = HyperParams(cfg, generated_slots(gpt), rngs.params())

    @staticmethod
    def generate(gpt, rng) -> dict:
        del rng
        g, r = gpt.gen, gpt.cfg.hypernet.rank
        h_LH = jax.nn.gelu(g.trunk1(g.layer_embed[...]), approximate=False)
        h_LH = jax.nn.gelu(g.trunk2(h_LH), approximate=False)
        out = {}
        for slot, (L, out_f, in_f) in generated_slots(gpt).items():
            f_LN = getattr(g, attr_name(slot))(h_LH)
            A_LOR = f_LN[:, :out_f * r].reshape(L, out_f, r)
            B_LRI = f_LN[:, out_f * r:].reshape(L, r, in_f)
            out[slot] = jnp.einsum("lor,lri->loi", A_LOR, B_LRI)
        return out
