"""Score-first test-time training on the val stream (legal per issue #1017: every token is scored
by the weights as they were before any training on it, exactly once, causally).

full_ttt (PR #461/#549 -> #1809, spec 4.17): the stream is cut into chunks of ttt_chunk_tokens
target positions; each evaluation window belongs to the chunk of its first scored target. For
each chunk: score its windows with the current weights, then (except for the last chunk) train
all weights on the chunk's own sequences: SGD with momentum (kept across chunks), global
gradient clip, lr cosine across chunks. A frontier of scored positions is kept and every
training batch asserts that its targets lie behind it.

lora_ttt (#1227, and the records' phased variant, spec 4.18): per document, a fresh low-rank
adapter on the attention/MLP projections (and the head) is trained chunk by chunk after each
chunk is scored; documents run in batches, each with its own adapter. With phases, after each
phase boundary of scored documents the base weights take one global SGD pass over the
already-scored documents: in stream order over the stream prefix (phase_style=stream), or as the
records run it (phase_style=records, #1610 / #1626 / #1855): a length-sorted queue, a fresh optimizer
each phase, windows that never cross a document, checked against a mask of scored targets.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pgolf_jax import dist
from pgolf_jax.config import EvalConfig
from pgolf_jax.evaluation.evaluate import EvalResult, Evaluator, bpb
from pgolf_jax.model.embeddings import BOS_ID
from pgolf_jax.model.layers import LinearHook
from pgolf_jax.optim.optimizers import clip_by_global_norm


def make_sgd_step(model, momentum: float, clip: float, place: _Placer | None = None, loss_fn=None):
    """(params, buf, x, y, lr, *more) -> (params, buf, loss): torch SGD with momentum, after clipping,
    on loss_fn(params, x, y, *more) (default model.loss)."""
    loss_fn = model.loss if loss_fn is None else loss_fn

    def step(params, buf, x, y, lr, *more):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, *more)
        if clip > 0:
            grads, _ = clip_by_global_norm(clip).update(grads, None)
        buf = jax.tree.map(lambda b, g: momentum * b + g.astype(jnp.float32), buf, grads)
        params = jax.tree.map(lambda p, b: (p.astype(jnp.float32) - lr * b).astype(p.dtype), params, buf)
        return params, buf, loss

    if place is not None:
        return place.jit(step, donate_argnums=(0, 1))
    return jax.jit(step, donate_argnums=(0, 1))


class _Placer:
    """Puts host arrays on the evaluator's mesh: batches split over the data devices when their
    leading axis divides (jit then all-reduces the TTT gradients), everything else replicated,
    so TTT runs data parallel on one or many processes and every process reads the results."""

    def __init__(self, batch_sharding):
        self.batch = batch_sharding
        self.rep = None if batch_sharding is None else dist.replicated(batch_sharding.mesh)
        self.n = 1 if batch_sharding is None else dist.num_data_devices(batch_sharding.mesh)

    def batched(self, a):
        a = np.asarray(a)
        if self.batch is None:
            return jnp.asarray(a)
        return dist.global_array(a, self.batch if a.shape[0] % self.n == 0 else self.rep)

    def replicated(self, tree):
        if self.rep is None:
            return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)
        return dist.global_tree(jax.device_get(tree), self.rep)

    def jit(self, fn, **kw):
        return jax.jit(fn, out_shardings=self.rep, **kw)


def cosine_lr(base: float, i: int, n: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * i / max(n - 1, 1)))


class _Frontier:
    """Target positions scored so far (always a prefix 0..value-1 of the stream)."""

    def __init__(self):
        self.value = 0

    def scored_through(self, end: int):
        self.value = max(self.value, end)

    def check(self, first: int, end: int):
        if first < 0 or end > self.value:
            raise AssertionError(f"score-first violated: training on targets [{first}, {end}) but only "
                                 f"[0, {self.value}) are scored")


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


def full_ttt(model, params, ev: Evaluator, cfg: EvalConfig, log=print, per_token: bool = False, progress=None,
             hints=None):
    """Chunked score-first TTT over all weights; returns (EvalResult, per-target nll, entropy, extra);
    with hints (per target, -1 = none) extra["logp_hint"] holds the score-first log p(hint)."""
    t0 = time.perf_counter()
    w, total, T = ev.windows, ev.total, ev.seq_len
    n_chunks = -(-total // cfg.ttt.chunk_tokens)
    chunk_of = np.minimum((w.starts + w.score_from) // cfg.ttt.chunk_tokens, n_chunks - 1)
    place = _Placer(ev.sharding)
    params = place.replicated(params)  # a copy: the SGD step donates its params, never the caller's
    buf = place.replicated(jax.tree.map(lambda p: np.zeros(p.shape, np.float32), params))
    step = make_sgd_step(model, cfg.ttt.momentum, cfg.ttt.grad_clip, place)
    frontier = _Frontier()
    loss_sum, nll_all, ent_all, hint_all, steps = 0.0, None, None, None, 0
    per_token = per_token or hints is not None
    if per_token:
        nll_all, ent_all = np.zeros(total, np.float32), np.zeros(total, np.float32)
    if hints is not None:
        hint_all = np.zeros(total, np.float32)
    log(f"ttt:start chunks:{n_chunks} windows:{len(w)} lr:{cfg.ttt.lr} epochs:{cfg.ttt.epochs}")
    for c in range(n_chunks):
        ids = np.flatnonzero(chunk_of == c)
        if len(ids):
            out = ev.score(params, ids, per_token=per_token, hints=hints)
            if per_token:
                s, nll, ent = out[:3]
                for k in ids:
                    a, b = w.starts[k] + w.score_from[k], w.starts[k] + w.lengths[k]
                    nll_all[a:b], ent_all[a:b] = nll[a:b], ent[a:b]
                    if hints is not None:
                        hint_all[a:b] = out[3][a:b]
                loss_sum += s
            else:
                loss_sum += out
            frontier.scored_through(int((w.starts[ids] + w.lengths[ids]).max()))
        if c == n_chunks - 1 or cfg.ttt.epochs <= 0:
            continue
        lr = cosine_lr(cfg.ttt.lr, c, n_chunks)
        first, end = c * cfg.ttt.chunk_tokens, min((c + 1) * cfg.ttt.chunk_tokens, total)
        for _ in range(cfg.ttt.epochs):
            for a, b, x, y in train_sequences(ev.tokens, first, end, T, cfg.ttt.batch_seqs):
                frontier.check(a, b)
                params, buf, _ = step(params, buf, place.batched(x), place.batched(y), lr)
                steps += 1
        if progress is not None:
            progress.update(c + 1)
    seconds = time.perf_counter() - t0
    log(f"ttt:done chunks:{n_chunks} sgd_steps:{steps} time:{seconds:.1f}s")
    res = EvalResult(loss_sum / total, bpb(loss_sum, ev.byte_count), total, ev.byte_count, seconds)
    extra = {"train_steps": steps, "train_tokens": steps * cfg.ttt.batch_seqs * T}
    return res, nll_all, ent_all, extra | ({"logp_hint": hint_all} if hints is not None else {})


# ---------------------------------------------------------------------------------------------
# LoRA TTT

LORA_TARGETS = {"q": "attn.c_q", "k": "attn.c_k", "v": "attn.c_v", "o": "attn.proj", "mlp": "mlp.fc",
                "mlp_out": "mlp.proj"}
# Parallel D -> D adapters (the records' O and MLP placement), by the hook site they add to.
PARALLEL_LORA = {"o_par": "attn", "mlp_par": "mlp"}


@functools.partial(jax.tree_util.register_dataclass, data_fields=("deltas", "parallel", "head"),
                   meta_fields=("head_scale",))
@dataclasses.dataclass(frozen=True)
class SlotAdapters(LinearHook):
    """Test-time adapters attached to a forward pass as its hook (the blocks take no adapter
    arguments), one per virtual layer slot so each pass of a looped layer has its own: weight
    deltas {block weight ("attn.c_q.weight"): (slots, out, in)} added to a dense linear's fp32
    weight, parallel paths {"attn" / "mlp": (slots, D, D)} adding x d^T (x the sublayer's normalized
    input) to a sublayer's output, and a low-rank head term head_scale (h A^T) B^T, head = (A (R, D),
    B (V, R)) or None."""
    deltas: dict
    parallel: dict
    head: Any = None
    head_scale: float = 1.0

    def weight(self, name: str, w, slot):
        d = self.deltas.get(name)
        return w if d is None else w + d[slot].astype(w.dtype)

    def output(self, site: str, x, y, slot):
        if site == "head":
            if self.head is None:
                return y
            A, B = self.head
            h_AR = jnp.einsum("btd,rd->btr", x, A.astype(x.dtype))
            return y + self.head_scale * jnp.einsum("btr,vr->btv", h_AR, B.astype(x.dtype))
        d = self.parallel.get(site)
        return y if d is None else y + x @ d[slot].astype(x.dtype).T


def lora_init(key, params, targets: tuple[str, ...], rank: int, n_docs: int, head: bool, n_slots: int):
    """Per-document adapters, one per virtual layer slot (as the records: each pass of a looped
    layer gets its own): A ~ U(+-1/sqrt(in)), B = 0 (the adapted model starts as the base)."""
    lora = {}
    for t in targets:
        if t in PARALLEL_LORA:
            out_f = in_f = params["blocks"]["attn"]["c_q"]["weight"].shape[-1]  # model_dim
        else:
            W = params["blocks"]
            for part in LORA_TARGETS[t].split("."):
                W = W[part]
            _, out_f, in_f = W["weight"].shape
        key, sub = jax.random.split(key)
        bound = 1.0 / math.sqrt(in_f)
        lora[t] = {"A": jax.random.uniform(sub, (n_docs, n_slots, rank, in_f), jnp.float32, -bound, bound),
                   "B": jnp.zeros((n_docs, n_slots, out_f, rank), jnp.float32)}
    if head:
        V, D = params["tok_emb"]["weight"].shape
        key, sub = jax.random.split(key)
        bound = 1 / math.sqrt(D)
        lora["head"] = {"A": jax.random.uniform(sub, (n_docs, rank, D), jnp.float32, -bound, bound),
                        "B": jnp.zeros((n_docs, V, rank), jnp.float32)}
    return lora


def lora_hook(lora_doc, scale: float, head: bool) -> SlotAdapters:
    """One document's adapters as the forward pass's hook: per-slot deltas scale * B A on the block
    weights and parallel paths, and the head adapter when `head`."""
    made = {t: scale * jnp.einsum("sor,sri->soi", ab["B"], ab["A"]) for t, ab in lora_doc.items() if t != "head"}
    return SlotAdapters(deltas={f"{LORA_TARGETS[t]}.weight": d for t, d in made.items() if t not in PARALLEL_LORA},
                        parallel={PARALLEL_LORA[t]: d for t, d in made.items() if t in PARALLEL_LORA},
                        head=(lora_doc["head"]["A"], lora_doc["head"]["B"]) if head else None, head_scale=scale)


def lora_update(lora, opt, g, lr, cfg: EvalConfig):
    """One adapter step: SGD with momentum (#1227), or Adam with bias correction and, when
    lora_wd > 0, torch AdamW's decoupled decay (a <- a (1 - lr wd) - lr * adam_step)."""
    if cfg.lora_ttt.optimizer == "sgd":
        opt = jax.tree.map(lambda m, gi: cfg.lora_ttt.momentum * m + gi, opt, g)
        return jax.tree.map(lambda a, m: a - lr * m, lora, opt), opt
    b1, b2 = cfg.lora_ttt.beta1, cfg.lora_ttt.beta2
    m, v, n = opt
    n = n + 1
    m = jax.tree.map(lambda a, gi: b1 * a + (1 - b1) * gi, m, g)
    v = jax.tree.map(lambda a, gi: b2 * a + (1 - b2) * gi * gi, v, g)
    upd = jax.tree.map(lambda a, b: (a / (1 - b1 ** n)) / (jnp.sqrt(b / (1 - b2 ** n)) + cfg.lora_ttt.eps), m, v)
    return jax.tree.map(lambda a, u: a * (1 - lr * cfg.lora_ttt.wd) - lr * u, lora, upd), (m, v, n)


def documents(tokens: np.ndarray) -> list[tuple[int, int]]:
    """Target-position ranges [first, end) of each document: a document runs from its BOS up to
    and including the next BOS (so its last target is that BOS), the last one to the stream end."""
    total = len(tokens) - 1
    bos = np.flatnonzero(tokens[:total] == BOS_ID).tolist()
    starts = ([0] if not bos or bos[0] != 0 else []) + bos
    ends = starts[1:] + [total]
    return [(a, b) for a, b in zip(starts, ends) if b > a]


def lora_targets(cfg: EvalConfig) -> tuple[tuple[str, ...], bool]:
    """(the block targets, whether the head gets an adapter) of eval.lora_ttt.targets."""
    names = cfg.lora_ttt.targets.split(",")
    return tuple(t for t in names if t and t != "head"), "head" in names


def lora_functions(model, cfg: EvalConfig, place: _Placer):
    """The jitted LoRA TTT programs: score (base, lora, x, y) -> (nll, entropy bits) per position,
    and train (lora, opt, base, x, y, lo, hi, lr) -> (lora, opt), one adapter step on each
    document's mean loss over its chunk [lo, hi)."""
    _, head = lora_targets(cfg)
    scale = cfg.lora_ttt.alpha / cfg.lora_ttt.rank

    def doc_logits(p, lora_doc, x_T):
        return model.logits(p, x_T[None], True, hook=lora_hook(lora_doc, scale, head))[0]

    def nll_of(p, lora, x_BT, y_BT, h_BT=None):
        logits = jax.vmap(doc_logits, in_axes=(None, 0, 0))(p, lora, x_BT)
        logz = jax.nn.logsumexp(logits, axis=-1)
        nll = logz - jnp.take_along_axis(logits, y_BT[..., None], axis=-1)[..., 0]
        logp = logits - logz[..., None]
        ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1) / math.log(2.0)
        if h_BT is None:
            return nll, ent
        return nll, ent, jnp.take_along_axis(logp, jnp.maximum(h_BT, 0)[..., None], axis=-1)[..., 0]

    def chunk_loss(lora, p, x, y, lo, hi):
        nll, _ = nll_of(p, lora, x, y)[:2]
        pos = jnp.arange(x.shape[1])[None]
        mask = (pos >= lo[:, None]) & (pos < hi[:, None])
        # Each document's adapter sees only its own mean chunk loss (the sum decouples them).
        return jnp.sum(jnp.sum(jnp.where(mask, nll, 0.0), -1) / jnp.maximum(jnp.sum(mask, -1), 1))

    def train(lora, opt, p, x, y, lo, hi, lr):
        return lora_update(lora, opt, jax.grad(chunk_loss)(lora, p, x, y, lo, hi), lr, cfg)

    # Documents (and their adapters) split over the data devices; the scores replicated.
    return place.jit(nll_of), jax.jit(train)


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


