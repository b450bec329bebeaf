"""Training K runs as one group with one compiled step: vmapped over their stacked train states, or
called once per member (`mode`).

The K configs may differ only in hyper.TRACED fields (learning rates, momenta, weight decays,
softcap: traced values of one graph) and hyper.INIT_ONLY fields (seed, init scales: each state is
initialised on its own), and must count steps (no wall-clock cap: a group's step takes longer than
one run's, so a shared time budget would give each member fewer steps than it gets alone). They
read the same batches (the data order never depends on train.seed), follow the same lr schedule,
and each member's weights, losses and periodic val scores are its own: the result of each equals a
separate run's within float tolerance (tests/test_sweep.py).

Two ways to run the one compiled step (`mode`): "vmap" maps it over the stacked states, a single
program for all K (what a GPU wants: one small model leaves it idle); "loop" calls the unmapped step
once per member with that member's traced scalars, the same executable K times. On XLA:CPU the
vmapped step is slower per member than a single run's (BENCHMARKS.md: batched products there
run below the plain GEMM rate) while the loop costs K single steps and still compiles once, so
"auto" picks the loop on CPU and vmap elsewhere.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from pgolf_jax import dist, hyper
from pgolf_jax.config import Config
from pgolf_jax.data.shards import make_loader
from pgolf_jax.model.gpt import build_model, count_params, resolve_dtype
from pgolf_jax.optim.optimizers import labels_from_specs, make_optimizer
from pgolf_jax.optim.schedule import schedule_multiplier, training_fraction, warmup_factor
from pgolf_jax.runlog import Progress, RunLog
from pgolf_jax.train.loop import TrainResult
from pgolf_jax.train.objectives import make_objective
from pgolf_jax.train.step import TrainState, initial_rng, make_train_step, micro_batches


def _get(cfg: Config, key: str):
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


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


def train_group(cfgs: list[Config], logs: list[RunLog], train_pattern: str, evaluator_factory,
                mode: str = "auto") -> list[TrainResult]:
    """Train every config of one group together; logs[k] gets member k's lines like a single run's."""
    mode = resolve_mode(mode)
    keys = {group_key(c) for c in cfgs}
    if len(keys) != 1 or None in keys:
        raise ValueError("train_group: the configs differ in more than scalar hyperparameters and seeds")
    cfg, K = cfgs[0], len(cfgs)
    t = cfg.train
    mesh = dist.make_mesh()
    n_dev = dist.num_data_devices(mesh)
    if t.batch_spans % n_dev:
        raise ValueError(f"train.batch_spans={t.batch_spans} must be a multiple of the {n_dev} data devices")
    model = build_model(cfg.model)
    dtype = resolve_dtype(cfg.optim.muon_dtype)
    labels = labels_from_specs(model.param_specs())
    hyps = [{k: jnp.float32(_get(c, k)) for k in hyper.TRACED} for c in cfgs]

    def tx_of(h):
        with hyper.traced(h):
            return make_optimizer(cfg, dtype, labels)

    def init_state(params, h, step, rng):
        # The EMA is a copy even for fp32 params, made outside jit (where it is a real copy): the
        # jitted step donates the state, and one buffer may not be donated twice.
        ema = jax.tree.map(lambda a: jnp.array(a, jnp.float32, copy=True), params) if t.ema_decay else None
        return TrainState(step, params, init_opt(params, h), ema, rng)

    # Each member's own init (its seed and init scales); one compile serves every member.
    params = [jax.jit(build_model(c.model).init)(jax.random.key(c.train.seed)) for c in cfgs]
    rngs = [initial_rng(c.train.seed) for c in cfgs]
    if mode == "vmap":  # stacked along a leading K axis and initialised there: no second copy of the state
        stack = lambda *a: jnp.stack(a)  # noqa: E731
        init_opt = jax.jit(jax.vmap(lambda p, h: tx_of(h).init(p)))
        hyp = jax.tree.map(stack, *hyps)
        state = init_state(jax.tree.map(stack, *params), hyp, jnp.zeros((K,), jnp.int32), jnp.stack(rngs))
    else:
        init_opt = jax.jit(lambda p, h: tx_of(h).init(p))
        hyp = hyps
        state = [init_state(p, h, jnp.zeros((), jnp.int32), r) for p, h, r in zip(params, hyps, rngs)]
    del params

    def member(state, k, field):
        """Member k's params or ema, whichever way the states are held."""
        if mode == "loop":
            return getattr(state[k], field)
        return jax.tree.map(lambda a: a[k], getattr(state, field))

    def run_step(fn, state, x, y, lr_mul, qat_on):
        if mode == "vmap":
            return fn(state, x, y, lr_mul, qat_on, teacher, hyp)
        outs = [fn(s, x, y, lr_mul, qat_on, teacher, h) for s, h in zip(state, hyp)]  # dispatched back to back
        return [o[0] for o in outs], [o[1] for o in outs]  # metrics stacked on the host, when flushed

    graphs = (False, True) if model.has_two_schedules else (True,)
    qat = cfg.quant if cfg.quant.qat else None
    objective, teacher = make_objective(cfg)

    def member_step(looped):
        def one(state, x, y, lr_mul, qat_on, teacher, h):
            with hyper.traced(h):
                step = make_train_step(model, tx_of(h), objective, looped=looped, ema_decay=t.ema_decay, qat=qat)
                return step(state, x, y, lr_mul, qat_on, teacher)
        if mode == "loop":
            return jax.jit(one, donate_argnums=(0,))
        return jax.jit(jax.vmap(one, in_axes=(0, None, None, None, None, None, 0)), donate_argnums=(0,))

    step_fns = {g: member_step(g) for g in graphs}
    evaluators = [evaluator_factory(build_model(c.model), mesh) for c in cfgs]
    span_seqs = t.train_batch_tokens // t.batch_spans // t.train_seq_len
    micro_seqs = t.microbatch_tokens // t.train_seq_len if t.microbatch_tokens else 0
    n_params = count_params(member(state, 0, "params"))
    for c, log in zip(cfgs, logs):
        log(f"model_params:{n_params}")
        log(f"val_tokens:{evaluators[0].total} val_bytes:{evaluators[0].byte_count}")
        log(f"vmap_group:{K} members train with one compiled step, mode:{mode} (the step times below are "
            "the whole group's)")
        log(f"devices:{n_dev} platform:{jax.default_backend()} batch_spans:{t.batch_spans} "
            f"micro_steps:{t.batch_spans // n_dev * (span_seqs // micro_seqs if micro_seqs else 1)}")
        log(f"train_batch_tokens:{t.train_batch_tokens} train_seq_len:{t.train_seq_len} iterations:{t.iterations}")
        log(f"seed:{c.train.seed} " + " ".join(f"{k.split('.')[1]}:{_get(c, k)}" for k in hyper.TRACED))

    loader = make_loader(cfg.data.loader, train_pattern, t.batch_spans, t.train_seq_len, cfg.data.loader_seed,
                         cfg.model.vocab_size)

    def next_batch():
        x, y = loader.next_batch(t.train_batch_tokens, t.train_seq_len)
        return jnp.asarray(micro_batches(x, n_dev, micro_seqs)), jnp.asarray(micro_batches(y, n_dev, micro_seqs))

    # Compile every graph before the clock starts (a single run's warm-up steps do the same).
    x0, y0 = next_batch()
    loader = make_loader(cfg.data.loader, train_pattern, t.batch_spans, t.train_seq_len, cfg.data.loader_seed,
                         cfg.model.vocab_size)
    tc = time.perf_counter()
    example = (state, hyp) if mode == "vmap" else (state[0], hyp[0])
    step_fns = {g: f.lower(example[0], x0, y0, 1.0, 0.0, teacher, example[1]).compile() for g, f in step_fns.items()}
    for log in logs:
        log(f"warmup_time:{1000 * (time.perf_counter() - tc):.0f}ms (compile)")

    progress = Progress(f"train x{K}", t.iterations, enabled=t.progress)
    looped, training_ms, vals, pending = graphs[0], 0.0, [None] * K, None

    def flush(item):
        """Log a finished step's losses (fetching them blocks only on that step)."""
        done, metrics, at_ms = item
        m = jax.tree.map(np.asarray, metrics)
        if mode == "loop":  # one dict per member -> one (K,) array per metric
            m = {n: np.stack([mk[n] for mk in m]) for n in m[0]}
        for k, log in enumerate(logs):
            loss = float(m["train_loss"][k])
            if not math.isfinite(loss):
                raise FloatingPointError(f"{cfgs[k].train.run_id}: train_loss is {loss} at step {done}; stopping")
            terms = {n: float(v[k]) for n, v in m.items() if n != "train_loss"} if len(m) > 2 else {}
            if t.train_log_every > 0 and (done <= 10 or done % t.train_log_every == 0 or done == t.iterations):
                extra = "".join(f" {n}:{v:.4f}" for n, v in terms.items())
                log(f"step:{done}/{t.iterations} train_loss:{loss:.4f}{extra} train_time:{at_ms:.0f}ms "
                    f"step_avg:{at_ms / done:.2f}ms")
            log.metric("train", step=done, train_loss=loss, train_time_ms=round(at_ms, 1), **terms)

    t0 = time.perf_counter()
    for step in range(t.iterations + 1):
        if step == t.iterations or (cfg.eval.val_loss_every > 0 and step % cfg.eval.val_loss_every == 0):
            if pending:
                flush(pending)
                pending = None
            jax.block_until_ready(state)
            training_ms += 1000.0 * (time.perf_counter() - t0)
            for k, log in enumerate(logs):
                val = evaluators[k](member(state, k, "params"), looped=looped)
                if not (math.isfinite(val.val_loss) and math.isfinite(val.val_bpb)):
                    raise FloatingPointError(f"{cfgs[k].train.run_id}: val_loss is {val.val_loss} at step {step}")
                vals[k] = val
                log(f"step:{step}/{t.iterations} val_loss:{val.val_loss:.4f} val_bpb:{val.val_bpb:.4f} "
                    f"train_time:{training_ms:.0f}ms step_avg:{training_ms / max(step, 1):.2f}ms")
                log.metric("val", step=step, val_loss=val.val_loss, val_bpb=val.val_bpb,
                           train_time_ms=round(training_ms, 1))
            t0 = time.perf_counter()
        if step == t.iterations:
            break
        decay = schedule_multiplier(step, 0.0, t)
        lr_mul = decay * warmup_factor(step, t)
        if not looped and training_fraction(step, 0.0, t) >= cfg.model.enable_looping_at:
            looped = True
            for log in logs:
                log(f"layer_loop:enabled step:{step}")
        qat_on = 1.0 if qat is not None and decay <= cfg.quant.qat_lr_threshold else 0.0
        state, metrics = run_step(step_fns[looped], state, *next_batch(), lr_mul, qat_on)
        if pending:  # dispatch this step first, then read the previous one: the device never idles
            flush(pending)
        pending = (step + 1, metrics, training_ms + 1000.0 * (time.perf_counter() - t0))
        progress.update(step + 1)
    progress.close()
    results = []
    for k in range(K):
        p = member(state, k, "ema" if t.ema_decay else "params")
        if t.ema_decay:
            logs[k]("ema:applying EMA weights")
            p = jax.tree.map(lambda e, q: e.astype(q.dtype), p, member(state, k, "params"))
        results.append(TrainResult(p, t.iterations, training_ms, vals[k], build_model(cfgs[k].model), evaluators[k]))
    return results
