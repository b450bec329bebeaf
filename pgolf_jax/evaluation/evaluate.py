"""Validation loss and the challenge's tokenizer-agnostic bits per byte.

bpb = sum(nll in nats) / (ln 2 * sum(bytes)), summed in float64 over non-overlapping sequences of
the val stream, bytes per target from the tokenizer's lookup tables (tokenizer.ByteLuts): the
piece's UTF-8 length, plus one for a leading '▁' unless the previous token is a boundary; or,
where the val shards ship byte sidecars (CaseOps), the original bytes each token stands for.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pgolf_jax import dist
from pgolf_jax.data.tokenizer import ByteLuts, token_bytes
from pgolf_jax.model.gpt import build_model


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


def with_window(model, window: int):
    """The model with its attention limited to a sliding causal window of `window` tokens (the
    same parameters; eval.attention_window, #2114's 512-token eval mask); 0 keeps it as trained."""
    if not window or window == model.cfg.attention_window:
        return model
    return build_model(dataclasses.replace(model.cfg, attention_window=window))


def bpb(loss_sum: float, byte_count: float) -> float:
    return loss_sum / (math.log(2.0) * byte_count)


def unigram_bpb(train_tokens: np.ndarray, val_tokens: np.ndarray, luts: ByteLuts, vocab_size: int,
                val_bytes: np.ndarray | None = None) -> float:
    """bpb of an add-one unigram model fit on train tokens: the floor a trained model must beat
    (val_bytes: the val tokens' byte sidecar, when bpb counts from one)."""
    counts = np.bincount(np.asarray(train_tokens, np.int64), minlength=vocab_size)[:vocab_size] + 1.0
    logp = np.log(counts / counts.sum())
    val = np.asarray(val_tokens, np.int64)
    nll = -logp[np.minimum(val[1:], vocab_size - 1)].sum()
    nbytes = token_bytes(luts, val[:-1], val[1:]) if val_bytes is None else np.asarray(val_bytes)[1:len(val)]
    return float(nll / (math.log(2.0) * nbytes.astype(np.float64).sum()))


@dataclass(frozen=True)
class Windows:
    """Evaluation windows over the target positions 0..total-1 (target j is token j+1 given
    tokens 0..j): inputs start at `starts`, `lengths` are valid, positions [score_from, length)
    of each window are scored. Every target is scored by exactly one window."""
    starts: np.ndarray
    score_from: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)


def plan_windows(total: int, seq_len: int, stride: int) -> Windows:
    """stride >= seq_len: consecutive non-overlapping windows (plain eval). Otherwise sliding
    (spec 4.16): a window starts every `stride`, the first scores all of its targets, later ones
    only their last `stride` (context >= seq_len - stride); windows whose scored part would start
    past the end are dropped (the 04-01 fix of the early double-count)."""
    T = seq_len
    if stride >= T:
        starts = np.arange(0, total, T)
        score_from = np.zeros(len(starts), np.int64)
    else:
        starts = np.asarray([ws for ws in range(0, total, stride) if ws + T - stride < total])
        score_from = np.where(starts == 0, 0, T - stride)
    lengths = np.minimum(T, total - starts)
    w = Windows(starts.astype(np.int64), score_from.astype(np.int64), lengths.astype(np.int64))
    assert int((w.lengths - w.score_from).sum()) == total, "every target is scored exactly once"
    return w


