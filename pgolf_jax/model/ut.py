"""The shared-block Universal Transformer of #2114 (spec 3.2) as a topology (model.topology=ut_shared):

    x = Block_in(x);  for k < K: x = Block_shared(x + e_k);  x = Block_out(x)

with three physical layers walked as (0, 1 x K, 2) (K = model.ut_shared.iterations), a learned depth
embedding e (K, D) ~ N(0, tied_embed_init_std^2) (#2114 ties it to the embedding's std), and
every block a parallel attention + MLP block: b = a_a * Attn(n) + a_m * MLP(n), n = rms_norm(x),
with per-channel branch scales a initialised to model.ut_shared.branch_scale_init (0.6). The residual
update uses rs = 1 / sqrt(K + 2), fixed: `delta` x + rs b (UT7, submitted) or `contraction`
rs (x + b) (the earlier form, which shrinks the state every pass). No U-Net skips, no resid_mix.
The virtual slot of each pass (0 .. K + 1) reaches the blocks' linears, so RLMA bases differ per
iteration (k = slot - 1).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax import registry
from pgolf_jax.model.gpt import MLP
from pgolf_jax.model.layers import Pass, name_taps, rms_norm
from pgolf_jax.model.params import param
from pgolf_jax.model.topology import BlockRunner


def residual_scale(cfg) -> float:
    return 1.0 / math.sqrt(cfg.ut_shared.iterations + 2)


class ParallelBlock(nnx.Module):
    """#2114's block: one norm, attention and MLP side by side, branch scales, rs residual."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        D = cfg.model_dim
        self.attn = registry.resolve(registry.ATTENTION, cfg.attention)(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)
        init = jnp.full((D,), cfg.ut_shared.branch_scale_init, jnp.float32)
        self.attn_scale = param(init, group="scalar", quant="control")
        self.mlp_scale = param(init, group="scalar", quant="control")
        self.rs, self.delta = residual_scale(cfg), cfg.ut_shared.residual == "delta"
        name_taps(self)

    def __call__(self, x_ND, x0_ND, layer, ctx: Pass):
        del x0_ND, layer  # no x0 mix; no per-layer rules
        dt = x_ND.dtype
        n_ND = rms_norm(x_ND)
        b = (self.attn_scale[...].astype(dt) * ctx.output("attn", n_ND, self.attn(n_ND, ctx))
             + self.mlp_scale[...].astype(dt) * ctx.output("mlp", n_ND, self.mlp(n_ND, ctx)))
        rs = jnp.asarray(self.rs, dt)
        return x_ND + rs * b if self.delta else rs * (x_ND + b)


class UTShared:
    """topology=ut_shared: needs model.num_layers = 3 (Block_in, shared, Block_out)."""

    block = ParallelBlock

    @staticmethod
    def layers(cfg) -> tuple[int, ...]:
        return (0,) + (1,) * cfg.ut_shared.iterations + (2,)

    @staticmethod
    def create(gpt, cfg, rngs) -> None:
        shape = (cfg.ut_shared.iterations, cfg.model_dim)
        e = cfg.tied_embed_init_std * jax.random.normal(rngs.params(), shape, jnp.float32)
        gpt.depth_emb = param(e, group="scalar", quant="other")

    @staticmethod
    def run(gpt, x, x0, ctx, layers, tap_fn=None):
        run = BlockRunner(gpt, x0, ctx)
        depth = gpt.depth_emb[...].astype(x.dtype)

        def apply(x, state, layer):
            return run.block(x, state, layer) if tap_fn is None else run.calibrate(x, state, layer, tap_fn)

        first, shared, last = layers[0], layers[1:-1], layers[-1]
        x = apply(x, run.layer(first, 0), first)
        if tap_fn is not None or not gpt.cfg.scan_layers:
            for k, layer in enumerate(shared):
                x = apply(x + depth[k], run.layer(layer, k + 1), layer)
        else:
            x, _ = run.scan(lambda x, xs: (run.block(x + xs[2], xs[0], xs[1]), None), x, 1, shared,
                            depth[:len(shared)])
        return apply(x, run.layer(last, len(layers) - 1), last), {}
