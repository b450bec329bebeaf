"""How the stacked blocks are connected (registry.TOPOLOGIES) and in which order they run
(registry.BLOCK_SCHEDULES).

A block schedule is a tuple of physical layer indices: `lax.scan` walks it over the stacked
weights, so depth recurrence is a different tuple over the same parameters. A topology creates the
parameters it needs on the model (`create`) and runs the blocks (`run(gpt, x, x0, ctx, layers,
tap_fn, slot_deltas) -> (x, aux losses)`); `unet` is the reference's (skips between the halves),
`plain` a straight stack without skip parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.model.layers import capture_linear_inputs
from pgolf_jax.model.params import param, path_name

# slot_deltas keys that are parallel adapter matrices (D, D) rather than weight deltas.
PARALLEL_ADAPTERS = ("attn_par", "mlp_par")


# ---------------------------------------------------------------------------------------------
# Block schedules: the virtual layer order (physical indices).

def unet_layers(cfg) -> tuple[int, ...]:
    """The baseline order; with num_loops, the segment loop_start..loop_end runs num_loops + 1
    times in a row (records 04-05+: 0,1,2,3,4,5,3,4,5,3,4,5,6,...)."""
    L, s, e = cfg.num_layers, cfg.loop_start, cfg.loop_end
    if not cfg.num_loops:
        return tuple(range(L))
    return tuple(range(s)) + tuple(range(s, e + 1)) * (cfg.num_loops + 1) + tuple(range(e + 1, L))


def repeat_in_place_layers(cfg) -> tuple[int, ...]:
    """#1589's recurrence: each layer of the segment repeated in place (3,4 x2 -> ...,3,3,4,4,...)."""
    rep = cfg.num_loops + 1
    return tuple(i for i in range(cfg.num_layers) for _ in range(rep if cfg.loop_start <= i <= cfg.loop_end else 1))


def num_skips(layers: tuple[int, ...]) -> int:
    n_enc = len(layers) // 2
    return min(n_enc, len(layers) - n_enc)


def _gather(tree, idx: tuple[int, ...]):
    """Per-virtual-layer parameter stack: a static slice when contiguous, else a gather."""
    if idx == tuple(range(idx[0], idx[0] + len(idx))):
        return jax.tree.map(lambda a: a[idx[0]:idx[0] + len(idx)], tree)
    order = jnp.asarray(idx, jnp.int32)
    return jax.tree.map(lambda a: jnp.take(a, order, axis=0), tree)


class BlockRunner:
    """The stacked blocks as a function of (x, per-slot state, physical layer), with test-time
    slot deltas added to a slot's weights: what every topology runs."""

    def __init__(self, gpt, x0, ctx, slot_deltas=None):
        self.graphdef, self.stacked = nnx.split(gpt.blocks)
        # Block weights a weight source made for this pass (model/generators) fill their slots.
        generated = ctx.get("generated")
        if generated:
            self.stacked = jax.tree_util.tree_map_with_path(
                lambda p, a: generated.get(path_name(p).removesuffix(".value"), a), self.stacked)
        self.x0, self.ctx = x0, ctx
        self.deltas = slot_deltas or {}
        self.parallel = {k: v for k, v in self.deltas.items() if k in PARALLEL_ADAPTERS}
        self.block = jax.checkpoint(self.raw) if gpt.cfg.remat else self.raw

    def raw(self, x, state_adapters, layer):
        state, adapters = state_adapters
        return nnx.merge(self.graphdef, state)(x, self.x0, layer, self.ctx, adapters)

    def slots(self, state, slots):
        """(block weights of virtual slots `slots` (an index or a slice) plus their weight deltas,
        those slots' parallel adapters)."""
        def add(path, a):
            d = self.deltas.get(path_name(path).removesuffix(".value"))
            return a if d is None else a + d[slots].astype(a.dtype)

        if self.deltas:
            state = jax.tree_util.tree_map_with_path(add, state)
        return state, {k: v[slots] for k, v in self.parallel.items()}

    def layer(self, layer: int, slot: int):
        """The state of one physical layer at one virtual slot."""
        return self.slots(jax.tree.map(lambda a: a[layer], self.stacked), slot)

    def calibrate(self, x, state, layer, tap_fn):
        with capture_linear_inputs() as taps:
            x = self.raw(x, state, layer)
        tap_fn(layer, taps)
        return x

    def scan(self, fn, x, first_slot: int, idx: tuple[int, ...], *extra):
        if not idx:
            return x, None
        state = self.slots(_gather(self.stacked, idx), slice(first_slot, first_slot + len(idx)))
        return jax.lax.scan(fn, x, (state, jnp.asarray(idx, jnp.int32)) + extra)


