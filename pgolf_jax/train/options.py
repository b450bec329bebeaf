"""The train section (train.*) and the options of the objectives that have any
(`train.<objective>.<field>`). JAX-free."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pgolf_jax.errors import ConfigError
from pgolf_jax.options import SEED_RANGE, Section, check_range


@dataclass(frozen=True)
class TrainConfig(Section):
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
    objective: str = "ce"  # the training loss (registry.OBJECTIVES): ce | ce_chunked | distill (train.distill.*)
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
    options: tuple = ()
    SECTION = "train"
    PLACE_RANGES = {"seed": SEED_RANGE, "num_processes": ">= 0", "process_id": ">= -1"}  # config.PLACE_KEYS
    RANGES = {
        **PLACE_RANGES, "iterations": ">= 1", "warmdown_iters": ">= 0", "warmdown_frac": "[0, 1]",
        "min_lr": "[0, 1]", "lr_warmup_steps": ">= 0", "gptq_reserve_seconds": ">= 0", "ema_decay": "[0, 1)",
        "warmup_steps": ">= 0", "train_batch_tokens": ">= 1", "train_seq_len": ">= 1", "max_wallclock_seconds": ">= 0",
        "train_log_every": ">= 0", "batch_spans": ">= 1", "microbatch_tokens": ">= 0", "checkpoint_every": ">= 0",
        "checkpoint_every_seconds": ">= 0", "checkpoint_keep": ">= 1",
    }
    CHOICES = {"param_sharding": ("replicated", "fsdp")}

    def check_place(self) -> None:
        """The fields a packed train_gpt.py's command line may set (config.PLACE_KEYS)."""
        for name, rule in self.PLACE_RANGES.items():
            check_range(f"train.{name}", getattr(self, name), rule)
        if self.run_id and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.run_id):
            raise ConfigError(f"train.run_id={self.run_id!r}: use letters, digits, '.', '_' and '-' "
                              "(it names a directory)")
        if not self.out_dir.strip():
            raise ConfigError("train.out_dir must not be empty")

    def check(self, cfg) -> None:
        if self.iterations < 1:  # the one range with a hint
            check_range("train.iterations", self.iterations, ">= 1",
                        " (to score existing weights without training use `run.py eval`)")
        super().check(cfg)
        self.check_place()
        t, span = self, self.train_batch_tokens // self.batch_spans
        if t.max_wallclock_seconds > 0 and t.gptq_reserve_seconds >= t.max_wallclock_seconds:
            raise ConfigError(f"train.gptq_reserve_seconds={t.gptq_reserve_seconds} leaves no training time of "
                              f"train.max_wallclock_seconds={t.max_wallclock_seconds}")
        if t.train_batch_tokens % t.batch_spans or span % t.train_seq_len:
            raise ConfigError(f"train.train_batch_tokens={t.train_batch_tokens} must split into train.batch_spans="
                              f"{t.batch_spans} spans of whole train.train_seq_len={t.train_seq_len} sequences")
        if t.microbatch_tokens and (span % t.microbatch_tokens or t.microbatch_tokens % t.train_seq_len):
            raise ConfigError(f"train.microbatch_tokens={t.microbatch_tokens} must divide the span of {span} tokens "
                              f"into whole sequences of {t.train_seq_len}")


@dataclass(frozen=True)
class Distill:
    """distill = alpha CE + (1 - alpha) T^2 KL(teacher || student) from a frozen teacher: a run
    directory (config.json + final_model.npz) or a packed artifact."""
    teacher: str = ""
    alpha: float = 0.5
    temperature: float = 2.0
    RANGES = {"alpha": "[0, 1]", "temperature": "> 0"}

    def check(self, cfg):
        if not self.teacher:
            raise ConfigError("train.objective=distill needs train.distill.teacher (a run directory or an artifact)")


@dataclass(frozen=True)
class CEChunked:
    """ce_chunked: today's softcapped cross-entropy computed vocab_chunk vocabulary rows at a time,
    each chunk's logits recomputed in the backward pass, so no (B, T, V) logits tensor is ever held
    (a chunk holds B x T x vocab_chunk)."""
    vocab_chunk: int = 1024
    RANGES = {"vocab_chunk": ">= 1"}

    def check(self, cfg):
        # It reads the GPT's hidden states and head directly; other families compute their
        # logits their own way (surge_m corrects them, mps/hopfield/agents have no such head).
        if cfg.model.family != "gpt":
            raise ConfigError(f"train.objective=ce_chunked needs model.family=gpt; got {cfg.model.family!r}")
        if cfg.model.vocab_size % self.vocab_chunk:
            raise ConfigError(f"train.ce_chunked.vocab_chunk={self.vocab_chunk} must divide "
                              f"model.vocab_size={cfg.model.vocab_size}")
