"""The runs one training loop trains and the one place where their number K matters: how the
compiled step is built and applied to them. Members is a plain run (K = 1, its step reading the
config's own numbers); train/group.py's Group, a subclass, trains a sweep group's K members with
traced hyperparameters, a list of states stepped in turn or one stacked state under vmap (a packed
train_gpt.py never holds it: a run never trains a group).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pgolf_jax import dist, hyper
from pgolf_jax.config import Config
from pgolf_jax.model.gpt import Model, build_model, resolve_dtype
from pgolf_jax.optim.optimizers import labels_from_specs, make_optimizer
from pgolf_jax.train.step import TrainState, initial_rng, make_train_step


def field(cfg: Config, key: str):
    """cfg's value of a dotted key ("optim.matrix_lr", "train.distill.alpha")."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def optimizer(cfg: Config, model: Model, traced: hyper.Traced = None):
    """cfg's optimizer for model's parameters, with a group member's traced values if any."""
    return make_optimizer(cfg, resolve_dtype(cfg.optim.muon_dtype), labels_from_specs(model.param_specs()), traced)


def plan(cfg: Config, mesh, traced: hyper.Traced = None):
    """(model, optimizer, init(key) -> a fresh train state, the seed's key, the state's shapes, their
    shardings per train.param_sharding). traced: a group member's values (hyper.py), which decide the
    optimizer state's structure (a traced weight decay is always applied)."""
    model = build_model(cfg.model)
    tx = optimizer(cfg, model, traced)

    def init(key):
        params = model.init(key)
        ema = jax.tree.map(lambda p: p.astype(jnp.float32), params) if cfg.train.ema_decay else None
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), ema, initial_rng(cfg.train.seed))

    key = jax.random.key(cfg.train.seed)
    shapes = jax.eval_shape(init, key)
    return model, tx, init, key, shapes, dist.state_shardings(shapes, mesh, cfg.train.param_sharding)


def build(cfg: Config, mesh, traced: hyper.Traced = None):
    """Model, optimizer and a fresh train state for cfg (plan's), sharded."""
    model, tx, init, key, _, shardings = plan(cfg, mesh, traced)
    return model, tx, jax.jit(init, out_shardings=shardings)(key)


def step_parts(cfg: Config, model: Model, mesh):
    """What every compiled step shares: the replicated and batch shardings, the block schedules to
    compile (the looped one too once model.enable_looping_at is hit) and the QAT config."""
    repl, data = dist.replicated(mesh), dist.batch_sharding(mesh, leading=1)
    graphs = (False, True) if model.has_two_schedules else (True,)
    return repl, data, graphs, cfg.quant if cfg.quant.qat else None


def step_functions(cfg: Config, model: Model, tx, state_sh, mesh, objective) -> dict:
    """{looped: the jitted train step (state, x, y, lr_mul, qat_on, teacher)} for each block schedule
    the run compiles, with the optimizer `tx`."""
    repl, data, graphs, qat = step_parts(cfg, model, mesh)

    def compiled(looped):
        return jax.jit(make_train_step(model, tx, objective, looped=looped, ema_decay=cfg.train.ema_decay, qat=qat),
                       in_shardings=(state_sh, data, data, None, None, repl), out_shardings=(state_sh, repl),
                       donate_argnums=(0,))

    return {g: compiled(g) for g in graphs}


class Members:
    """The configs trained together and their models; the loop holds the state this builds (a list,
    one per member) and steps it through here. This class: a plain run, Members([cfg])."""

    mode = "loop"

    def __init__(self, cfgs: list[Config]):
        self.cfgs, self.K = cfgs, len(cfgs)
        self.models: list[Model] = []

    def init(self, mesh):
        """Each member's own state (its seed and init scales)."""
        built = [build(c, mesh) for c in self.cfgs]
        self.models = [b[0] for b in built]
        return [b[2] for b in built]

    def step_functions(self, cfg: Config, state, mesh, objective) -> dict:
        """The jitted step of each block schedule: the run's own optimizer, the config's numbers."""
        model = self.models[0]
        state_sh = jax.tree.map(lambda a: a.sharding, state[0])
        return step_functions(cfg, model, optimizer(cfg, model), state_sh, mesh, objective)

    def apply(self, fn, state, x, y, lr_mul, qat_on, teacher):
        """One step of every member: (states, metrics), a list each."""
        outs = [fn(s, x, y, lr_mul, qat_on, teacher) for s in state]
        return [o[0] for o in outs], [o[1] for o in outs]

    def group_lines(self) -> tuple[str, ...]:
        """What a group says of itself before training (a plain run: nothing)."""
        return ()

    def seed_line(self, k: int) -> str:
        return f"seed:{self.cfgs[k].train.seed}"

    def get(self, state, k: int, field: str = "params") -> Any:
        """Member k's params (or ema)."""
        return getattr(state[k], field)

    def rows(self, metrics) -> list[dict]:
        """A step's metrics fetched to the host (this blocks on that step only), one dict of floats per member."""
        return [{n: float(v) for n, v in m.items()} for m in metrics]
