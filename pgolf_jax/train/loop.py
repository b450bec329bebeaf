"""The training loop: a pure jitted `train_step(state, batch) -> (state, metrics)` driven by the
reference's schedule (compile warm-up with rollback, wall-clock cap, warmdown, periodic val)."""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from pgolf_jax import dist
from pgolf_jax.config import Config
from pgolf_jax.data.shards import make_loader
from pgolf_jax.errors import Interrupted
from pgolf_jax.model.gpt import (
    Model,
    build_model,
    count_params,
    resolve_dtype,
    schedule,
)
from pgolf_jax.optim.optimizers import labels_from_specs, make_optimizer
from pgolf_jax.optim.schedule import schedule_multiplier, training_fraction, warmup_factor
from pgolf_jax.runlog import Progress, RunLog
from pgolf_jax.train.checkpoint import Checkpointer, Restore
from pgolf_jax.train.objectives import make_objective
from pgolf_jax.train.step import TrainState, initial_rng, make_train_step, micro_batches

if TYPE_CHECKING:  # built by the caller's factory; evaluation sits beside train, not below it
    from pgolf_jax.evaluation.evaluate import Evaluator


@dataclass
class TrainResult:
    params: Any
    steps: int
    train_time_ms: float
    val: Any  # the last EvalResult
    model: Model
    evaluator: Evaluator


def build(cfg: Config, mesh, abstract: bool = False):
    """Model, optimizer and a fresh train state for cfg, sharded per train.param_sharding; with
    `abstract`, the state's ShapeDtypeStructs (with their shardings) instead, nothing allocated
    (run.py compile lowers the run's own step on them)."""
    model = build_model(cfg.model)
    tx = make_optimizer(cfg, resolve_dtype(cfg.optim.muon_dtype), labels_from_specs(model.param_specs()))

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


def step_functions(cfg: Config, model: Model, tx, state_sh, mesh, objective) -> dict:
    """{looped: the jitted train step} for each block schedule the run compiles: the plain one,
    and the looped one once model.enable_looping_at is hit (two compiles)."""
    t = cfg.train
    repl, data = dist.replicated(mesh), dist.batch_sharding(mesh, leading=1)
    graphs = (False, True) if model.has_two_schedules else (True,)
    qat = cfg.quant if cfg.quant.qat else None
    return {g: jax.jit(make_train_step(model, tx, objective, looped=g, ema_decay=t.ema_decay, qat=qat),
                       in_shardings=(state_sh, data, data, None, None, repl), out_shardings=(state_sh, repl),
                       donate_argnums=(0,))
            for g in graphs}


class _Signals:
    """Record SIGTERM/SIGINT instead of dying mid-step; the loop checkpoints and stops."""

    def __init__(self):
        self.received = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave default handling
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


@jax.jit
def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)]))


