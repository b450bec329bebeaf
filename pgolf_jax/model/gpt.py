"""The GPT family (the reference train_gpt.py's model) as Flax NNX modules, plus the functional
`Model` wrapper every stage uses.

Blocks are created stacked (one leading L axis on every block parameter) and run by the configured topology
(model/topology.py, model/act.py) along a block schedule: a tuple of physical layer indices that `lax.scan`
walks, so depth recurrence is a different tuple over the same stacked weights. Per-layer rules (layerwise
norm scale, XSA, parallel residual) follow the physical index, which the scan passes to the block.
Parameters leave this module as a plain nested dict of arrays (`Model.init`), which is what optax,
quantization and checkpoints see; what each one is (optimizer group, quant rule): `Model.param_specs()`."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax import registry
from pgolf_jax.config import ModelConfig
from pgolf_jax.model import pause
from pgolf_jax.model.lanes import layer_ge
from pgolf_jax.model.embeddings import BigramHash, Embedding, SmearGateV1, SmearGateV2
from pgolf_jax.model.layers import (
    OUTSIDE,
    DenseLinear,
    Pass,
    block_linear,
    captured_inputs,
    linear_init,
    name_taps,
    rms_norm,
    rotary_tables,
    softcap,
)
from pgolf_jax.model.params import param, specs
from pgolf_jax.model.topology import block_class, block_stacks, schedule


def resolve_dtype(name: str):
    """'auto' means bfloat16 on GPU (the reference's autocast) and float32 elsewhere."""
    if name == "auto":
        return jnp.bfloat16 if jax.default_backend() == "gpu" else jnp.float32
    return jnp.dtype(name)


class MLP(nnx.Module):
    """proj(act(fc x)), or with a gated activation (GEGLU) proj(act(gate x) * fc x)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        D, hidden = cfg.model_dim, int(cfg.mlp_mult * cfg.model_dim)
        self.fc = block_linear(cfg, D, hidden, site="mlp", init=linear_init(cfg, D, hidden), rngs=rngs)
        self.proj = block_linear(cfg, hidden, D, site="mlp", init="zeros", rngs=rngs)
        self.act = registry.resolve(registry.ACTIVATIONS, cfg.activation)
        self.gate = (block_linear(cfg, D, hidden, site="mlp", init=linear_init(cfg, D, hidden), rngs=rngs)
                     if getattr(self.act, "gated", False) else None)

    def __call__(self, x_ND, ctx: Pass = OUTSIDE):
        if self.gate is not None:
            return self.proj(self.act(self.gate(x_ND, ctx)) * self.fc(x_ND, ctx), ctx)
        return self.proj(self.act(self.fc(x_ND, ctx)), ctx)


class Block(nnx.Module):
    """Pre-norm block with the reference's x0 residual mix and per-channel branch scales; its token
    mixer is the configured attention (other mixers subclass make_mixer / mix)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        D = cfg.model_dim
        self.make_mixer(cfg, rngs)
        self.mlp = MLP(cfg, rngs=rngs)
        self.attn_scale = param(jnp.ones((D,), jnp.float32), group="scalar", quant="control")
        self.mlp_scale = param(jnp.ones((D,), jnp.float32), group="scalar", quant="control")
        self.resid_mix = param(jnp.stack([jnp.ones((D,)), jnp.zeros((D,))]).astype(jnp.float32), group="scalar",
                               quant="control")
        self.num_layers, self.ln_scale = cfg.num_layers, cfg.ln_scale
        self.xsa_last_n, self.parallel_start = cfg.xsa_last_n, cfg.parallel_residual_start
        self.lanes = cfg.parallel_residual
        registry.resolve(registry.PARALLEL_RESIDUALS, self.lanes).setup(self, cfg)
        name_taps(self)

    def make_mixer(self, cfg: ModelConfig, rngs: nnx.Rngs) -> None:
        self.attn = registry.resolve(registry.ATTENTION, cfg.attention)(cfg, rngs=rngs)

    def mix(self, n_ND, ctx: Pass, xsa):
        return self.attn(n_ND, ctx, xsa=xsa)

    def __call__(self, x_ND, x0_ND, layer, ctx: Pass):
        """`layer` is the physical layer index (a traced int under scan) the per-layer rules use.
        Each sublayer's output passes the pass's hook sites "attn" / "mlp" (with the sublayer's
        normalized input) before its branch scale: where test-time parallel adapters attach."""
        if isinstance(x_ND, tuple):  # model.parallel_residual=two_lane (model/lanes.py)
            return registry.resolve(registry.PARALLEL_RESIDUALS, self.lanes).block(self, x_ND, x0_ND, layer, ctx)
        dt = x_ND.dtype
        mix = self.resid_mix[...].astype(dt)
        x_ND = mix[0] * x_ND + mix[1] * x0_ND
        norm, xsa = self.norm_and_xsa(layer, dt)
        n_ND = norm(x_ND)
        attn_out = x_ND + self.attn_scale[...].astype(dt) * ctx.output("attn", n_ND, self.mix(n_ND, ctx, xsa))
        # Sequential blocks feed the MLP the post-attention stream; GPT-J parallel blocks
        # (physical layer >= parallel_residual_start) feed it the block input (spec 4.3).
        mlp_in = attn_out
        if self.parallel_start >= 0:
            mlp_in = jnp.where(layer_ge(layer, self.parallel_start), x_ND, attn_out)
        n_ND = norm(mlp_in)
        return attn_out + self.mlp_scale[...].astype(dt) * ctx.output("mlp", n_ND, self.mlp(n_ND, ctx))

    def norm_and_xsa(self, layer, dt):
        """The pre-norm (with the layerwise LN scale 1/sqrt(i+1) by physical index, spec 4.7) and
        the XSA flag of physical layer `layer`."""
        c = jax.lax.rsqrt(jnp.asarray(layer, jnp.float32) + 1.0).astype(dt) if self.ln_scale else None
        norm = (lambda h: rms_norm(h) * c) if self.ln_scale else rms_norm
        xsa = layer_ge(layer, self.num_layers - self.xsa_last_n) if self.xsa_last_n else 0.0
        return norm, xsa


class GPT(nnx.Module):
    """The reference GPT family (registry.FAMILIES["gpt"]): token embedding (+ BigramHash, SmearGate,
    pause tokens), stacked blocks connected by the configured topology, tied or untied head."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.compute_dtype = resolve_dtype(cfg.compute_dtype)
        embed_dtype = resolve_dtype(cfg.embed_dtype)
        std = cfg.tied_embed_init_std if cfg.tie_embeddings else 1.0  # untied: nn.Embedding's N(0, 1)
        self.tok_emb = Embedding(cfg.vocab_size, cfg.model_dim, std, embed_dtype, rngs=rngs,
                                 quant="embed" if cfg.tie_embeddings else "lookup")
        if cfg.bigram_vocab_size or cfg.smear_gate or cfg.pause_tokens:
            self._make_extras(cfg, embed_dtype, rngs)
        else:  # (assigned once: nnx fixes an attribute's kind at its first assignment)
            self.bigram = self.smear = self.pause = None

        self.stacks = block_stacks(cfg)
        for name, stacked in self.stacks.items():
            cls = block_class(cfg, name)

            @nnx.split_rngs(splits=len(stacked))
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make_blocks(rngs):
                return cls(cfg, rngs=rngs)  # noqa: B023 (called at once)

            setattr(self, name, make_blocks(rngs))
        # Before model.enable_looping_at the plain order runs; afterwards (and in eval) the
        # configured schedule. The topology's parameters are sized for both.
        self.plain_layers = tuple(range(cfg.num_layers))
        self.layers = schedule(cfg)
        if any(not 0 <= i < cfg.num_layers for i in self.layers):
            raise ValueError(f"block schedule {cfg.block_schedule!r} uses layers outside 0..{cfg.num_layers - 1}")
        self.topology = registry.resolve(registry.TOPOLOGIES, cfg.topology)
        self.topology.create(self, cfg, rngs)
        # Block weights a weight source generates are Generated slots of the blocks; the source's own
        # parameters live under `gen` (model/generators).
        self.weight_source = registry.resolve(registry.WEIGHT_SOURCES, cfg.weight_source)
        self.weight_source.create(self, cfg, rngs)
        self.lm_head = None if cfg.tie_embeddings else DenseLinear(
            cfg.model_dim, cfg.vocab_size, init="zeros", rngs=rngs, group="head", quant="embed")

    @staticmethod
    def aux_weights(cfg: ModelConfig) -> dict[str, float]:
        """Weight of each auxiliary loss the forward pass returns, in the training objective."""
        return {"ponder": cfg.act.ponder_cost} if cfg.topology == "act" else {}

    def _make_extras(self, cfg: ModelConfig, embed_dtype, rngs: nnx.Rngs) -> None:
        """BigramHash, SmearGate and pause vectors as cfg asks (registry.FEATURES['embed_extras'])."""
        self.bigram = BigramHash(cfg, embed_dtype, rngs=rngs) if cfg.bigram_vocab_size else None
        if self.bigram is not None:
            name_taps(self.bigram, "bigram")
        self.smear = (SmearGateV1(cfg.model_dim) if cfg.smear_gate == "v1" else
                      SmearGateV2(cfg.smear_gate_bos_fix) if cfg.smear_gate == "v2" else None)
        # Pause vectors: N(0, 0.02^2), on the scalar Adam group (spec 4.4).
        self.pause = (param(0.02 * jax.random.normal(rngs.params(), (cfg.pause_tokens, cfg.model_dim), jnp.float32),
                            group="scalar", quant="other") if cfg.pause_tokens else None)

    def embed(self, ids_BT, ctx: Pass = OUTSIDE):
        """x0: the normalized token (+ bigram) embedding, smeared if configured, with the pause
        slots inserted; (B, T', D) with T' = T + floor(T / pause_interval) pause_tokens. ctx: only
        whether the bigram projection records its input (calibration)."""
        x_BTD = self.tok_emb(ids_BT).astype(self.compute_dtype)
        if self.bigram is None and self.smear is None and self.pause is None:
            return rms_norm(x_BTD)
        return self._embed_extras(x_BTD, ids_BT, ctx)

    def _embed_extras(self, x_BTD, ids_BT, ctx: Pass):
        """embed with BigramHash, SmearGate or pause slots (registry.FEATURES['embed_extras'])."""
        dt = self.compute_dtype
        if self.bigram is not None:
            x_BTD = x_BTD + self.bigram(ids_BT, dt, ctx)
        if self.cfg.smear_gate == "v2":  # not isinstance: a packed file without SmearGate holds None for its class
            x_BTD = self.smear(x_BTD, ids_BT)
        if self.pause is not None:
            # Inserted before the embedding norm, so a pause slot enters the blocks at the scale of
            # a token embedding (the spec leaves the order open).
            x_BTD = pause.insert(x_BTD, self.pause[...], self.cfg.pause_interval)
        x_BTD = rms_norm(x_BTD)
        if self.cfg.smear_gate == "v1":
            x_BTD = self.smear(x_BTD)
        return x_BTD

    def _context(self, T: int, B: int, rng=None, hook=None, ids_BT=None) -> Pass:
        """What every block reads: rotary tables, the batch shape, the generated block weights (made once per
        pass; rng: the train step's key, None in evaluation), the eval-time adapters' hook (a LinearHook or
        None), model.doc_mask's segments of ids_BT (RoPE keeps row positions as the records do)."""
        cfg = self.cfg
        rope = rotary_tables(T, cfg.rope_dims or cfg.model_dim // cfg.num_heads, cfg.rope_base, self.compute_dtype,
                             cfg.rope_train_seq_len)
        segments = (registry.resolve(registry.VARLEN, "segments")(ids_BT, cfg.doc_split_len)
                    if cfg.doc_mask and ids_BT is not None else None)
        return Pass(shape_BT=(B, T), rope=rope, window=cfg.attention_window, segments=segments,
                    generated=self.weight_source.generate(self, rng), hook=hook)

    def _real(self, h_BTD, T: int):
        """The real positions of an expanded (pause) sequence."""
        if self.pause is None:
            return h_BTD
        return jnp.take(h_BTD, jnp.asarray(pause.real_positions(T, self.cfg.pause_tokens, self.cfg.pause_interval)),
                        axis=1)

    def hidden_and_aux(self, ids_BT, looped: bool = True, hook=None, rng=None):
        """(final-norm hidden states (B, T, D) at the real positions: the head's input, auxiliary
        losses). hook: eval-time adapters (layers.LinearHook) the blocks' linears and sublayer
        outputs pass through; it sees the virtual slot, so each pass of a looped layer can carry
        its own adapter."""
        B, T = ids_BT.shape
        x_BTD = self.embed(ids_BT)
        Tx = x_BTD.shape[1]
        # The residual stream is kept flat, (B*T, D): the gradient of a (D,) parameter broadcast
        # over (1, T, D) is a middle-axis reduction that XLA:CPU runs ~40x slower than over (N, D).
        x_ND = x_BTD.reshape(B * Tx, self.cfg.model_dim)
        x_ND, aux = self.topology.run(self, x_ND, x_ND, self._context(Tx, B, rng, hook, ids_BT),
                                      self.layers if looped else self.plain_layers)
        return self._real(rms_norm(x_ND).reshape(B, Tx, self.cfg.model_dim), T), aux

    def hidden(self, ids_BT, looped: bool = True):
        return self.hidden_and_aux(ids_BT, looped)[0]

    def head(self, h_BTD):
        """The output head (tied embedding or lm_head) before the soft-cap."""
        if self.lm_head is None:
            return jnp.einsum("btd,vd->btv", h_BTD, self.tok_emb.weight[...].astype(h_BTD.dtype))
        return self.lm_head(h_BTD)

    def forward(self, ids_BT, looped: bool = True, hook=None, rng=None, logit_softcap=None):
        """(soft-capped logits (B, T, V) in fp32, auxiliary losses). hook: eval-time adapters
        (layers.LinearHook) on the block linears, the sublayer outputs and the head ("head")."""
        h_BTD, aux = self.hidden_and_aux(ids_BT, looped, hook, rng)
        return self._capped_head(h_BTD, hook, logit_softcap), aux

    def _capped_head(self, h_BTD, hook, logit_softcap=None):
        logits = self.head(h_BTD)
        if hook is not None:
            logits = hook.output("head", h_BTD, logits, None)
        # The cap is applied in fp32 (the reference applies it to the bf16 logits before .float());
        # a group of runs may pass its member's traced cap (hyper.py).
        cap = self.cfg.logit_softcap if logit_softcap is None else logit_softcap
        return softcap(logits.astype(jnp.float32), cap)

    def logits_at(self, ids_BT, positions_BC, looped: bool = True, hook=None):
        """Soft-capped logits (B, C, V) at C positions of each row: the whole stack runs, the head only
        where a loss is read (LoRA TTT's chunk), so no (B, T, V) tensor is made."""
        h_BTD, _ = self.hidden_and_aux(ids_BT, looped, hook)
        return self._capped_head(jnp.take_along_axis(h_BTD, positions_BC[..., None], axis=1), hook)

    def __call__(self, ids_BT, looped: bool = True, hook=None):
        return self.forward(ids_BT, looped, hook)[0]

    def outputs(self, ids_BT, looped: bool, rng, logit_softcap=None):
        """What training reads (every family has this): (logits, auxiliary losses, per-position
        loss weights or None)."""
        # Only when given: a subclass's forward (surge) may not take it.
        extra = {} if logit_softcap is None else {"logit_softcap": logit_softcap}
        logits, aux = self.forward(ids_BT, looped, rng=rng, **extra)
        return logits, aux, None

    def input_hessians(self, ids_BT, looped: bool = True) -> dict:
        """Sum of X^T X (fp32) of the input of every quantized weight over this batch, stacked per
        physical layer for block weights (looped layers accumulate every pass), and of the head
        input (the final-norm output) under the head's name: GPTQ's calibration statistics."""
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

        def tap_fn(index, n_stacked, taps):  # taps named "<stack>.<linear>.<weight>", index within the stack
            for name, x_in in taps.items():
                add(name, x_in, index, n_stacked)

        x_BTD, taps = captured_inputs(self.embed, ids_BT, Pass(capture=True))
        for name, x_in in taps.items():
            add(name, x_in)
        Tx = x_BTD.shape[1]
        x_ND = x_BTD.reshape(B * Tx, cfg.model_dim)
        x_ND, _ = self.topology.run(self, x_ND, x_ND, self._context(Tx, B, ids_BT=ids_BT),
                                    self.layers if looped else self.plain_layers, tap_fn=tap_fn)
        h = self._real(rms_norm(x_ND).reshape(B, Tx, cfg.model_dim), T)
        add("tok_emb.weight" if self.lm_head is None else "lm_head.weight", h)
        return acc


# ---------------------------------------------------------------------------------------------
# Functional wrapper: params are a plain nested dict; the module is rebuilt inside each trace.
# `looped` (static) selects the configured block schedule (True) or the plain order.

@dataclasses.dataclass(frozen=True)
class Model:
    """Any family (registry.FAMILIES) as functions of a plain params dict. Only nnx.Param state is
    a parameter; other variables (the Generated block weights of a weight source) stay abstract
    here and are filled in by the forward pass."""
    cfg: ModelConfig
    graphdef: nnx.GraphDef
    abstract_state: nnx.State
    abstract_rest: nnx.State

    @property
    def family(self):
        return registry.resolve(registry.FAMILIES, self.cfg.family)

    def init(self, key: jax.Array) -> dict:
        return nnx.to_pure_dict(nnx.state(self.family(self.cfg, rngs=nnx.Rngs(params=key)), nnx.Param))

    def module(self, params: dict):
        state = jax.tree.map(lambda v: v, self.abstract_state)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state, self.abstract_rest)

    def param_specs(self) -> dict:
        """{...: ParamSpec} shaped like the params: each parameter's optimizer group and quant rule."""
        return specs(self.abstract_state)

    @property
    def aux_weights(self) -> dict[str, float]:
        return self.family.aux_weights(self.cfg)

    @property
    def has_two_schedules(self) -> bool:
        """Training starts on the plain order and switches at model.enable_looping_at."""
        return self.cfg.enable_looping_at > 0 and schedule(self.cfg) != tuple(range(self.cfg.num_layers))

    def logits(self, params, ids_BT, looped: bool = True, hook=None, positions_BC=None):
        """(B, T, V) soft-capped logits, or (B, C, V) at positions_BC (GPT families only)."""
        if positions_BC is None:
            return self.module(params)(ids_BT, looped, hook)
        return self.module(params).logits_at(ids_BT, positions_BC, looped, hook)

    def forward(self, params, ids_BT, looped: bool = True, rng=None, logit_softcap=None):
        """(logits (B, T, V), auxiliary losses {name: scalar}, per-position loss weights (B, T) or
        None): what the training objective reads. rng: the train step's key for stochastic parts
        (None: deterministic, as in evaluation); logit_softcap: a group member's traced one
        (hyper.py; only families that take it: the others refuse it, and such a group runs row by row)."""
        extra = {} if logit_softcap is None else {"logit_softcap": logit_softcap}
        return self.module(params).outputs(ids_BT, looped, rng, **extra)

    def num_slots(self, looped: bool = True) -> int:
        """Virtual layer slots of a schedule (what a hook's per-slot adapters are indexed by)."""
        return len(schedule(self.cfg)) if looped else self.cfg.num_layers

    def hidden(self, params, ids_BT, looped: bool = True):
        return self.module(params).hidden(ids_BT, looped)

    def input_hessians(self, params, ids_BT, looped: bool = True) -> dict:
        return self.module(params).input_hessians(ids_BT, looped)

    def token_nll(self, params, x_BT, y_BT, looped: bool = True):
        """Per-token cross-entropy in nats (fp32), shape (B, T)."""
        return token_nll(self.logits(params, x_BT, looped), y_BT)

    def loss(self, params, x_BT, y_BT, looped: bool = True):
        """Mean cross-entropy (no auxiliary terms: what evaluation and TTT optimise)."""
        return jnp.mean(self.token_nll(params, x_BT, y_BT, looped))


def token_nll(logits_BTV, y_BT):
    logz = jax.nn.logsumexp(logits_BTV, axis=-1)
    return logz - jnp.take_along_axis(logits_BTV, y_BT[..., None], axis=-1)[..., 0]


def build_model(cfg: ModelConfig) -> Model:
    family = registry.resolve(registry.FAMILIES, cfg.family)
    abstract = nnx.eval_shape(lambda: family(cfg, rngs=nnx.Rngs(params=0)))
    graphdef, state, rest = nnx.split(abstract, nnx.Param, ...)
    return Model(cfg, graphdef, state, rest)


def count_params(params) -> int:
    return sum(int(a.size) for a in jax.tree.leaves(params))
