"""Global SGD passes of score-first TTT over already-scored tokens: the plain stream chunks full_ttt
and the stream-style phases train on, and the records' phased global SGD (#1610, #1626, #1855:
eval.lora_ttt.phase_style=records): a length-sorted queue of documents, a fresh optimizer each phase,
windows that never cross a document, checked against a mask of scored targets."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from pgolf_jax.config import EvalConfig
from pgolf_jax.evaluation.evaluate import Evaluator
from pgolf_jax.model.embeddings import BOS_ID

if TYPE_CHECKING:  # annotations only: ttt imports this module
    from pgolf_jax.evaluation.ttt import _Frontier, _Placer


def cosine_lr(base: float, i: int, n: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * i / max(n - 1, 1)))


def train_sequences(tokens, first: int, end: int, seq_len: int, batch: int):
    """Batches (x, y) of the non-overlapping sequences whose targets lie in [first, end)."""
    n = (end - first) // seq_len
    for b in range(0, n, batch):
        k = min(batch, n - b)
        a = first + b * seq_len
        if a + k * seq_len + 1 > len(tokens):
            continue
        chunk = tokens[a: a + k * seq_len + 1]
        yield a, a + k * seq_len, chunk[:-1].reshape(k, seq_len), chunk[1:].reshape(k, seq_len)


# ---------------------------------------------------------------------------------------------
# Phased global SGD as the records run it (#1610, #1626, #1855: eval.lora_ttt.phase_style=records)


def length_sorted_queue(docs, batch_docs: int) -> list[tuple[int, list[int]]]:
    """The records' TTT queue: document ids sorted by length (stable), cut into batches of batch_docs,
    the batches run longest first (by their longest document; ties keep ascending order). Each batch
    as (its index in ascending order, its document ids)."""
    size = [b - a for a, b in docs]
    order = sorted(range(len(docs)), key=size.__getitem__)
    batches = [(k, order[i:i + batch_docs]) for k, i in enumerate(range(0, len(order), batch_docs))]
    return sorted(batches, key=lambda kb: -max(size[d] for d in kb[1]))


def records_phase_boundaries(prefix_docs: int, phases: int, n_docs: int) -> list[int]:
    """Completed documents at which each phase starts: P k // n for k = 1..n, P = min(prefix_docs, n_docs)
    (P = 2500, n = 3: 833, 1666, 2500)."""
    p = min(prefix_docs, n_docs)
    return [p * k // phases for k in range(1, phases + 1)]


def records_phase_points(batch_sizes, boundaries) -> list[int]:
    """The completed-document counts after which the records run their phases: the first count that
    reaches each boundary, at most one phase per batch (a batch passing two boundaries runs one; the
    next batch runs the other)."""
    points, done = [], 0
    for n in batch_sizes:
        done += n
        if len(points) < len(boundaries) and done >= boundaries[len(points)]:
            points.append(done)
    return points


def doc_stream(docs, picked) -> np.ndarray:
    """Stream positions of the picked documents' tokens, concatenated as the records do: each document
    from its BOS through its closing BOS (so at each seam one document's closing BOS meets the next's)."""
    parts = [np.arange(docs[d][0], docs[d][1] + 1) for d in picked]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def global_sgd_batches(n_tokens: int, T: int, chunk: int, batch_seqs: int, epochs: int):
    """The records' pass over a concatenation of n_tokens tokens: chunks of `chunk` target positions,
    all but the last trained, `epochs` times each, in non-overlapping sequences of T, batch_seqs a step.
    Yields (chunk, chunk count, first input, end of inputs) in concatenation coordinates."""
    total = n_tokens - 1
    n_chunks = -(-total // chunk) if total > 0 else 0
    for c in range(n_chunks - 1):
        first, n = c * chunk, (min((c + 1) * chunk, total) - c * chunk) // T
        for _ in range(epochs):
            for b in range(0, n, batch_seqs):
                s, e = first + b * T, first + min(b + batch_seqs, n) * T
                if e < n_tokens:  # the last target needs the token after it
                    yield c, n_chunks, s, e


def doc_segments(x: np.ndarray, T: int) -> list[tuple[int, int]]:
    """The records' attention segments of a flat batch of inputs: one starts at 0, at every BOS and
    every T inputs within a document; each [s, e) attends within itself only."""
    bos = np.flatnonzero(x == BOS_ID).tolist()
    starts = ([0] if not bos or bos[0] != 0 else []) + bos
    return [(p, min(p + T, e)) for s, e in zip(starts, starts[1:] + [len(x)]) for p in range(s, e, T)]


def _bucket(n: int, base: int) -> int:
    """The least of base x (1, 1.25, 1.5, 1.75, 2, 2.5, ...) that holds n (four sizes an octave): few
    shapes to compile, at most a quarter of the rows padding once n > base."""
    size = base
    while size < n:
        size += max(1, base * (1 << (size // base).bit_length() - 1) // 4)
    return size


def doc_rows(flat: np.ndarray, T: int, min_rows: int):
    """One step's batch of the document-bounded pass over flat tokens (inputs flat[:-1], targets
    flat[1:]): each of doc_segments' segments a row of its own, left-aligned, padding weighted 0, so
    no window crosses a document. A one-token segment whose token also starts the next (longer)
    segment (a seam's lone BOS) rides on that row as a second target at position 0: same input, no
    context, so the same logits. Returns x, y, w (R, W) and y0, w0 (R,); W is a power of two <= T
    and R one of _bucket's sizes over min_rows (few shapes to compile)."""
    x, y = flat[:-1], flat[1:]
    segs = doc_segments(x, T)
    rows, extra = [], {}
    for k, (s, e) in enumerate(segs):
        nxt = segs[k + 1] if k + 1 < len(segs) else (0, 0)
        if e - s == 1 and nxt[1] - nxt[0] > 1 and x[nxt[0]] == x[s]:
            extra[k + 1] = y[s]
        else:
            rows.append(k)
    W = min(T, 1 << (max(e - s for s, e in segs) - 1).bit_length())
    R = _bucket(len(rows), min_rows)
    xs, ys, w = np.zeros((R, W), np.int32), np.zeros((R, W), np.int32), np.zeros((R, W), np.float32)
    y0, w0 = np.zeros(R, np.int32), np.zeros(R, np.float32)
    for r, k in enumerate(rows):
        s, e = segs[k]
        xs[r, :e - s], ys[r, :e - s], w[r, :e - s] = x[s:e], y[s:e], 1.0
        if k in extra:
            y0[r], w0[r] = extra[k], 1.0
    return xs, ys, w, y0, w0


def rows_loss(model):
    """doc_rows' loss: the mean cross-entropy over every real target (the records' flat-batch mean)."""

    def loss(params, x, y, w, y0, w0):
        logits = model.logits(params, x)
        logz = jax.nn.logsumexp(logits, axis=-1)
        nll = (logz - jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]).astype(jnp.float32)
        nll0 = (logz[:, 0] - jnp.take_along_axis(logits[:, 0], y0[:, None], axis=-1)[:, 0]).astype(jnp.float32)
        return (jnp.sum(w * nll) + jnp.sum(w0 * nll0)) / jnp.maximum(jnp.sum(w) + jnp.sum(w0), 1.0)

    return loss


