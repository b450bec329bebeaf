"""The training loop: a pure jitted `train_step(state, batch) -> (state, metrics)` driven by the
reference's schedule (compile warm-up with rollback, wall-clock cap, warmdown, periodic val). One loop
trains K members (train/members.py): K = 1 is a plain run, more a sweep group (train/group.py)."""

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

from pgolf_jax import dist, registry
from pgolf_jax.config import Config
from pgolf_jax.data.shards import make_loader
from pgolf_jax.errors import Interrupted
from pgolf_jax.model.gpt import Model, count_params
from pgolf_jax.model.topology import schedule
from pgolf_jax.optim.schedule import schedule_multiplier, training_fraction, warmup_factor, wd_multiplier
from pgolf_jax.runlog import Progress, RunLog
# build and step_functions stay importable from here (bench, hardware/programs, tests)
from pgolf_jax.train.members import Members, build, field, step_functions  # noqa: F401
from pgolf_jax.train.objectives import make_objective
from pgolf_jax.train.step import micro_batches

if TYPE_CHECKING:  # built by the caller's factory; evaluation sits beside train, not below it
    from pgolf_jax.evaluation.evaluate import Evaluator
    from pgolf_jax.train.checkpoint import Restore  # a name only: the shaker drops this block


@dataclass
class TrainResult:
    params: Any
    steps: int
    train_time_ms: float
    val: Any  # the last EvalResult
    model: Model
    evaluator: Evaluator


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
    return train_members(Members([cfg]), [log], train_pattern, evaluator_factory, run_dir, restore)[0]


def train_members(members: Members, logs: list[RunLog], train_pattern: str, evaluator_factory,
                  run_dir: Path | None = None, restore: Restore | None = None) -> list[TrainResult]:
    """Train every member in one loop, logs[k] getting member k's lines; checkpoints (run_dir) and
    `restore` are a plain run's (a group has none: train/group.py)."""
    cfg = members.cfgs[0]
    t = cfg.train
    mesh = dist.make_mesh()
    n_dev = dist.num_data_devices(mesh)
    if t.batch_spans % n_dev:
        raise ValueError(f"train.batch_spans={t.batch_spans} must be a multiple of the {n_dev} data devices")
    state = members.init(mesh)
    evaluators: list[Evaluator] = [evaluator_factory(m, mesh) for m in members.models]
    objective, teacher = make_objective(cfg)
    if teacher is not None:
        teacher = dist.replicate(teacher, mesh)
    for c, log in zip(members.cfgs, logs):
        if line := objective.describe(c):
            log(line)
    step_fns = members.step_functions(cfg, state, mesh, objective)
    # A plain run checkpoints (periodically, and on SIGTERM/SIGINT) where its code can: a packed file
    # holds the checkpointer only when its config checkpoints (packing/select.py).
    can = run_dir is not None and "checkpointer" in registry.CHECKPOINTS
    ckpt = registry.resolve(registry.CHECKPOINTS, "checkpointer")(run_dir / "checkpoints", t.checkpoint_keep) \
        if can else None
    n_params = count_params(members.get(state, 0))
    for k, log in enumerate(logs):
        _header(members, k, log, n_params, evaluators[k], n_dev)
    micro_seqs = t.microbatch_tokens // t.train_seq_len if t.microbatch_tokens else 0
    data = dist.batch_sharding(mesh, leading=1)

    def next_batch(loader):
        x, y = loader.next_batch(t.train_batch_tokens, t.train_seq_len)
        return (dist.global_array(micro_batches(x, n_dev, micro_seqs), data),
                dist.global_array(micro_batches(y, n_dev, micro_seqs), data))

    def new_loader():
        return make_loader(cfg.data.loader, train_pattern, t.batch_spans, t.train_seq_len, cfg.data.loader_seed,
                           cfg.model.vocab_size)

    run = _Loop(members, logs, state, step_fns, teacher, evaluators, ckpt, next_batch, new_loader)
    run.warmup()
    run.resume(restore)
    run.run()
    return run.results()