def train(cfg: Config, log: RunLog, train_pattern: str, evaluator_factory, run_dir: Path | None = None,
          restore: Restore | None = None) -> TrainResult:
    """Train under cfg; with `restore` (Checkpointer.select() of run_dir's checkpoints) continue
    from that checkpoint exactly."""
    t = cfg.train
    mesh = dist.make_mesh()
    n_dev = dist.num_data_devices(mesh)
    if t.batch_spans % n_dev:
        raise ValueError(f"train.batch_spans={t.batch_spans} must be a multiple of the {n_dev} data devices")
    model, tx, state = build(cfg, mesh)
    evaluator: Evaluator = evaluator_factory(model, mesh)
    span_seqs = t.train_batch_tokens // t.batch_spans // t.train_seq_len
    micro_seqs = t.microbatch_tokens // t.train_seq_len if t.microbatch_tokens else 0
    data = dist.batch_sharding(mesh, leading=1)
    state_sh = jax.tree.map(lambda a: a.sharding, state)
    qat = cfg.quant if cfg.quant.qat else None
    objective, teacher = make_objective(cfg)
    if teacher is not None:
        teacher = dist.replicate(teacher, mesh)
        log(f"objective:{cfg.train.objective} teacher:{cfg.train.distill.teacher} alpha:{t.distill.alpha} "
            f"temperature:{t.distill.temperature}")
    step_fns = step_functions(cfg, model, tx, state_sh, mesh, objective)
    graphs = tuple(step_fns)
    ckpt = Checkpointer(run_dir / "checkpoints", t.checkpoint_keep) if run_dir is not None else None

    log(f"model_params:{count_params(state.params)}")
    log(f"val_tokens:{evaluator.total} val_bytes:{evaluator.byte_count}")
    log(f"devices:{n_dev} platform:{jax.default_backend()} batch_spans:{t.batch_spans} "
        f"micro_steps:{t.batch_spans // n_dev * (span_seqs // micro_seqs if micro_seqs else 1)}")
    log(f"tie_embeddings:{cfg.model.tie_embeddings} embed_lr:{cfg.optim.tied_embed_lr if cfg.model.tie_embeddings else cfg.optim.embed_lr} "
        f"head_lr:{0.0 if cfg.model.tie_embeddings else cfg.optim.head_lr} matrix_lr:{cfg.optim.matrix_lr} scalar_lr:{cfg.optim.scalar_lr}")
    log(f"train_batch_tokens:{t.train_batch_tokens} train_seq_len:{t.train_seq_len} iterations:{t.iterations} "
        f"warmup_steps:{t.warmup_steps} max_wallclock_seconds:{t.max_wallclock_seconds:.3f}")
    log(f"seed:{t.seed}")
    layers = list(schedule(cfg.model))
    log(f"topology:{cfg.model.topology} block_schedule:{cfg.model.block_schedule} layers:{layers}"
        + (f" enable_looping_at:{cfg.model.enable_looping_at}" if model.has_two_schedules else ""))

    def next_batch(loader):
        x, y = loader.next_batch(t.train_batch_tokens, t.train_seq_len)
        return (dist.global_array(micro_batches(x, n_dev, micro_seqs), data),
                dist.global_array(micro_batches(y, n_dev, micro_seqs), data))

    loader = make_loader(cfg.data.loader, train_pattern, t.batch_spans, t.train_seq_len, cfg.data.loader_seed,
                         cfg.model.vocab_size)
    if t.warmup_steps > 0:
        # Compile and prime every graph, then roll state and data back (the reference's
        # WARMUP_STEPS, run once per schedule like the looped records).
        initial = jax.tree.map(jnp.copy, state)
        tc = time.perf_counter()
        for g in graphs:
            label = "loop_warmup_step" if g and len(graphs) > 1 else "warmup_step"
            for i in range(t.warmup_steps):
                state, m = step_fns[g](state, *next_batch(loader), 1.0, 1.0 if qat else 0.0, teacher)
                jax.block_until_ready(m)
                if t.warmup_steps <= 20 or (i + 1) % 10 == 0 or i + 1 == t.warmup_steps:
                    log(f"{label}:{i + 1}/{t.warmup_steps}")
        log(f"warmup_time:{1000 * (time.perf_counter() - tc):.0f}ms")
        state = initial
        loader = make_loader(cfg.data.loader, train_pattern, t.batch_spans, t.train_seq_len, cfg.data.loader_seed,
                         cfg.model.vocab_size)

    # The effective cap leaves gptq_reserve_seconds of the budget for post-training calibration.
    cap_ms = 1000.0 * (t.max_wallclock_seconds - t.gptq_reserve_seconds) if t.max_wallclock_seconds > 0 else None
    progress = Progress("train", t.iterations, enabled=t.progress)
    training_ms, stop_after, step, pending, val = 0.0, None, 0, None, None
    looped, qat_was_on = graphs[0], 0.0
    if restore is not None:
        state, meta = ckpt.restore(state, restore.step)
        loader.restore(meta["loader"])
        step, training_ms, looped, qat_was_on = meta["step"], meta["training_ms"], meta["looped"], meta["qat_on"]
        log(f"resume:step {step} train_time:{training_ms:.0f}ms from {ckpt.directory}")
    last_ckpt_ms, last_ckpt_step = training_ms, (step if restore is not None else None)

    def checkpoint(reason: str):
        """Check this step's loss and the updated weights (never save a non-finite state), then
        save, off the clock."""
        nonlocal pending, training_ms, t0, last_ckpt_ms, last_ckpt_step
        if pending:
            flush(pending)
            pending = None
        training_ms += 1000.0 * (time.perf_counter() - t0)
        if not bool(_all_finite(state.params)):
            kept = f"; the last good checkpoint is step {last_ckpt_step}" if last_ckpt_step is not None else ""
            raise FloatingPointError(f"weights are not finite after step {step}; stopping{kept}")
        ckpt.save(step, state, {"step": step, "training_ms": training_ms, "looped": looped, "qat_on": qat_was_on,
                                "loader": loader.state(), "seed": t.seed, "log_offsets": log.offsets()})
        log(f"checkpoint:step {step} ({reason})")
        last_ckpt_ms, last_ckpt_step = training_ms, step
        t0 = time.perf_counter()

    signals = _Signals() if ckpt is not None else contextlib.nullcontext()
    t0 = time.perf_counter()

    finished = [0, 0.0]  # the last step whose loss was fetched, and the training ms when it was

    def flush(item):
        """Fetch a finished step's loss (blocks only on that step) and log it like the reference,
        timed when the fetch returns: the dispatch time would count a step as done before it ran
        (the first step's 1 ms while it takes seconds)."""
        done_step, metrics = item
        loss = float(metrics["train_loss"])
        at_ms = training_ms + 1000.0 * (time.perf_counter() - t0)
        finished[:] = [done_step, at_ms]
        if not math.isfinite(loss):
            kept = f"; the last good checkpoint is step {last_ckpt_step}" if last_ckpt_step is not None else ""
            raise FloatingPointError(f"train_loss is {loss} at step {done_step}; stopping{kept}")
        # The objective's terms (ce, ponder, kl, ...) beside the loss when it is more than the CE.
        terms = {k: float(v) for k, v in metrics.items() if k != "train_loss"} if len(metrics) > 2 else {}
        if t.train_log_every > 0 and (done_step <= 10 or done_step % t.train_log_every == 0 or stop_after is not None):
            extra = "".join(f" {k}:{v:.4f}" for k, v in terms.items())
            log(f"step:{done_step}/{t.iterations} train_loss:{loss:.4f}{extra} train_time:{at_ms:.0f}ms "
                f"step_avg:{at_ms / done_step:.2f}ms")
        log.metric("train", step=done_step, train_loss=loss, train_time_ms=round(at_ms, 1), **terms)

    with signals:
        while True:
            last = step == t.iterations or (stop_after is not None and step >= stop_after)
            if last or (cfg.eval.val_loss_every > 0 and step % cfg.eval.val_loss_every == 0):
                if pending:
                    flush(pending)
                    pending = None
                jax.block_until_ready(state.params)
                training_ms += 1000.0 * (time.perf_counter() - t0)
                val = evaluator(state.params, looped=looped)
                if not (math.isfinite(val.val_loss) and math.isfinite(val.val_bpb)):
                    kept = f"; the last good checkpoint is step {last_ckpt_step}" if last_ckpt_step is not None else ""
                    raise FloatingPointError(f"val_loss is {val.val_loss} at step {step}; stopping{kept}")
                log(f"step:{step}/{t.iterations} val_loss:{val.val_loss:.4f} val_bpb:{val.val_bpb:.4f} "
                    f"train_time:{training_ms:.0f}ms step_avg:{training_ms / max(step, 1):.2f}ms")
                log.metric("val", step=step, val_loss=val.val_loss, val_bpb=val.val_bpb, train_time_ms=round(training_ms, 1))
                t0 = time.perf_counter()
            if last:
                if stop_after is not None and step < t.iterations:
                    log(f"stopping_early: wallclock_cap train_time:{training_ms:.0f}ms step:{step}/{t.iterations}")
                break
            elapsed_ms = training_ms + 1000.0 * (time.perf_counter() - t0)
            decay = schedule_multiplier(step, elapsed_ms, t)
            lr_mul = decay * warmup_factor(step, t)
            frac = training_fraction(step, elapsed_ms, t)
            if not looped and frac >= cfg.model.enable_looping_at:
                looped = True
                log(f"layer_loop:enabled step:{step} frac:{frac:.3f} layers:{layers}")
            qat_on = 1.0 if qat is not None and decay <= cfg.quant.qat_lr_threshold else 0.0
            if qat_on and not qat_was_on:
                log(f"qat:enabled step:{step} lr_mul:{lr_mul:.3f}")
            qat_was_on = qat_on
            state, metrics = step_fns[looped](state, *next_batch(loader), lr_mul, qat_on, teacher)
            step += 1
            if pending:  # dispatch this step first, then read the previous one: the device never idles
                flush(pending)
            approx_ms = training_ms + 1000.0 * (time.perf_counter() - t0)
            pending = (step, metrics)
            # Every process must agree on stopping and on signals (the reference all-reduces MAX).
            reached_cap, got_signal = dist.any_process(cap_ms is not None and approx_ms >= cap_ms,
                                                       ckpt is not None and signals.received is not None)
            if reached_cap and stop_after is None:
                stop_after = step
            # Speed from finished steps only; before the first is fetched there is no honest ETA.
            step_avg = finished[1] / finished[0] if finished[0] else math.nan
            eta_s = (t.iterations - step) * step_avg / 1000
            if cap_ms is not None and finished[0]:
                eta_s = min(eta_s, max(cap_ms - approx_ms, 0.0) / 1000)
            avg = f"{step_avg:.0f}ms" if finished[0] else "?"
            progress.update(step, eta=eta_s, extra=f"step_avg {avg} lr_mul {lr_mul:.3f}")
            if ckpt is not None:
                if got_signal:
                    signum = signals.received or signal.SIGTERM
                    checkpoint(f"signal {signum}")
                    raise Interrupted(step, signum, ckpt.directory)
                due = (t.checkpoint_every and step % t.checkpoint_every == 0) or (
                    t.checkpoint_every_seconds and approx_ms - last_ckpt_ms >= 1000.0 * t.checkpoint_every_seconds)
                if due and step < t.iterations:
                    checkpoint("periodic")
    progress.close()
    params = state.params
    if t.ema_decay:  # the EMA weights are what get evaluated and exported (spec 4.13)
        log("ema:applying EMA weights")
        params = jax.tree.map(lambda e, p: e.astype(p.dtype), state.ema, state.params)
    return TrainResult(params, step, training_ms, val, model, evaluator)
