"""The lr multiplier over training: the reference's warmdown (steps, or wall-clock with the running
mean step time) and the record stacks' fractional warmdown with a floor."""

from __future__ import annotations

from pgolf_jax.config import TrainConfig


def training_fraction(step: int, elapsed_ms: float, t: TrainConfig) -> float:
    """Progress through the budget: elapsed / (cap - gptq reserve), or step / iterations uncapped."""
    if t.max_wallclock_seconds <= 0:
        return step / max(t.iterations, 1)
    return elapsed_ms / max(1000.0 * (t.max_wallclock_seconds - t.gptq_reserve_seconds), 1e-9)


def warmdown_multiplier(step: int, elapsed_ms: float, t: TrainConfig) -> float:
    """The reference's lr_mul: linear warmdown over the last warmdown_iters steps, converted to
    wall-clock with the running mean step time when a cap is set, else counted in steps. With
    warmdown_frac (the record stacks): 1, then (1 - frac) / warmdown_frac floored at min_lr."""
    if t.warmdown_frac > 0:
        frac = training_fraction(step, elapsed_ms, t)
        return max((1.0 - frac) / t.warmdown_frac, t.min_lr) if frac >= 1.0 - t.warmdown_frac else 1.0
    if t.warmdown_iters <= 0:
        return 1.0
    if t.max_wallclock_seconds <= 0:
        start = max(t.iterations - t.warmdown_iters, 0)
        return max((t.iterations - step) / max(t.warmdown_iters, 1), 0.0) if start <= step < t.iterations else 1.0
    step_ms = elapsed_ms / max(step, 1)
    warmdown_ms = t.warmdown_iters * step_ms
    remaining_ms = max(1000.0 * t.max_wallclock_seconds - elapsed_ms, 0.0)
    return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0