def _header(members: Members, k: int, log: RunLog, n_params: int, evaluator, n_dev: int) -> None:
    """Member k's lines before training: the model, the data, the schedule (a group's say so)."""
    cfg = members.cfgs[k]
    t, o, m = cfg.train, cfg.optim, cfg.model
    span_seqs = t.train_batch_tokens // t.batch_spans // t.train_seq_len
    micro_seqs = t.microbatch_tokens // t.train_seq_len if t.microbatch_tokens else 0
    log(f"model_params:{n_params}")
    log(f"val_tokens:{evaluator.total} val_bytes:{evaluator.byte_count}")
    for line in members.group_lines():
        log(line)
    log(f"devices:{n_dev} platform:{jax.default_backend()} batch_spans:{t.batch_spans} "
        f"micro_steps:{t.batch_spans // n_dev * (span_seqs // micro_seqs if micro_seqs else 1)}")
    log(f"tie_embeddings:{m.tie_embeddings} embed_lr:{o.tied_embed_lr if m.tie_embeddings else o.embed_lr} "
        f"head_lr:{0.0 if m.tie_embeddings else o.head_lr} matrix_lr:{o.matrix_lr} scalar_lr:{o.scalar_lr}")
    log(f"train_batch_tokens:{t.train_batch_tokens} train_seq_len:{t.train_seq_len} iterations:{t.iterations} "
        f"warmup_steps:{t.warmup_steps} max_wallclock_seconds:{t.max_wallclock_seconds:.3f}")
    log(members.seed_line(k))
    log(f"topology:{m.topology} block_schedule:{m.block_schedule} layers:{list(schedule(m))}"
        + (f" enable_looping_at:{m.enable_looping_at}" if members.models[k].has_two_schedules else ""))


