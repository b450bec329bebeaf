"""Weight sources (registry.WEIGHT_SOURCES, `model.weight_source`): where a GPT's block linears get
their weights. `params` (model/layers.StoredWeights) stores them as parameters; the sources here
(#1589, spec 4.7 and 4.9) make them from their own parameters on every forward pass:

    basis     one shared U per weight type, per-layer coefficients C (W_i = U C_i)
    hypernet  layer embedding -> MLP -> per-type heads emitting low-rank factors (W = A B)
    siren     a sine MLP from (row, col, layer, type embedding) to each weight value
    nca       a 1-D cellular automaton whose final state is the block weights
    seed      theta = theta0 + P phi with theta0, P regenerated from a fixed PRNG seed

One seam: a source's block linear holds `Generated` variables instead of parameters, the source
fills them once per forward pass (`generate`, called from the GPT's block context), and the
BlockRunner (model/topology.py) merges them into the stacked block state it scans over. So a
generated value is never a parameter (not optimized, not saved, not in the artifact): what is
stored, optimized and quantized is the source's own parameters (created on the GPT under `gen`),
by the group and rule each declares.

A source is a class with `linear` (the block linear it makes), `create(gpt, cfg, rngs)` and
`generate(gpt, rng) -> {block path ("attn.c_q.weight"): (L, ...) array}`; rng is the train step's
key in training and None in evaluation (then every source is deterministic).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.model.layers import DenseLinear
from pgolf_jax.model.params import path_name

# The six block linears of the GPT in #1589's order (the SIREN's weight-type ids follow it).
SITES = ("attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj")


class Generated(nnx.Variable):
    """A block value its weight source fills in every forward pass: never a parameter."""


class GeneratedLinear(DenseLinear):
    """A dense block linear whose weight (out, in) is a Generated slot (a shape until filled)."""

    def __init__(self, in_f: int, out_f: int, *, init: str, quant: str, cfg, rngs: nnx.Rngs):
        del init, cfg, rngs  # the source decides the values
        self.weight = Generated(jnp.zeros((out_f, in_f), jnp.float32), site=quant)
        self.tap = None


class Source:
    """What the generating sources share: their block linears are GeneratedLinear and their own
    parameters are `params(cfg, key)`, created on the GPT as `gen`."""

    linear = GeneratedLinear
    params = None

    @classmethod
    def create(cls, gpt, cfg, rngs) -> None:
        gpt.gen = cls.params(cfg, rngs.params())


def generated_slots(gpt) -> dict[str, tuple[int, ...]]:
    """{block path ("attn.c_q.weight"): stacked shape (L, ...)} of every Generated slot, in #1589's
    site order (a fixed order: the flat layouts of nca and seed depend on it)."""
    state = nnx.state(gpt.blocks, Generated)
    leaves = jax.tree_util.tree_leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    slots = {path_name(p).removesuffix(".value"): tuple(v.get_value().shape) for p, v in leaves}

    def order(name):
        site = name.rsplit(".", 1)[0]
        return (SITES.index(site) if site in SITES else len(SITES), name)

    return {name: slots[name] for name in sorted(slots, key=order)}


def attr_name(slot: str) -> str:
    """A parameter attribute name for a block path: "attn.c_q.weight" -> "attn_c_q"."""
    return slot.rsplit(".", 1)[0].replace(".", "_")


def split_flat(flat, slots: dict[str, tuple[int, ...]]) -> dict:
    """A flat vector (at least as long as all slots) cut into the slots, in order."""
    out, offset = {}, 0
    for name, shape in slots.items():
        n = 1
        for d in shape:
            n *= d
        out[name] = flat[offset:offset + n].reshape(shape)
        offset += n
    return out


def chunked(fn, n: int, chunk: int):
    """fn(flat indices (chunk,)) -> (chunk,) over indices 0..n-1, one chunk at a time by lax.map,
    each chunk rematerialized in the backward pass: memory is one chunk's, never all n at once."""
    chunk = min(chunk, n)
    n_chunks = -(-n // chunk)
    idx = jnp.arange(n_chunks * chunk, dtype=jnp.int32).reshape(n_chunks, chunk)
    return jax.lax.map(jax.checkpoint(fn), idx).reshape(-1)[:n]
