"""The GPT of the reference train_gpt.py as Flax NNX modules, plus a functional wrapper.

Blocks are created stacked (one leading L axis on every block parameter) and executed along a
block schedule: a tuple of physical layer indices that `lax.scan` walks, so depth recurrence is a
different tuple over the same stacked weights. Per-layer rules (layerwise norm scale, XSA,
parallel residual) follow the physical index, which the scan passes to the block. Parameters
leave this module as a plain nested dict of arrays (`Model.init`), which is what optax,
quantization and checkpoints see.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.model.attention import ATTENTION
from pgolf_jax.config import ModelConfig
from pgolf_jax.model.embeddings import BigramHash, Embedding, SmearGateV1, SmearGateV2
from pgolf_jax.model.layers import (ACTIVATIONS, LINEAR, capture_linear_inputs, linear_init, name_taps, rms_norm,
                              rotary_tables, softcap)
from pgolf_jax.model.params import path_name


def resolve_dtype(name: str):
    """'auto' means bfloat16 on GPU (the reference's autocast) and float32 elsewhere."""
    if name == "auto":
        return jnp.bfloat16 if jax.default_backend() == "gpu" else jnp.float32
    return jnp.dtype(name)


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        D, hidden = cfg.model_dim, int(cfg.mlp_mult * cfg.model_dim)
        self.fc = LINEAR[cfg.linear](D, hidden, init=linear_init(cfg, D, hidden), rngs=rngs)
        self.proj = LINEAR[cfg.linear](hidden, D, init="zeros", rngs=rngs)
        self.act = ACTIVATIONS[cfg.activation]

    def __call__(self, x_ND):
        return self.proj(self.act(self.fc(x_ND)))


def _ge(layer, threshold: int):
    """layer >= threshold, as a Python bool for a static layer and a traced bool under scan."""
    return layer >= threshold if isinstance(layer, int) else jnp.asarray(layer) >= threshold


class Block(nnx.Module):
    """Pre-norm block with the reference's x0 residual mix and per-channel branch scales."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        D = cfg.model_dim
        self.attn = ATTENTION[cfg.attention](cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)
        self.attn_scale = nnx.Param(jnp.ones((D,), jnp.float32))
        self.mlp_scale = nnx.Param(jnp.ones((D,), jnp.float32))
        self.resid_mix = nnx.Param(jnp.stack([jnp.ones((D,)), jnp.zeros((D,))]).astype(jnp.float32))
        self.num_layers, self.ln_scale = cfg.num_layers, cfg.ln_scale
        self.xsa_last_n, self.parallel_start = cfg.xsa_last_n, cfg.parallel_residual_start
        name_taps(self)

    def __call__(self, x_ND, x0_ND, layer, ctx, adapters=None):
        """`layer` is the physical layer index (a traced int under scan) the per-layer rules use.
        adapters {"attn_par" / "mlp_par": (D, D)} are test-time parallel paths from each sublayer's
        normalized input, added to its output before the attn/mlp scale (the records' O and MLP
        LoRA placement)."""
        dt = x_ND.dtype
        mix = self.resid_mix[...].astype(dt)
        x_ND = mix[0] * x_ND + mix[1] * x0_ND
        # Layerwise LN scale 1/sqrt(i+1) on both norm outputs, by physical index (spec 4.7).
        c = jax.lax.rsqrt(jnp.asarray(layer, jnp.float32) + 1.0).astype(dt) if self.ln_scale else None
        norm = (lambda h: rms_norm(h) * c) if self.ln_scale else rms_norm
        xsa = _ge(layer, self.num_layers - self.xsa_last_n) if self.xsa_last_n else 0.0
        adapters = adapters or {}

        def parallel(name, n_ND, y_ND):
            d = adapters.get(name)
            return y_ND if d is None else y_ND + n_ND @ d.astype(dt).T

        n_ND = norm(x_ND)
        attn_out = x_ND + self.attn_scale[...].astype(dt) * parallel("attn_par", n_ND, self.attn(n_ND, ctx, xsa=xsa))
        # Sequential blocks feed the MLP the post-attention stream; GPT-J parallel blocks
        # (physical layer >= parallel_residual_start) feed it the block input (spec 4.3).
        mlp_in = attn_out
        if self.parallel_start >= 0:
            mlp_in = jnp.where(_ge(layer, self.parallel_start), x_ND, attn_out)
        n_ND = norm(mlp_in)
        return attn_out + self.mlp_scale[...].astype(dt) * parallel("mlp_par", n_ND, self.mlp(n_ND))


# ---------------------------------------------------------------------------------------------
# Block schedules: the virtual layer order (physical indices) the stacked blocks are walked in.
# The U-Net pairs the first half's outputs with the second half in reverse.

def unet_layers(cfg: ModelConfig) -> tuple[int, ...]:
    """The baseline order; with num_loops, the segment loop_start..loop_end runs num_loops + 1
    times in a row (records 04-05+: 0,1,2,3,4,5,3,4,5,3,4,5,6,...)."""
    L, s, e = cfg.num_layers, cfg.loop_start, cfg.loop_end
    if not cfg.num_loops:
        return tuple(range(L))
    return tuple(range(s)) + tuple(range(s, e + 1)) * (cfg.num_loops + 1) + tuple(range(e + 1, L))


def repeat_in_place_layers(cfg: ModelConfig) -> tuple[int, ...]:
    """#1589's recurrence: each layer of the segment repeated in place (3,4 x2 -> ...,3,3,4,4,...)."""
    rep = cfg.num_loops + 1
    return tuple(i for i in range(cfg.num_layers) for _ in range(rep if cfg.loop_start <= i <= cfg.loop_end else 1))


BLOCK_SCHEDULES: dict[str, Callable[[ModelConfig], tuple[int, ...]]] = {
    "unet": unet_layers, "repeat_in_place": repeat_in_place_layers}


def num_skips(layers: tuple[int, ...]) -> int:
    n_enc = len(layers) // 2
    return min(n_enc, len(layers) - n_enc)


# slot_deltas keys that are parallel adapter matrices (D, D) rather than weight deltas.
PARALLEL_ADAPTERS = ("attn_par", "mlp_par")


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
        embed_dtype = resolve_dtype(cfg.embed_dtype)
        std = cfg.tied_embed_init_std if cfg.tie_embeddings else 1.0  # untied: nn.Embedding's N(0, 1)
        self.tok_emb = Embedding(cfg.vocab_size, cfg.model_dim, std, embed_dtype, rngs=rngs)
        self.bigram = BigramHash(cfg, embed_dtype, rngs=rngs) if cfg.bigram_vocab_size else None
        if self.bigram is not None:
            name_taps(self.bigram, "bigram")
        self.smear = (SmearGateV1(cfg.model_dim) if cfg.smear_gate == "v1" else
                      SmearGateV2(cfg.smear_gate_bos_fix) if cfg.smear_gate == "v2" else None)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(rngs):
            return Block(cfg, rngs=rngs)

        self.blocks = make_blocks(rngs)
        # Before model.enable_looping_at the plain order runs; afterwards (and in eval) the
        # configured schedule. Skip slots are sized for the longer of the two.
        self.plain_layers = tuple(range(cfg.num_layers))
        self.layers = BLOCK_SCHEDULES[cfg.block_schedule](cfg)
        if any(not 0 <= i < cfg.num_layers for i in self.layers):
            raise ValueError(f"block schedule {cfg.block_schedule!r} uses layers outside 0..{cfg.num_layers - 1}")
        n_skip = max(num_skips(self.layers), num_skips(self.plain_layers))
        self.skip_weights = nnx.Param(jnp.ones((n_skip, cfg.model_dim), jnp.float32))
        self.skip_gates = nnx.Param(jnp.zeros((n_skip, cfg.model_dim), jnp.float32)) if cfg.skip_gates_enabled else None
        self.lm_head = None if cfg.tie_embeddings else LINEAR["dense"](
            cfg.model_dim, cfg.vocab_size, init="zeros", rngs=rngs)

    def embed(self, ids_BT):
        """x0: the normalized token (+ bigram) embedding, smeared if configured; (B, T, D)."""
        dt = self.compute_dtype
        x_BTD = self.tok_emb(ids_BT).astype(dt)
        if self.bigram is not None:
            x_BTD = x_BTD + self.bigram(ids_BT, dt)
        if isinstance(self.smear, SmearGateV2):
            x_BTD = self.smear(x_BTD, ids_BT)
        x_BTD = rms_norm(x_BTD)
        if isinstance(self.smear, SmearGateV1):
            x_BTD = self.smear(x_BTD)
        return x_BTD

    def hidden(self, ids_BT, looped: bool = True, slot_deltas=None):
        """Final-norm hidden states (B, T, D): the head's input. slot_deltas {block weight name
        ("attn.c_q.weight"): (virtual layers, out, in)} adds a delta per virtual layer slot, so each
        pass of a looped layer can carry its own test-time adapter; the keys in PARALLEL_ADAPTERS
        hold (virtual layers, D, D) parallel paths instead (see Block)."""
        cfg = self.cfg
        B, T = ids_BT.shape
        # The residual stream is kept flat, (B*T, D): the gradient of a (D,) parameter broadcast
        # over (1, T, D) is a middle-axis reduction that XLA:CPU runs ~40x slower than over (N, D).
        x_ND = self.embed(ids_BT).reshape(B * T, cfg.model_dim)
        head_dim = cfg.model_dim // cfg.num_heads
        rope = rotary_tables(T, cfg.rope_dims or head_dim, cfg.rope_base, self.compute_dtype, cfg.rope_train_seq_len)
        ctx = {"rope": rope, "shape_BT": (B, T)}
        x_ND = self._run_unet(x_ND, x_ND, ctx, self.layers if looped else self.plain_layers, slot_deltas=slot_deltas)
        return rms_norm(x_ND).reshape(B, T, cfg.model_dim)

    def __call__(self, ids_BT, looped: bool = True, head_lora=None, slot_deltas=None):
        """Soft-capped logits (B, T, V) in fp32. head_lora = (A (R, D), B (V, R), scale) adds a
        low-rank term to the head's output (test-time training adapters); slot_deltas: see hidden."""
        h_BTD = self.hidden(ids_BT, looped, slot_deltas)
        if self.lm_head is None:
            logits = jnp.einsum("btd,vd->btv", h_BTD, self.tok_emb.weight[...].astype(h_BTD.dtype))
        else:
            logits = self.lm_head(h_BTD)
        if head_lora is not None:
            A, B, scale = head_lora
            logits = logits + scale * jnp.einsum("btr,vr->btv", jnp.einsum("btd,rd->btr", h_BTD, A.astype(h_BTD.dtype)),
                                                 B.astype(h_BTD.dtype))
        # The cap is applied in fp32 (the reference applies it to the bf16 logits before .float()).
        return softcap(logits.astype(jnp.float32), self.cfg.logit_softcap)

    def input_hessians(self, ids_BT, looped: bool = True) -> dict:
        """Sum of X^T X (fp32) of the input of every linear over this batch, stacked per physical
        layer for block linears (looped layers accumulate every pass), and of the head input (the
        final-norm output) under the head's name: GPTQ's calibration statistics."""
        cfg = self.cfg
        B, T = ids_BT.shape
        acc: dict = {}

        def add(key, x_in, layer=None, n_layers=None):
            x2 = x_in.reshape(-1, x_in.shape[-1]).astype(jnp.float32)
            xtx = x2.T @ x2
            if layer is None:
                acc[key] = acc.get(key, 0.0) + xtx
            else:
                if key not in acc:
                    acc[key] = jnp.zeros((n_layers,) + xtx.shape, jnp.float32)
                acc[key] = acc[key].at[layer].add(xtx)

        def tap_fn(layer, taps):
            for name, x_in in taps.items():
                add(f"blocks.{name}.weight", x_in, layer, cfg.num_layers)

        with capture_linear_inputs() as taps:
            x_BTD = self.embed(ids_BT)
        for name, x_in in taps.items():
            add(f"{name}.weight", x_in)
        x_ND = x_BTD.reshape(B * T, cfg.model_dim)
        head_dim = cfg.model_dim // cfg.num_heads
        ctx = {"rope": rotary_tables(T, cfg.rope_dims or head_dim, cfg.rope_base, self.compute_dtype,
                                     cfg.rope_train_seq_len), "shape_BT": (B, T)}
        x_ND = self._run_unet(x_ND, x_ND, ctx, self.layers if looped else self.plain_layers, tap_fn=tap_fn)
        add("tok_emb.weight" if self.lm_head is None else "lm_head.weight", rms_norm(x_ND))
        return acc

    def _run_unet(self, x, x0, ctx, layers, tap_fn=None, slot_deltas=None):
        n_enc = len(layers) // 2
        n_skip = num_skips(layers)
        graphdef, stacked = nnx.split(self.blocks)
        skip_w = self.skip_weights[...].astype(x.dtype)
        # Gated skips (spec 4.2): lerp(w*s, x, sigmoid(g)); plain skips: x + w*s.
        skip_g = None if self.skip_gates is None else jax.nn.sigmoid(self.skip_gates[...].astype(x.dtype))

        def raw_block(x, state_adapters, layer):
            state, adapters = state_adapters
            return nnx.merge(graphdef, state)(x, x0, layer, ctx, adapters)

        block = jax.checkpoint(raw_block) if self.cfg.remat else raw_block

        deltas = slot_deltas or {}
        parallel = {k: v for k, v in deltas.items() if k in PARALLEL_ADAPTERS}

        def with_deltas(state, slots):
            """(block weights of virtual slots `slots` (an index or a slice) plus their weight
            deltas, those slots' parallel adapters)."""
            def add(path, a):
                d = deltas.get(path_name(path).removesuffix(".value"))
                return a if d is None else a + d[slots].astype(a.dtype)

            if deltas:
                state = jax.tree_util.tree_map_with_path(add, state)
            return state, {k: v[slots] for k, v in parallel.items()}

        def add_skip(x, w, g, skip):
            scaled = w * skip
            return x + scaled if g is None else scaled + g * (x - scaled)

        if tap_fn is not None or not self.cfg.scan_layers:
            # Plain Python loop: the reference's structure; also the calibration path, which
            # records each block's linear inputs under the block's physical index.
            skips = []
            for j, layer in enumerate(layers):
                if j >= n_enc and skips:
                    i = j - n_enc
                    x = add_skip(x, skip_w[i], None if skip_g is None else skip_g[i], skips.pop())
                state = with_deltas(jax.tree.map(lambda a: a[layer], stacked), j)
                if tap_fn is None:
                    x = block(x, state, layer)
                else:
                    with capture_linear_inputs() as taps:
                        x = raw_block(x, state, layer)
                    tap_fn(layer, taps)
                if j < n_enc:
                    skips.append(x)
            return x

        def scan(fn, x, first_slot, idx, *extra):
            if not idx:
                return x, None
            state = with_deltas(_gather(stacked, idx), slice(first_slot, first_slot + len(idx)))
            return jax.lax.scan(fn, x, (state, jnp.asarray(idx, jnp.int32)) + extra)

        def enc_step(x, xs):
            x = block(x, xs[0], xs[1])
            return x, x

        def dec_skip_step(x, xs):
            state, layer, w, skip, *g = xs
            return block(add_skip(x, w, g[0] if g else None, skip), state, layer), None

        def dec_step(x, xs):
            return block(x, xs[0], xs[1]), None

        x, skips = scan(enc_step, x, 0, layers[:n_enc])
        dec = layers[n_enc:]
        if n_skip:
            # Decoder step i pops the skip pushed by encoder step n_enc - 1 - i.
            extra = (skip_w[:n_skip], skips[::-1][:n_skip]) + (() if skip_g is None else (skip_g[:n_skip],))
            x, _ = scan(dec_skip_step, x, n_enc, dec[:n_skip], *extra)
        x, _ = scan(dec_step, x, n_enc + n_skip, dec[n_skip:])
        return x


# ---------------------------------------------------------------------------------------------
# Functional wrapper: params are a plain nested dict; the module is rebuilt inside each trace.
# `looped` (static) selects the configured block schedule (True) or the plain order.

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

    @property
    def has_two_schedules(self) -> bool:
        """Training starts on the plain order and switches at model.enable_looping_at."""
        layers = BLOCK_SCHEDULES[self.cfg.block_schedule](self.cfg)
        return self.cfg.enable_looping_at > 0 and layers != tuple(range(self.cfg.num_layers))

    def logits(self, params, ids_BT, looped: bool = True, head_lora=None, slot_deltas=None):
        return self.module(params)(ids_BT, looped, head_lora, slot_deltas)

    def num_slots(self, looped: bool = True) -> int:
        """Virtual layer slots of a schedule (the length of slot_deltas' leading axis)."""
        return len(BLOCK_SCHEDULES[self.cfg.block_schedule](self.cfg)) if looped else self.cfg.num_layers

    def hidden(self, params, ids_BT, looped: bool = True):
        return self.module(params).hidden(ids_BT, looped)

    def input_hessians(self, params, ids_BT, looped: bool = True) -> dict:
        return self.module(params).input_hessians(ids_BT, looped)

    def token_nll(self, params, x_BT, y_BT, looped: bool = True):
        """Per-token cross-entropy in nats (fp32), shape (B, T)."""
        logits = self.logits(params, x_BT, looped)
        logz = jax.nn.logsumexp(logits, axis=-1)
        return logz - jnp.take_along_axis(logits, y_BT[..., None], axis=-1)[..., 0]

    def loss(self, params, x_BT, y_BT, looped: bool = True):
        return jnp.mean(self.token_nll(params, x_BT, y_BT, looped))


def build_model(cfg: ModelConfig) -> Model:
    abstract = nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(params=0)))
    graphdef, state = nnx.split(abstract)
    return Model(cfg, graphdef, state)


def analytic_flops_per_token(cfg: ModelConfig, seq_len: int, looped: bool = True) -> dict[str, float]:
    """Training FLOPs per token (3x forward; the optimizer aside) along the block schedule:
    matmuls 6N (N = block matrices per virtual layer + the head), attention QK^T and PV."""
    D, V = cfg.model_dim, cfg.vocab_size
    n_layers = len(BLOCK_SCHEDULES[cfg.block_schedule](cfg)) if looped else cfg.num_layers
    kv = D // cfg.num_heads * cfg.num_kv_heads
    per_layer = 2 * D * D + 2 * D * kv + 2 * D * int(cfg.mlp_mult * D)
    n_matmul = n_layers * per_layer + V * D
    attn_full = 3 * n_layers * 2 * 2 * seq_len * D  # over the full T x T square, fwd + bwd
    return {"matmul": 6.0 * n_matmul, "attn_causal": attn_full / 2, "attn_full": attn_full,
            "n_matmul_params": float(n_matmul)}


def count_params(params) -> int:
    return sum(int(a.size) for a in jax.tree.leaves(params))
