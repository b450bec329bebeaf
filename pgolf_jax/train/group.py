"""Training K runs as one group with one compiled step: vmapped over their stacked train states, or
called once per member (`mode`), in the one training loop (train/loop.py, train/members.py).

The K configs may differ only in hyper.TRACED fields (learning rates, momenta, weight decays,
softcap: traced values of one graph, passed to it as arguments) and hyper.INIT_ONLY fields (seed,
init scales: each state is initialised on its own), and must count steps (no wall-clock cap: a
group's step takes longer than one run's, so a shared time budget would give each member fewer
steps than it gets alone). They read the same batches (the data order never depends on
train.seed), follow the same lr schedule, and each member's weights, losses and periodic val scores
are its own: the result of each equals a separate run's within float tolerance (tests/test_sweep.py).

Two ways to run the one compiled step (`mode`): "vmap" maps it over the stacked states, a single
program for all K (what a GPU wants: one small model leaves it idle); "loop" calls the unmapped step
once per member with that member's traced scalars, the same executable K times. On XLA:CPU the
vmapped step is slower per member than a single run's (BENCHMARKS.md: batched products there
run below the plain GEMM rate) while the loop costs K single steps and still compiles once, so
"auto" picks the loop on CPU and vmap elsewhere.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pgolf_jax import hyper
from pgolf_jax.config import Config
from pgolf_jax.model.gpt import Model
from pgolf_jax.runlog import RunLog
from pgolf_jax.train.loop import TrainResult, train_members
from pgolf_jax.train.members import Members, build, field, optimizer, step_parts
from pgolf_jax.train.step import make_train_step


def _blank(cfg: Config, keep: tuple = ()) -> dict:
    """cfg as a dict without the fields a group may vary (nor the run's identity), but `keep`."""
    skip = {*hyper.TRACED, *hyper.INIT_ONLY, "train.run_id"} - set(keep)
    from pgolf_jax.config import flat_dict

    return {k: v for k, v in flat_dict(cfg).items() if k not in skip and not hyper.after_training(k, cfg)}


def training_key(cfg: Config) -> str:
    """Equal for configs whose training is identical (they differ only in what happens after it)."""
    return repr(sorted(_blank(cfg, keep=(*hyper.TRACED, *hyper.INIT_ONLY)).items()))


def group_key(cfg: Config):
    """Configs with equal keys can train as one group; None = this config cannot join one
    (a wall-clock budget, checkpoints, or a multi-process run)."""
    t = cfg.train
    if t.max_wallclock_seconds > 0 or t.checkpoint_every or t.checkpoint_every_seconds or t.distributed:
        return None
    return repr(sorted(_blank(cfg).items()))


GROUP_MODES = ("auto", "vmap", "loop")


def _stack(*leaves):
    return jnp.stack(leaves)


def group_step_functions(cfg: Config, model: Model, tx_of, state_sh, mesh, objective, mode: str) -> dict:
    """{looped: a group member's jitted step (state, x, y, lr_mul, qat_on, teacher, traced)}, its
    optimizer built as tx_of(traced): the unmapped step ("loop") or the step vmapped over the stacked
    states and traced values ("vmap")."""
    repl, data, graphs, qat = step_parts(cfg, model, mesh)

    def compiled(looped):
        def member(state, x, y, lr_mul, qat_on, teacher, traced):
            step = make_train_step(model, tx_of(traced), objective, looped=looped, ema_decay=cfg.train.ema_decay,
                                   qat=qat)
            return step(state, x, y, lr_mul, qat_on, teacher, traced)

        if mode == "loop":
            return jax.jit(member, in_shardings=(state_sh, data, data, None, None, repl, None),
                           out_shardings=(state_sh, repl), donate_argnums=(0,))
        return jax.jit(jax.vmap(member, in_axes=(0, None, None, None, None, None, 0)), donate_argnums=(0,))

    return {g: compiled(g) for g in graphs}


class Group(Members):
    """K members with their traced values, held as `mode` says: "loop", a list of K states, the
    unmapped step called once per member; "vmap", one state stacked along a leading K axis."""

    def __init__(self, cfgs: list[Config], mode: str, traced: list[dict]):
        super().__init__(cfgs)  # mode: resolve_mode's
        self.mode, self.traced = mode, traced
        # vmap maps the step over the members' values stacked once: (K,) arrays
        self.stacked = jax.tree.map(_stack, *traced) if mode == "vmap" else None

    def init(self, mesh):
        built = [build(c, mesh, traced=h) for c, h in zip(self.cfgs, self.traced)]
        self.models = [b[0] for b in built]
        if self.mode == "vmap":
            state = jax.tree.map(_stack, *[b[2] for b in built])
            del built
            return state
        return [b[2] for b in built]

    def step_functions(self, cfg: Config, state, mesh, objective) -> dict:
        model = self.models[0]
        state_sh = jax.tree.map(lambda a: a.sharding, state[0]) if self.mode == "loop" else None
        return group_step_functions(cfg, model, lambda h: optimizer(cfg, model, h), state_sh, mesh, objective,
                                    self.mode)

    def apply(self, fn, state, x, y, lr_mul, qat_on, teacher):
        if self.mode == "vmap":
            return fn(state, x, y, lr_mul, qat_on, teacher, self.stacked)
        outs = [fn(s, x, y, lr_mul, qat_on, teacher, h) for s, h in zip(state, self.traced)]  # back to back
        return [o[0] for o in outs], [o[1] for o in outs]

    def group_lines(self) -> tuple[str, ...]:
        return (f"vmap_group:{self.K} members train with one compiled step, mode:{self.mode} (the step times "
                "below are the whole group's)",)

    def seed_line(self, k: int) -> str:
        """The seed and every traced value of member k."""
        cfg = self.cfgs[k]
        return f"seed:{cfg.train.seed} " + " ".join(f"{key.split('.')[1]}:{field(cfg, key)}" for key in hyper.TRACED)

    def get(self, state, k: int, field: str = "params") -> Any:
        if self.mode == "loop":
            return super().get(state, k, field)
        return jax.tree.map(lambda a: a[k], getattr(state, field))

    def rows(self, metrics) -> list[dict]:
        if self.mode == "loop":
            return super().rows(metrics)
        m = {n: np.asarray(v) for n, v in metrics.items()}
        return [{n: float(v[k]) for n, v in m.items()} for k in range(self.K)]


def resolve_mode(mode: str) -> str:
    if mode not in GROUP_MODES:
        raise ValueError(f"group mode {mode!r}: choose from {', '.join(GROUP_MODES)}")
    if mode == "auto":
        return "loop" if jax.default_backend() == "cpu" else "vmap"
    return mode


def traced_values(cfgs: list[Config]) -> list[dict]:
    """Each member's traced values: the hyper.TRACED fields the members set differently (float32
    scalars, arguments of the one compiled step); the fields they share stay the config's constants,
    as in a run of its own."""
    varied = [k for k in hyper.TRACED if len({field(c, k) for c in cfgs}) > 1]
    return [{k: jnp.float32(field(c, k)) for k in varied} for c in cfgs]


def train_group(cfgs: list[Config], logs: list[RunLog], train_pattern: str, evaluator_factory,
                mode: str = "auto") -> list[TrainResult]:
    """Train every config of one group together (train/loop.py's loop, K members); logs[k] gets
    member k's lines like a single run's."""
    mode = resolve_mode(mode)
    keys = {group_key(c) for c in cfgs}
    if len(keys) != 1 or None in keys:
        raise ValueError("train_group: the configs differ in more than scalar hyperparameters and seeds")
    return train_members(Group(cfgs, mode, traced_values(cfgs)), logs, train_pattern, evaluator_factory)