def batch_windows(batch_tokens: int, seq_len: int, num_windows: int, num_devices: int) -> int:
    """Windows per scoring batch: whole batches, a multiple of the device count (the tail batch
    is padded), no more than the windows there are."""
    per_batch = min(max(batch_tokens // seq_len, 1), -(-num_windows // num_devices) * num_devices)
    return max(num_devices, per_batch // num_devices * num_devices)


def jit_score(model, looped: bool, per_token: bool, data_sharding=None, hints: bool = False):
    """The jitted (params, x, y, lo, hi) -> masked NLL sums per window (and per-token NLL,
    entropy in bits): what every evaluation runs over its windows. hints: it also takes a hint
    token per position (-1 = none) and returns log p(hint) there (the n-gram tilt's input)."""

    def score(params, x_BT, y_BT, lo_B, hi_B, h_BT=None):
        logits = model.logits(params, x_BT, looped)
        logz = jax.nn.logsumexp(logits, axis=-1)
        nll = logz - jnp.take_along_axis(logits, y_BT[..., None], axis=-1)[..., 0]
        pos = jnp.arange(x_BT.shape[1])[None, :]
        sums = jnp.sum(jnp.where((pos >= lo_B[:, None]) & (pos < hi_B[:, None]), nll, 0.0), axis=-1)
        return _token_outputs(sums, nll, logits, logz, h_BT if hints else None) if per_token else sums

    # Replicated outputs: every process of a multi-host run reads the sums on the host.
    out = None if data_sharding is None else NamedSharding(data_sharding.mesh, P())
    return jax.jit(score, out_shardings=out)


def _token_outputs(sums, nll, logits, logz, h_BT=None):
    """(sums, per-token nll, entropy in bits[, log p(hint)]): jit_score's outputs with per_token."""
    logp = logits - logz[..., None]
    entropy_bits = -jnp.sum(jnp.exp(logp) * logp, axis=-1) / math.log(2.0)
    if h_BT is None:
        return sums, nll, entropy_bits
    return sums, nll, entropy_bits, jnp.take_along_axis(logp, jnp.maximum(h_BT, 0)[..., None], axis=-1)[..., 0]


class TokenScores:
    """Per-target NLL and entropy in bits (and, with hints, log p(hint)) over the val targets, zeros where
    no window scored them: what n-gram mixing and the n-gram tilt read. Scoring passes fill it window by
    window, so one instance can gather several passes (TTT's chunks). hints: a hint token per target
    position (-1 = none)."""

    def __init__(self, total: int, hints=None):
        self.hints = hints
        self.arrays = [np.zeros(total, np.float32) for _ in range(2 if hints is None else 3)]

    def inputs(self, w: Windows, batch, rows: int, T: int) -> tuple:
        """The hint tokens of a batch of windows, as jit_score takes them (none without hints)."""
        if self.hints is None:
            return ()
        h = np.full((rows, T), -1, np.int32)
        for r, k in enumerate(batch):
            h[r, :w.lengths[k]] = self.hints[w.starts[k]:w.starts[k] + w.lengths[k]]
        return (h,)

    def scatter(self, w: Windows, batch, outs) -> None:
        """A batch's per-token outputs into the arrays, at the targets its windows score."""
        outs = [np.asarray(o) for o in outs]
        for r, k in enumerate(batch):
            a, b = w.starts[k] + w.score_from[k], w.starts[k] + w.lengths[k]
            for dst, src in zip(self.arrays, outs):
                dst[a:b] = src[r, w.score_from[k]:w.lengths[k]]


class Evaluator:
    """val_loss/val_bpb of the val stream in windows of seq_len (stride = seq_len: plain
    non-overlapping sequences; smaller: sliding windows). One compiled function per schedule.
    val_bytes (one per val token, from the byte sidecars) replaces the byte tables: a target's
    bytes are its own entry, as the records count them."""

    def __init__(self, model, val_tokens: np.ndarray, luts: ByteLuts, seq_len: int, batch_tokens: int,
                 data_sharding=None, num_devices: int = 1, stride: int = 0, val_bytes: np.ndarray | None = None):
        self.model, self.seq_len, self.stride = model, seq_len, stride or seq_len
        self.tokens = np.asarray(val_tokens, dtype=np.int32)
        self.total = len(self.tokens) - 1
        if self.total < seq_len:
            raise ValueError(f"validation split has {len(self.tokens)} tokens: shorter than one sequence of {seq_len}")
        self.windows = plan_windows(self.total, seq_len, self.stride)
        self.batch_seqs = batch_windows(batch_tokens, seq_len, len(self.windows), num_devices)
        if val_bytes is not None and len(val_bytes) != len(self.tokens):
            raise ValueError(f"{len(val_bytes)} val byte counts for {len(self.tokens)} val tokens")
        self.target_bytes = (token_bytes(luts, self.tokens[:-1], self.tokens[1:]) if val_bytes is None
                             else np.asarray(val_bytes)[1:]).astype(np.int64)
        self.byte_count = int(self.target_bytes.sum())
        self.sharding = data_sharding
        self._fns: dict = {}

    def _fn(self, looped: bool, per_token: bool, hints: bool = False):
        """(params, x, y, lo, hi[, h]) -> masked NLL sums per window (and per-token NLL, entropy[, log p(h)])."""
        key = (looped, per_token, hints)
        if key not in self._fns:
            self._fns[key] = jit_score(self.model, looped, per_token, self.sharding, hints)
        return self._fns[key]

    def score(self, params, window_ids=None, looped: bool = True, per_token: bool = False, progress=None,
              hints=None):
        """Sum of scored NLL (float64) over the given windows (default all); with per_token also
        (nll, entropy_bits) arrays over target positions (zeros where not scored); with hints (a
        hint token per target position, -1 = none; implies per_token) also log p(hint) per target."""
        tokens = TokenScores(self.total, hints) if per_token or hints is not None else None
        loss_sum = self.score_into(params, window_ids, looped, progress, tokens)
        return loss_sum if tokens is None else (loss_sum, *tokens.arrays)

    def score_into(self, params, window_ids=None, looped: bool = True, progress=None, tokens=None) -> float:
        """score's sum; with tokens (a TokenScores) its windows' per-token outputs go there too."""
        ids = np.arange(len(self.windows)) if window_ids is None else np.asarray(window_ids)
        T, bs, w = self.seq_len, self.batch_seqs, self.windows
        fn = self._fn(looped, tokens is not None, tokens is not None and tokens.hints is not None)
        loss_sum, pending, done = 0.0, [], 0

        def collect(item):
            nonlocal loss_sum, done
            batch, out = item
            done += len(batch)
            if progress is not None:
                progress.update(done)
            loss_sum += float(np.asarray(out if tokens is None else out[0], np.float64)[:len(batch)].sum())
            if tokens is not None:
                tokens.scatter(w, batch, out[1:])

        for i in range(0, len(ids), bs):
            batch = ids[i:i + bs]
            x = np.zeros((bs, T), np.int32)
            y = np.zeros((bs, T), np.int32)
            lo = np.zeros(bs, np.int32)
            hi = np.zeros(bs, np.int32)
            for r, k in enumerate(batch):
                ws, n = w.starts[k], w.lengths[k]
                x[r, :n], y[r, :n] = self.tokens[ws:ws + n], self.tokens[ws + 1:ws + n + 1]
                lo[r], hi[r] = w.score_from[k], n
            inputs = (x, y, lo, hi) + (() if tokens is None else tokens.inputs(w, batch, bs, T))
            if self.sharding is not None:
                inputs = tuple(dist.global_array(a, self.sharding) for a in inputs)
            pending.append((batch, fn(params, *inputs)))
            if len(pending) > 2:  # keep the device busy while summing earlier batches on the host
                collect(pending.pop(0))
        for item in pending:
            collect(item)
        return loss_sum

    def __call__(self, params, looped: bool = True) -> EvalResult:
        t0 = time.perf_counter()
        loss_sum = self.score(params, looped=looped)
        return EvalResult(loss_sum / self.total, bpb(loss_sum, self.byte_count), self.total, self.byte_count,
                          time.perf_counter() - t0)
