"""The lr multiplier over training: the reference's warmdown (steps, or wall-clock with the running
mean step time; with both limits, whichever ends first: #2114's fix), the record stacks' fractional
warmdown with a floor, #1227's cosine, and a linear lr warm-up on top of any of them; and the
multiplier of the matrix group's weight decay (optim.wd_schedule: constant, or #1729's taper)."""

from __future__ import annotations

import math

from pgolf_jax import registry
from pgolf_jax.config import Config, OptimConfig, TrainConfig


def training_fraction(step: int, elapsed_ms: float, t: TrainConfig) -> float:
    """Progress through the budget: elapsed / (cap - gptq reserve), or step / iterations uncapped."""
    if t.max_wallclock_seconds <= 0:
        return step / max(t.iterations, 1)
    return elapsed_ms / max(1000.0 * (t.max_wallclock_seconds - t.gptq_reserve_seconds), 1e-9)


def warmdown_multiplier(step: int, elapsed_ms: float, t: TrainConfig) -> float:
    """The reference's lr_mul: linear warmdown over the last warmdown_iters steps, converted to
    wall-clock with the running mean step time when a cap is set. With a cap the iteration limit
    still counts: max(min(iteration, wall-clock multiplier), min_lr), so a capped run that stops
    on iterations warms down too (#2114's fix; the reference used the wall-clock branch alone and
    such a run never decayed; when the cap binds first both agree, min_lr = 0 being the
    reference's floor). With warmdown_frac (the record stacks): 1, then (1 - frac) /
    warmdown_frac floored at min_lr."""
    if t.warmdown_frac > 0:
        frac = training_fraction(step, elapsed_ms, t)
        return max((1.0 - frac) / t.warmdown_frac, t.min_lr) if frac >= 1.0 - t.warmdown_frac else 1.0
    if t.warmdown_iters <= 0:
        return 1.0
    start = max(t.iterations - t.warmdown_iters, 0)
    by_steps = max((t.iterations - step) / max(t.warmdown_iters, 1), 0.0) if step >= start else 1.0
    if t.max_wallclock_seconds <= 0:
        return max(by_steps, t.min_lr)
    step_ms = elapsed_ms / max(step, 1)
    warmdown_ms = t.warmdown_iters * step_ms
    remaining_ms = max(1000.0 * t.max_wallclock_seconds - elapsed_ms, 0.0)
    by_clock = remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0
    return max(min(by_steps, by_clock), t.min_lr)


def cosine_multiplier(step: int, elapsed_ms: float, t: TrainConfig) -> float:
    """#1227's cosine decay: min_lr + (1 - min_lr) (1 + cos(pi p)) / 2, p the progress after the lr
    warm-up in steps (torch's CosineAnnealingLR over `iterations` when there is no warm-up), or
    the training fraction of the wall-clock budget when capped."""
    if t.max_wallclock_seconds > 0:
        p = training_fraction(step, elapsed_ms, t)
    else:
        p = max(step - t.lr_warmup_steps, 0) / max(t.iterations - t.lr_warmup_steps, 1)
    return t.min_lr + (1.0 - t.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(max(p, 0.0), 1.0)))


def schedule_multiplier(step: int, elapsed_ms: float, t: TrainConfig) -> float:
    """The configured decay (train.lr_schedule), without the warm-up ramp: what late QAT watches."""
    return registry.resolve(registry.SCHEDULES, t.lr_schedule)(step, elapsed_ms, t)


def warmup_factor(step: int, t: TrainConfig) -> float:
    """train.lr_warmup_steps: (step + 1) / N for the first N steps, so step 0 already moves the
    weights (#2114 uses step / N, whose first step is a no-op)."""
    return min((step + 1) / t.lr_warmup_steps, 1.0) if t.lr_warmup_steps > 0 else 1.0


def constant_wd(frac: float, o: OptimConfig) -> float:
    """optim.muon_wd as configured, all of training."""
    return 1.0


def taper_wd(frac: float, o: OptimConfig) -> float:
    """#1729: 1 until optim.taper.start_frac of training, then linear to end_factor at the end."""
    start, end = o.taper.start_frac, o.taper.end_factor
    if frac <= start or start >= 1.0:
        return 1.0
    return 1.0 + (end - 1.0) * min((frac - start) / (1.0 - start), 1.0)


def wd_multiplier(step: int, elapsed_ms: float, cfg: Config) -> float:
    """The configured WD schedule (optim.wd_schedule) at the lr schedule's training fraction."""
    frac = training_fraction(step, elapsed_ms, cfg.train)
    return registry.resolve(registry.WD_SCHEDULES, cfg.optim.wd_schedule)(frac, cfg.optim)
