"""The residual stream's lanes (registry.PARALLEL_RESIDUALS, model.parallel_residual).

one_lane: one stream; blocks are sequential, or GPT-J parallel (attention and MLP read the same
input) from physical layer model.parallel_residual_start.
two_lane (#1529 / #1530+): from the topology's `open` on (the U-Net's decoder, a plain stack's
start) the stream is a pair (lane0, lane1). A block at physical layer >= parallel_residual_start
reads attention from lane0 (mixed with x0) and the MLP from lane1, and both lanes update:
lane_i <- resid_lambda[i] lane_i + post[0][i] attn + post[1][i] mlp. A block below the start runs
sequentially on lane0 and both lanes take its output (so lanes stay equal until the first parallel
block, as the record's single stream). U-Net skips add to lane0; `close` gives the head the mean.

Two lanes are an option of the parallel residual, not a topology or a block schedule: they change
what a block reads and writes, while the U-Net / plain wiring and any depth-recurrent schedule stay
the same (lanes are one more carried value of the same scan).
"""

from __future__ import annotations

import jax.numpy as jnp

from pgolf_jax.model.params import param


class OneLane:
    """Today's single residual stream: every method is the identity."""

    @staticmethod
    def setup(blk, cfg):
        pass

    @staticmethod
    def open(x):
        return x

    @staticmethod
    def close(x, cfg):
        return x


class TwoLane:
    """#1530's two lanes, carried as a tuple (lane0, lane1)."""

    @staticmethod
    def setup(blk, cfg):
        """A block's lane parameters; outside the lanes (the U-Net's encoder) blocks are sequential, as
        the record's. Per layer, as the record's (L, 2) / (L, 2, 2) tensors: scalar Adam, kept fp32."""
        blk.lane_start, blk.parallel_start = cfg.parallel_residual_start, -1
        blk.resid_lambda = param(jnp.full((2,), cfg.two_lane.resid_init, jnp.float32), group="scalar", quant="control")
        blk.post_lambda = param(jnp.ones((2, 2), jnp.float32), group="scalar", quant="control")

    @staticmethod
    def open(x):
        return (x, x)

    @staticmethod
    def close(x, cfg):
        lane0, lane1 = x
        final = cfg.two_lane.final_lane
        return lane0 if final == "attn" else lane1 if final == "mlp" else 0.5 * (lane0 + lane1)

    @staticmethod
    def block(blk, lanes, x0_ND, layer, ctx):
        """model/gpt.py's Block on (lane0, lane1): from the start layer attention reads lane0 (mixed
        with x0), the MLP lane1, and lane_i <- resid_lambda[i] lane_i + post[0][i] attn + post[1][i] mlp;
        below it the block is sequential on lane0 and both lanes take its output. One attention and
        one MLP either way (the rule is selected, not both computed, under scan)."""
        lane0, lane1 = lanes
        dt = lane0.dtype
        par = layer_ge(layer, blk.lane_start)
        mix = blk.resid_mix[...].astype(dt)
        x_ND = mix[0] * lane0 + mix[1] * x0_ND
        norm, xsa = blk.norm_and_xsa(layer, dt)
        n_ND = norm(x_ND)
        attn = blk.attn_scale[...].astype(dt) * ctx.output("attn", n_ND, blk.mix(n_ND, ctx, xsa))
        n_ND = norm(pick(par, lane1, x_ND + attn))
        mlp = blk.mlp_scale[...].astype(dt) * ctx.output("mlp", n_ND, blk.mlp(n_ND, ctx))
        # Sequential: both lanes = x + attn + mlp, i.e. resid = 1 on the mixed input and post = 1.
        resid, post = blk.resid_lambda[...].astype(dt), blk.post_lambda[...].astype(dt)
        one = jnp.ones((), dt)
        return tuple(pick(par, resid[i] * lane, x_ND) + pick(par, post[0, i], one) * attn
                     + pick(par, post[1, i], one) * mlp for i, lane in enumerate((lane0, lane1)))


def on_lane0(x, fn):
    """fn applied to the stream a U-Net skip feeds: lane0 of two lanes, else the one stream."""
    return (fn(x[0]), x[1]) if isinstance(x, tuple) else fn(x)


def layer_ge(layer, threshold: int):
    """layer >= threshold, as a Python bool for a static layer and a traced bool under scan."""
    return layer >= threshold if isinstance(layer, int) else jnp.asarray(layer) >= threshold


def pick(cond, a, b):
    """a where cond else b: a Python choice for a static layer, jnp.where for a traced one (scan)."""
    if isinstance(cond, bool):
        return a if cond else b
    return jnp.where(cond, a, b)
