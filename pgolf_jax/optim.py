"""Optimizers as optax transforms: Muon for block matrices, Adam for the rest, one LR schedule.

Parameter groups follow the reference exactly: the token embedding (Adam, tied_embed_lr or
embed_lr), an untied head (Adam, head_lr), 2-D block matrices (Muon, matrix_lr) and everything
else - vectors, scalars, control tensors matched by name, skip weights (Adam, scalar_lr).
The wall-clock LR multiplier is passed to `update` as the extra argument `lr_mul`; it scales
every group's step together, as the reference's `group["lr"] = base_lr * scale`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pgolf_jax.config import Config, TrainConfig
from pgolf_jax.orthogonalize import ORTHOGONALIZERS

# Names routed to the scalar group (and kept fp32 in the int8 export) whatever their shape.
CONTROL_TENSOR_NAME_PATTERNS = (
    "attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes",
    "q_gain", "skip_weight", "skip_weights",
)
STACKED_PREFIX = "blocks."  # parameters under this prefix carry a leading layer axis


def path_name(path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def group_of(name: str, ndim: int) -> str:
    """The optimizer group of one parameter, by its dotted name and shape."""
    if name == "tok_emb.weight":
        return "embed"
    if name == "lm_head.weight":
        return "head"
    if name.startswith(STACKED_PREFIX):
        per_layer_ndim = ndim - 1
        if per_layer_ndim == 2 and not any(p in name for p in CONTROL_TENSOR_NAME_PATTERNS):
            return "matrix"
        return "scalar"
    if ndim < 2 or any(p in name for p in CONTROL_TENSOR_NAME_PATTERNS):
        return "scalar"
    raise ValueError(f"parameter {name!r} (ndim {ndim}) has no optimizer group; add a rule in optim.group_of")


def label_params(params) -> Any:
    return jax.tree_util.tree_map_with_path(lambda p, a: group_of(path_name(p), a.ndim), params)


# ---------------------------------------------------------------------------------------------

class MuonState(NamedTuple):
    count: jax.Array
    momentum: Any


def muon_momentum(count, target: float, start: float, warmup_steps: int):
    """Linear momentum warm-up: start -> target over the first warmup_steps steps."""
    if warmup_steps <= 0:
        return jnp.asarray(target, jnp.float32)
    frac = jnp.minimum(count.astype(jnp.float32) / warmup_steps, 1.0)
    return (1.0 - frac) * start + frac * target


def scale_by_muon(orthogonalize, *, steps: int, momentum: float, warmup_start: float,
                  warmup_steps: int, nesterov: bool = True, dtype=jnp.float32) -> optax.GradientTransformation:
    """SGD-Nesterov momentum, then orthogonalize each (possibly layer-stacked) matrix, then
    scale by sqrt(max(1, rows/cols)). Returns the direction; the LR is applied later."""

    def init(params):
        return MuonState(jnp.zeros((), jnp.int32), jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params))

    def update(updates, state, params=None):
        del params
        mu = muon_momentum(state.count, momentum, warmup_start, warmup_steps)
        buf = jax.tree.map(lambda b, g: mu * b + g.astype(jnp.float32), state.momentum, updates)
        direction = jax.tree.map(lambda g, b: g.astype(jnp.float32) + mu * b, updates, buf) if nesterov else buf

        def orth(u):
            rows, cols = u.shape[-2:]
            fn = lambda m: orthogonalize(m, steps=steps, dtype=dtype)  # noqa: E731
            for _ in range(u.ndim - 2):  # one orthogonalization per stacked layer
                fn = jax.vmap(fn)
            # The reference gathers updates in a bf16 buffer, so its step is bf16-rounded.
            o = fn(u).astype(dtype) * math.sqrt(max(1.0, rows / cols))
            return o.astype(dtype).astype(jnp.float32)

        return jax.tree.map(orth, direction), MuonState(state.count + 1, buf)

    return optax.GradientTransformation(init, update)


def scale_by_lr(base_lr: float) -> optax.GradientTransformationExtraArgs:
    """u -> -base_lr * lr_mul * u, with lr_mul an extra argument of `update` (default 1)."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None, *, lr_mul=1.0, **extra):
        del params, extra
        scale = -base_lr * jnp.asarray(lr_mul, jnp.float32)
        return jax.tree.map(lambda u: (scale * u.astype(jnp.float32)).astype(u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init, update)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is < 1."""

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        coef = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
        return jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda p: optax.EmptyState(), update)


def make_optimizer(cfg: Config, muon_dtype) -> optax.GradientTransformationExtraArgs:
    o, m = cfg.optim, cfg.model
    adam = lambda lr: optax.chain(optax.scale_by_adam(o.beta1, o.beta2, o.adam_eps), scale_by_lr(lr))  # noqa: E731
    groups = {
        "embed": adam(o.tied_embed_lr if m.tie_embeddings else o.embed_lr),
        "head": adam(o.head_lr),
        "scalar": adam(o.scalar_lr),
        "matrix": optax.chain(
            scale_by_muon(ORTHOGONALIZERS[o.orthogonalizer], steps=o.muon_backend_steps,
                          momentum=o.muon_momentum, warmup_start=o.muon_momentum_warmup_start,
                          warmup_steps=o.muon_momentum_warmup_steps, dtype=muon_dtype),
            scale_by_lr(o.matrix_lr)),
    }
    tx = optax.multi_transform(groups, label_params)
    if o.grad_clip_norm > 0:
        tx = optax.chain(clip_by_global_norm(o.grad_clip_norm), tx)
    return tx


def warmdown_multiplier(step: int, elapsed_ms: float, t: TrainConfig) -> float:
    """The reference's lr_mul: linear warmdown over the last warmdown_iters steps, converted to
    wall-clock with the running mean step time when a cap is set, else counted in steps."""
    if t.warmdown_iters <= 0:
        return 1.0
    if t.max_wallclock_seconds <= 0:
        start = max(t.iterations - t.warmdown_iters, 0)
        return max((t.iterations - step) / max(t.warmdown_iters, 1), 0.0) if start <= step < t.iterations else 1.0
    step_ms = elapsed_ms / max(step, 1)
    warmdown_ms = t.warmdown_iters * step_ms
    remaining_ms = max(1000.0 * t.max_wallclock_seconds - elapsed_ms, 0.0)
    return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0
