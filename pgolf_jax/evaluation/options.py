"""The eval section (eval.*) and the options of the final eval modes that have any
(`eval.<mode>.<field>`, set only while eval.final_modes selects the mode). JAX-free."""

from __future__ import annotations

from dataclasses import dataclass

from pgolf_jax import registry
from pgolf_jax.errors import ConfigError
from pgolf_jax.options import Section


@dataclass(frozen=True)
class EvalConfig(Section):
    val_batch_size: int = 524_288
    val_loss_every: int = 1000
    val_tokens_limit: int = 0  # score only the first N val tokens (0 = the whole split)
    attention_window: int = 0  # every evaluation's sliding causal attention window (#2114: 512; 0 = as trained)
    # Evaluations of the round-tripped artifact, in order (registry.EVAL_MODES); the last one is the
    # reported score: plain (non-overlapping sequences), sliding, ttt (eval.ttt.*), lora_ttt (eval.lora_ttt.*).
    final_modes: str = "plain"
    eval_seq_len: int = 0  # window length of the final evals (0 = train.train_seq_len)
    eval_stride: int = 64  # sliding-window stride (records: 2048 / 64)
    eval_batch_seqs: int = 32  # windows per forward in sliding / TTT scoring
    ngram_order: int = 0  # eval-time n-gram mixing of order 2..8 on top of each final mode (0 = off)
    ngram_mix: str = "entropy"  # entropy (adaptive weight) | fixed
    ngram_lambda: float = 0.1  # the fixed mixing weight
    # eval-time n-gram tilt on top of each final mode (registry.NGRAM_TILTS): "" (off) | token_tilt
    # (#1514, eval.token_tilt.*)
    ngram_tilt: str = ""
    h100_mfu: float = 0.4  # assumed utilization for the 8xH100 time projection of each eval
    options: tuple = ()
    SECTION = "eval"
    RANGES = {"val_batch_size": ">= 1", "val_loss_every": ">= 0", "val_tokens_limit": ">= 0",
              "attention_window": ">= 0", "eval_seq_len": ">= 0", "eval_stride": ">= 1", "eval_batch_seqs": ">= 1",
              "ngram_lambda": "[0, 1]", "h100_mfu": "(0, 1]"}
    CHOICES = {"ngram_mix": ("entropy", "fixed")}

    def check(self, cfg) -> None:
        super().check(cfg)
        if not registry.names("eval.final_modes", self.final_modes):
            raise ConfigError(f"eval.final_modes={self.final_modes!r}: choose from {', '.join(registry.EVAL_MODES)}")
        if self.eval_seq_len and self.eval_stride > self.eval_seq_len:
            raise ConfigError(f"eval.eval_stride={self.eval_stride} must be in 1..eval_seq_len")
        if self.ngram_order and not 2 <= self.ngram_order <= 8:
            raise ConfigError(f"eval.ngram_order={self.ngram_order} must be 0 (off) or 2..8")

@dataclass(frozen=True)
class TokenTilt:
    """token_tilt (#1514): the token expert of #1420's context mixer. Orders min_order..max_order
    every order_stride (the record: 8, 10, .., 16) give a hint from the highest order whose context
    is confident enough (orders 8-10: best/count >= 0.70 * threshold_scale and count >= 3; 11-13:
    0.60, 2; 14-16: 0.50, 2); the hint's logit gains base_beta * confidence."""
    base_beta: float = 2.0
    min_order: int = 8
    max_order: int = 16
    order_stride: int = 2
    threshold_scale: float = 1.0
    RANGES = {"base_beta": ">= 0", "min_order": "[1, 32]", "max_order": "[1, 32]", "order_stride": ">= 1",
              "threshold_scale": "> 0"}

    def check(self, cfg):
        if self.min_order > self.max_order:
            raise ConfigError(f"eval.token_tilt.min_order={self.min_order} must be <= "
                              f"eval.token_tilt.max_order={self.max_order}")


# lora_ttt's adapter sites: q, k, v, o (attn.proj), mlp (fc), mlp_out (mlp.proj), head, and the
# records' parallel o_par / mlp_par (D -> D from the sublayer's normalized input).
LORA_TARGET_NAMES = ("q", "k", "v", "o", "mlp", "mlp_out", "head", "o_par", "mlp_par")


@dataclass(frozen=True)
class TTT:
    """ttt: score-first full-weight SGD, each chunk of chunk_tokens scored before it is trained on
    for `epochs` (cosine lr over the chunks, momentum, gradient clip), batch_seqs windows a step."""
    lr: float = 0.005
    epochs: int = 3
    momentum: float = 0.9
    chunk_tokens: int = 32_768
    batch_seqs: int = 32
    grad_clip: float = 1.0
    RANGES = {"lr": ">= 0", "epochs": ">= 0", "momentum": "[0, 1)", "chunk_tokens": ">= 1", "batch_seqs": ">= 1",
              "grad_clip": ">= 0"}


