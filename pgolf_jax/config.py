"""Typed, frozen run configuration; presets and `section.field=value` overrides.

Field names are the reference's hyperparameter names (train_gpt.py env vars) in lower case,
grouped by section, and every default is the reference default, so the bare `Config()` is the
9L x 512 sp1024 baseline. Presets in configs/ hold only overrides.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import importlib.util
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from pgolf_jax import registry
from pgolf_jax.fsio import read_json

# Names routed to the scalar optimizer group (and kept fp32 by the reference int8 export) whatever
# their shape: the baseline's list plus the record stacks' skip gates (#1493) and smear gates (03-22).
CONTROL_TENSOR_NAME_PATTERNS = (
    "attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes",
    "q_gain", "skip_weight", "skip_weights", "skip_gates", "smear",
)


class ConfigError(ValueError):
    """A bad preset, override or field value; the message names the culprit."""


@dataclass(frozen=True)
class DataConfig:
    data_path: str = "./data/datasets/fineweb10B_sp1024"
    tokenizer_path: str = "./data/tokenizers/fineweb_1024_bpe.model"
    train_files: str = "fineweb_train_*.bin"  # glob inside data_path
    val_files: str = "fineweb_val_*.bin"
    # Where data_path comes from when it is missing: "" (must exist), "sample:<name>" (an embedded
    # sample corpus, prepared on first use) or a docs_selected.jsonl to tokenize.
    source: str = ""
    num_val_docs: int = 50_000  # only used when preparing from `source`
    tokenizer_train_docs: int = 0  # 0 = all docs
    # sequential: the baseline's one contiguous stream; shuffled: the SP8192 records' shuffled
    # windows (also what GPTQ calibration reads). loader_seed, like the records' rank seed, is
    # independent of train.seed.
    loader: str = "sequential"
    loader_seed: int = 0


LORA_TARGET_NAMES = ("q", "k", "v", "o", "mlp", "mlp_out", "head", "o_par", "mlp_par")  # ttt.py's adapter sites


@dataclass(frozen=True)
class ModelConfig:
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
    # Registry keys (pgolf_jax/registry.py).
    family: str = "gpt"
    topology: str = "unet"  # unet (the reference's skips) | plain (none) | act (Universal Transformer + ACT)
    attention: str = "gqa"
    activation: str = "relu2"
    linear: str = "dense"
    block_schedule: str = "unet"
    # linear=lowrank (Eigenweight, #1589) and linear=rlma (#2114): rank of every block linear, or
    # per site (0 = linear_rank); clipped at min(in, out).
    linear_rank: int = 64
    attn_rank: int = 0
    mlp_rank: int = 0
    mla_latent: int = 128  # attention=mla: width of the shared K/V down-projection
    # Pause tokens (#1589): pause_tokens learned vectors after every pause_interval real tokens.
    pause_tokens: int = 0
    pause_interval: int = 64
    # topology=act: one shared block applied up to act_max_steps times per token, halting head
    # sigmoid(w x + b) with b initialised to act_halt_bias, a token stopping once its cumulated
    # halting reaches act_threshold; act_ponder_cost x mean ponder is added to the loss.
    act_max_steps: int = 12
    act_threshold: float = 0.99
    act_halt_bias: float = -3.0
    act_ponder_cost: float = 0.01
    # Heterogeneous layers (#1227): the mixer of the first layers, as comma-separated registry.MIXERS
    # keys with optional counts ("s4d_lin*2" = the first two layers S4D-Lin, the rest attention).
    # Each mixer's layers are their own stacked segment (`blocks_<mixer>`), so counts stay honest.
    mixers: str = ""
    ssm_inner: int = 0  # mixer s4d_lin: inner width of the gated causal conv (0 = model_dim)
    ssm_kernel: int = 64  # its causal kernel length (K[d, t] = C_d exp(-r_d t), t < ssm_kernel)
    # The MLP's weight parameterization (registry.LINEAR; "" = model.linear), e.g. monarch (#1227).
    mlp_linear: str = ""
    monarch_blocks: int = 16  # linear=monarch: diagonal blocks of each factor (8-12x compression at 12-16)
    # topology=ut_shared (#2114): Block_in, ut_iterations passes of one shared block (a learned depth
    # embedding added before each), Block_out; residual delta x + rs b or contraction rs (x + b),
    # rs = 1 / sqrt(ut_iterations + 2); per-channel branch scales initialised to ut_branch_scale_init.
    ut_iterations: int = 6
    ut_residual: str = "delta"
    ut_branch_scale_init: float = 0.6
    attention_window: int = 0  # sliding causal attention window in tokens (0 = full causal)
    attention_impl: str = "auto"  # auto | xla | flash | cudnn | fused_cpu
    scan_layers: bool = True  # lax.scan over the stacked blocks (False = Python loop)
    remat: bool = False
    # "auto" = bfloat16 on GPU (the reference's autocast) and float32 elsewhere.
    compute_dtype: str = "auto"
    # The reference keeps the tied embedding itself in bf16 (and so its Adam moments).
    embed_dtype: str = "auto"
    # ---- #1589's weight sources, non-GPT families and SURGE-M (model/generators, model/families).
    # model.weight_source (registry WEIGHT_SOURCES): params (the block linears are parameters) or a
    # source that makes them from its own parameters every forward pass: basis (one shared U per
    # weight type, per-layer C), hypernet, siren, nca, seed.
    weight_source: str = "params"
    basis_rank: int = 128  # basis: columns of the shared U (clipped at min(in, out))
    hypernet_rank: int = 32  # hypernet: W = A B with A (out, r), B (r, in) from one head per weight type
    hypernet_embed_dim: int = 64  # learned layer embedding width
    hypernet_hidden: int = 512  # trunk width (two GELU layers)
    siren_hidden: int = 256
    siren_layers: int = 4  # linear layers of the sine MLP (all but the last with sin(omega x))
    siren_omega: float = 30.0
    siren_chunk: int = 65_536  # coordinates per evaluation chunk (rematerialized in the backward)
    nca_steps: int = 50
    nca_channels: int = 16
    nca_hidden: int = 128
    nca_update_prob: float = 0.5  # training: a cell takes its update with this probability
    seed_dim: int = 2048  # seed: theta = theta0 + P phi, phi in R^seed_dim
    seed_chunk: int = 10_000  # rows of theta0 / P generated at a time
    generator_seed: int = 42  # the fixed PRNG seed of nca's start state and seed's theta0 / P
    # model.family=mps: shared core (vocab, bond, bond), position modulation from pos_dim embeddings.
    mps_bond_dim: int = 64
    mps_pos_dim: int = 32
    mps_max_len: int = 1024  # positions with an embedding (train / eval sequences must fit)
    # model.family=hopfield: the encoder is num_layers x model_dim (num_heads, num_kv_heads).
    hopfield_refine_steps: int = 3
    hopfield_refine_alpha: float = 0.1  # initial learned step size
    # model.family=agents: encoder num_layers x model_dim -> message; MLP decoder.
    agents_msg_dim: int = 64
    agents_local_ctx: int = 8  # token embeddings the decoder sees directly
    agents_decoder_hidden: int = 256
    agents_loss_stride: int = 64  # training loss on every stride-th position only
    # model.family=surge_m (SURGE-M v2): one SURGE layer whose output projection is corrected per
    # chunk by a minGRU meta-network reading the base pass's prediction errors.
    surge_mode: str = "two_pass"  # two_pass (re-run the later layers) | single (logit correction)
    surge_layer: int = 4
    surge_chunk: int = 64
    surge_d_err: int = 64
    surge_d_state: int = 64
    surge_gate_bias: float = -4.6  # update gate sigmoid(.) ~ 0.01 at init
    surge_forget_bias: float = 2.3  # forget gate ~ 0.9 at init
    surge_uv_init_std: float = 0.01  # 0 is the symmetry trap: u/v heads then never get a gradient


@dataclass(frozen=True)
class OptimConfig:
    embed_lr: float = 0.6
    head_lr: float = 0.008
    tied_embed_lr: float = 0.05
    matrix_lr: float = 0.04
    scalar_lr: float = 0.04
    muon_momentum: float = 0.95
    muon_backend_steps: int = 5
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_steps: int = 500
    orthogonalizer: str = "newton_schulz"
    # The block matrices' optimizer: muon, or adamw (#1227: AdamW on every parameter; matrices then
    # take beta1/beta2/adam_eps and matrix_lr, with muon_wd as their decoupled weight decay).
    matrix_optimizer: str = "muon"
    ns_coefficients: str = "ns5"  # key of orthogonalize.COEFFICIENTS
    ns_aol: bool = False  # AOL row pre-scaling on the first step (Turbo-Muon, PR #1809)
    gram_ns_min_aspect: float = 0.0  # Gram Newton-Schulz for aspect >= this (0 = never; #1809: 1.5)
    muon_row_normalize: bool = False  # MuonEq-R: unit rows before orthogonalizing
    muon_dtype: str = "bfloat16"  # Newton-Schulz dtype: the reference runs it in bf16 everywhere
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip_norm: float = 0.0
    # Decoupled weight decay with the scheduled lr: p <- p (1 - lr_t wd) (0 = off, the baseline).
    muon_wd: float = 0.0
    embed_wd: float = 0.0
    adam_wd: float = 0.0
    # The `adamw` group (parameters that declare it: #1589's meta-networks, generators and non-GPT
    # families): AdamW with its own lr, decay, beta2 and gradient clip (over the group's gradients).
    adamw_lr: float = 3e-4
    adamw_wd: float = 0.0
    adamw_beta2: float = 0.95
    adamw_clip: float = 0.0
    adamw_all: bool = False  # every parameter on the adamw group (#1589's hypernetwork: Adam on all)


@dataclass(frozen=True)
class TrainConfig:
    run_id: str = ""  # "" = a fresh timestamped id
    seed: int = 1337
    iterations: int = 20000
    warmdown_iters: int = 1200
    # Record schedule: lr multiplier 1, then linear to min_lr over the last warmdown_frac of the
    # training fraction (time / effective cap, or step / iterations without a cap). 0 = use
    # warmdown_iters as the baseline does.
    warmdown_frac: float = 0.0
    min_lr: float = 0.0
    # The lr schedule: warmdown (the reference's, above; with both an iteration limit and a wall-clock
    # cap it is max(min(iteration, wall-clock multiplier), min_lr), #2114's fix) or cosine (#1227:
    # min_lr + (1 - min_lr) (1 + cos(pi p)) / 2 over the steps after the lr warm-up, or over the
    # training fraction when capped). lr_warmup_steps: a linear lr ramp (step + 1) / N on top of
    # either; unlike warmup_steps, the compile warm-up that is rolled back.
    lr_schedule: str = "warmdown"
    lr_warmup_steps: int = 0
    gptq_reserve_seconds: float = 0.0  # taken off the wall-clock cap for post-training calibration
    ema_decay: float = 0.0  # EMA of all weights (fp32), evaluated and exported instead (0 = off)
    warmup_steps: int = 20
    train_batch_tokens: int = 524_288
    train_seq_len: int = 1024
    max_wallclock_seconds: float = 600.0
    train_log_every: int = 200
    # The reference cuts every step's tokens into world_size * grad_accum_steps = 8 contiguous
    # spans; devices take spans in parallel and the rest are accumulated, so the data of a step
    # never depends on the device count.
    batch_spans: int = 8
    microbatch_tokens: int = 0  # split each span further for memory (0 = whole span)
    out_dir: str = "runs"
    # The training loss (registry OBJECTIVES): ce, or distill = alpha CE + (1 - alpha) T^2 KL(teacher || student)
    # from a frozen teacher: a run directory (config.json + final_model.npz) or a packed artifact.
    objective: str = "ce"
    teacher: str = ""
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    progress: bool = True  # progress bar with ETA on stderr
    # Checkpoints under <run>/checkpoints (also written on SIGTERM/SIGINT); `--resume <run>`.
    checkpoint_every: int = 0  # steps (0 = off)
    checkpoint_every_seconds: float = 0.0  # of training time (0 = off)
    checkpoint_keep: int = 3
    param_sharding: str = "replicated"  # replicated | fsdp (params and optimizer state split over devices)
    # Multi-process (multi-host) runs: jax.distributed; unset values are auto-detected.
    distributed: bool = False
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1


@dataclass(frozen=True)
class EvalConfig:
    val_batch_size: int = 524_288
    val_loss_every: int = 1000
    val_tokens_limit: int = 0  # score only the first N val tokens (0 = the whole split)
    attention_window: int = 0  # every evaluation's sliding causal attention window (#2114: 512; 0 = as trained)
    # Evaluations of the round-tripped artifact, in order; the last one is the reported score:
    # plain (non-overlapping sequences), sliding, ttt (score-first full-weight SGD), lora_ttt.
    final_modes: str = "plain"
    eval_seq_len: int = 0  # window length of the final evals (0 = train.train_seq_len)
    eval_stride: int = 64  # sliding-window stride (records: 2048 / 64)
    eval_batch_seqs: int = 32  # windows per forward in sliding / TTT scoring
    ttt_lr: float = 0.005
    ttt_epochs: int = 3
    ttt_momentum: float = 0.9
    ttt_chunk_tokens: int = 32_768
    ttt_batch_seqs: int = 32
    ttt_grad_clip: float = 1.0
    lora_rank: int = 8
    lora_alpha: float = 8.0  # adapter output scale alpha / rank
    # of q, k, v, o (attn.proj), mlp (fc), mlp_out (mlp.proj), head, and the records' parallel
    # o_par / mlp_par (D -> D from the sublayer's normalized input; the records: q,k,v,o_par,mlp_par,head)
    lora_targets: str = "q,k,v,o,mlp,head"
    lora_lr: float = 0.01
    lora_optimizer: str = "sgd"  # sgd (#1227, momentum ttt_momentum) | adam
    # Adam's betas/eps and decoupled weight decay (AdamW when > 0). The records' phased LoRA TTT
    # (spec 4.18): adam, lr 1e-4, betas (0, 0.999), eps 1e-10, wd 1.0, rank 96, alpha 144, warm A.
    lora_beta1: float = 0.9
    lora_beta2: float = 0.999
    lora_eps: float = 1e-8
    lora_wd: float = 0.0
    lora_warm_start_a: bool = False  # keep the trained A across document batches (reset per phase)
    lora_steps: int = 1  # optimizer steps per scored chunk (cosine within the chunk)
    lora_chunk_tokens: int = 48
    lora_batch_docs: int = 16  # documents scored in lockstep, each with its own adapter
    lora_phases: int = 0  # phased variant: global SGD passes over already-scored documents
    lora_phase_prefix_docs: int = 2000  # ... at these many documents, split evenly over the phases
    lora_phase_lr: float = 0.001
    ngram_order: int = 0  # eval-time n-gram mixing of order 2..6 on top of each final mode (0 = off)
    ngram_mix: str = "entropy"  # entropy (adaptive weight) | fixed
    ngram_lambda: float = 0.1  # the fixed mixing weight
    h100_mfu: float = 0.4  # assumed utilization for the 8xH100 time projection of each eval


@dataclass(frozen=True)
class QuantConfig:
    # "int8_per_row": the reference baseline's export; "gptq": Hessian-aware GPTQ with per-group
    # widths and clips (the records); "rtn": the same scales, rounded to nearest (no Hessian).
    scheme: str = "int8_per_row"
    clip_percentile: float = 99.99984  # int8_per_row, and scale_method="percentile"
    keep_float_max_numel: int = 65_536  # smaller float tensors pass through (fp16)
    # Per tensor group (attention / MLP / token embedding / other 2-D) width and SDClip k.
    attn_bits: int = 6
    mlp_bits: int = 6
    embed_bits: int = 8
    other_bits: int = 8
    attn_clip_sigmas: float = 12.85
    mlp_clip_sigmas: float = 12.85
    embed_clip_sigmas: float = 20.0
    other_clip_sigmas: float = 20.0
    scale_method: str = "sdclip"  # sdclip (k std(row) / qmax) | percentile | search (GPTQ-lite)
    # The low-bit grid of every quantized row (export, GPTQ and QAT alike; quant/grid.py GRIDS):
    # symmetric (the scale_method's scale, codes -qmax..qmax), affine (#1227: min-max over 2^bits
    # levels) or nf (#1227's NormalFloat: standard-normal quantiles at (i + 0.5) / 2^bits, min-max).
    grid: str = "symmetric"
    gptq_calibration_batches: int = 64  # batches of train_batch_tokens (GPTQ_CALIBRATION_BATCHES)
    gptq_block_size: int = 128
    gptq_damp: float = 0.01  # times mean(diag H)
    gptq_act_order: bool = True
    lqer_rank: int = 0  # low-rank correction of the quantization error (0 = off)
    lqer_top_k: int = 3  # on the tensors with the largest error
    lqer_asym: bool = True  # factors as int2 (one scale) x int4 (per-64 scales), else int4 per row
    qat: bool = False  # straight-through fake quantization in training, with the export's rule
    qat_lr_threshold: float = 1.0  # QAT is on while the lr multiplier <= this (1 = from the start)
    byte_shuffle: bool = True  # group bytes by significance in multi-byte tensors before compressing
    compressor: str = "zstd"  # zstd (ours) | zlib (the reference's format) | brotli (the records')
    level: int = 22  # zstd level (zlib always uses 9, brotli 11 like the references)
    # Which code size counts toward the cap: packed (the run's train_gpt.py: its imported modules
    # minified, lzma, base85, as the records ship theirs), raw (those .py files as they are) or
    # compressed (them zstd-22 as one stream).
    code_bytes: str = "packed"
    max_artifact_bytes: int = 16_000_000
    allow_oversize: bool = False


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)

    def __post_init__(self):
        validate(self)


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


# Seeds are unsigned 32-bit: the range numpy's legacy seeding and every framework accept, and far
# below the 2**63 where a seed stops fitting the int64 JAX converts it to.
SEED_RANGE = "[0, 4294967295]"

# The allowed range of every numeric field with one (the rest take any value of their type).
# "> 0" / ">= 0" / ">= 1" / "[a, b]" / "[a, b)": checked before any work, so a bad count is an
# error at --dry-run instead of a run that never ends (iterations < 0) or never trains (= 0).
RANGES = {
    "data.num_val_docs": ">= 1", "data.tokenizer_train_docs": ">= 0", "data.loader_seed": SEED_RANGE,
    "model.vocab_size": "[1, 65536]", "model.num_layers": ">= 1", "model.model_dim": ">= 1",
    "model.num_heads": ">= 1", "model.num_kv_heads": ">= 1", "model.mlp_mult": "> 0",
    "model.tied_embed_init_std": ">= 0", "model.rope_base": "> 0", "model.rope_train_seq_len": ">= 0",
    "model.logit_softcap": "> 0", "model.xsa_last_n": ">= 0", "model.parallel_residual_start": ">= -1",
    "model.num_loops": ">= 0", "model.loop_start": ">= 0", "model.loop_end": ">= 0", "model.bigram_dim": ">= 1",
    "model.linear_rank": ">= 1", "model.attn_rank": ">= 0", "model.mlp_rank": ">= 0", "model.mla_latent": ">= 1",
    "model.pause_tokens": ">= 0", "model.pause_interval": ">= 1", "model.act_max_steps": ">= 1",
    "model.act_threshold": "(0, 1]", "model.act_ponder_cost": ">= 0",
    "model.ssm_inner": ">= 0", "model.ssm_kernel": ">= 1", "model.monarch_blocks": ">= 1",
    "model.ut_iterations": ">= 1", "model.ut_branch_scale_init": ">= 0", "model.attention_window": ">= 0",
    "train.lr_warmup_steps": ">= 0", "eval.attention_window": ">= 0",
    "train.distill_alpha": "[0, 1]", "train.distill_temperature": "> 0",
    "optim.embed_lr": ">= 0", "optim.head_lr": ">= 0", "optim.tied_embed_lr": ">= 0", "optim.matrix_lr": ">= 0",
    "optim.scalar_lr": ">= 0", "optim.muon_momentum": "[0, 1)", "optim.muon_backend_steps": ">= 1",
    "optim.muon_momentum_warmup_start": "[0, 1)", "optim.muon_momentum_warmup_steps": ">= 0",
    "optim.gram_ns_min_aspect": ">= 0", "optim.beta1": "[0, 1)", "optim.beta2": "[0, 1)", "optim.adam_eps": "> 0",
    "optim.grad_clip_norm": ">= 0", "optim.muon_wd": ">= 0", "optim.embed_wd": ">= 0", "optim.adam_wd": ">= 0",
    "train.seed": SEED_RANGE, "train.iterations": ">= 1", "train.warmdown_iters": ">= 0", "train.gptq_reserve_seconds": ">= 0",
    "train.warmup_steps": ">= 0", "train.train_batch_tokens": ">= 1", "train.train_seq_len": ">= 1",
    "train.max_wallclock_seconds": ">= 0", "train.train_log_every": ">= 0", "train.batch_spans": ">= 1",
    "train.microbatch_tokens": ">= 0", "train.checkpoint_every": ">= 0", "train.checkpoint_every_seconds": ">= 0",
    "train.checkpoint_keep": ">= 1", "train.num_processes": ">= 0", "train.process_id": ">= -1",
    "eval.val_batch_size": ">= 1", "eval.val_loss_every": ">= 0", "eval.val_tokens_limit": ">= 0",
    "eval.eval_seq_len": ">= 0", "eval.eval_batch_seqs": ">= 1", "eval.ttt_lr": ">= 0", "eval.ttt_epochs": ">= 0",
    "eval.ttt_momentum": "[0, 1)", "eval.ttt_chunk_tokens": ">= 1", "eval.ttt_batch_seqs": ">= 1",
    "eval.ttt_grad_clip": ">= 0", "eval.lora_rank": ">= 1", "eval.lora_alpha": "> 0", "eval.lora_lr": ">= 0",
    "eval.lora_steps": ">= 0", "eval.lora_chunk_tokens": ">= 1", "eval.lora_batch_docs": ">= 1",
    "eval.lora_phases": ">= 0", "eval.lora_phase_prefix_docs": ">= 1", "eval.lora_phase_lr": ">= 0",
    "eval.ngram_lambda": "[0, 1]", "eval.h100_mfu": "(0, 1]",
    "quant.clip_percentile": "(0, 100]", "quant.keep_float_max_numel": ">= 0", "quant.attn_clip_sigmas": "> 0",
    "quant.mlp_clip_sigmas": "> 0", "quant.embed_clip_sigmas": "> 0", "quant.other_clip_sigmas": "> 0",
    "quant.gptq_calibration_batches": ">= 1", "quant.gptq_block_size": ">= 1", "quant.gptq_damp": ">= 0",
    "quant.lqer_rank": ">= 0", "quant.lqer_top_k": ">= 1", "quant.qat_lr_threshold": "[0, 1]",
    "quant.level": "[1, 22]", "quant.max_artifact_bytes": ">= 1",
}
RANGES.update({
    "model.basis_rank": ">= 1", "model.hypernet_rank": ">= 1", "model.hypernet_embed_dim": ">= 1",
    "model.hypernet_hidden": ">= 1", "model.siren_hidden": ">= 1", "model.siren_layers": ">= 2",
    "model.siren_omega": "> 0", "model.siren_chunk": ">= 1", "model.nca_steps": ">= 1", "model.nca_channels": ">= 1",
    "model.nca_hidden": ">= 1", "model.nca_update_prob": "(0, 1]", "model.seed_dim": ">= 1", "model.seed_chunk": ">= 1",
    "model.generator_seed": SEED_RANGE, "model.mps_bond_dim": ">= 1", "model.mps_pos_dim": ">= 1",
    "model.mps_max_len": ">= 1", "model.hopfield_refine_steps": ">= 0", "model.agents_msg_dim": ">= 1",
    "model.agents_local_ctx": ">= 1", "model.agents_decoder_hidden": ">= 1", "model.agents_loss_stride": ">= 1",
    "model.surge_layer": ">= 0", "model.surge_chunk": ">= 1", "model.surge_d_err": ">= 1",
    "model.surge_d_state": ">= 1", "model.surge_uv_init_std": ">= 0",
    "optim.adamw_lr": ">= 0", "optim.adamw_wd": ">= 0", "optim.adamw_beta2": "[0, 1)", "optim.adamw_clip": ">= 0",
})

# Fields checked against a table of their own (plain-Python modules: validating imports no JAX);
# the variant registries (model.attention, model.linear, ...) are pgolf_jax.registry's, by key.
TABLES = {
    "model.attention_impl": ("pgolf_jax.registry", "ATTENTION_IMPLS", ("auto",)),
    "optim.ns_coefficients": ("pgolf_jax.optim.coefficients", "COEFFICIENTS", ()),
    "model.mlp_linear": ("pgolf_jax.registry", "LINEAR", ("",)),
    "quant.grid": ("pgolf_jax.quant.grid", "GRIDS", ()),
}

RUN_ID_CHARS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _in_range(value, rule: str) -> bool:
    if rule.startswith(">="):
        return value >= float(rule[2:])
    if rule.startswith(">"):
        return value > float(rule[1:])
    lo, hi = (float(x) for x in rule[1:-1].split(","))
    return (lo <= value if rule[0] == "[" else lo < value) and (value <= hi if rule[-1] == "]" else value < hi)


def registry_choices(key: str) -> list[str]:
    """The values a registry-backed field accepts."""
    if key in registry.FIELDS:
        return list(registry.FIELDS[key])
    module, attr, extra = TABLES[key]
    return [*extra, *getattr(importlib.import_module(module), attr)]


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


def _validate_layers(m: ModelConfig) -> None:
    """Per-layer mixers, the MLP parameterization and the shared-block UT."""
    kinds = layer_mixers(m)
    if m.mixers and m.topology in ("act", "ut_shared"):
        raise ConfigError(f"model.mixers is for stacks of distinct layers; model.topology={m.topology} builds its own")
    if m.xsa_last_n and any(k != "attn" for k in kinds[m.num_layers - m.xsa_last_n:]):
        raise ConfigError(f"model.xsa_last_n={m.xsa_last_n} reaches layers whose mixer is not attention "
                          f"(model.mixers={m.mixers!r})")
    if "monarch" in (m.linear, m.mlp_linear):
        hidden, kv = int(m.mlp_mult * m.model_dim), m.num_kv_heads * (m.model_dim // m.num_heads)
        dims = {"model_dim": m.model_dim, "MLP hidden": hidden}
        if m.linear == "monarch":
            dims.update({"kv width": kv, "ssm_inner": m.ssm_inner or m.model_dim})
        bad = {k: v for k, v in dims.items() if v % m.monarch_blocks}
        if bad:
            raise ConfigError(f"model.monarch_blocks={m.monarch_blocks} must divide every Monarch matrix's sides: "
                              + ", ".join(f"{k} {v}" for k, v in bad.items()))
    if m.topology == "ut_shared":
        if m.num_layers != 3:
            raise ConfigError(f"model.topology=ut_shared stacks Block_in, the shared block and Block_out: "
                              f"set model.num_layers=3 (got {m.num_layers})")
        used = {"model.ln_scale": m.ln_scale, "model.xsa_last_n": m.xsa_last_n, "model.num_loops": m.num_loops,
                "model.parallel_residual_start": m.parallel_residual_start >= 0,
                "model.enable_looping_at": m.enable_looping_at}
        if any(used.values()):
            raise ConfigError(f"model.topology=ut_shared has its own parallel blocks and schedule: unset "
                              + ", ".join(k for k, v in used.items() if v))
    if m.ut_residual not in ("delta", "contraction"):
        raise ConfigError(f"model.ut_residual must be delta or contraction, got {m.ut_residual!r}")


def validate(cfg: Config) -> None:
    """Field ranges, registry keys and the cross-field checks the reference makes at model
    construction or batch time: all before any data is read or any file written."""
    m, t = cfg.model, cfg.train
    for key, rule in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not _in_range(value, rule):
            hint = " (to score existing weights without training use `run.py eval`)" if key == "train.iterations" else ""
            raise ConfigError(f"{key}={value} must be {'in ' if rule[0] in '[(' else ''}{rule}{hint}")
    for key in (*registry.FIELDS, *TABLES):
        section, name = key.split(".")
        value, choices = getattr(getattr(cfg, section), name), registry_choices(key)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not registered; choose from {', '.join(choices)}")
    if cfg.data.source.startswith("sample:"):
        names = sorted(importlib.import_module("pgolf_jax.data.samples").SAMPLES)
        if cfg.data.source[len("sample:"):] not in names:
            raise ConfigError(f"data.source={cfg.data.source!r}: unknown sample corpus; choose from "
                              + ", ".join(f"sample:{n}" for n in names))
    if t.run_id and not RUN_ID_CHARS.fullmatch(t.run_id):
        raise ConfigError(f"train.run_id={t.run_id!r}: use letters, digits, '.', '_' and '-' (it names a directory)")
    for key in ("data.data_path", "data.tokenizer_path", "data.train_files", "data.val_files", "train.out_dir"):
        section, name = key.split(".")
        if not getattr(getattr(cfg, section), name).strip():
            raise ConfigError(f"{key} must not be empty")
    if t.max_wallclock_seconds > 0 and t.gptq_reserve_seconds >= t.max_wallclock_seconds:
        raise ConfigError(f"train.gptq_reserve_seconds={t.gptq_reserve_seconds} leaves no training time of "
                          f"train.max_wallclock_seconds={t.max_wallclock_seconds}")
    if m.attention == "mla" and m.mla_latent > m.model_dim:
        raise ConfigError(f"model.mla_latent={m.mla_latent} exceeds model.model_dim={m.model_dim}")
    if m.topology == "act" and m.num_layers != 1:
        raise ConfigError(f"model.topology=act applies one shared block: set model.num_layers=1 (got {m.num_layers})")
    _validate_layers(m)
    if m.pause_tokens and (m.smear_gate or m.bigram_vocab_size):
        raise ConfigError("model.pause_tokens: pause slots have no token id, so they do not combine with "
                          "model.smear_gate or model.bigram_vocab_size")
    if t.objective == "distill" and not t.teacher:
        raise ConfigError("train.objective=distill needs train.teacher (a run directory or an artifact)")
    if m.xsa_last_n > m.num_layers:
        raise ConfigError(f"model.xsa_last_n={m.xsa_last_n} exceeds model.num_layers={m.num_layers}")
    if m.model_dim % m.num_heads:
        raise ConfigError(f"model.model_dim={m.model_dim} is not divisible by model.num_heads={m.num_heads}")
    if m.num_heads % m.num_kv_heads:
        raise ConfigError(f"model.num_heads={m.num_heads} is not divisible by model.num_kv_heads={m.num_kv_heads}")
    head_dim = m.model_dim // m.num_heads
    if head_dim % 2:
        raise ConfigError(f"head_dim={head_dim} must be even for RoPE")
    if m.rope_dims < 0 or m.rope_dims > head_dim or m.rope_dims % 2:
        raise ConfigError(f"model.rope_dims={m.rope_dims} must be an even number in [0, head_dim={head_dim}]")
    if m.num_loops < 0 or (m.num_loops and not 0 <= m.loop_start <= m.loop_end < m.num_layers):
        raise ConfigError(f"model.loop_start={m.loop_start}..loop_end={m.loop_end} must lie in 0..{m.num_layers - 1}")
    if not 0.0 <= m.enable_looping_at < 1.0:
        raise ConfigError(f"model.enable_looping_at={m.enable_looping_at} must be in [0, 1)")
    if m.smear_gate not in ("", "v1", "v2"):
        raise ConfigError(f"model.smear_gate must be '', 'v1' or 'v2', got {m.smear_gate!r}")
    if m.bigram_vocab_size < 0 or m.bigram_vocab_size == 1:
        raise ConfigError(f"model.bigram_vocab_size={m.bigram_vocab_size} must be 0 (off) or >= 2")
    if not 0.0 <= t.warmdown_frac <= 1.0 or not 0.0 <= t.min_lr <= 1.0:
        raise ConfigError(f"train.warmdown_frac={t.warmdown_frac} and train.min_lr={t.min_lr} must be in [0, 1]")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay={t.ema_decay} must be in [0, 1)")
    span = t.train_batch_tokens // t.batch_spans
    if t.train_batch_tokens % t.batch_spans or span % t.train_seq_len:
        raise ConfigError(
            f"train.train_batch_tokens={t.train_batch_tokens} must split into train.batch_spans={t.batch_spans} "
            f"spans of whole train.train_seq_len={t.train_seq_len} sequences"
        )
    if t.microbatch_tokens and (span % t.microbatch_tokens or t.microbatch_tokens % t.train_seq_len):
        raise ConfigError(
            f"train.microbatch_tokens={t.microbatch_tokens} must divide the span of {span} tokens "
            f"into whole sequences of {t.train_seq_len}"
        )
    for key, value in {"model.compute_dtype": m.compute_dtype, "model.embed_dtype": m.embed_dtype,
                       "optim.muon_dtype": cfg.optim.muon_dtype}.items():
        if value not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"{key} must be auto, float32 or bfloat16, got {value!r}")
    ev = cfg.eval
    modes = [m for m in ev.final_modes.split(",") if m]
    bad = [m for m in modes if m not in ("plain", "sliding", "ttt", "lora_ttt")]
    if not modes or bad:
        raise ConfigError(f"eval.final_modes={ev.final_modes!r}: choose from plain, sliding, ttt, lora_ttt")
    if ev.eval_stride <= 0 or (ev.eval_seq_len and ev.eval_stride > ev.eval_seq_len):
        raise ConfigError(f"eval.eval_stride={ev.eval_stride} must be in 1..eval_seq_len")
    if not (0 <= ev.lora_beta1 < 1 and 0 <= ev.lora_beta2 < 1 and ev.lora_eps > 0 and ev.lora_wd >= 0):
        raise ConfigError(f"eval.lora_beta1={ev.lora_beta1}, lora_beta2={ev.lora_beta2} must be in [0, 1), "
                          f"lora_eps={ev.lora_eps} > 0 and lora_wd={ev.lora_wd} >= 0")
    bad = [t for t in ev.lora_targets.split(",") if t not in LORA_TARGET_NAMES]
    if bad:
        raise ConfigError(f"eval.lora_targets={ev.lora_targets!r}: unknown {', '.join(bad)}; "
                          f"choose from {', '.join(LORA_TARGET_NAMES)}")
    if ev.ngram_order and not 2 <= ev.ngram_order <= 8:
        raise ConfigError(f"eval.ngram_order={ev.ngram_order} must be 0 (off) or 2..8")
    q = cfg.quant
    choices = {"train.param_sharding": (t.param_sharding, ("replicated", "fsdp")),
               "eval.ngram_mix": (ev.ngram_mix, ("entropy", "fixed")),
               "eval.lora_optimizer": (ev.lora_optimizer, ("sgd", "adam")),
               "quant.scheme": (q.scheme, ("int8_per_row", "gptq", "rtn")),
               "quant.scale_method": (q.scale_method, ("sdclip", "percentile", "search")),
               "quant.compressor": (q.compressor, ("zstd", "zlib", "brotli")),
               "data.loader": (cfg.data.loader, ("sequential", "shuffled")),
               "quant.code_bytes": (q.code_bytes, ("packed", "raw", "compressed")),
               "optim.matrix_optimizer": (cfg.optim.matrix_optimizer, ("muon", "adamw")),
               "train.lr_schedule": (t.lr_schedule, ("warmdown", "cosine"))}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
    for key, bits in {"quant.attn_bits": q.attn_bits, "quant.mlp_bits": q.mlp_bits, "quant.embed_bits": q.embed_bits,
                      "quant.other_bits": q.other_bits}.items():
        if not 2 <= bits <= 8:
            raise ConfigError(f"{key}={bits} must be in 2..8 (values are stored as int8)")
    if q.grid != "symmetric" and q.scheme == "int8_per_row":
        raise ConfigError(f"quant.grid={q.grid} is a low-bit export grid: use quant.scheme rtn or gptq "
                          "(int8_per_row is the reference's own format)")
    if q.qat and q.scheme != "int8_per_row" and q.scale_method == "search" and q.grid == "symmetric":
        raise ConfigError("quant.qat follows the export scales: use quant.scale_method sdclip or percentile")
    _validate_pr1589(cfg)


# Fields only a GPT reads (its blocks, their variants and sequence transforms), with their defaults:
# a family that is not a GPT refuses them instead of ignoring them.
_GPT_ONLY = ("topology", "block_schedule", "attention", "linear", "weight_source", "num_loops", "pause_tokens",
             "bigram_vocab_size", "smear_gate", "xsa_last_n", "parallel_residual_start", "ln_scale", "rope_dims",
             "skip_gates_enabled", "ortho_init", "enable_looping_at")


def _validate_pr1589(cfg: Config) -> None:
    """The cross-field rules of #1589's weight sources, non-GPT families and SURGE-M."""
    m, ev, q = cfg.model, cfg.eval, cfg.quant
    modes = ev.final_modes.split(",")
    if m.family in registry.NON_GPT_FAMILIES:
        default = ModelConfig()
        for name in _GPT_ONLY:
            if getattr(m, name) != getattr(default, name):
                raise ConfigError(f"model.family={m.family} is not a GPT: model.{name}={getattr(m, name)!r} does not "
                                  f"apply (leave it at {getattr(default, name)!r})")
        if q.scheme == "gptq":
            raise ConfigError(f"quant.scheme=gptq calibrates a GPT's block linears; model.family={m.family} has "
                              "none: use quant.scheme=rtn (the same grid, round-to-nearest)")
        if "lora_ttt" in modes:
            raise ConfigError(f"eval.final_modes=lora_ttt adapts a GPT's block linears; model.family={m.family} "
                              "has none (eval.final_modes=ttt trains all of its weights)")
    if m.family == "mps":
        longest = max(cfg.train.train_seq_len, ev.eval_seq_len)
        if longest > m.mps_max_len:
            raise ConfigError(f"model.mps_max_len={m.mps_max_len} is shorter than the sequences it must embed "
                              f"({longest} positions: train.train_seq_len / eval.eval_seq_len)")
    if m.weight_source != "params":
        if m.family != "gpt":
            raise ConfigError(f"model.weight_source={m.weight_source} generates a GPT's block linears: it needs "
                              f"model.family=gpt (got {m.family})")
        if m.linear != "dense" or m.attention != "gqa":
            raise ConfigError(f"model.weight_source={m.weight_source} makes the block linears itself: use "
                              f"model.linear=dense and model.attention=gqa (got {m.linear}, {m.attention})")
        if "lora_ttt" in modes:
            raise ConfigError(f"eval.final_modes=lora_ttt adapts stored block weights; model.weight_source="
                              f"{m.weight_source} stores none (eval.final_modes=ttt trains the generator)")
    if m.family == "surge_m":
        if m.surge_mode not in ("two_pass", "single"):
            raise ConfigError(f"model.surge_mode must be two_pass or single, got {m.surge_mode!r}")
        if not m.surge_layer < m.num_layers:
            raise ConfigError(f"model.surge_layer={m.surge_layer} must be a layer of model.num_layers={m.num_layers}")
        fixed = {"model.topology": (m.topology, ("unet", "plain")), "model.linear": (m.linear, ("dense",)),
                 "model.num_loops": (m.num_loops, (0,)), "model.pause_tokens": (m.pause_tokens, (0,)),
                 "model.skip_gates_enabled": (m.skip_gates_enabled, (False,))}
        for key, (value, allowed) in fixed.items():
            if value not in allowed:
                raise ConfigError(f"model.family=surge_m runs its SURGE layer in the plain layer order: {key}={value!r} "
                                  f"is not supported (use {' or '.join(map(repr, allowed))})")
        if "lora_ttt" in modes:
            raise ConfigError("eval.final_modes=lora_ttt does not reach SURGE-M's corrected pass; use ttt or plain")


