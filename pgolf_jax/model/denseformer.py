"""DenseFormer depth-weighted averaging (#1227, spec 5.3; Pagliardini et al. 2024) as a topology:
after virtual layer j the state is a learned weighted sum of the block stack's input (the
embedding) and every block output so far,

    x_{j+1} = sum_{i <= j + 1} w[j, i] h_i,   h_0 = embedding,  h_{i+1} = Block_i(x_i),

with w initialised to the identity (w[j, j + 1] = 1, the rest 0): at init it is the plain stack.
The blocks run in a Python loop over the schedule: every h_i is kept for the later sums anyway,
and a scan would have to carry (and save for the backward pass) the whole growing history at
every step.
"""

from __future__ import annotations

import jax.numpy as jnp

from pgolf_jax.model.params import param
from pgolf_jax.model.topology import BlockRunner


class DenseFormer:
    """topology=denseformer: w (n, n + 1) for the longer of the plain and looped schedules."""

    @staticmethod
    def create(gpt, cfg, rngs) -> None:
        n = max(len(gpt.layers), len(gpt.plain_layers))
        gpt.dwa_weights = param(jnp.eye(n, n + 1, k=1, dtype=jnp.float32), group="scalar", quant="control")

    @staticmethod
    def run(gpt, x, x0, ctx, layers, tap_fn=None):
        run = BlockRunner(gpt, x0, ctx)
        w = gpt.dwa_weights[...].astype(x.dtype)
        history = [x]
        for j, layer in enumerate(layers):
            state = run.layer(layer, j)
            history.append(run.block(x, state, layer) if tap_fn is None else run.calibrate(x, state, layer, tap_fn))
            x = sum(w[j, i] * h for i, h in enumerate(history))
        return x, {}
