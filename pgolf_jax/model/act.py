"""Universal Transformer + Adaptive Computation Time (#1589, spec 4.8) as a topology: one shared
block applied up to act_max_steps times per token, with a learned halting head.

Per iteration t every token's candidate state is x~ = Block(x, x0) and its halting probability
h = sigmoid(w . x~ + b) (w ~ N(0, 0.01^2), b = act_halt_bias, -3). A running token adds h to its
cumulated halting; it halts when that would reach act_threshold (0.99), or at the last iteration,
and then takes the remainder 1 - cum as its weight, else h: the output is sum_t weight_t x~_t, so
every token's weights sum to 1. Halted tokens keep their state. Ponder = iterations a token ran
(plus the remainder when the last iteration forced it to stop); the loss adds act_ponder_cost x
mean ponder. The recurrence is a `lax.scan` over act_max_steps with every token masked; an
iteration in which no token runs is skipped by `lax.cond` (on one device the compute is still
bounded by act_max_steps blocks, which is what bench counts).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pgolf_jax.model.params import param
from pgolf_jax.model.topology import BlockRunner

HALT_W_STD = 0.01


def act_step(block, x, carry, halt_w, halt_b, threshold: float, last):
    """One ACT iteration on flat states x (N, D): returns the new carry (x, y, cum, running, ponder)
    and this iteration's mixing weights (N,)."""
    y, cum, running, ponder = carry
    cand = block(x)
    h = jax.nn.sigmoid(cand.astype(jnp.float32) @ halt_w.astype(jnp.float32) + halt_b.astype(jnp.float32))
    halts = running & ((cum + h >= threshold) | last)
    weight = jnp.where(halts, 1.0 - cum, jnp.where(running, h, 0.0))
    y = y + weight[:, None].astype(y.dtype) * cand
    ponder = ponder + running.astype(jnp.float32) + jnp.where(halts & last, 1.0 - cum, 0.0)
    cum = cum + jnp.where(running & ~halts, h, 0.0)
    x = jnp.where(running[:, None], cand, x)
    return x, (y, cum, running & ~halts, ponder), weight


class ACT:
    """topology=act: needs model.num_layers = 1 (the shared block); block_schedule is unused."""

    @staticmethod
    def create(gpt, cfg, rngs) -> None:
        gpt.halt_w = param(HALT_W_STD * jax.random.normal(rngs.params(), (cfg.model_dim,), jnp.float32),
                           group="scalar", quant="control")
        gpt.halt_b = param(jnp.asarray(cfg.act.halt_bias, jnp.float32), group="scalar", quant="control")

    @staticmethod
    def run(gpt, x, x0, ctx, layers, tap_fn=None, return_weights=False):
        cfg = gpt.cfg
        run = BlockRunner(gpt, x0, ctx)
        state = run.layer(0, 0)  # one shared block, one virtual slot
        halt_w, halt_b = gpt.halt_w[...], gpt.halt_b[...]
        N = x.shape[0]
        carry = (jnp.zeros_like(x), jnp.zeros((N,), jnp.float32), jnp.ones((N,), bool), jnp.zeros((N,), jnp.float32))
        steps = cfg.act.max_steps

        if tap_fn is not None or not cfg.scan_layers:
            block = (lambda h: run.calibrate(h, state, 0, tap_fn)) if tap_fn is not None else \
                (lambda h: run.block(h, state, 0))
            weights = []
            for t in range(steps):
                x, carry, w = act_step(block, x, carry, halt_w, halt_b, cfg.act.threshold, t == steps - 1)
                weights.append(w)
            weights = jnp.stack(weights)
        else:
            def body(xc, t):
                x, carry = xc
                running = carry[2]
                # An iteration no token runs in changes nothing: skip its block.
                block = lambda h: jax.lax.cond(jnp.any(running), lambda a: run.block(a, state, 0),  # noqa: E731
                                               lambda a: a, h)
                x, carry, w = act_step(block, x, carry, halt_w, halt_b, cfg.act.threshold, t == steps - 1)
                return (x, carry), w

            (x, carry), weights = jax.lax.scan(body, (x, carry), jnp.arange(steps))
        y, _, _, ponder = carry
        aux = {"ponder": jnp.mean(ponder)}
        if return_weights:
            aux.update(weights=weights, ponder_per_token=ponder)
        return y, aux
