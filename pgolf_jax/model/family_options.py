"""The options of the model families other than the GPT (model.mps.*, model.hopfield.*,
model.agents.*, model.surge_m.*), registered with their implementations in registry.FAMILIES.
JAX-free, like every options module."""

from __future__ import annotations

from dataclasses import dataclass

from pgolf_jax.errors import ConfigError

# ---- Families other than the GPT.

# Fields only a GPT reads (its blocks, their variants and sequence transforms): a family that is
# not a GPT refuses them instead of ignoring them.
GPT_ONLY = ("topology", "block_schedule", "attention", "linear", "weight_source", "num_loops", "pause_tokens",
            "bigram_vocab_size", "smear_gate", "xsa_last_n", "parallel_residual_start", "parallel_residual", "ln_scale",
            "rope_dims", "skip_gates_enabled", "ortho_init", "enable_looping_at", "attn_gate")


class _NonGPT:
    def check(self, cfg):
        m, default = cfg.model, type(cfg.model)()
        for name in GPT_ONLY:
            if getattr(m, name) != getattr(default, name):
                raise ConfigError(f"model.family={m.family} is not a GPT: model.{name}={getattr(m, name)!r} does not "
                                  f"apply (leave it at {getattr(default, name)!r})")
        if cfg.quant.scheme == "gptq":
            raise ConfigError(f"quant.scheme=gptq calibrates a GPT's block linears; model.family={m.family} has "
                              "none: use quant.scheme=rtn (the same grid, round-to-nearest)")
        if "lora_ttt" in cfg.eval.final_modes.split(","):
            raise ConfigError(f"eval.final_modes=lora_ttt adapts a GPT's block linears; model.family={m.family} "
                              "has none (eval.final_modes=ttt trains all of its weights)")


@dataclass(frozen=True)
class MPS(_NonGPT):
    """A shared core (vocab, bond_dim, bond_dim) modulated per position from pos_dim embeddings of
    max_len positions (train / eval sequences must fit)."""
    bond_dim: int = 64
    pos_dim: int = 32
    max_len: int = 1024
    RANGES = {"bond_dim": ">= 1", "pos_dim": ">= 1", "max_len": ">= 1"}

    def check(self, cfg):
        super().check(cfg)
        longest = max(cfg.train.train_seq_len, cfg.eval.eval_seq_len)
        if longest > self.max_len:
            raise ConfigError(f"model.mps.max_len={self.max_len} is shorter than the sequences it must embed "
                              f"({longest} positions: train.train_seq_len / eval.eval_seq_len)")


@dataclass(frozen=True)
class Hopfield(_NonGPT):
    """Encoder num_layers x model_dim, then refine_steps of retrieval with a learned step size."""
    refine_steps: int = 3
    refine_alpha: float = 0.1
    RANGES = {"refine_steps": ">= 0"}


@dataclass(frozen=True)
class Agents(_NonGPT):
    """Encoder num_layers x model_dim -> a msg_dim message; an MLP decoder (decoder_hidden) that
    sees local_ctx token embeddings directly; the loss on every loss_stride-th position."""
    msg_dim: int = 64
    local_ctx: int = 8
    decoder_hidden: int = 256
    loss_stride: int = 64
    RANGES = {"msg_dim": ">= 1", "local_ctx": ">= 1", "decoder_hidden": ">= 1", "loss_stride": ">= 1"}


@dataclass(frozen=True)
class SurgeM:
    """SURGE-M v2 (#1589): one SURGE layer whose output projection a minGRU meta-network corrects
    per chunk from the base pass's prediction errors."""
    mode: str = "two_pass"  # two_pass (re-run the later layers) | single (logit correction)
    layer: int = 4
    chunk: int = 64
    d_err: int = 64
    d_state: int = 64
    gate_bias: float = -4.6  # update gate sigmoid(.) ~ 0.01 at init
    forget_bias: float = 2.3  # forget gate ~ 0.9 at init
    uv_init_std: float = 0.01  # 0 is the symmetry trap: u/v heads then never get a gradient
    RANGES = {"layer": ">= 0", "chunk": ">= 1", "d_err": ">= 1", "d_state": ">= 1", "uv_init_std": ">= 0"}
    CHOICES = {"mode": ("two_pass", "single")}

    def check(self, cfg):
        m = cfg.model
        if not self.layer < m.num_layers:
            raise ConfigError(f"model.surge_m.layer={self.layer} must be a layer of model.num_layers={m.num_layers}")
        fixed = {"model.topology": (m.topology, ("unet", "plain")), "model.linear": (m.linear, ("dense",)),
                 "model.num_loops": (m.num_loops, (0,)), "model.pause_tokens": (m.pause_tokens, (0,)),
                 "model.skip_gates_enabled": (m.skip_gates_enabled, (False,))}
        for key, (value, allowed) in fixed.items():
            if value not in allowed:
                raise ConfigError(f"model.family=surge_m runs its SURGE layer in the plain layer order: "
                                  f"{key}={value!r} is not supported (use {' or '.join(map(repr, allowed))})")
        if "lora_ttt" in cfg.eval.final_modes.split(","):
            raise ConfigError("eval.final_modes=lora_ttt does not reach SURGE-M's corrected pass; use ttt or plain")