class UNet:
    """The reference's topology: the first half's outputs are added back, in reverse, to the
    second half's inputs through learned per-channel skip weights (sigmoid-gated lerps with
    model.skip_gates_enabled, #1493)."""

    @staticmethod
    def create(gpt, cfg, rngs) -> None:
        n_skip = max(num_skips(gpt.layers), num_skips(gpt.plain_layers))
        gpt.skip_weights = param(jnp.ones((n_skip, cfg.model_dim), jnp.float32), group="scalar", quant="control")
        gpt.skip_gates = (param(jnp.zeros((n_skip, cfg.model_dim), jnp.float32), group="scalar", quant="control")
                          if cfg.skip_gates_enabled else None)

    @staticmethod
    def run(gpt, x, x0, ctx, layers, tap_fn=None, slot_deltas=None):
        n_enc, n_skip = len(layers) // 2, num_skips(layers)
        run = BlockRunner(gpt, x0, ctx, slot_deltas)
        skip_w = gpt.skip_weights[...].astype(x.dtype)
        # Gated skips (spec 4.2): lerp(w*s, x, sigmoid(g)); plain skips: x + w*s.
        skip_g = None if gpt.skip_gates is None else jax.nn.sigmoid(gpt.skip_gates[...].astype(x.dtype))

        def add_skip(x, w, g, skip):
            scaled = w * skip
            return x + scaled if g is None else scaled + g * (x - scaled)

        if tap_fn is not None or not gpt.cfg.scan_layers:
            # Plain Python loop: the reference's structure; also the calibration path, which
            # records each block's linear inputs under the block's physical index.
            skips = []
            for j, layer in enumerate(layers):
                if j >= n_enc and skips:
                    i = j - n_enc
                    x = add_skip(x, skip_w[i], None if skip_g is None else skip_g[i], skips.pop())
                state = run.layer(layer, j)
                x = run.block(x, state, layer) if tap_fn is None else run.calibrate(x, state, layer, tap_fn)
                if j < n_enc:
                    skips.append(x)
            return x, {}

        def enc_step(x, xs):
            x = run.block(x, xs[0], xs[1])
            return x, x

        def dec_skip_step(x, xs):
            state, layer, w, skip, *g = xs
            return run.block(add_skip(x, w, g[0] if g else None, skip), state, layer), None

        def dec_step(x, xs):
            return run.block(x, xs[0], xs[1]), None

        x, skips = run.scan(enc_step, x, 0, layers[:n_enc])
        dec = layers[n_enc:]
        if n_skip:
            # Decoder step i pops the skip pushed by encoder step n_enc - 1 - i.
            extra = (skip_w[:n_skip], skips[::-1][:n_skip]) + (() if skip_g is None else (skip_g[:n_skip],))
            x, _ = run.scan(dec_skip_step, x, n_enc, dec[:n_skip], *extra)
        x, _ = run.scan(dec_step, x, n_enc + n_skip, dec[n_skip:])
        return x, {}


class Plain:
    """A straight stack along the schedule: no skip connections and no skip parameters."""

    @staticmethod
    def create(gpt, cfg, rngs) -> None:
        pass

    @staticmethod
    def run(gpt, x, x0, ctx, layers, tap_fn=None, slot_deltas=None):
        run = BlockRunner(gpt, x0, ctx, slot_deltas)
        if tap_fn is not None or not gpt.cfg.scan_layers:
            for j, layer in enumerate(layers):
                state = run.layer(layer, j)
                x = run.block(x, state, layer) if tap_fn is None else run.calibrate(x, state, layer, tap_fn)
            return x, {}
        x, _ = run.scan(lambda x, xs: (run.block(x, xs[0], xs[1]), None), x, 0, tuple(layers))
        return x, {}
