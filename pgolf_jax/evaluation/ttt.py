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

import jax
import jax.numpy as jnp
import numpy as np

from pgolf_jax import dist
from pgolf_jax.config import EvalConfig
from pgolf_jax.evaluation.evaluate import EvalResult, Evaluator, TokenScores, bpb
from pgolf_jax.evaluation.phases import (_phase_plan, _ScoredTargets, cosine_lr, records_phase, rows_loss,
                                        stream_phases, train_sequences)
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
    loss_sum, steps = 0.0, 0
    tokens = TokenScores(total, hints) if per_token or hints is not None else None  # each chunk adds its targets
    log(f"ttt:start chunks:{n_chunks} windows:{len(w)} lr:{cfg.ttt.lr} epochs:{cfg.ttt.epochs}")
    for c in range(n_chunks):
        ids = np.flatnonzero(chunk_of == c)
        if len(ids):
            loss_sum += ev.score_into(params, ids, tokens=tokens)
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
    if tokens is None:
        return res, None, None, extra
    return res, *tokens.arrays[:2], extra | ({"logp_hint": tokens.arrays[2]} if hints is not None else {})


# ---------------------------------------------------------------------------------------------
# LoRA TTT

LORA_TARGETS = {"q": "attn.c_q", "k": "attn.c_k", "v": "attn.c_v", "o": "attn.proj", "mlp": "mlp.fc",
                "mlp_out": "mlp.proj"}
# Parallel D -> D adapters (the records' O and MLP placement), by the hook site they add to.
PARALLEL_LORA = {"o_par": "attn", "mlp_par": "mlp"}


@functools.partial(jax.tree_util.register_dataclass, data_fields=("factors",), meta_fields=("scale",))
@dataclasses.dataclass(frozen=True)
class SlotAdapters(LinearHook):
    """Test-time low-rank adapters attached to a forward pass as its hook (the blocks take no adapter
    arguments), one per virtual layer slot so each pass of a looped layer has its own. factors {key:
    (A (slots, R, in), B (slots, out, R))}: each adds scale (x A^T) B^T to an output, a dense block
    linear's by its weight ("attn.c_q.weight"; x its input), a sublayer's ("attn" / "mlp": a parallel
    path, x the sublayer's normalized input) or the head's ("head": A (R, D), B (V, R), no slot axis).
    Two thin matmuls, as the records' batched LoRA: B A is never formed (per document and slot, those
    products and their gradients were most of the adapter step's memory)."""
    factors: dict
    scale: float = 1.0

    def linear(self, name: str, x, y, slot):
        return self.output(name, x, y, slot)

    def output(self, site: str, x, y, slot):
        f = self.factors.get(site)
        if f is None:
            return y
        A, B = f if site == "head" else (f[0][slot], f[1][slot])
        return y + self.scale * ((x @ A.astype(x.dtype).T) @ B.astype(x.dtype).T)


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
    """One document's adapters as the forward pass's hook: the block linears', the parallel paths'
    and, when `head`, the head's factors."""
    def site(t):
        return "head" if t == "head" else PARALLEL_LORA.get(t) or f"{LORA_TARGETS[t]}.weight"

    return SlotAdapters({site(t): (ab["A"], ab["B"]) for t, ab in lora_doc.items() if head or t != "head"}, scale)


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
    """The jitted LoRA TTT programs: score (base, lora, x, y, lo) -> (nll, entropy bits) of each row's
    chunk, (B, C) for window positions lo .. lo + C - 1 (C = chunk_tokens, at most the window), and
    train (lora, opt, base, x, y, lo, hi, lr) -> (lora, opt), one adapter step on each document's
    mean loss over its chunk [lo, hi). Only the chunk's positions reach the head: the (B, T, V)
    logits of every window position were most of the step's memory (over one H100 for #1855)."""
    _, head = lora_targets(cfg)
    scale = cfg.lora_ttt.alpha / cfg.lora_ttt.rank

    def doc_logits(p, lora_doc, x_T, pos_C):
        return model.logits(p, x_T[None], True, hook=lora_hook(lora_doc, scale, head), positions_BC=pos_C[None])[0]

    def nll_of(p, lora, x_BT, y_BT, lo_B, h_BT=None):
        T = x_BT.shape[1]
        # past a row's hi (a short last chunk) the positions clip to the window's end: never read
        pos_BC = jnp.minimum(lo_B[:, None] + jnp.arange(min(cfg.lora_ttt.chunk_tokens, T))[None], T - 1)
        logits = jax.vmap(doc_logits, in_axes=(None, 0, 0, 0))(p, lora, x_BT, pos_BC)
        logz = jax.nn.logsumexp(logits, axis=-1)
        nll = logz - jnp.take_along_axis(logits, jnp.take_along_axis(y_BT, pos_BC, 1)[..., None], axis=-1)[..., 0]
        logp = logits - logz[..., None]
        ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1) / math.log(2.0)
        if h_BT is None:
            return nll, ent
        h_BC = jnp.maximum(jnp.take_along_axis(h_BT, pos_BC, 1), 0)
        return nll, ent, jnp.take_along_axis(logp, h_BC[..., None], axis=-1)[..., 0]

    def chunk_loss(lora, p, x, y, lo, hi):
        nll, _ = nll_of(p, lora, x, y, lo)[:2]
        mask = jnp.arange(nll.shape[1])[None] < (hi - lo)[:, None]
        # Each document's adapter sees only its own mean chunk loss (the sum decouples them).
        return jnp.sum(jnp.sum(jnp.where(mask, nll, 0.0), -1) / jnp.maximum(jnp.sum(mask, -1), 1))

    def train(lora, opt, p, x, y, lo, hi, lr):
        return lora_update(lora, opt, jax.grad(chunk_loss)(lora, p, x, y, lo, hi), lr, cfg)

    # Documents (and their adapters) split over the data devices; the scores replicated.
    return place.jit(nll_of), jax.jit(train)


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
            out = [np.asarray(v) for v in score(base, lora, x, y, place.batched(lo),
                                                *([] if h is None else [place.batched(h)]))]
            nll, ent = out[:2]  # (nd, C): row r's chunk from its window position lo[r] = ca - ws
            forward_tokens += nd * T
            for r, ca, cb, ws in spans:
                loss_sum += float(nll[r, :cb - ca].astype(np.float64).sum())
                scored[r].scored_through(cb)
                if seen is not None:
                    seen.scored(ca, cb)
                if per_token:
                    nll_all[ca:cb], ent_all[ca:cb] = nll[r, :cb - ca], ent[r, :cb - ca]
                if h is not None:
                    hint_all[ca:cb] = out[2][r, :cb - ca]
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