@dataclass(frozen=True)
class LoRATTT:
    """lora_ttt: per-document LoRA adapters trained score-first on each chunk. The phased variant
    (spec 4.18) adds global SGD passes of the base weights over already-scored documents (phase_*),
    in one of two styles. stream (pgolf_jax's first one): documents in stream order, the passes over
    the stream prefix in plain windows (they may cross documents), one momentum buffer (`momentum`)
    over all phases, boundaries round(P k / n). records (#1610 one phase, #1626 three, #1855 prefix
    2500): the records' queue (documents sorted by length, batches of batch_docs, longest batch
    first); at P k // n completed documents (P = min(phase_prefix_docs, documents)) a pass over the
    scored documents (the first P k // n of them in ascending length order) concatenated, with a
    fresh optimizer (phase_momentum), windows cut at every BOS and every eval_seq_len tokens of a
    document, the last chunk not trained (as the records); at most one phase per document batch."""
    rank: int = 8
    alpha: float = 8.0  # adapter output scale alpha / rank
    targets: str = "q,k,v,o,mlp,head"  # of LORA_TARGET_NAMES (the records: q,k,v,o_par,mlp_par,head)
    lr: float = 0.01
    optimizer: str = "sgd"  # sgd (#1227, with `momentum`) | adam (betas, eps; AdamW when wd > 0)
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    wd: float = 0.0
    warm_start_a: bool = False  # keep the trained A across document batches (reset per phase)
    steps: int = 1  # optimizer steps per scored chunk (cosine within the chunk)
    chunk_tokens: int = 48
    batch_docs: int = 16  # documents scored in lockstep, each with its own adapter
    phases: int = 0  # phased variant: global SGD passes over already-scored documents
    phase_prefix_docs: int = 2000  # ... at these many documents, split evenly over the phases
    phase_lr: float = 0.001
    phase_chunk_tokens: int = 32_768  # the global passes: chunks, windows per step, momentum, clip
    phase_batch_seqs: int = 32
    phase_grad_clip: float = 1.0
    phase_style: str = "stream"  # stream | records (see above)
    phase_momentum: float = 0.9  # records style: each phase's fresh SGD momentum (stream uses `momentum`)
    phase_epochs: int = 1  # passes over the scored documents per phase (#1610: 3, #1626 on: 1)
    RANGES = {"rank": ">= 1", "alpha": "> 0", "lr": ">= 0", "momentum": "[0, 1)", "beta1": "[0, 1)",
              "beta2": "[0, 1)", "eps": "> 0", "wd": ">= 0", "steps": ">= 0", "chunk_tokens": ">= 1",
              "batch_docs": ">= 1", "phases": ">= 0", "phase_prefix_docs": ">= 1", "phase_lr": ">= 0",
              "phase_chunk_tokens": ">= 1", "phase_batch_seqs": ">= 1", "phase_grad_clip": ">= 0",
              "phase_momentum": "[0, 1)", "phase_epochs": ">= 1"}
    CHOICES = {"optimizer": ("sgd", "adam"), "phase_style": ("stream", "records")}

    def check(self, cfg):
        targets = self.targets.split(",")
        bad = [t for t in targets if t not in LORA_TARGET_NAMES]
        if bad:
            raise ConfigError(f"eval.lora_ttt.targets={self.targets!r}: unknown {', '.join(bad)}; "
                              f"choose from {', '.join(LORA_TARGET_NAMES)}")
        # q..mlp_out add a low-rank delta to a stored dense weight; o_par, mlp_par and head do not need one.
        m = cfg.model
        # MLA keeps Q and the output projection full rank; K and V come from its latent.
        sites = {"attention": ({"q", "k", "v", "o"}, m.linear), "MLP": ({"mlp", "mlp_out"}, m.mlp_linear or m.linear)}
        if m.attention == "mla" and {"k", "v"} & set(targets):
            raise ConfigError(f"eval.lora_ttt.targets={self.targets!r}: model.attention=mla has no K / V weights "
                              "to adapt (they come from its latent); drop k and v")
        for site, (names, kind) in sites.items():
            hit = sorted(names & set(targets))
            if hit and kind != "dense":
                raise ConfigError(f"eval.lora_ttt.targets={self.targets!r}: {', '.join(hit)} adapt the {site}'s "
                                  f"stored dense weights, which {kind} does not have; use o_par, mlp_par, head "
                                  "(or eval.final_modes=ttt)")
