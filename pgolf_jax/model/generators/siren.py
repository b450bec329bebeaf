"""SIREN weight generator (#1589, spec 4.9): a sine MLP maps the coordinates of one weight value,
(row / (out - 1), col / (in - 1), layer / (L - 1)) and an 8-wide embedding of its weight type
(a table of 16, as the PR), to the value: model.siren.layers linear layers, sin(omega .) after all
but the last, hidden model.siren.hidden. Every block weight is evaluated every forward pass, in
chunks of model.siren.chunk coordinates (lax.map, each chunk rematerialized in the backward pass),
so no (all coordinates x hidden) temporary ever exists. Inits as the PR: first layer U(+-1/in),
later ones U(+-sqrt(6 / in) / omega), biases torch's default, the type table N(0, 1).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.model.affine import Affine, torch_uniform
from pgolf_jax.model.generators import SITES, Source, chunked, generated_slots
from pgolf_jax.model.params import param

TYPE_TABLE, TYPE_DIM = 16, 8


class SirenParams(nnx.Module):
    def __init__(self, cfg, key):
        H, w = cfg.siren.hidden, cfg.siren.omega
        keys = jax.random.split(key, 2 * cfg.siren.layers + 1)
        self.type_embed = param(jax.random.normal(keys[0], (TYPE_TABLE, TYPE_DIM), jnp.float32), group="adamw",
                                quant="other")
        dims = [3 + TYPE_DIM] + [H] * (cfg.siren.layers - 1) + [1]
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            bound = 1.0 / d_in if i == 0 else math.sqrt(6.0 / d_in) / w
            weight = jax.random.uniform(keys[2 * i + 1], (d_out, d_in), jnp.float32, -bound, bound)
            setattr(self, f"layer{i}", Affine(weight, torch_uniform(keys[2 * i + 2], (d_out,), d_in)))
        self.num_layers, self.omega = cfg.siren.layers, w

    def __call__(self, x_NC):
        for i in range(self.num_layers - 1):
            x_NC = jnp.sin(self.omega * getattr(self, f"layer{i}")(x_NC))
        return getattr(self, f"layer{self.num_layers - 1}")(x_NC)[:, 0]


class Siren(Source):
    params = SirenParams

    @staticmethod
    def generate(gpt, rng) -> dict:
        del rng
        out = {}
        for slot, (L, out_f, in_f) in generated_slots(gpt).items():
            site = slot.rsplit(".", 1)[0]
            t_emb = gpt.gen.type_embed[...][SITES.index(site) if site in SITES else len(SITES)]

            def values(i, t_emb=t_emb, L=L, out_f=out_f, in_f=in_f):
                coords = jnp.stack([(i // in_f) % out_f / max(out_f - 1, 1), i % in_f / max(in_f - 1, 1),
                                    i // (out_f * in_f) / max(L - 1, 1)], axis=-1).astype(jnp.float32)
                return gpt.gen(jnp.concatenate([coords, jnp.broadcast_to(t_emb, (i.shape[0], TYPE_DIM))], -1))

            out[slot] = chunked(values, L * out_f * in_f, gpt.cfg.siren.chunk).reshape(L, out_f, in_f)
        return out
