"""Seed model (#1589, spec 4.9): the block weights are theta = theta0 + P phi; only phi
(model.seed.dim) is trained. theta0 (N(0, 0.02^2)) and P (N(0, 1), columns scaled to unit norm
within each chunk of rows, as the PR) are regenerated from a fixed PRNG seed
(model.seed.generator_seed) model.seed.chunk rows at a time on every forward pass, by lax.map with each
chunk rematerialized in the backward pass: they are never stored, as parameters or in the
artifact (0 bytes), and memory is one chunk (rows x seed_dim). The cost is what #1589 reports
("too slow"): every step draws n x seed_dim normals twice (forward, backward).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.model.generators import Source, generated_slots, split_flat
from pgolf_jax.model.params import param

PHI_STD, THETA0_STD = 0.01, 0.02


class SeedParams(nnx.Module):
    def __init__(self, cfg, key):
        self.phi = param(PHI_STD * jax.random.normal(key, (cfg.seed.dim,), jnp.float32), group="adamw", quant="other")


def expand(phi, n: int, chunk: int, seed: int):
    """theta (n,) = theta0 + P phi, chunk by chunk; rows past n (the last chunk's padding) are
    left out of its column norms, so every chunk is what the PR's shorter last chunk is."""
    chunk = min(chunk, n)
    n_chunks = -(-n // chunk)
    base = jax.random.key(seed)

    def one(c):
        k0, k1 = jax.random.split(jax.random.fold_in(base, c))
        valid = (c * chunk + jnp.arange(chunk)) < n
        theta0 = THETA0_STD * jax.random.normal(k0, (chunk,), jnp.float32)
        P_RD = jax.random.normal(k1, (chunk, phi.shape[0]), jnp.float32) * valid[:, None]
        P_RD = P_RD / jnp.maximum(jnp.linalg.norm(P_RD, axis=0, keepdims=True), 1e-8)
        return theta0 + P_RD @ phi

    return jax.lax.map(jax.checkpoint(one), jnp.arange(n_chunks)).reshape(-1)[:n]


class Seed(Source):
    params = SeedParams

    @staticmethod
    def generate(gpt, rng) -> dict:
        del rng
        cfg = gpt.cfg
        slots = generated_slots(gpt)
        total = sum(L * o * i for L, o, i in slots.values())
        return split_flat(expand(gpt.gen.phi[...], total, cfg.seed.chunk, cfg.seed.generator_seed), slots)