# ---------------------------------------------------------------------------------------------
# Overrides

def _field_types(section_cls) -> dict[str, type]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _coerce(key: str, raw, typ):
    """Parse a CLI string (or check a Python value) against the field's type."""
    if isinstance(raw, str) and typ is not str:
        text = raw.strip()
        if typ is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{key}: expected a boolean (true/false/1/0), got {raw!r}")
        try:
            raw = ast.literal_eval(text.replace("_", "") if typ in (int, float) else text)
        except (ValueError, SyntaxError):
            raise ConfigError(f"{key}: expected {typ.__name__}, got {raw!r}") from None
    if typ is float and isinstance(raw, int) and not isinstance(raw, bool):
        raw = float(raw)
    if typ is float and isinstance(raw, float) and not math.isfinite(raw):
        raise ConfigError(f"{key}: expected a finite number, got {raw!r}")
    if typing.get_origin(typ) is tuple:
        if isinstance(raw, list):
            raw = tuple(raw)
        if not isinstance(raw, tuple):
            raise ConfigError(f"{key}: expected a tuple, got {raw!r}")
        return raw
    if not isinstance(raw, typ) or (typ is int and isinstance(raw, bool)):
        raise ConfigError(f"{key}: expected {typ.__name__}, got {raw!r} ({type(raw).__name__})")
    return raw


