"""How the stacked blocks are connected (registry.TOPOLOGIES) and in which order they run
(registry.BLOCK_SCHEDULES).

A block schedule is a tuple of physical layer indices: `lax.scan` walks it over the stacked
weights, so depth recurrence is a different tuple over the same parameters. A topology creates the
parameters it needs on the model (`create`) and runs the blocks (`run(gpt, x, x0, ctx, layers,
tap_fn) -> (x, aux losses)`, ctx the pass: layers.Pass); `unet` is the reference's (skips between
the halves), `plain` a straight stack without skip parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax import registry
from pgolf_jax.config import ModelConfig, layer_mixers
from pgolf_jax.model.lanes import on_lane0
from pgolf_jax.model.layers import Pass, captured_inputs
from pgolf_jax.model.params import param, path_name


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


@functools.partial(jax.tree_util.register_dataclass, data_fields=("state", "slot"), meta_fields=("stack",))
@dataclasses.dataclass(frozen=True)
class SlotState:
    """What one block application reads: its stack's weights, the virtual slot index (traced under
    scan) and which stack (static)."""
    state: Any
    slot: Any
    stack: str


class BlockRunner:
    """The stacked blocks as a function of (x, per-slot state, physical layer): what every topology
    runs. Each application gets the pass narrowed to its (physical layer, virtual slot). A schedule
    may cross the segments of a heterogeneous stack (gpt.stacks); a scan then runs once per
    segment run."""

    def __init__(self, gpt, x0, ctx: Pass):
        self.stacks = {name: nnx.split(getattr(gpt, name)) for name in gpt.stacks}
        # physical layer -> (stack, index within it)
        self.where = {layer: (name, i) for name, layers in gpt.stacks.items() for i, layer in enumerate(layers)}
        self.sizes = {name: len(layers) for name, layers in gpt.stacks.items()}
        # Block weights a weight source made for this pass (model/generators) fill their slots in
        # the attention stack (a weight source requires plain attention blocks).
        generated = ctx.generated
        if generated:
            graphdef, state = self.stacks["blocks"]
            self.stacks["blocks"] = (graphdef, jax.tree_util.tree_map_with_path(
                lambda p, a: generated.get(path_name(p).removesuffix(".value"), a), state))
        self.x0, self.ctx = x0, ctx
        self.block = jax.checkpoint(self.raw) if gpt.cfg.remat else self.raw

    def raw(self, x, s: SlotState, layer):
        return nnx.merge(self.stacks[s.stack][0], s.state)(x, self.x0, layer, self.ctx.at(layer, s.slot))

    def capture(self, x, s: SlotState, layer):
        """(the block's output, {"<linear>.<weight>": its input}): the block applied with its
        linears recording their inputs (GPTQ calibration)."""
        block = nnx.merge(self.stacks[s.stack][0], s.state)
        ctx = dataclasses.replace(self.ctx.at(layer, s.slot), capture=True)
        return captured_inputs(block, x, self.x0, layer, ctx)

    def slots(self, stack: str, state, slots) -> SlotState:
        """Block weights of virtual slots `slots` (an index or a slice) with those slots' indices."""
        index = jnp.arange(slots.start, slots.stop, dtype=jnp.int32) if isinstance(slots, slice) else slots
        return SlotState(state, index, stack)

    def layer(self, layer: int, slot: int) -> SlotState:
        """The state of one physical layer at one virtual slot."""
        stack, i = self.where[layer]
        return self.slots(stack, jax.tree.map(lambda a: a[i], self.stacks[stack][1]), slot)

    def calibrate(self, x, s: SlotState, layer, tap_fn):
        """Apply the block, then hand tap_fn(index in its stack, stack size, {"<stack>.<input>": x})."""
        x, taps = self.capture(x, s, layer)
        stack, i = self.where[layer]
        tap_fn(i, self.sizes[stack], {f"{stack}.{name}": v for name, v in taps.items()})
        return x

    def scan(self, fn, x, first_slot: int, idx: tuple[int, ...], *extra):
        """lax.scan of fn over the virtual layers idx (slots first_slot...), with `extra` scanned
        beside them; one scan per run of consecutive layers in the same stack, outputs joined."""
        outs, start = [], 0
        for stack, run in itertools.groupby(idx, key=lambda layer: self.where[layer][0]):
            run = tuple(run)
            stop = start + len(run)
            local = tuple(self.where[layer][1] for layer in run)
            state = self.slots(stack, _gather(self.stacks[stack][1], local),
                               slice(first_slot + start, first_slot + stop))
            x, ys = jax.lax.scan(fn, x, (state, jnp.asarray(run, jnp.int32)) + tuple(e[start:stop] for e in extra))
            outs.append(ys)
            start = stop
        if len(outs) <= 1:
            return x, outs[0] if outs else None
        return x, jax.tree.map(lambda *a: jnp.concatenate(a), *outs)


class UNet:
    """The reference's topology: the first half's outputs are added back, in reverse, to the
    second half's inputs through learned per-channel skip weights (sigmoid-gated lerps with
    model.skip_gates_enabled, #1493). Under model.parallel_residual=two_lane the second half carries
    the lanes and the skips feed lane0 (model/lanes.py)."""

    @staticmethod
    def create(gpt, cfg, rngs) -> None:
        n_skip = max(num_skips(gpt.layers), num_skips(gpt.plain_layers))
        gpt.skip_weights = param(jnp.ones((n_skip, cfg.model_dim), jnp.float32), group="scalar", quant="control")
        gpt.skip_gates = (param(jnp.zeros((n_skip, cfg.model_dim), jnp.float32), group="scalar", quant="control")
                          if cfg.skip_gates_enabled else None)

    @staticmethod
    def run(gpt, x, x0, ctx, layers, tap_fn=None):
        n_enc, n_skip = len(layers) // 2, num_skips(layers)
        run = BlockRunner(gpt, x0, ctx)
        lanes = registry.resolve(registry.PARALLEL_RESIDUALS, gpt.cfg.parallel_residual)
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
                if j == n_enc:
                    x = lanes.open(x)
                if j >= n_enc and skips:
                    i = j - n_enc
                    w, g = skip_w[i], None if skip_g is None else skip_g[i]
                    x = on_lane0(x, lambda h: add_skip(h, w, g, skips.pop()))  # noqa: B023 (called at once)
                state = run.layer(layer, j)
                x = run.block(x, state, layer) if tap_fn is None else run.calibrate(x, state, layer, tap_fn)
                if j < n_enc:
                    skips.append(x)
            return lanes.close(x, gpt.cfg), {}

        def enc_step(x, xs):
            x = run.block(x, xs[0], xs[1])
            return x, x

        def dec_skip_step(x, xs):
            state, layer, w, skip, *g = xs
            return run.block(on_lane0(x, lambda h: add_skip(h, w, g[0] if g else None, skip)), state, layer), None

        def dec_step(x, xs):
            return run.block(x, xs[0], xs[1]), None

        x, skips = run.scan(enc_step, x, 0, layers[:n_enc])
        x = lanes.open(x)  # two lanes (#1530) run in the decoder only, as the record's
        dec = layers[n_enc:]
        if n_skip:
            # Decoder step i pops the skip pushed by encoder step n_enc - 1 - i.
            extra = (skip_w[:n_skip], skips[::-1][:n_skip]) + (() if skip_g is None else (skip_g[:n_skip],))
            x, _ = run.scan(dec_skip_step, x, n_enc, dec[:n_skip], *extra)
        x, _ = run.scan(dec_step, x, n_enc + n_skip, dec[n_skip:])
        return lanes.close(x, gpt.cfg), {}


class Plain:
    """A straight stack along the schedule: no skip connections and no skip parameters."""

    @staticmethod
    def create(gpt, cfg, rngs) -> None:
        pass

    @staticmethod
    def run(gpt, x, x0, ctx, layers, tap_fn=None):
        run = BlockRunner(gpt, x0, ctx)
        lanes = registry.resolve(registry.PARALLEL_RESIDUALS, gpt.cfg.parallel_residual)
        x = lanes.open(x)
        if tap_fn is not None or not gpt.cfg.scan_layers:
            for j, layer in enumerate(layers):
                state = run.layer(layer, j)
                x = run.block(x, state, layer) if tap_fn is None else run.calibrate(x, state, layer, tap_fn)
            return lanes.close(x, gpt.cfg), {}
        x, _ = run.scan(lambda x, xs: (run.block(x, xs[0], xs[1]), None), x, 0, tuple(layers))
        return lanes.close(x, gpt.cfg), {}


# Which blocks a GPT stacks and the order its topology walks them.

def block_stacks(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{GPT attribute: the physical layers it stacks}: `blocks` holds the attention layers and each
    other mixer's layers are their own segment `blocks_<mixer>` (model.mixers), so a layer holds
    only its own mixer's parameters."""
    stacks: dict[str, list[int]] = {}
    for layer, kind in enumerate(layer_mixers(cfg)):
        stacks.setdefault("blocks" if kind == "attn" else f"blocks_{kind}", []).append(layer)
    return {name: tuple(layers) for name, layers in stacks.items()}


def block_class(cfg: ModelConfig, stack: str):
    """The block of a stack: the topology's own (ut_shared's parallel blocks), else its mixer's."""
    topology = registry.resolve(registry.TOPOLOGIES, cfg.topology)
    if hasattr(topology, "block"):
        return topology.block
    return registry.resolve(registry.MIXERS, stack.removeprefix("blocks_") if stack != "blocks" else "attn")


def schedule(cfg: ModelConfig) -> tuple[int, ...]:
    """The virtual layer order of the configured topology (its own, or model.block_schedule's)."""
    topology = registry.resolve(registry.TOPOLOGIES, cfg.topology)
    if hasattr(topology, "layers"):
        return topology.layers(cfg)
    return registry.resolve(registry.BLOCK_SCHEDULES, cfg.block_schedule)(cfg)