def lora_ttt(model, params, ev: Evaluator, cfg: EvalConfig, log=print, per_token: bool = False, progress=None,
             hints=None):
    """Per-document score-first LoRA TTT (optionally phased); returns like full_ttt."""
    t0 = time.perf_counter()
    T, total, C, L = ev.seq_len, ev.total, cfg.lora_ttt.chunk_tokens, cfg.lora_ttt
    targets, head = lora_targets(cfg)
    docs = documents(ev.tokens)
    nd, phases, records = L.batch_docs, L.phases, L.phase_style == "records"
    queue, boundaries, points = _phase_plan(docs, cfg)
    place = _Placer(ev.sharding)
    score, train = lora_functions(model, cfg, place)

    loss_sum, key = 0.0, jax.random.key(0)
    per_token = per_token or hints is not None
    nll_all = np.zeros(total, np.float32) if per_token else None
    ent_all = np.zeros(total, np.float32) if per_token else None
    hint_all = np.zeros(total, np.float32) if hints is not None else None
    frontier, warm_a = _Frontier(), None
    seen, scored_docs = (_ScoredTargets(total) if records and phases else None), []
    forward_tokens = train_tokens = done = 0  # for the eval's FLOP count (each chunk re-reads its window)
    base, buf = place.replicated(params), None  # a copy: phases update it in place (donated)
    sgd = (make_sgd_step(model, L.phase_momentum if records else L.momentum, L.phase_grad_clip, place,
                         rows_loss(model) if records else None) if phases else None)
    log(f"lora_ttt:start docs:{len(docs)} rank:{L.rank} targets:{L.targets} chunk:{C} phases:{phases}"
        + (f" style:records boundaries:{boundaries}" if records else ""))
    for orig, ids in queue:
        batch = [docs[i] for i in ids]
        key, sub = jax.random.split(key)
        lora = jax.device_get(lora_init(sub, base, targets, L.rank, nd, head, model.num_slots()))
        if warm_a is not None:  # warm start: the previous batch's trained A, a fresh B = 0
            lora = {t: {"A": warm_a[t], "B": ab["B"]} for t, ab in lora.items()}
        lora = jax.tree.map(place.batched, lora)
        zeros = lambda: jax.tree.map(lambda a: place.batched(np.zeros(a.shape, np.float32)), lora)  # noqa: E731
        opt = zeros() if L.optimizer == "sgd" else (zeros(), zeros(), 0)
        n_chunks = max(-(-(b - a) // C) for a, b in batch)
        scored = [_Frontier() for _ in range(nd)]  # per document row: targets scored so far
        for ci in range(n_chunks):
            x, y = np.zeros((nd, T), np.int32), np.zeros((nd, T), np.int32)
            lo, hi, start = np.zeros(nd, np.int32), np.zeros(nd, np.int32), np.zeros(nd, np.int64)
            spans, h = [], (np.full((nd, T), -1, np.int32) if hints is not None else None)
            for r, (a, b) in enumerate(batch):
                ca, cb = a + ci * C, min(a + (ci + 1) * C, b)
                if ca >= cb:
                    continue
                ws = max(a, cb - T)  # in-document context only, at most T tokens
                x[r, :cb - ws], y[r, :cb - ws] = ev.tokens[ws:cb], ev.tokens[ws + 1:cb + 1]
                lo[r], hi[r], start[r] = ca - ws, cb - ws, ws
                if h is not None:
                    h[r, :cb - ws] = hints[ws:cb]
                spans.append((r, ca, cb, ws))
            x, y = place.batched(x), place.batched(y)
            out = [np.asarray(v) for v in score(base, lora, x, y, *([] if h is None else [place.batched(h)]))]
            nll, ent = out[:2]
            forward_tokens += nd * T
            for r, ca, cb, ws in spans:
                loss_sum += float(nll[r, ca - ws:cb - ws].astype(np.float64).sum())
                scored[r].scored_through(cb)
                if seen is not None:
                    seen.scored(ca, cb)
                if per_token:
                    nll_all[ca:cb], ent_all[ca:cb] = nll[r, ca - ws:cb - ws], ent[r, ca - ws:cb - ws]
                if h is not None:
                    hint_all[ca:cb] = out[2][r, ca - ws:cb - ws]
            # Score-first, checked on what the step will train on: each row's mask [lo, hi) of
            # its window must lie behind the targets that row has had scored.
            for r in range(nd):
                scored[r].check(int(start[r] + lo[r]), int(start[r] + hi[r]))
            if ci < n_chunks - 1:
                for s in range(L.steps):
                    lora, opt = train(lora, opt, base, x, y, place.batched(lo), place.batched(hi),
                                      cosine_lr(L.lr, s, L.steps + 1))
                    train_tokens += nd * T
        warm_a = {t: jax.device_get(ab["A"]) for t, ab in lora.items()} if L.warm_start_a else None
        done += len(batch)
        if records and points:
            scored_docs += [(orig, pos, d) for pos, d in enumerate(ids)]
            if done in points:
                # The scored documents in ascending queue order, the first P k // n of them (the records' pick).
                picked, tp = [d for *_, d in sorted(scored_docs)[:points.pop(done)]], time.perf_counter()
                boundaries.pop(0)  # (what is left: phases - len(boundaries) have run)
                base, n = records_phase(sgd, base, ev, cfg, place, docs, picked, seen)
                train_tokens += n
                log(f"lora_ttt:phase {phases - len(boundaries)}/{phases} global SGD over {len(picked)} scored docs "
                    f"({n} targets, fresh momentum) after {done} docs time:{time.perf_counter() - tp:.1f}s")
                warm_a = None  # a new phase starts from fresh adapters
        elif not records:
            frontier.scored_through(batch[-1][1])
            base, buf, n, ran = stream_phases(sgd, base, buf, ev, cfg, place, docs, boundaries, done, frontier, log)
            train_tokens += n
            warm_a = None if ran else warm_a  # a new phase starts from fresh adapters
        if progress is not None:
            progress.update(done)
    seconds = time.perf_counter() - t0
    log(f"lora_ttt:done docs:{done} time:{seconds:.1f}s")
    res = EvalResult(loss_sum / total, bpb(loss_sum, ev.byte_count), total, ev.byte_count, seconds)
    extra = {"forward_tokens": forward_tokens, "train_tokens": train_tokens}
    return res, nll_all, ent_all, extra | ({"logp_hint": hint_all} if hints is not None else {})
