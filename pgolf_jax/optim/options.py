"""The optim section (optim.*). JAX-free."""

from __future__ import annotations

from dataclasses import dataclass

from pgolf_jax.errors import ConfigError
from pgolf_jax.options import Section


@dataclass(frozen=True)
class OptimConfig(Section):
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
    ns_coefficients: str = "ns5"  # registry.NS_COEFFICIENTS
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
    # muon_wd's multiplier over training (registry.WD_SCHEDULES): constant, or taper (#1729).
    wd_schedule: str = "constant"
    embed_wd: float = 0.0
    adam_wd: float = 0.0
    # The `adamw` group (parameters that declare it: #1589's meta-networks, generators and non-GPT
    # families): AdamW with its own lr, decay, beta2 and gradient clip (over the group's gradients).
    adamw_lr: float = 3e-4
    adamw_wd: float = 0.0
    adamw_beta2: float = 0.95
    adamw_clip: float = 0.0
    adamw_all: bool = False  # every parameter on the adamw group (#1589's hypernetwork: Adam on all)
    options: tuple = ()
    SECTION = "optim"
    RANGES = {
        "embed_lr": ">= 0", "head_lr": ">= 0", "tied_embed_lr": ">= 0", "matrix_lr": ">= 0", "scalar_lr": ">= 0",
        "muon_momentum": "[0, 1)", "muon_backend_steps": ">= 1", "muon_momentum_warmup_start": "[0, 1)",
        "muon_momentum_warmup_steps": ">= 0", "gram_ns_min_aspect": ">= 0", "beta1": "[0, 1)", "beta2": "[0, 1)",
        "adam_eps": "> 0", "grad_clip_norm": ">= 0", "muon_wd": ">= 0", "embed_wd": ">= 0", "adam_wd": ">= 0",
        "adamw_lr": ">= 0", "adamw_wd": ">= 0", "adamw_beta2": "[0, 1)", "adamw_clip": ">= 0",
    }
    CHOICES = {"matrix_optimizer": ("muon", "adamw"), "muon_dtype": ("auto", "float32", "bfloat16")}



@dataclass(frozen=True)
class Taper:
    """wd_schedule=taper (#1729): optim.muon_wd (the matrix group's decay; the record's Muon group, the
    other groups keep theirs) x 1 until start_frac of training, then linear to end_factor x at the
    end; progress is the lr schedule's training fraction (wall-clock when capped)."""
    start_frac: float = 0.7
    end_factor: float = 0.5
    RANGES = {"start_frac": "[0, 1]", "end_factor": ">= 0"}

    def check(self, cfg):
        if cfg.optim.muon_wd <= 0:
            raise ConfigError("optim.wd_schedule=taper tapers optim.muon_wd, which is 0 (no decay to taper)")
