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


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    opt_state: Any
    ema: Any = None  # fp32 exponential moving average of params (train.ema_decay > 0)


def make_train_step(model: Model, tx: optax.GradientTransformationExtraArgs, looped: bool = True,
                    ema_decay: float = 0.0, qat: QuantConfig | None = None):
    """(state, x_MBT, y_MBT, lr_mul, qat_on) -> (state, metrics); M micro-batches are accumulated.
    `looped` picks the block schedule (static: the plain and looped steps are two compiles); with
    a QuantConfig, the loss sees fake-quantized weights while the traced qat_on is 1."""

    def grad_of(params, x, y, qat_on):
        def loss(p):
            return model.loss(fake_quantize(p, qat, qat_on) if qat is not None else p, x, y, looped)
        return jax.value_and_grad(loss)(params)

    def train_step(state: TrainState, x_MBT, y_MBT, lr_mul, qat_on=0.0):
        n_micro = x_MBT.shape[0]
        if n_micro == 1:
            loss, grads = grad_of(state.params, x_MBT[0], y_MBT[0], qat_on)
        else:
            # Accumulate in fp32 (the reference sums .grad in the parameter dtype).
            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)

            def micro(carry, xy):
                loss_sum, g_sum = carry
                loss, g = grad_of(state.params, *xy, qat_on)
                return (loss_sum + loss, jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_sum, g)), None

            (loss, grads), _ = jax.lax.scan(micro, (jnp.zeros((), jnp.float32), zeros), (x_MBT, y_MBT))
            loss = loss / n_micro
            grads = jax.tree.map(lambda g, p: (g / n_micro).astype(p.dtype), grads, state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params, lr_mul=lr_mul)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema_decay:  # e <- d e + (1 - d) w after every optimizer step, in fp32 (spec 4.13)
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p.astype(jnp.float32), ema, params)
        return TrainState(state.step + 1, params, opt_state, ema), {"train_loss": loss}

    return train_step


def micro_batches(x_SNT: np.ndarray, num_devices: int, microbatch_seqs: int) -> np.ndarray:
    """Loader spans (S, N, T) -> (M, B, T): micro-step a, device d holds span a*D + d (the
    reference's rank/micro-step layout), each span optionally cut into chunks of sequences."""
    S, N, T = x_SNT.shape
    A = S // num_devices
    k = N // microbatch_seqs if microbatch_seqs else 1
    x = x_SNT.reshape(A, num_devices, k, N // k, T).transpose(0, 2, 1, 3, 4)
    return x.reshape(A * k, num_devices * (N // k), T)
