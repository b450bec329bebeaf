"""The GPT of the reference train_gpt.py as Flax NNX modules, plus a functional wrapper.

Blocks are created stacked (one leading L axis on every block parameter) and executed along a
block schedule: a tuple of physical layer indices that `lax.scan` walks, so depth recurrence is a
different tuple over the same stacked weights. Parameters leave this module as a plain nested
dict of arrays (`Model.init`), which is what optax, quantization and checkpoints see.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.attention import ATTENTION
from pgolf_jax.config import ModelConfig
from pgolf_jax.layers import ACTIVATIONS, LINEAR, rms_norm, rotary_tables, softcap


def resolve_dtype(name: str):
    """'auto' means bfloat16 on GPU (the reference's autocast) and float32 elsewhere."""
    if name == "auto":
        return jnp.bfloat16 if jax.default_backend() == "gpu" else jnp.float32
    return jnp.dtype(name)


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        hidden = cfg.mlp_mult * cfg.model_dim
        self.fc = LINEAR[cfg.linear](cfg.model_dim, hidden, rngs=rngs)
        self.proj = LINEAR[cfg.linear](hidden, cfg.model_dim, init="zeros", rngs=rngs)
        self.act = ACTIVATIONS[cfg.activation]

    def __call__(self, x_ND):
        return self.proj(self.act(self.fc(x_ND)))


class Block(nnx.Module):
    """Pre-norm block with the reference's x0 residual mix and per-channel branch scales."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        D = cfg.model_dim
        self.attn = ATTENTION[cfg.attention](cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)
        self.attn_scale = nnx.Param(jnp.ones((D,), jnp.float32))
        self.mlp_scale = nnx.Param(jnp.ones((D,), jnp.float32))
        self.resid_mix = nnx.Param(jnp.stack([jnp.ones((D,)), jnp.zeros((D,))]).astype(jnp.float32))

    def __call__(self, x_ND, x0_ND, layer, ctx):
        """`layer` is the physical layer index (a traced int under scan), for per-layer rules."""
        del layer  # the baseline treats every layer alike
        dt = x_ND.dtype
        mix = self.resid_mix[...].astype(dt)
        x_ND = mix[0] * x_ND + mix[1] * x0_ND
        x_ND = x_ND + self.attn_scale[...].astype(dt) * self.attn(rms_norm(x_ND), ctx)
        # The MLP reads the post-attention stream (sequential, not parallel, residual).
        return x_ND + self.mlp_scale[...].astype(dt) * self.mlp(rms_norm(x_ND))


class Embedding(nnx.Module):
    def __init__(self, vocab: int, dim: int, std: float, dtype, *, rngs: nnx.Rngs):
        self.weight = nnx.Param((std * jax.random.normal(rngs.params(), (vocab, dim))).astype(dtype))

    def __call__(self, ids_BT):
        return jnp.take(self.weight[...], ids_BT, axis=0)


# ---------------------------------------------------------------------------------------------
# Block schedules: how the stacked blocks are walked. A schedule returns the virtual layer order
# (physical indices); the U-Net pairs the first half's outputs with the second half in reverse.

def unet_layers(cfg: ModelConfig) -> tuple[int, ...]:
    return tuple(range(cfg.num_layers))


BLOCK_SCHEDULES: dict[str, Callable[[ModelConfig], tuple[int, ...]]] = {"unet": unet_layers}


def num_skips(layers: tuple[int, ...]) -> int:
    n_enc = len(layers) // 2
    return min(n_enc, len(layers) - n_enc)


def _gather(tree, idx: tuple[int, ...]):
    """Per-virtual-layer parameter stack: a static slice when contiguous, else a gather."""
    if idx == tuple(range(idx[0], idx[0] + len(idx))):
        return jax.tree.map(lambda a: a[idx[0]:idx[0] + len(idx)], tree)
    order = jnp.asarray(idx, jnp.int32)
    return jax.tree.map(lambda a: jnp.take(a, order, axis=0), tree)


class GPT(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.compute_dtype = resolve_dtype(cfg.compute_dtype)
        std = cfg.tied_embed_init_std if cfg.tie_embeddings else 1.0  # untied: nn.Embedding's N(0, 1)
        self.tok_emb = Embedding(cfg.vocab_size, cfg.model_dim, std, resolve_dtype(cfg.embed_dtype), rngs=rngs)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(rngs):
            return Block(cfg, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.layers = BLOCK_SCHEDULES[cfg.block_schedule](cfg)
        if any(not 0 <= i < cfg.num_layers for i in self.layers):
            raise ValueError(f"block schedule {cfg.block_schedule!r} uses layers outside 0..{cfg.num_layers - 1}")
        self.skip_weights = nnx.Param(jnp.ones((num_skips(self.layers), cfg.model_dim), jnp.float32))
        self.lm_head = None if cfg.tie_embeddings else LINEAR["dense"](
            cfg.model_dim, cfg.vocab_size, init="zeros", rngs=rngs)

    def hidden(self, ids_BT):
        """Final-norm hidden states (B, T, D): the head's input."""
        cfg = self.cfg
        B, T = ids_BT.shape
        # The residual stream is kept flat, (B*T, D): the gradient of a (D,) parameter broadcast
        # over (1, T, D) is a middle-axis reduction that XLA:CPU runs ~40x slower than over (N, D).
        x_ND = rms_norm(self.tok_emb(ids_BT).reshape(B * T, cfg.model_dim).astype(self.compute_dtype))
        head_dim = cfg.model_dim // cfg.num_heads
        ctx = {"rope": rotary_tables(T, head_dim, cfg.rope_base, self.compute_dtype), "shape_BT": (B, T)}
        x_ND = self._run_unet(x_ND, x_ND, ctx)
        return rms_norm(x_ND).reshape(B, T, cfg.model_dim)

    def __call__(self, ids_BT):
        """Soft-capped logits (B, T, V) in fp32."""
        h_BTD = self.hidden(ids_BT)
        if self.lm_head is None:
            logits = jnp.einsum("btd,vd->btv", h_BTD, self.tok_emb.weight[...].astype(h_BTD.dtype))
        else:
            logits = self.lm_head(h_BTD)
        # The cap is applied in fp32 (the reference applies it to the bf16 logits before .float()).
        return softcap(logits.astype(jnp.float32), self.cfg.logit_softcap)

    def _run_unet(self, x, x0, ctx):
        layers = self.layers
        n_enc = len(layers) // 2
        n_skip = num_skips(layers)
        graphdef, stacked = nnx.split(self.blocks)
        skip_w = self.skip_weights[...].astype(x.dtype)

        def block(x, state, layer):
            return nnx.merge(graphdef, state)(x, x0, layer, ctx)

        if self.cfg.remat:
            block = jax.checkpoint(block)

        if not self.cfg.scan_layers:  # plain Python loop: the reference's structure, for tests
            skips = []
            for j, layer in enumerate(layers):
                if j >= n_enc and skips:
                    x = x + skip_w[j - n_enc] * skips.pop()
                x = block(x, jax.tree.map(lambda a: a[layer], stacked), layer)
                if j < n_enc:
                    skips.append(x)
            return x

        def scan(fn, x, idx, *extra):
            if not idx:
                return x, None
            xs = (_gather(stacked, idx), jnp.asarray(idx, jnp.int32)) + extra
            return jax.lax.scan(fn, x, xs)

        def enc_step(x, xs):
            x = block(x, xs[0], xs[1])
            return x, x

        def dec_skip_step(x, xs):
            state, layer, w, skip = xs
            return block(x + w * skip, state, layer), None

        def dec_step(x, xs):
            return block(x, xs[0], xs[1]), None

        x, skips = scan(enc_step, x, layers[:n_enc])
        dec = layers[n_enc:]
        if n_skip:
            # Decoder step i pops the skip pushed by encoder step n_enc - 1 - i.
            x, _ = scan(dec_skip_step, x, dec[:n_skip], skip_w, skips[::-1][:n_skip])
        x, _ = scan(dec_step, x, dec[n_skip:])
        return x


# ---------------------------------------------------------------------------------------------
# Functional wrapper: params are a plain nested dict; the module is rebuilt inside each trace.

@dataclasses.dataclass(frozen=True)
class Model:
    cfg: ModelConfig
    graphdef: nnx.GraphDef
    abstract_state: nnx.State

    def init(self, key: jax.Array) -> dict:
        return nnx.to_pure_dict(nnx.state(GPT(self.cfg, rngs=nnx.Rngs(params=key))))

    def module(self, params: dict) -> GPT:
        state = jax.tree.map(lambda v: v, self.abstract_state)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state)

    def logits(self, params, ids_BT):
        return self.module(params)(ids_BT)

    def hidden(self, params, ids_BT):
        return self.module(params).hidden(ids_BT)

    def token_nll(self, params, x_BT, y_BT):
        """Per-token cross-entropy in nats (fp32), shape (B, T)."""
        logits = self.logits(params, x_BT)
        logz = jax.nn.logsumexp(logits, axis=-1)
        return logz - jnp.take_along_axis(logits, y_BT[..., None], axis=-1)[..., 0]

    def loss(self, params, x_BT, y_BT):
        return jnp.mean(self.token_nll(params, x_BT, y_BT))


def build_model(cfg: ModelConfig) -> Model:
    abstract = nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(params=0)))
    graphdef, state = nnx.split(abstract)
    return Model(cfg, graphdef, state)


def count_params(params) -> int:
    return sum(int(a.size) for a in jax.tree.leaves(params))
