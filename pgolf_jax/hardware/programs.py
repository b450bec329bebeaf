"""The programs a run compiles, built by the run's own functions (train/loop.py's build and
step_functions, evaluation's jit_score, ttt's make_sgd_step and lora_functions) on abstract
inputs at the preset's challenge shapes for a mesh of compile-only devices: never shrunk."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from pgolf_jax import dist
from pgolf_jax.config import Config
from pgolf_jax.evaluation import phases, ttt
from pgolf_jax.evaluation.evaluate import batch_windows, jit_score, with_window
from pgolf_jax.model.flops import analytic_flops_per_token
from pgolf_jax.train.loop import step_functions
from pgolf_jax.train.members import plan
from pgolf_jax.train.objectives import make_objective
from pgolf_jax.train.step import train_batch_shape

# The challenge's val split (~62M tokens) holds far more windows than one batch: batches are full.
MANY_WINDOWS = 1 << 40


class LayoutError(ValueError):
    """The preset's batch does not split over this many devices (a run there refuses it the same way)."""


@dataclass
class Program:
    name: str
    fn: Any  # jitted
    args: tuple  # ShapeDtypeStructs with shardings (and Python scalars the run passes)
    tokens: int  # token positions per device per call
    analytic_flops: float | None  # per device per call (None: no analytic count for this program)
    attention_flops: float  # analytic causal attention FLOPs per device per call (what cuDNN does)
    backward: bool = False  # a gradient step (its analytic count is forward + backward)


def _abstract(tree, sharding):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


def _ids(shape, sharding):
    return jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding)


def _flops(model_cfg, seq_len: int, looped: bool, tokens: int, passes: float) -> tuple[float, float]:
    """(model FLOPs, attention FLOPs) for `tokens` positions; passes 1 = fwd+bwd, 1/3 = forward."""
    fl = analytic_flops_per_token(model_cfg, seq_len, looped)
    return passes * tokens * (fl["matmul"] + fl["attn_causal"]), passes * tokens * fl["attn_causal"]


def train_programs(cfg: Config, mesh) -> tuple[list[Program], Any, Any]:
    """The train step of each block schedule; also (model, abstract state) for the evals."""
    t, n = cfg.train, dist.num_data_devices(mesh)
    if t.batch_spans % n:  # the run refuses this too (train/loop.py)
        raise LayoutError(f"train.batch_spans={t.batch_spans} must be a multiple of the {n} data devices")
    # The state's ShapeDtypeStructs with their shardings: nothing allocated; the run's own step lowers on them.
    model, tx, _, _, shapes, shardings = plan(cfg, mesh)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)
    objective, teacher = make_objective(cfg)
    if teacher is not None:
        teacher = _abstract(teacher, dist.replicated(mesh))
    fns = step_functions(cfg, model, tx, jax.tree.map(lambda a: a.sharding, state), mesh, objective)
    M, B, T = train_batch_shape(t, n)
    x = _ids((M, B, T), dist.batch_sharding(mesh, leading=1))
    tokens = M * B * T // n
    out = []
    for looped, fn in fns.items():
        name = "train_looped" if looped and len(fns) > 1 else "train"
        flops, attn = _flops(cfg.model, T, looped, tokens, 1.0)
        out.append(Program(name, fn, (state, x, x, 1.0, 0.0, teacher), tokens, flops, attn, backward=True))
    return out, model, state


