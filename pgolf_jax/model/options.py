"""The model section (model.*) and the options of the model variants that have any
(registry.Variant entries), each set as `model.<variant>.<field>` and only while that variant is
selected. JAX-free: validating a config imports this module, never the implementations."""

from __future__ import annotations

from dataclasses import dataclass

from pgolf_jax import registry
from pgolf_jax.errors import ConfigError
from pgolf_jax.options import SEED_RANGE, Section, check_registered


@dataclass(frozen=True)
class ModelConfig(Section):
    vocab_size: int = 1024
    num_layers: int = 9
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: float = 2.0  # hidden = int(mlp_mult * model_dim)
    tie_embeddings: bool = True
    tied_embed_init_std: float = 0.005
    rope_base: float = 10000.0
    logit_softcap: float = 30.0
    qk_gain_init: float = 1.5
    # The record stack (reference-spec section 4); every default is off / the baseline.
    rope_dims: int = 0  # rotate only the first rope_dims of each head (0 = all)
    rope_train_seq_len: int = 0  # NTK-rescale the RoPE base beyond this length (0 = never)
    ln_scale: bool = False  # scale norm outputs of physical layer i by 1/sqrt(i+1)
    xsa_last_n: int = 0  # exclusive self-attention on the last N physical layers
    skip_gates_enabled: bool = False  # sigmoid-gated U-Net skips (lerp, gate init 0)
    parallel_residual_start: int = -1  # GPT-J parallel attn+MLP from this physical layer (-1 = off)
    num_loops: int = 0  # depth recurrence: run layers loop_start..loop_end num_loops extra times
    loop_start: int = 0
    loop_end: int = 0
    enable_looping_at: float = 0.0  # switch to the looped schedule at this training fraction
    ortho_init: bool = False  # orthogonal init for linears with both dims >= 64 (not zero-inits)
    smear_gate: str = ""  # "" | "v1" (per-channel gate after the norm) | "v2" (input-dependent)
    smear_gate_bos_fix: bool = True  # v2: never smear into a BOS position (PR #1851)
    bigram_vocab_size: int = 0  # BigramHash embedding buckets (0 = off)
    bigram_dim: int = 128
    # Registry keys (pgolf_jax/registry.py FIELDS); a selected Variant's options are model.<key>.*.
    family: str = "gpt"
    topology: str = "unet"  # unet (the reference's skips) | plain | act | denseformer | ut_shared
    attention: str = "gqa"
    attn_gate: str = ""  # "" (none) | output_gate (#1667) | gated_attn (#1736) | sparse_gate (#1787)
    activation: str = "relu2"
    linear: str = "dense"  # how a block linear's weight is stored (lowrank, monarch, rlma, ...)
    mlp_linear: str = ""  # the MLP's own parameterization ("" = model.linear), e.g. monarch (#1227)
    weight_source: str = "params"  # #1589: stored, or generated each pass (basis, hypernet, siren, nca, seed)
    block_schedule: str = "unet"
    # one_lane (one stream: sequential / GPT-J parallel blocks) | two_lane (#1530: attention and MLP
    # lanes from model.parallel_residual_start); an option of the parallel residual (model/lanes.py).
    parallel_residual: str = "one_lane"
    # Heterogeneous layers (#1227): the mixer of the first layers, as comma-separated registry.MIXERS
    # keys with optional counts ("s4d_lin*2" = the first two layers S4D-Lin, the rest attention).
    # Each mixer's layers are their own stacked segment (`blocks_<mixer>`), so counts stay honest.
    mixers: str = ""
    # Pause tokens (#1589): pause_tokens learned vectors after every pause_interval real tokens.
    pause_tokens: int = 0
    pause_interval: int = 64
    attention_window: int = 0  # sliding causal attention window in tokens (0 = full causal)
    # VarLen (#1530): attention causal within a document only (segments start at each BOS), and
    # documents longer than doc_split_len split into segments of that length (0 = only the row's).
    doc_mask: bool = False
    doc_split_len: int = 0
    attention_impl: str = "auto"  # auto | a registry.ATTENTION_IMPLS key
    scan_layers: bool = True  # lax.scan over the stacked blocks (False = Python loop)
    remat: bool = False
    # "auto" = bfloat16 on GPU (the reference's autocast) and float32 elsewhere; the reference keeps
    # the tied embedding itself in bf16 (and so its Adam moments).
    compute_dtype: str = "auto"
    embed_dtype: str = "auto"
    options: tuple = ()
    SECTION = "model"
    RANGES = {
        "vocab_size": "[1, 65536]", "num_layers": ">= 1", "model_dim": ">= 1", "num_heads": ">= 1",
        "num_kv_heads": ">= 1", "mlp_mult": "> 0", "tied_embed_init_std": ">= 0", "rope_base": "> 0",
        "rope_train_seq_len": ">= 0", "logit_softcap": "> 0", "xsa_last_n": ">= 0", "parallel_residual_start": ">= -1",
        "num_loops": ">= 0", "loop_start": ">= 0", "loop_end": ">= 0", "enable_looping_at": "[0, 1)",
        "bigram_dim": ">= 1", "pause_tokens": ">= 0", "pause_interval": ">= 1", "attention_window": ">= 0",
        "doc_split_len": ">= 0",
    }
    CHOICES = {"smear_gate": ("", "v1", "v2"), "compute_dtype": ("auto", "float32", "bfloat16"),
               "embed_dtype": ("auto", "float32", "bfloat16")}

    def check(self, cfg) -> None:
        super().check(cfg)
        check_registered("model.attention_impl", self.attention_impl, ("auto", *registry.ATTENTION_IMPLS))
        m, kinds = self, layer_mixers(self)
        head_dim = m.model_dim // m.num_heads
        rules = [
            (m.model_dim % m.num_heads == 0,
             f"model.model_dim={m.model_dim} is not divisible by model.num_heads={m.num_heads}"),
            (m.num_heads % m.num_kv_heads == 0,
             f"model.num_heads={m.num_heads} is not divisible by model.num_kv_heads={m.num_kv_heads}"),
            (head_dim % 2 == 0, f"head_dim={head_dim} must be even for RoPE"),
            (0 <= m.rope_dims <= head_dim and m.rope_dims % 2 == 0,
             f"model.rope_dims={m.rope_dims} must be an even number in [0, head_dim={head_dim}]"),
            (not m.num_loops or 0 <= m.loop_start <= m.loop_end < m.num_layers,
             f"model.loop_start={m.loop_start}..loop_end={m.loop_end} must lie in 0..{m.num_layers - 1}"),
            (m.bigram_vocab_size == 0 or m.bigram_vocab_size >= 2,
             f"model.bigram_vocab_size={m.bigram_vocab_size} must be 0 (off) or >= 2"),
            (m.xsa_last_n <= m.num_layers, f"model.xsa_last_n={m.xsa_last_n} exceeds model.num_layers={m.num_layers}"),
            (not (m.pause_tokens and (m.smear_gate or m.bigram_vocab_size)),
             "model.pause_tokens: pause slots have no token id, so they do not combine with "
             "model.smear_gate or model.bigram_vocab_size"),
            (not (m.mixers and m.topology in ("act", "ut_shared")),
             f"model.mixers is for stacks of distinct layers; model.topology={m.topology} builds its own"),
            (not m.xsa_last_n or all(k == "attn" for k in kinds[m.num_layers - m.xsa_last_n:]),
             f"model.xsa_last_n={m.xsa_last_n} reaches layers whose mixer is not attention "
             f"(model.mixers={m.mixers!r})"),
        ]
        for ok, message in rules:
            if not ok:
                raise ConfigError(message)
        if m.doc_mask or m.doc_split_len:
            registry.resolve(registry.VARLEN, "check")(m, kinds)