def override(cfg: Config, items: dict | list[str] | tuple[str, ...]) -> Config:
    """Apply `section.field` overrides (a dict, or CLI strings `section.field=value`)."""
    if not isinstance(items, dict):
        parsed = {}
        for item in items:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form section.field=value")
            key, value = item.split("=", 1)
            parsed[key.strip()] = value
        items = parsed
    sections = {name: getattr(cfg, name) for name in SECTIONS}
    for key, value in items.items():
        section, _, name = key.partition(".")
        if section not in sections or not name:
            hint = difflib.get_close_matches(key, all_keys(), n=1)
            raise ConfigError(f"unknown config key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        types_ = _field_types(type(sections[section]))
        if name not in types_:
            hint = difflib.get_close_matches(key, all_keys(), n=1)
            raise ConfigError(f"unknown config key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        sections[section] = dataclasses.replace(sections[section], **{name: _coerce(key, value, types_[name])})
    return Config(**sections)


def all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(_section_cls(s))]


def _section_cls(section: str):
    return typing.get_type_hints(Config)[section]


# ---------------------------------------------------------------------------------------------
# Presets

def load(path: str | Path, overrides: list[str] | dict | None = None) -> Config:
    """Build a Config from a preset file (its BASE chain, then OVERRIDES) plus CLI overrides."""
    cfg = _load_preset(Path(path), seen=())
    return override(cfg, overrides) if overrides else cfg


def _load_preset(path: Path, seen: tuple) -> Config:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"config BASE cycle through {path}")
    module = _exec_preset(path)
    overrides = getattr(module, "OVERRIDES", None)
    if not isinstance(overrides, dict):
        raise ConfigError(f"{path}: a preset must define OVERRIDES = {{'section.field': value, ...}}")
    if not all(isinstance(k, str) for k in overrides):
        bad = next(k for k in overrides if not isinstance(k, str))
        raise ConfigError(f"{path}: OVERRIDES key {bad!r} is not a 'section.field' string")
    base = getattr(module, "BASE", None)
    if base is not None and not (isinstance(base, (str, os.PathLike)) and str(base)):
        raise ConfigError(f"{path}: BASE = {base!r} must be the path of another preset file (a string), "
                          "relative to this one")
    cfg = _load_preset(path.parent / base, seen + (path.resolve(),)) if base else Config()
    try:
        return override(cfg, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _exec_preset(path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"pgolf_preset_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a preset is user code: report which file broke
        raise ConfigError(f"{path}: failed to load preset: {type(exc).__name__}: {exc}") from exc
    return module


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> Config:
    """Inverse of to_dict (used to reload a run's config.json); unknown keys are errors."""
    flat = {f"{s}.{k}": v for s, sec in d.items() for k, v in sec.items()} if d else {}
    return override(Config(), flat)


def to_json(cfg: Config) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=False)


def load_run_config(run_dir) -> Config:
    """A run directory's config.json as a Config; every error names the file."""
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory {run_dir} not found")
    data = read_json(path, f"is {run_dir} a run directory?")
    try:
        if not isinstance(data, dict):
            raise ConfigError("expected a JSON object of config sections")
        return from_dict(data)
    except (ConfigError, AttributeError, TypeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
