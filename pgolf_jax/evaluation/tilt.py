"""Eval-time n-gram token tilt (#1514; the token expert of #1420's context mixer): a causal hint
from long contexts already seen in the val stream boosts one token of the network's softmax.

Hint at position p (the token at p given tokens 0..p-1): for each active order k (min_order..
max_order in steps of order_stride, k <= p) the context hash h_k = XOR_{j<k} tokens[p-j-1] *
PRIMES[j % 32] keys an entry {count, best_tok, best_count} built from positions before p. From
the highest order down, the first entry with best_count / count >= threshold(k) * threshold_scale
and count >= min_count(k) gives hint = best_tok, beta = base_beta * best_count / count. Then
(score first, then update) every active order k <= p counts the true token: count += 1, its
(context, token) pair count += 1; best_tok stays when it is the token, else becomes the token
when its pair count passes best_count. So best_count is always the context's largest pair count
and best_tok the token that reached it first.

Tilt: p'(t) = p(t) exp(beta [t = hint]) / Z, Z = 1 + p(hint) (e^beta - 1), a normalized
distribution over the vocabulary; -log p'(target) = nll + log Z - beta [target = hint].

The record keeps these in 64-bit open-addressing tables (2^26 slots, 16 probes; pair keys hashed
again); here contexts are grouped exactly by the same 64-bit hash and pairs by (context hash,
token): the collision-free version of those tables (no inserts lost when the probes run out).
token_hints is vectorized (sorts per order, like ngram.py); token_hints_reference is the literal
sequential version with a dict per order (pair keys as the record hashes them), the tests' oracle.
"""

from __future__ import annotations

import math
import time

import numpy as np

PRIMES = np.array([36313, 27191, 51647, 81929, 131071, 196613, 262147, 393241, 524309, 655373, 786433, 917521,
                   1048583, 1179653, 1310729, 1441801, 1572869, 1703941, 1835017, 1966087, 2097169, 2228243,
                   2359319, 2490389, 2621471, 2752549, 2883617, 3014687, 3145757, 3276833, 3407903, 3538973],
                  np.uint64)
PAIR_MIX = np.uint64(1000003)


def order_rule(order: int, scale: float = 1.0) -> tuple[float, int]:
    """(confidence threshold, minimum count) of an order: the record's 8-10 / 11-13 / 14-16 bands
    (orders outside 8..16 take the nearest band's rule)."""
    if order <= 10:
        return 0.70 * scale, 3
    if order <= 13:
        return 0.60 * scale, 2
    return 0.50 * scale, 2


def active_orders(min_order: int, max_order: int, stride: int) -> list[int]:
    return list(range(min_order, max_order + 1, stride))


def context_hashes(tokens: np.ndarray, orders: list[int]) -> dict[int, np.ndarray]:
    """{k: h_k at every position} (uint64, wrapping like the record's; meaningful where p >= k)."""
    tok = np.asarray(tokens, np.int64).astype(np.uint64)
    h, out = np.zeros(len(tok), np.uint64), {}
    with np.errstate(over="ignore"):
        for j in range(max(orders)):
            h[j + 1:] ^= tok[:len(tok) - j - 1] * PRIMES[j % 32]
            if j + 1 in orders:
                out[j + 1] = h.copy()
    return out


def _stable_groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(order, gid, shift): the positions sorted by (key, position), each sorted element's group
    id, and the bit width of a position. An unstable SIMD sort plus one sort of packed (group,
    position) integers is several times faster than NumPy's stable argsort of 64-bit keys."""
    n = len(keys)
    shift = max(n.bit_length(), 1)
    q = np.argsort(keys)
    sk = keys[q]
    gid = np.cumsum(np.r_[True, sk[1:] != sk[:-1]]) - 1
    return np.sort((gid << shift) | q) & ((1 << shift) - 1), gid, shift