def layer_mixers(m: ModelConfig) -> tuple[str, ...]:
    """The mixer (registry.MIXERS key) of every physical layer: model.mixers' entries (`name` or
    `name*count`) for the first layers, attention for the rest."""
    kinds: list[str] = []
    for item in (x.strip() for x in m.mixers.split(",") if x.strip()):
        name, _, count = item.partition("*")
        if name.strip() not in registry.MIXERS or (count and not count.strip().isdigit()):
            raise ConfigError(f"model.mixers={m.mixers!r}: {item!r} is not <mixer> or <mixer>*<count>; "
                              f"mixers: {', '.join(registry.MIXERS)}")
        kinds += [name.strip()] * (int(count) if count else 1)
    if len(kinds) > m.num_layers:
        raise ConfigError(f"model.mixers={m.mixers!r} names {len(kinds)} layers; model.num_layers={m.num_layers}")
    return tuple(kinds) + ("attn",) * (m.num_layers - len(kinds))


@dataclass(frozen=True)
class MLA:
    """attention=mla: width of the shared K/V down-projection."""
    latent_dim: int = 128
    RANGES = {"latent_dim": ">= 1"}

    def check(self, cfg):
        if self.latent_dim > cfg.model.model_dim:
            raise ConfigError(f"model.mla.latent_dim={self.latent_dim} exceeds model.model_dim={cfg.model.model_dim}")


