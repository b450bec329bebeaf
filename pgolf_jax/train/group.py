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

import jax
import jax.numpy as jnp

from pgolf_jax import hyper
from pgolf_jax.config import Config
from pgolf_jax.runlog import RunLog
from pgolf_jax.train.loop import TrainResult, train_members
from pgolf_jax.train.members import Members, field


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
    return train_members(Members(cfgs, mode, traced_values(cfgs)), logs, train_pattern, evaluator_factory)