class _ScoredTargets:
    """Target positions scored so far, as a mask: the records' queue scores documents out of stream
    order, so what is scored is no prefix of the stream."""

    def __init__(self, total: int):
        self.mask = np.zeros(total, bool)

    def scored(self, a: int, b: int):
        self.mask[a:b] = True

    def check(self, tokens, src):
        """Training on the pairs src[i] -> src[i + 1] of a concatenation: a stream pair's target must be
        scored; a seam pair (a document's last token, the next one's BOS) must predict that BOS; and every
        token other than BOS read at all (input or target) must have been scored as the target before it.
        (BOS carries no information here: the queue orders documents by length before anything is scored.)"""
        a, b = src[:-1], src[1:]
        last = len(self.mask) - 1
        ok = np.where(b == a + 1, self.mask[np.minimum(a, last)], tokens[b] == BOS_ID)
        read = src[tokens[src] != BOS_ID]
        bad = np.r_[a[~ok], read[(read < 1) | ~self.mask[np.clip(read - 1, 0, last)]] - 1]
        if len(bad):
            raise AssertionError(f"score-first violated: training on targets [{bad[0]}, {bad[0] + 1}) "
                                 f"({len(bad)} such) but they are not scored")


def records_phase(sgd, base, ev: Evaluator, cfg: EvalConfig, place: _Placer, docs, picked, seen: _ScoredTargets):
    """One phase of the records' global SGD: a fresh optimizer, one cosine schedule over the chunks of
    the picked documents concatenated, document-bounded windows. Returns (base, target tokens trained)."""
    L, T = cfg.lora_ttt, ev.seq_len
    src = doc_stream(docs, picked)
    buf = place.replicated(jax.tree.map(lambda p: np.zeros(p.shape, np.float32), base))  # fresh momentum
    tokens = 0
    for c, n_chunks, s, e in global_sgd_batches(len(src), T, L.phase_chunk_tokens, L.phase_batch_seqs, L.phase_epochs):
        seen.check(ev.tokens, src[s:e + 1])
        rows = [place.batched(a) for a in doc_rows(ev.tokens[src[s:e + 1]], T, L.phase_batch_seqs)]
        base, buf, _ = sgd(base, buf, rows[0], rows[1], cosine_lr(L.phase_lr, c, n_chunks), *rows[2:])
        tokens += e - s
    return base, tokens


