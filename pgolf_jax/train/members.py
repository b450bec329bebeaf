"""The K runs one training loop trains (K = 1: a plain run; more: a sweep group, train/group.py) and
the one place where K matters: how the compiled step is built and applied to them.

"loop" holds a list of K train states and calls the unmapped step once per member, with that member's
traced hyperparameters (hyper.py; None for a plain run, whose step reads the config's own numbers):
the same executable K times. "vmap" holds one state stacked along a leading K axis and maps the step
over it and over the stacked traced values: one program for all K (what a GPU wants).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pgolf_jax import dist, hyper
from pgolf_jax.config import Config
from pgolf_jax.model.gpt import Model, build_model, resolve_dtype
from pgolf_jax.optim.optimizers import labels_from_specs, make_optimizer
from pgolf_jax.train.step import TrainState, initial_rng, make_train_step

MODES = ("loop", "vmap")


def field(cfg: Config, key: str):
    """cfg's value of a dotted key ("optim.matrix_lr", "train.distill.alpha")."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def optimizer(cfg: Config, model: Model, traced: hyper.Traced = None):
    """cfg's optimizer for model's parameters, with a group member's traced values if any."""
    return make_optimizer(cfg, resolve_dtype(cfg.optim.muon_dtype), labels_from_specs(model.param_specs()), traced)


def build(cfg: Config, mesh, abstract: bool = False, traced: hyper.Traced = None):
    """Model, optimizer and a fresh train state for cfg, sharded per train.param_sharding; with
    `abstract`, the state's ShapeDtypeStructs (with their shardings) instead, nothing allocated
    (run.py compile lowers the run's own step on them). traced: a group member's values (hyper.py),
    which decide the optimizer state's structure (a traced weight decay is always applied)."""
    model = build_model(cfg.model)
    tx = optimizer(cfg, model, traced)

    def init(key):
        params = model.init(key)
        ema = jax.tree.map(lambda p: p.astype(jnp.float32), params) if cfg.train.ema_decay else None
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), ema, initial_rng(cfg.train.seed))

    key = jax.random.key(cfg.train.seed)
    shapes = jax.eval_shape(init, key)
    shardings = dist.state_shardings(shapes, mesh, cfg.train.param_sharding)
    if abstract:
        return model, tx, jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes,
                                       shardings)
    state = jax.jit(init, out_shardings=shardings)(key)
    return model, tx, state


def step_functions(cfg: Config, model: Model, tx, state_sh, mesh, objective, mode: str | None = None) -> dict:
    """{looped: the jitted train step} for each block schedule the run compiles: the plain one,
    and the looped one once model.enable_looping_at is hit (two compiles). mode None: a plain run's
    step (state, x, y, lr_mul, qat_on, teacher) with the optimizer `tx`; "loop" or "vmap": a group
    member's step, which takes its traced values last and builds its optimizer with `tx(traced)`."""
    t = cfg.train
    repl, data = dist.replicated(mesh), dist.batch_sharding(mesh, leading=1)
    graphs = (False, True) if model.has_two_schedules else (True,)
    qat = cfg.quant if cfg.quant.qat else None

    def compiled(looped):
        if mode is None:
            return jax.jit(make_train_step(model, tx, objective, looped=looped, ema_decay=t.ema_decay, qat=qat),
                           in_shardings=(state_sh, data, data, None, None, repl), out_shardings=(state_sh, repl),
                           donate_argnums=(0,))

        def member(state, x, y, lr_mul, qat_on, teacher, traced):
            step = make_train_step(model, tx(traced), objective, looped=looped, ema_decay=t.ema_decay, qat=qat)
            return step(state, x, y, lr_mul, qat_on, teacher, traced)

        if mode == "loop":
            return jax.jit(member, in_shardings=(state_sh, data, data, None, None, repl, None),
                           out_shardings=(state_sh, repl), donate_argnums=(0,))
        return jax.jit(jax.vmap(member, in_axes=(0, None, None, None, None, None, 0)), donate_argnums=(0,))

    return {g: compiled(g) for g in graphs}


def _stack(*leaves):
    return jnp.stack(leaves)


class Members:
    """K configs trained together, each member's traced values (None: a plain run) and the way the
    step reaches them (`mode`); the loop holds the state this builds and steps it through here."""

    def __init__(self, cfgs: list[Config], mode: str = "loop", traced: list | None = None):
        if mode not in MODES:
            raise ValueError(f"group mode {mode!r}: choose from {', '.join(MODES)}")
        self.cfgs, self.mode, self.K = cfgs, mode, len(cfgs)
        self.traced = traced if traced is not None else [None] * self.K
        # vmap maps the step over the members' values stacked once: (K,) arrays
        self.stacked = jax.tree.map(_stack, *self.traced) if mode == "vmap" else None
        self.models: list[Model] = []

    def init(self, mesh):
        """Each member's own state (its seed and init scales), stacked for vmap."""
        built = [build(c, mesh, traced=h) for c, h in zip(self.cfgs, self.traced)]
        self.models = [b[0] for b in built]
        if self.mode == "vmap":
            state = jax.tree.map(_stack, *[b[2] for b in built])
            del built
            return state
        return [b[2] for b in built]

    def step_functions(self, cfg: Config, state, mesh, objective) -> dict:
        """The jitted step of each block schedule (member 0's model and shardings serve them all)."""
        model = self.models[0]
        state_sh = jax.tree.map(lambda a: a.sharding, state[0]) if self.mode == "loop" else None
        if self.traced[0] is None:  # a plain run: its own optimizer, the config's numbers
            return step_functions(cfg, model, optimizer(cfg, model), state_sh, mesh, objective)
        return step_functions(cfg, model, lambda h: optimizer(cfg, model, h), state_sh, mesh, objective, self.mode)

    def apply(self, fn, state, x, y, lr_mul, qat_on, teacher):
        """One step of every member: (state, metrics), both held the way `mode` holds them."""
        if self.mode == "vmap":
            return fn(state, x, y, lr_mul, qat_on, teacher, self.stacked)
        # Dispatched back to back; a plain run's step takes no traced values.
        outs = [fn(s, x, y, lr_mul, qat_on, teacher, *([] if h is None else [h])) for s, h in zip(state, self.traced)]
        return [o[0] for o in outs], [o[1] for o in outs]

    def get(self, state, k: int, field: str = "params") -> Any:
        """Member k's params (or ema) of a state held either way."""
        if self.mode == "loop":
            return getattr(state[k], field)
        return jax.tree.map(lambda a: a[k], getattr(state, field))

    def rows(self, metrics) -> list[dict]:
        """A step's metrics fetched to the host (this blocks on that step only), one dict of floats per member."""
        if self.mode == "loop":
            return [{n: float(v) for n, v in m.items()} for m in metrics]
        m = {n: np.asarray(v) for n, v in metrics.items()}
        return [{n: float(v[k]) for n, v in m.items()} for k in range(self.K)]