def order_state(ctx: np.ndarray, tok: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, best_tok, best_count) of each position's context entry before its own update, for a
    stream of updates in time order: the sequential table rule, computed per context group."""
    n = len(ctx)
    order, gid, shift = _stable_groups(ctx)
    first = np.r_[True, gid[1:] != gid[:-1]]
    start = np.flatnonzero(first)[gid]
    ts = tok[order]
    # Pair counts: sorting (token, index in context order) makes each (context, token) a run in
    # time order (the index is context-major), so one sort of packed integers counts them.
    packed = np.sort((ts << shift) | np.arange(n))
    i2, t2 = packed & ((1 << shift) - 1), packed >> shift
    g2 = gid[i2]
    new = np.r_[True, (t2[1:] != t2[:-1]) | (g2[1:] != g2[:-1])]
    run_start = np.maximum.accumulate(np.where(new, np.arange(n), 0))
    after = np.empty(n, np.int64)
    after[i2] = np.arange(n) - run_start + 1  # the pair's count once this position is counted
    # Running max of the pair counts within each group (the offset keeps groups apart).
    run = np.maximum.accumulate(gid * (n + 1) + after) - gid * (n + 1)
    before = np.r_[0, run[:-1]]
    before[first] = 0  # best_count before this update
    # The best token is the one whose count last rose above the running max (a group's first
    # occurrence always does, so the fill never crosses groups).
    last = np.maximum.accumulate(np.where(after > before, np.arange(n), -1))
    best_before = np.r_[-1, ts[last][:-1]]
    best_before[first] = -1
    count, best, best_count = (np.empty(n, np.int64) for _ in range(3))
    count[order], best[order], best_count[order] = np.arange(n) - start, best_before, before
    return count, best, best_count


def token_hints(tokens, base_beta: float = 2.0, min_order: int = 8, max_order: int = 16, order_stride: int = 2,
                threshold_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(hint, beta) per position of the stream (hint -1 = none; position 0 never has one)."""
    tokens = np.asarray(tokens, np.int64)
    n = len(tokens)
    hint, beta = np.full(n, -1, np.int32), np.zeros(n, np.float64)
    orders = [k for k in active_orders(min_order, max_order, order_stride) if k < n]
    if not orders:
        return hint, beta
    hashes = context_hashes(tokens, orders)
    for k in orders:  # ascending: a higher order's hint overrides a lower one's
        ctx, tok = hashes.pop(k)[k:], tokens[k:]
        count, best, best_count = order_state(ctx, tok)
        thr, min_count = order_rule(k, threshold_scale)
        conf = best_count / np.maximum(count, 1)
        ok = (count >= max(min_count, 1)) & (conf >= thr)
        hint[k:] = np.where(ok, best, hint[k:])
        beta[k:] = np.where(ok, base_beta * conf, beta[k:])
    return hint, beta