def eval_programs(cfg: Config, mesh, model, state) -> list[Program]:
    """The in-training validation, and each eval.final_modes step (scoring, TTT's SGD step, LoRA
    TTT's scoring and adapter step), as pipeline.final_evals runs them; one entry per distinct
    program (plain, sliding and ttt score with the same one)."""
    t, e, n = cfg.train, cfg.eval, dist.num_data_devices(mesh)
    batch, repl = dist.batch_sharding(mesh), dist.replicated(mesh)
    ev_model = with_window(model, e.attention_window)
    params = _abstract(state.params, repl)  # the round-tripped weights are replicated (pipeline)
    T = e.eval_seq_len or t.train_seq_len
    modes = [m for m in e.final_modes.split(",") if m]
    out: list[Program] = []

    def score(name: str, seq: int, batch_tokens: int, per_token: bool, hints: bool = False):
        bs = batch_windows(batch_tokens, seq, MANY_WINDOWS, n)
        x, lo = _ids((bs, seq), batch), _ids((bs,), batch)
        flops, attn = _flops(ev_model.cfg, seq, True, bs * seq // n, 1 / 3)
        out.append(Program(name, jit_score(ev_model, True, per_token, batch, hints),
                           (params, x, x, lo, lo) + ((x,) if hints else ()), bs * seq // n, flops, attn))

    # pipeline.make_evaluator_factory's batch for the periodic val of train_seq_len windows
    score("val", t.train_seq_len, e.val_batch_size // max(1, t.batch_spans // n), False)
    if {"plain", "sliding", "ttt"} & set(modes):
        score("eval_score", T, e.eval_batch_seqs * T, bool(e.ngram_order), bool(e.ngram_tilt))
    place = ttt._Placer(batch)

    def rows(k: int):  # _Placer.batched: split over the devices when they divide the rows
        return batch if k % n == 0 else repl

    if "ttt" in modes or ("lora_ttt" in modes and e.lora_ttt.phases):
        sgd = e.ttt if "ttt" in modes else None
        k = sgd.batch_seqs if sgd else e.lora_ttt.phase_batch_seqs
        # the records' phases: document-bounded rows (weights, a second target at position 0), at their
        # fewest (k rows; a step of short documents has more)
        records = sgd is None and e.lora_ttt.phase_style == "records"
        momentum = sgd.momentum if sgd else e.lora_ttt.phase_momentum if records else e.lora_ttt.momentum
        step = ttt.make_sgd_step(ev_model, momentum, sgd.grad_clip if sgd else e.lora_ttt.phase_grad_clip, place,
                                 phases.rows_loss(ev_model) if records else None)
        buf = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32, sharding=repl), params)
        flops, attn = _flops(ev_model.cfg, T, True, k * T // (n if k % n == 0 else 1), 1.0)
        f32 = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=rows(k))  # noqa: E731
        extra = (f32((k, T)), _ids((k,), rows(k)), f32((k,))) if records else ()
        out.append(Program("ttt_sgd_step", step, (params, buf, _ids((k, T), rows(k)), _ids((k, T), rows(k)), 0.01)
                           + extra, k * T // (n if k % n == 0 else 1), flops, attn, backward=True))
    if "lora_ttt" in modes:
        out += _lora_programs(cfg, ev_model, params, place, rows, T)
    return out


def _lora_programs(cfg: Config, ev_model, params, place, rows, T: int) -> list[Program]:
    e = cfg.eval
    nd = e.lora_ttt.batch_docs
    targets, head = ttt.lora_targets(e)  # (was ttt.lora_ttt.targets: no such attribute since the options moved)
    sh = rows(nd)
    lora = jax.eval_shape(lambda k: ttt.lora_init(k, params, targets, e.lora_ttt.rank, nd, head, ev_model.num_slots()),
                          jax.random.key(0))
    lora = _abstract(lora, sh)
    opt = lora if e.lora_ttt.optimizer == "sgd" else (lora, lora, 0)
    score, train = ttt.lora_functions(ev_model, e, place)
    x, lo = _ids((nd, T), sh), _ids((nd,), sh)
    per_dev = nd * T // (place.n if sh is place.batch else 1)
    flops, attn = _flops(ev_model.cfg, T, True, per_dev, 1 / 3)
    # The head (2 V D a position) and its adapter run on each row's chunk only (ttt.lora_functions); every
    # other adapter adds 2 R (in + out) a position and slot (two thin matmuls).
    m, chunk = ev_model.cfg, min(e.lora_ttt.chunk_tokens, T) / T
    flops -= 2 * m.vocab_size * m.model_dim * per_dev * (1 - chunk)
    for t, ab in lora.items():
        *_, R, n_in = ab["A"].shape
        flops += per_dev * (chunk if t == "head" else ab["A"].shape[1]) * 2 * R * (n_in + ab["B"].shape[-2])
    return [Program("lora_score", score, (params, lora, x, x, lo), per_dev, flops, attn),
            Program("lora_adapt_step", train, (lora, opt, params, x, x, lo, lo, 0.01), per_dev, None, attn * 3)]


def programs(cfg: Config, mesh) -> list[Program]:
    train, model, state = train_programs(cfg, mesh)
    return train + eval_programs(cfg, mesh, model, state)
