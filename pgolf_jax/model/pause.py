"""Pause tokens (#1589, spec 4.4): P learned vectors inserted after every I real tokens (none after a
trailing partial group), through one static gather index, so a sequence of T real tokens runs as
T + floor(T / I) P positions; the model's outputs are gathered back at the real positions, so
losses, bpb, sliding windows and TTT see real tokens only."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=64)
def layout(T: int, P: int, interval: int) -> tuple[np.ndarray, np.ndarray]:
    """(source, real): for each expanded position, its row in concat([x (T rows), pauses (P
    rows)]); and the expanded positions of the T real tokens."""
    source, real = [], []
    for t in range(T):
        real.append(len(source))
        source.append(t)
        if (t + 1) % interval == 0:
            source.extend(T + p for p in range(P))
    return np.asarray(source, np.int32), np.asarray(real, np.int32)


def insert(x_BTD, pause_PD, interval: int):
    """(B, T, D) -> (B, T + floor(T / I) P, D) with the pause vectors after every I tokens."""
    B, T, D = x_BTD.shape
    source, _ = layout(T, pause_PD.shape[0], interval)
    both = jnp.concatenate([x_BTD, jnp.broadcast_to(pause_PD.astype(x_BTD.dtype)[None], (B, *pause_PD.shape))], axis=1)
    return jnp.take(both, jnp.asarray(source), axis=1)


def real_positions(T: int, P: int, interval: int) -> np.ndarray:
    return layout(T, P, interval)[1]