def token_hints_reference(tokens, base_beta: float = 2.0, min_order: int = 8, max_order: int = 16,
                          order_stride: int = 2, threshold_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """token_hints, one position at a time with a dict per order (the rule as the record states it)."""
    tokens = [int(t) for t in tokens]
    orders = active_orders(min_order, max_order, order_stride)
    ctx_tab = {k: {} for k in orders}  # hash -> [count, best_tok, best_count]
    pair_tab = {k: {} for k in orders}  # pair hash -> count
    hint, beta = np.full(len(tokens), -1, np.int32), np.zeros(len(tokens), np.float64)
    mask = (1 << 64) - 1
    for p, tok in enumerate(tokens):
        h, hashes = 0, {}
        for j in range(min(max_order, p)):
            h ^= (tokens[p - j - 1] * int(PRIMES[j % 32])) & mask
            hashes[j + 1] = h
        avail = [k for k in orders if k <= p]
        for k in reversed(avail):
            entry = ctx_tab[k].get(hashes[k])
            thr, min_count = order_rule(k, threshold_scale)
            if entry and entry[0] >= min_count and entry[2] / entry[0] >= thr:
                hint[p], beta[p] = entry[1], base_beta * entry[2] / entry[0]
                break
        for k in avail:  # after the hint: score first, then update
            key = ((hashes[k] * int(PAIR_MIX)) & mask) ^ ((tok * int(PRIMES[k % 32])) & mask)
            pair_tab[k][key] = c = pair_tab[k].get(key, 0) + 1
            entry = ctx_tab[k].setdefault(hashes[k], [0, tok, 0])
            entry[0] += 1
            if tok == entry[1]:
                entry[2] += 1
            elif c > entry[2]:
                entry[1], entry[2] = tok, c
    return hint, beta


def tilted_probs(probs: np.ndarray, hint: int, beta: float) -> np.ndarray:
    """The tilted distribution itself (the definition the per-target formula is checked against)."""
    w = np.asarray(probs, np.float64).copy()
    if hint >= 0:
        w[hint] *= math.exp(beta)
    return w / w.sum()


def tilted_nll(nll, logp_hint, hint, beta, target) -> np.ndarray:
    """-log p'(target) per target in nats (float64), from the network's nll and log p(hint)."""
    nll = np.asarray(nll, np.float64)
    has = np.asarray(hint) >= 0
    beta = np.where(has, beta, 0.0)
    log_z = np.log1p(np.exp(np.minimum(np.asarray(logp_hint, np.float64), 0.0)) * np.expm1(beta))
    return nll + np.where(has, log_z - beta * (np.asarray(target) == hint), 0.0)


class TokenTilt:
    """eval.ngram_tilt=token_tilt: the hints of a val stream (computed once per stream) and the
    tilted score of a mode's per-token outputs."""

    def __init__(self, opts):
        self.opts = opts
        self._cache = None  # (tokens, target hints, target betas, seconds)

    def _hints(self, tokens: np.ndarray):
        if self._cache is None or not np.array_equal(self._cache[0], tokens):
            o, t0 = self.opts, time.perf_counter()
            hint, beta = token_hints(tokens, o.base_beta, o.min_order, o.max_order, o.order_stride, o.threshold_scale)
            # Target j is the token at position j + 1.
            self._cache = (np.array(tokens), hint[1:], beta[1:], time.perf_counter() - t0)
        return self._cache

    def target_hints(self, tokens: np.ndarray) -> np.ndarray:
        """The hint of every target position of the stream (-1 = none), for the scoring pass."""
        return self._hints(tokens)[1]

    def final(self, mode: str, out, log) -> dict:
        """The tilt of a final eval mode's own (score-first) nll, logged and returned as
        {"<mode>+tilt": its report} (pipeline.final_evals)."""
        r = self.report(out.nll, out.logp_hint, out.ev.tokens, out.ev.byte_count)
        log(f"final_{mode}+tilt val_loss:{r['val_loss']:.4f} val_bpb:{r['val_bpb']:.4f} hints:{r['hint_rate']:.4f} "
            f"hits:{r['hit_rate']:.4f} hint_tokens_per_s:{r['hint_tokens_per_s']} (host)")
        log.metric(f"final_{mode}+tilt", **r)
        return {f"{mode}+tilt": r}

    def report(self, nll, logp_hint, tokens, byte_count) -> dict:
        """val_loss, val_bpb, hint and hit rates of the tilted score, the precompute's tokens/s."""
        _, hint, beta, seconds = self._hints(tokens)
        target = np.asarray(tokens, np.int64)[1:]
        total = float(tilted_nll(nll, logp_hint, hint, beta, target).sum())
        has = hint >= 0
        hits = float((hint[has] == target[has]).mean()) if has.any() else 0.0
        return {"val_loss": total / len(target), "val_bpb": total / (math.log(2.0) * byte_count),
                "hint_rate": float(has.mean()), "hit_rate": hits,
                "hint_tokens_per_s": round(len(tokens) / max(seconds, 1e-9))}
