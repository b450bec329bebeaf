"""Validation loss and the challenge's tokenizer-agnostic bits per byte.

bpb = sum(nll in nats) / (ln 2 * sum(bytes)), summed in float64 over non-overlapping sequences of
the val stream, bytes per target from the tokenizer's lookup tables (tokenizer.ByteLuts): the
piece's UTF-8 length, plus one for a leading '▁' unless the previous token is a boundary.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from pgolf_jax.tokenizer import ByteLuts, token_bytes


@dataclass(frozen=True)
class EvalResult:
    val_loss: float
    val_bpb: float
    val_tokens: int
    val_bytes: int
    seconds: float

    def line(self, prefix: str = "") -> str:
        return (f"{prefix}val_loss:{self.val_loss:.4f} val_bpb:{self.val_bpb:.4f} "
                f"val_tokens:{self.val_tokens} val_bytes:{self.val_bytes} eval_time:{1000 * self.seconds:.0f}ms")


def bpb(loss_sum: float, byte_count: float) -> float:
    return loss_sum / (math.log(2.0) * byte_count)


def stream_bytes(val_tokens: np.ndarray, seq_len: int, luts: ByteLuts) -> np.ndarray:
    """Bytes of every target of the non-overlapping-sequence split, shape (N_seq, T)."""
    n_seq = (len(val_tokens) - 1) // seq_len
    x = val_tokens[: n_seq * seq_len].reshape(n_seq, seq_len)
    y = val_tokens[1: n_seq * seq_len + 1].reshape(n_seq, seq_len)
    return token_bytes(luts, x, y)


def unigram_bpb(train_tokens: np.ndarray, val_tokens: np.ndarray, luts: ByteLuts, vocab_size: int) -> float:
    """bpb of an add-one unigram model fit on train tokens: the floor a trained model must beat."""
    counts = np.bincount(np.asarray(train_tokens, np.int64), minlength=vocab_size)[:vocab_size] + 1.0
    logp = np.log(counts / counts.sum())
    val = np.asarray(val_tokens, np.int64)
    nll = -logp[np.minimum(val[1:], vocab_size - 1)].sum()
    return float(nll / (math.log(2.0) * token_bytes(luts, val[:-1], val[1:]).astype(np.float64).sum()))


class Evaluator:
    """Plain eval of the val stream in sequences of seq_len; one compiled function per shape."""

    def __init__(self, model, val_tokens: np.ndarray, luts: ByteLuts, seq_len: int, batch_tokens: int,
                 data_sharding=None, num_devices: int = 1):
        self.model, self.seq_len = model, seq_len
        self.tokens = np.asarray(val_tokens, dtype=np.int32)
        self.n_seq = (len(self.tokens) - 1) // seq_len
        if self.n_seq <= 0:
            raise ValueError(f"validation split has {len(self.tokens)} tokens: shorter than one sequence of {seq_len}")
        # Whole batches of sequences, a multiple of the device count; the tail batch is padded.
        per_batch = max(batch_tokens // seq_len, 1)
        per_batch = min(per_batch, -(-self.n_seq // num_devices) * num_devices)
        self.batch_seqs = max(num_devices, per_batch // num_devices * num_devices)
        self.byte_count = int(stream_bytes(self.tokens, seq_len, luts).astype(np.float64).sum())
        self.sharding = data_sharding
        # One compiled function per block schedule (static); eval uses the looped one by default.
        self._nll = {g: jax.jit(lambda p, x, y, g=g: model.token_nll(p, x, y, looped=g).sum(axis=-1))
                     for g in (False, True)}

    def __call__(self, params, looped: bool = True) -> EvalResult:
        t0 = time.perf_counter()
        T, bs = self.seq_len, self.batch_seqs
        loss_sum = 0.0
        pending = []
        for start in range(0, self.n_seq, bs):
            n = min(bs, self.n_seq - start)
            chunk = self.tokens[start * T: (start + n) * T + 1]
            x = np.zeros((bs, T), np.int32)
            y = np.zeros((bs, T), np.int32)
            x[:n] = chunk[:-1].reshape(n, T)
            y[:n] = chunk[1:].reshape(n, T)
            if self.sharding is not None:
                x, y = jax.device_put(x, self.sharding), jax.device_put(y, self.sharding)
            pending.append((n, self._nll[looped](params, x, y)))
            if len(pending) > 2:  # keep the device busy while summing earlier batches on the host
                n0, s0 = pending.pop(0)
                loss_sum += float(np.asarray(s0, np.float64)[:n0].sum())
        for n0, s0 in pending:
            loss_sum += float(np.asarray(s0, np.float64)[:n0].sum())
        tokens = self.n_seq * T
        return EvalResult(loss_sum / tokens, bpb(loss_sum, self.byte_count), tokens, self.byte_count,
                          time.perf_counter() - t0)