def stream_phases(sgd, base, buf, ev: Evaluator, cfg: EvalConfig, place: _Placer, docs, boundaries, done: int,
                  frontier: _Frontier, log):
    """pgolf_jax's first phased style: at each passed boundary, global SGD on the stream prefix of the
    documents through it, plain windows, one momentum buffer across phases. Returns (base, buf, tokens, ran)."""
    L, T = cfg.lora_ttt, ev.seq_len
    tokens, ran = 0, False
    while boundaries and done >= boundaries[0]:
        upto = docs[boundaries.pop(0) - 1][1]
        if buf is None:
            buf = place.replicated(jax.tree.map(lambda p: np.zeros(p.shape, np.float32), base))
        n_ch = -(-upto // L.phase_chunk_tokens)
        for c in range(n_ch):
            first, end = c * L.phase_chunk_tokens, min((c + 1) * L.phase_chunk_tokens, upto)
            for _ in range(L.phase_epochs):
                for a, b, xs, ys in train_sequences(ev.tokens, first, end, T, L.phase_batch_seqs):
                    frontier.check(a, b)
                    base, buf, _ = sgd(base, buf, place.batched(xs), place.batched(ys), cosine_lr(L.phase_lr, c, n_ch))
                    tokens += xs.size
        log(f"lora_ttt:phase global SGD over targets [0, {upto}) after {done} docs")
        ran = True
    return base, buf, tokens, ran


def _phase_plan(docs, cfg: EvalConfig):
    """(the queue of (batch index, document ids), the phase boundaries, {documents done: boundary} of
    the records' phases) for either phase_style."""
    L = cfg.lora_ttt
    if L.phase_style == "records":
        queue = length_sorted_queue(docs, L.batch_docs)
        boundaries = records_phase_boundaries(L.phase_prefix_docs, L.phases, len(docs))
        return queue, boundaries, dict(zip(records_phase_points([len(i) for _, i in queue], boundaries), boundaries))
    nd = L.batch_docs
    queue = [(k, list(range(d0, min(d0 + nd, len(docs))))) for k, d0 in enumerate(range(0, len(docs), nd))]
    return queue, [round(L.phase_prefix_docs * (i + 1) / L.phases) for i in range(L.phases)], {}
