"""Optimizers as optax transforms: Muon for block matrices, Adam for the rest, one LR schedule.

Parameter groups follow the reference exactly: the token embedding (Adam, tied_embed_lr or
embed_lr), an untied head (Adam, head_lr), block matrices (Muon, matrix_lr) and everything else -
vectors, scalars, control tensors, skip weights (Adam, scalar_lr); plus `adamw` (AdamW with its own
adamw_lr / adamw_wd / adamw_beta2 / adamw_clip) for what #1589's models put there. Each parameter
declares its group where the model creates it (model.params).
The wall-clock LR multiplier is passed to `update` as the extra argument `lr_mul`; it scales
every group's step together, as the reference's `group["lr"] = base_lr * scale`. Under a WD
schedule (optim.wd_schedule) the matrix group's decay also takes `wd_mul`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pgolf_jax import hyper
from pgolf_jax.config import Config
from pgolf_jax.model.params import ParamSpec
from pgolf_jax.optim.orthogonalize import ORTHOGONALIZERS, gram_newton_schulz


def labels_from_specs(spec_tree) -> Any:
    """The optimizer group of every parameter, as each declared it (model.param_specs())."""
    return jax.tree.map(lambda sp: sp.group, spec_tree, is_leaf=lambda x: isinstance(x, ParamSpec))


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


def scale_by_muon(orthogonalize, *, steps: int, momentum: float, warmup_start: float, warmup_steps: int,
                  nesterov: bool = True, dtype=jnp.float32, row_normalize: bool = False,
                  gram_min_aspect: float = 0.0, **ortho_kwargs) -> optax.GradientTransformation:
    """SGD-Nesterov momentum, optional row normalization (MuonEq-R), then orthogonalize each
    (possibly layer-stacked) matrix and scale by sqrt(max(1, rows/cols)). Matrices with aspect
    >= gram_min_aspect use the Gram form. Returns the direction; the LR is applied later."""

    def init(params):
        return MuonState(jnp.zeros((), jnp.int32), jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params))

    def update(updates, state, params=None):
        del params
        mu = muon_momentum(state.count, momentum, warmup_start, warmup_steps)
        buf = jax.tree.map(lambda b, g: mu * b + g.astype(jnp.float32), state.momentum, updates)
        direction = jax.tree.map(lambda g, b: g.astype(jnp.float32) + mu * b, updates, buf) if nesterov else buf

        def orth(u):
            rows, cols = u.shape[-2:]
            if row_normalize:
                u = u / jnp.maximum(jnp.linalg.norm(u, axis=-1, keepdims=True), 1e-7)
            fn = orthogonalize
            if gram_min_aspect and max(rows, cols) / min(rows, cols) >= gram_min_aspect:
                fn = gram_newton_schulz
            fn = functools.partial(fn, steps=steps, dtype=dtype, **ortho_kwargs)
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


def add_scheduled_decay(wd) -> optax.GradientTransformationExtraArgs:
    """u -> u + wd * wd_mul * p, with wd_mul an extra argument of `update` (default 1): decoupled
    weight decay under optim.wd_schedule (the train step passes the schedule's multiplier)."""

    def update(updates, state, params=None, *, wd_mul=1.0, **extra):
        del extra
        coef = wd * jnp.asarray(wd_mul, jnp.float32)
        return jax.tree.map(lambda u, p: u + (coef * p).astype(u.dtype), updates, params), state

    return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is < 1."""

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        coef = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
        return jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda p: optax.EmptyState(), update)


def make_optimizer(cfg: Config, muon_dtype, labels,
                   traced: hyper.Traced = None) -> optax.GradientTransformationExtraArgs:
    """Adam(W) for the embedding, head and scalars, Muon (or AdamW) for matrices, one lr multiplier; `labels`
    is the tree of each parameter's declared group (labels_from_specs). Weight decay is decoupled
    and uses the scheduled lr: p <- p - lr_t (u + wd p). `traced`: a group member's traced scalar
    hyperparameters (hyper.py), which replace the config's numbers."""
    o, m = cfg.optim, cfg.model

    def h(name: str):
        return hyper.get(traced, f"optim.{name}", getattr(o, name))

    def group(direction, lr, wd=0.0, scheduled=False):
        # A traced wd is always applied (its value may be 0 for some members of the group).
        decay = not isinstance(wd, (int, float)) or wd != 0
        decayed = add_scheduled_decay(wd) if scheduled else optax.add_decayed_weights(wd)
        return optax.chain(direction, *([decayed] if decay else []), scale_by_lr(lr))

    adam = functools.partial(optax.scale_by_adam, h("beta1"), h("beta2"), h("adam_eps"))
    muon = scale_by_muon(
        ORTHOGONALIZERS[o.orthogonalizer], steps=o.muon_backend_steps, momentum=h("muon_momentum"),
        warmup_start=h("muon_momentum_warmup_start"), warmup_steps=o.muon_momentum_warmup_steps, dtype=muon_dtype,
        row_normalize=o.muon_row_normalize, gram_min_aspect=o.gram_ns_min_aspect,
        coefficients=o.ns_coefficients, aol=o.ns_aol)
    groups = {
        "embed": group(adam(), h("tied_embed_lr") if m.tie_embeddings else h("embed_lr"), h("embed_wd")),
        "head": group(adam(), h("head_lr")),
        "scalar": group(adam(), h("scalar_lr"), h("adam_wd")),
        # #1227 runs AdamW on the matrices too (optim.matrix_optimizer=adamw).
        "matrix": group(muon if o.matrix_optimizer == "muon" else adam(), h("matrix_lr"), h("muon_wd"),
                        scheduled=o.wd_schedule != "constant"),
        # Its clip sees only this group's gradients (multi_transform hands it its own leaves).
        "adamw": optax.chain(*([clip_by_global_norm(o.adamw_clip)] if o.adamw_clip > 0 else []),
                             group(optax.scale_by_adam(h("beta1"), h("adamw_beta2"), h("adam_eps")), h("adamw_lr"),
                                   h("adamw_wd"))),
    }
    if o.adamw_all:
        labels = jax.tree.map(lambda _: "adamw", labels)
    tx = optax.multi_transform(groups, labels)
    if o.grad_clip_norm > 0:
        tx = optax.chain(clip_by_global_norm(o.grad_clip_norm), tx)
    return tx