@dataclass(frozen=True)
class LowRank:
    """linear=lowrank (Eigenweight, #1589): rank of every block linear, or per site (0 = rank);
    clipped at min(in, out)."""
    rank: int = 64
    attn_rank: int = 0
    mlp_rank: int = 0
    RANGES = {"rank": ">= 1", "attn_rank": ">= 0", "mlp_rank": ">= 0"}

    def site_rank(self, site: str) -> int:
        return {"attn": self.attn_rank, "mlp": self.mlp_rank}.get(site, 0) or self.rank


@dataclass(frozen=True)
class RLMA(LowRank):
    """linear=rlma (#2114): the same ranks, of the learned factors beside the random base."""


@dataclass(frozen=True)
class Monarch:
    """linear=monarch (#1227): diagonal blocks of each factor (8-12x compression at 12-16)."""
    blocks: int = 16
    RANGES = {"blocks": ">= 1"}

    def check(self, cfg):
        m = cfg.model
        hidden, kv = int(m.mlp_mult * m.model_dim), m.num_kv_heads * (m.model_dim // m.num_heads)
        dims = {"model_dim": m.model_dim, "MLP hidden": hidden}
        if m.linear == "monarch":
            dims.update({"kv width": kv, "s4d_lin inner": m.s4d_lin.inner or m.model_dim})
        bad = {k: v for k, v in dims.items() if v % self.blocks}
        if bad:
            raise ConfigError(f"model.monarch.blocks={self.blocks} must divide every Monarch matrix's sides: "
                              + ", ".join(f"{k} {v}" for k, v in bad.items()))


@dataclass(frozen=True)
class S4DLin:
    """mixer s4d_lin (#1227): inner width of the gated causal conv (0 = model_dim) and its causal
    kernel length (K[d, t] = C_d exp(-r_d t), t < kernel)."""
    inner: int = 0
    kernel: int = 64
    RANGES = {"inner": ">= 0", "kernel": ">= 1"}


@dataclass(frozen=True)
class TwoLane:
    """parallel_residual=two_lane (#1530): lanes from physical layer model.parallel_residual_start
    (U-Net: in the decoder only, as the record; encoder blocks stay sequential); resid_lambda
    initialised to resid_init (the record's 1.1), post to 1; the head reads final_lane (mean of
    the lanes, or the attention / MLP lane alone)."""
    resid_init: float = 1.1
    final_lane: str = "mean"
    CHOICES = {"final_lane": ("mean", "attn", "mlp")}

    def check(self, cfg):
        m = cfg.model
        if not 0 <= m.parallel_residual_start < m.num_layers:
            raise ConfigError(f"model.parallel_residual=two_lane needs its start layer: set "
                              f"model.parallel_residual_start in 0..{m.num_layers - 1} "
                              f"(got {m.parallel_residual_start})")
        if m.family != "gpt" or m.topology not in ("unet", "plain"):
            raise ConfigError(f"model.parallel_residual=two_lane carries its lanes through the unet and plain "
                              f"topologies of model.family=gpt (got model.family={m.family}, "
                              f"model.topology={m.topology})")


@dataclass(frozen=True)
class ACT:
    """topology=act: one shared block applied up to max_steps times per token; halting head
    sigmoid(w x + b), b initialised to halt_bias; a token stops once its cumulated halting reaches
    threshold; ponder_cost x mean ponder is added to the loss."""
    max_steps: int = 12
    threshold: float = 0.99
    halt_bias: float = -3.0
    ponder_cost: float = 0.01
    RANGES = {"max_steps": ">= 1", "threshold": "(0, 1]", "ponder_cost": ">= 0"}

    def check(self, cfg):
        if cfg.model.num_layers != 1:
            raise ConfigError(f"model.topology=act applies one shared block: set model.num_layers=1 "
                              f"(got {cfg.model.num_layers})")


@dataclass(frozen=True)
class UTShared:
    """topology=ut_shared (#2114): Block_in, `iterations` passes of one shared block (a learned depth
    embedding added before each), Block_out; residual delta x + rs b or contraction rs (x + b),
    rs = 1 / sqrt(iterations + 2); per-channel branch scales initialised to branch_scale_init."""
    iterations: int = 6
    residual: str = "delta"
    branch_scale_init: float = 0.6
    RANGES = {"iterations": ">= 1", "branch_scale_init": ">= 0"}
    CHOICES = {"residual": ("delta", "contraction")}

    def check(self, cfg):
        m = cfg.model
        if m.num_layers != 3:
            raise ConfigError(f"model.topology=ut_shared stacks Block_in, the shared block and Block_out: "
                              f"set model.num_layers=3 (got {m.num_layers})")
        used = {"model.ln_scale": m.ln_scale, "model.xsa_last_n": m.xsa_last_n, "model.num_loops": m.num_loops,
                "model.parallel_residual_start": m.parallel_residual_start >= 0,
                "model.enable_looping_at": m.enable_looping_at}
        if any(used.values()):
            raise ConfigError("model.topology=ut_shared has its own parallel blocks and schedule: unset "
                              + ", ".join(k for k, v in used.items() if v))


# ---- #1589's weight sources: a GPT's block linears generated from the source's own parameters.

class _Generator:
    def check(self, cfg):
        m, name = cfg.model, cfg.model.weight_source
        if m.family != "gpt":
            raise ConfigError(f"model.weight_source={name} generates a GPT's block linears: it needs "
                              f"model.family=gpt (got {m.family})")
        if m.linear != "dense" or m.attention != "gqa":
            raise ConfigError(f"model.weight_source={name} makes the block linears itself: use "
                              f"model.linear=dense and model.attention=gqa (got {m.linear}, {m.attention})")
        if "lora_ttt" in cfg.eval.final_modes.split(","):
            raise ConfigError(f"eval.final_modes=lora_ttt adapts stored block weights; model.weight_source="
                              f"{name} stores none (eval.final_modes=ttt trains the generator)")


@dataclass(frozen=True)
class Basis(_Generator):
    """One shared U per weight type (rank columns, clipped at min(in, out)), per-layer C."""
    rank: int = 128
    RANGES = {"rank": ">= 1"}


@dataclass(frozen=True)
class HyperNet(_Generator):
    """W = A B with A (out, rank), B (rank, in) from one head per weight type, read from a learned
    layer embedding (embed_dim) through a two-layer GELU trunk (hidden)."""
    rank: int = 32
    embed_dim: int = 64
    hidden: int = 512
    RANGES = {"rank": ">= 1", "embed_dim": ">= 1", "hidden": ">= 1"}


@dataclass(frozen=True)
class Siren(_Generator):
    """A sine MLP of `layers` linears (all but the last with sin(omega x)) over weight coordinates,
    evaluated `chunk` coordinates at a time (rematerialized in the backward)."""
    hidden: int = 256
    layers: int = 4
    omega: float = 30.0
    chunk: int = 65_536
    RANGES = {"hidden": ">= 1", "layers": ">= 2", "omega": "> 0", "chunk": ">= 1"}


@dataclass(frozen=True)
class NCA(_Generator):
    """A neural cellular automaton grown for `steps` from a start state fixed by generator_seed;
    in training a cell takes its update with probability update_prob."""
    steps: int = 50
    channels: int = 16
    hidden: int = 128
    update_prob: float = 0.5
    generator_seed: int = 42
    RANGES = {"steps": ">= 1", "channels": ">= 1", "hidden": ">= 1", "update_prob": "(0, 1]",
              "generator_seed": SEED_RANGE}


@dataclass(frozen=True)
class Seed(_Generator):
    """theta = theta0 + P phi, phi in R^dim; theta0 and P regenerated from generator_seed, `chunk`
    rows at a time."""
    dim: int = 2048
    chunk: int = 10_000
    generator_seed: int = 42
    RANGES = {"dim": ">= 1", "chunk": ">= 1", "generator_seed": SEED_RANGE}
