"""Neural cellular automaton weight generator (#1589 "Turing tarpit", spec 4.9): a 1-D circular grid
of ceil(n / C) cells x C channels (C = model.nca.channels) whose flattened final state is the block
weights (in the generated slots' order). From a fixed N(0, 0.02^2) start state
(model.nca.generator_seed) it runs model.nca.steps updates by lax.scan: perception [s, s - left,
s - right] -> MLP (3C -> H -> H -> C, ReLU, last layer zero and bias-free as the PR) -> delta. In
training each cell takes its delta with probability model.nca.update_prob, drawn from the train
step's key; in evaluation (no key) every cell updates, so the weights are deterministic. Each step
is rematerialized in the backward pass (the scan keeps one state per step, not the MLP's
activations).

The PR generates every weight of the model this way (embedding and control scalars too); here the
block linears, so the embedding, scales and residual mixes keep the GPT's init and its optimizer
groups (a generated resid_mix of ~0.02 would scale the residual stream away at step 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.model.affine import Affine
from pgolf_jax.model.generators import Source, generated_slots, split_flat

STATE_STD = 0.02


class Rule(nnx.Module):
    """The update MLP (torch default init, last layer zero: the first steps change nothing)."""

    def __init__(self, cfg, key):
        C, H = cfg.nca.channels, cfg.nca.hidden
        k1, k2 = jax.random.split(key)
        self.fc1 = Affine.torch_default(k1, 3 * C, H)
        self.fc2 = Affine.torch_default(k2, H, H)
        self.out = Affine(jnp.zeros((C, H)))

    def __call__(self, p_NP):
        return self.out(jax.nn.relu(self.fc2(jax.nn.relu(self.fc1(p_NP)))))


def perceive(s_NC):
    """[s, s - left neighbour, s - right neighbour] on the circular grid."""
    return jnp.concatenate([s_NC, s_NC - jnp.roll(s_NC, 1, axis=0), s_NC - jnp.roll(s_NC, -1, axis=0)], axis=-1)


def run(rule, state_NC, steps: int, p_update: float, rng=None):
    """The final state after `steps` updates (stochastic cell masks from rng, or all cells)."""

    def step(s, key):
        delta = rule(perceive(s))
        if key is None:
            return s + delta, None
        mask = jax.random.bernoulli(key, p_update, (s.shape[0], 1)).astype(s.dtype)
        return s + delta * mask, None

    step = jax.checkpoint(step)
    if rng is None:
        return jax.lax.scan(lambda s, _: step(s, None), state_NC, None, length=steps)[0]
    return jax.lax.scan(step, state_NC, jax.random.split(rng, steps))[0]


class NCA(Source):
    params = Rule

    @staticmethod
    def generate(gpt, rng) -> dict:
        cfg = gpt.cfg
        slots = generated_slots(gpt)
        total = sum(L * o * i for L, o, i in slots.values())
        cells = -(-total // cfg.nca.channels)
        start = STATE_STD * jax.random.normal(jax.random.key(cfg.nca.generator_seed), (cells, cfg.nca.channels),
                                              jnp.float32)
        key = None if rng is None else jax.random.fold_in(rng, 0x0CA)
        final = run(gpt.gen, start, cfg.nca.steps, cfg.nca.update_prob, key)
        return split_flat(final.reshape(-1), slots)