class _Loop:
    """The loop's running state (step, clock, the step not yet fetched, last val) and its parts:
    warm-up with rollback, resume, periodic val, one step, the cap/signal/checkpoint checks."""

    def __init__(self, members: Members, logs, state, step_fns, teacher, evaluators, ckpt, next_batch, new_loader):
        self.members, self.logs, self.state, self.step_fns, self.teacher = members, logs, state, step_fns, teacher
        self.evaluators, self.ckpt, self.next_batch, self.new_loader = evaluators, ckpt, next_batch, new_loader
        self.cfg = members.cfgs[0]
        self.t = t = self.cfg.train
        self.graphs = tuple(step_fns)
        self.qat = self.cfg.quant if self.cfg.quant.qat else None
        self.layers = list(schedule(self.cfg.model))
        self.loader = new_loader()
        # The effective cap leaves gptq_reserve_seconds of the budget for post-training calibration.
        self.cap_ms = 1000.0 * (t.max_wallclock_seconds - t.gptq_reserve_seconds) if t.max_wallclock_seconds > 0 \
            else None
        self.training_ms, self.stop_after, self.step, self.pending = 0.0, None, 0, None
        self.vals = [None] * members.K
        self.looped, self.qat_was_on = self.graphs[0], 0.0
        self.last_ckpt_ms, self.last_ckpt_step = 0.0, None
        self.finished = (0, 0.0)  # the last step whose loss was fetched, and the training ms when it was
        self.t0 = time.perf_counter()
        self.signals, self.progress = None, None

    def log(self, line: str) -> None:
        for log in self.logs:
            log(line)

    def _stopping(self, what: str, k: int) -> str:
        """The end of a non-finite error: which member (in a group) and the last good checkpoint."""
        who = f"{self.members.cfgs[k].train.run_id}: " if self.members.K > 1 else ""
        kept = f"; the last good checkpoint is step {self.last_ckpt_step}" if self.last_ckpt_step is not None else ""
        return f"{who}{what}; stopping{kept}"

    def warmup(self) -> None:
        """Compile and prime every graph, then roll state and data back (the reference's
        WARMUP_STEPS, run once per schedule like the looped records)."""
        t = self.t
        if t.warmup_steps <= 0:
            return
        initial = jax.tree.map(jnp.copy, self.state)
        tc = time.perf_counter()
        for g in self.graphs:
            label = "loop_warmup_step" if g and len(self.graphs) > 1 else "warmup_step"
            for i in range(t.warmup_steps):
                self.state, m = self.members.apply(self.step_fns[g], self.state, *self.next_batch(self.loader), 1.0,
                                                   1.0 if self.qat else 0.0, self.teacher)
                jax.block_until_ready(m)
                if t.warmup_steps <= 20 or (i + 1) % 10 == 0 or i + 1 == t.warmup_steps:
                    self.log(f"{label}:{i + 1}/{t.warmup_steps}")
        self.log(f"warmup_time:{1000 * (time.perf_counter() - tc):.0f}ms")
        self.state = initial
        self.loader = self.new_loader()

    def resume(self, restore: Restore | None) -> None:
        """The progress line (its clock starts before a restore), then the restore if any."""
        self.progress = Progress("train" if self.members.K == 1 else f"train x{self.members.K}", self.t.iterations,
                                 enabled=self.t.progress)
        if restore is not None:
            self.restore(restore)

    def restore(self, restore: Restore) -> None:
        """Continue from a plain run's checkpoint: its state, data position, clock and switches."""
        state, meta = self.ckpt.restore(self.state[0], restore.step)
        self.state = [state]
        self.loader.restore(meta["loader"])
        self.step, self.training_ms, self.looped, self.qat_was_on = (meta["step"], meta["training_ms"], meta["looped"],
                                                                      meta["qat_on"])
        self.log(f"resume:step {self.step} train_time:{self.training_ms:.0f}ms from {self.ckpt.directory}")
        self.last_ckpt_ms, self.last_ckpt_step = self.training_ms, self.step

    def run(self) -> None:
        """Steps until iterations or the wall-clock cap, a val every eval.val_loss_every and at the end."""
        t = self.t
        self.signals = _Signals() if self.ckpt is not None else None
        self.t0 = time.perf_counter()
        with self.signals or contextlib.nullcontext():
            while True:
                last = self.step == t.iterations or (self.stop_after is not None and self.step >= self.stop_after)
                if last or (self.cfg.eval.val_loss_every > 0 and self.step % self.cfg.eval.val_loss_every == 0):
                    self.validate()
                if last:
                    if self.stop_after is not None and self.step < t.iterations:
                        self.log(f"stopping_early: wallclock_cap train_time:{self.training_ms:.0f}ms "
                                 f"step:{self.step}/{t.iterations}")
                    break
                lr_mul, approx_ms = self.advance()
                self.after_step(lr_mul, approx_ms)
        self.progress.close()

    def flush(self) -> None:
        """Fetch the pending step's losses (blocks only on that step) and log them like the reference,
        timed when the fetch returns: the dispatch time would count a step as done before it ran
        (the first step's 1 ms while it takes seconds)."""
        (done, metrics), self.pending = self.pending, None
        rows = self.members.rows(metrics)
        at_ms = self.training_ms + 1000.0 * (time.perf_counter() - self.t0)
        self.finished = (done, at_ms)
        t = self.t
        for k, (log, row) in enumerate(zip(self.logs, rows)):
            loss = row["train_loss"]
            if not math.isfinite(loss):
                raise FloatingPointError(self._stopping(f"train_loss is {loss} at step {done}", k))
            # The objective's terms (ce, ponder, kl, ...) beside the loss when it is more than the CE.
            terms = {n: v for n, v in row.items() if n != "train_loss"} if len(row) > 2 else {}
            if t.train_log_every > 0 and (done <= 10 or done % t.train_log_every == 0 or self.stop_after is not None):
                extra = "".join(f" {n}:{v:.4f}" for n, v in terms.items())
                log(f"step:{done}/{t.iterations} train_loss:{loss:.4f}{extra} train_time:{at_ms:.0f}ms "
                    f"step_avg:{at_ms / done:.2f}ms")
            log.metric("train", step=done, train_loss=loss, train_time_ms=round(at_ms, 1), **terms)

    def validate(self) -> None:
        """Score every member's weights on the val split, off the clock."""
        if self.pending:
            self.flush()
        jax.block_until_ready(self.state)
        self.training_ms += 1000.0 * (time.perf_counter() - self.t0)
        step, t, ms = self.step, self.t, self.training_ms
        for k, log in enumerate(self.logs):
            val = self.evaluators[k](self.members.get(self.state, k), looped=self.looped)
            if not (math.isfinite(val.val_loss) and math.isfinite(val.val_bpb)):
                raise FloatingPointError(self._stopping(f"val_loss is {val.val_loss} at step {step}", k))
            self.vals[k] = val
            log(f"step:{step}/{t.iterations} val_loss:{val.val_loss:.4f} val_bpb:{val.val_bpb:.4f} "
                f"train_time:{ms:.0f}ms step_avg:{ms / max(step, 1):.2f}ms")
            log.metric("val", step=step, val_loss=val.val_loss, val_bpb=val.val_bpb, train_time_ms=round(ms, 1))
        self.t0 = time.perf_counter()

    def advance(self) -> tuple[float, float]:
        """Dispatch one step under the schedule (lr, layer loop, QAT), then fetch the step before it:
        the device never idles. Returns (lr_mul, the training ms at dispatch)."""
        t, cfg, step = self.t, self.cfg, self.step
        elapsed_ms = self.training_ms + 1000.0 * (time.perf_counter() - self.t0)
        decay = schedule_multiplier(step, elapsed_ms, t)
        lr_mul = decay * warmup_factor(step, t)
        frac = training_fraction(step, elapsed_ms, t)
        if not self.looped and frac >= cfg.model.enable_looping_at:
            self.looped = True
            self.log(f"layer_loop:enabled step:{step} frac:{frac:.3f} layers:{self.layers}")
        qat_on = 1.0 if self.qat is not None and decay <= cfg.quant.qat_lr_threshold else 0.0
        if qat_on and not self.qat_was_on:
            self.log(f"qat:enabled step:{step} lr_mul:{lr_mul:.3f}")
        self.qat_was_on = qat_on
        # A WD schedule's multiplier rides with the lr's (train/step.rates); the default passes lr_mul alone.
        mul = lr_mul if cfg.optim.wd_schedule == "constant" else (lr_mul, wd_multiplier(step, elapsed_ms, cfg))
        self.state, metrics = self.members.apply(self.step_fns[self.looped], self.state, *self.next_batch(self.loader),
                                                 mul, qat_on, self.teacher)
        self.step += 1
        if self.pending:
            self.flush()
        approx_ms = self.training_ms + 1000.0 * (time.perf_counter() - self.t0)
        self.pending = (self.step, metrics)
        return lr_mul, approx_ms

    def after_step(self, lr_mul: float, approx_ms: float) -> None:
        """Progress and ETA; the wall-clock cap; on a signal a checkpoint and stop; periodic checkpoints."""
        t, step, cap_ms, ckpt = self.t, self.step, self.cap_ms, self.ckpt
        # Every process must agree on stopping and on signals (the reference all-reduces MAX).
        reached_cap, got_signal = dist.any_process(cap_ms is not None and approx_ms >= cap_ms,
                                                   ckpt is not None and self.signals.received is not None)
        if reached_cap and self.stop_after is None:
            self.stop_after = step
        # Speed from finished steps only; before the first is fetched there is no honest ETA.
        done, done_ms = self.finished
        step_avg = done_ms / done if done else math.nan
        eta_s = (t.iterations - step) * step_avg / 1000
        if cap_ms is not None and done:
            eta_s = min(eta_s, max(cap_ms - approx_ms, 0.0) / 1000)
        avg = f"{step_avg:.0f}ms" if done else "?"
        self.progress.update(step, eta=eta_s, extra=f"step_avg {avg} lr_mul {lr_mul:.3f}")
        if ckpt is not None:
            self.checkpoint_if_due(got_signal, approx_ms)

    def checkpoint_if_due(self, got_signal: bool, approx_ms: float) -> None:
        """On a signal a checkpoint and stop; else a periodic checkpoint when one is due."""
        t, step, ckpt = self.t, self.step, self.ckpt
        if got_signal:
            signum = self.signals.received or signal.SIGTERM
            self.checkpoint(f"signal {signum}")
            raise Interrupted(step, signum, ckpt.directory)
        due = (t.checkpoint_every and step % t.checkpoint_every == 0) or (
            t.checkpoint_every_seconds and approx_ms - self.last_ckpt_ms >= 1000.0 * t.checkpoint_every_seconds)
        if due and step < t.iterations:
            self.checkpoint("periodic")

    def checkpoint(self, reason: str) -> None:
        """Check this step's loss and the updated weights (never save a non-finite state), then
        save, off the clock (a plain run's: a group keeps no checkpoints)."""
        if self.pending:
            self.flush()
        self.training_ms += 1000.0 * (time.perf_counter() - self.t0)
        state, step = self.state[0], self.step
        if not bool(_all_finite(state.params)):
            raise FloatingPointError(self._stopping(f"weights are not finite after step {step}", 0))
        self.ckpt.save(step, state, {"step": step, "training_ms": self.training_ms, "looped": self.looped,
                                     "qat_on": self.qat_was_on, "loader": self.loader.state(), "seed": self.t.seed,
                                     "log_offsets": self.logs[0].offsets()})
        self.log(f"checkpoint:step {step} ({reason})")
        self.last_ckpt_ms, self.last_ckpt_step = self.training_ms, step
        self.t0 = time.perf_counter()

    def results(self) -> list[TrainResult]:
        """Each member's final weights: the EMA where train.ema_decay (spec 4.13: evaluated and exported)."""
        out = []
        for k, log in enumerate(self.logs):
            params = self.members.get(self.state, k)
            if self.t.ema_decay:
                log("ema:applying EMA weights")
                params = jax.tree.map(lambda e, p: e.astype(p.dtype), self.members.get(self.state, k, "ema"), params)
            out.append(TrainResult(params, self.step, self.training_ms, self.vals[k], self.members.models[k],
                                   self.evaluators[k]))
        return out
