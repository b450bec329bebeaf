"""The pure jitted train step: `train_step(state, x, y, lr_mul, qat_on) -> (state, metrics)`, with
micro-batch accumulation, EMA and QAT; and the (spans -> micro-batches) data layout it reads."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pgolf_jax.config import QuantConfig
from pgolf_jax.model.gpt import Model
from pgolf_jax.quant.qat import fake_quantize
from pgolf_jax.train.objectives import CrossEntropy


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    opt_state: Any
    ema: Any = None  # fp32 exponential moving average of params (train.ema_decay > 0)
    rng: Any = None  # uint32 key data: the randomness of stochastic families, split every step


def make_train_step(model: Model, tx: optax.GradientTransformationExtraArgs, objective=None, looped: bool = True,
                    ema_decay: float = 0.0, qat: QuantConfig | None = None):
    """(state, x_MBT, y_MBT, lr_mul, qat_on, teacher, traced) -> (state, metrics); M micro-batches are
    accumulated; lr_mul may be a pair (lr, WD multipliers: `rates`). `objective` (train.objectives)
    gives the loss and its terms; `looped` picks the block schedule (static: the plain and looped
    steps are two compiles); with a QuantConfig, the loss sees fake-quantized weights while the
    traced qat_on is 1. teacher: the frozen teacher's weights for objectives that need one (an
    argument, never a captured constant). traced: a group member's traced hyperparameters for the
    objective and model (hyper.py; `tx` is built with them by the caller), None in a plain run."""
    specs = model.param_specs() if qat is not None else None
    objective = objective or CrossEntropy(None)

    def grad_of(params, x, y, qat_on, key, teacher, traced):
        def loss(p):
            p = fake_quantize(p, qat, qat_on, specs) if qat is not None else p
            # A plain run calls the objective as before (an objective of a plugin may not take traced).
            return objective(model, p, x, y, looped, key, teacher, **({} if traced is None else {"traced": traced}))
        (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return {**metrics, "train_loss": value}, grads

    def train_step(state: TrainState, x_MBT, y_MBT, lr_mul, qat_on=0.0, teacher=None, traced=None):
        n_micro = x_MBT.shape[0]
        # A state built without a key (tests) draws from a fixed one, still new every step.
        base = jax.random.wrap_key_data(state.rng) if state.rng is not None else \
            jax.random.fold_in(jax.random.key(0), state.step)
        key, step_key = jax.random.split(base)
        if n_micro == 1:
            metrics, grads = grad_of(state.params, x_MBT[0], y_MBT[0], qat_on, step_key, teacher, traced)
        else:
            # Accumulate in fp32 (the reference sums .grad in the parameter dtype).
            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
            m0 = jax.eval_shape(lambda: grad_of(state.params, x_MBT[0], y_MBT[0], qat_on, step_key, teacher, traced)[0])
            m_zero = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), m0)

            def micro(carry, xs):
                m_sum, g_sum = carry
                i, x, y = xs
                m, g = grad_of(state.params, x, y, qat_on, jax.random.fold_in(step_key, i), teacher, traced)
                return (jax.tree.map(lambda a, b: a + b, m_sum, m),
                        jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_sum, g)), None

            (metrics, grads), _ = jax.lax.scan(micro, (m_zero, zeros), (jnp.arange(n_micro), x_MBT, y_MBT))
            metrics = jax.tree.map(lambda m: m / n_micro, metrics)
            grads = jax.tree.map(lambda g, p: (g / n_micro).astype(p.dtype), grads, state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params, **rates(lr_mul))
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema_decay:  # e <- d e + (1 - d) w after every optimizer step, in fp32 (spec 4.13)
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p.astype(jnp.float32), ema, params)
        rng = jax.random.key_data(key) if state.rng is not None else None
        return TrainState(state.step + 1, params, opt_state, ema, rng), metrics

    return train_step


def rates(lr_mul) -> dict:
    """The optimizer's extra arguments from a step's `lr_mul`: the lr multiplier, or the pair
    (lr multiplier, WD multiplier) a run with a WD schedule (optim.wd_schedule) passes."""
    return dict(zip(("lr_mul", "wd_mul"), lr_mul)) if isinstance(lr_mul, tuple) else {"lr_mul": lr_mul}


def initial_rng(seed: int):
    """The train state's key data: independent of the init key (fold_in 1 of the seed's key)."""
    return jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1))


def micro_batches(x_SNT: np.ndarray, num_devices: int, microbatch_seqs: int) -> np.ndarray:
    """Loader spans (S, N, T) -> (M, B, T): micro-step a, device d holds span a*D + d (the
    reference's rank/micro-step layout), each span optionally cut into chunks of sequences."""
    S, N, T = x_SNT.shape
    A = S // num_devices
    k = N // microbatch_seqs if microbatch_seqs else 1
    x = x_SNT.reshape(A, num_devices, k, N // k, T).transpose(0, 2, 1, 3, 4)
    return x.reshape(micro_batch_shape(S, N, T, num_devices, microbatch_seqs))


def micro_batch_shape(spans: int, span_seqs: int, seq_len: int, num_devices: int, microbatch_seqs: int):
    """The (M, B, T) that micro_batches makes of (spans, span_seqs, seq_len) loader spans."""
    k = span_seqs // microbatch_seqs if microbatch_seqs else 1
    return spans // num_devices * k, num_devices * (span_seqs // k), seq_len


def train_batch_shape(t, num_devices: int):
    """A train step's (M, B, T) token batch on num_devices data devices, as train/loop.py feeds it."""
    span_seqs = t.train_batch_tokens // t.batch_spans // t.train_seq_len
    micro_seqs = t.microbatch_tokens // t.train_seq_len if t.microbatch_tokens else 0
    return micro_batch_shape(t.batch_spans, span_seqs, t.train_seq_len, num_devices, micro_seqs)
