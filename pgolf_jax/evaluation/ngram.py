"""Eval-time n-gram mixing (#1227): a causal Dirichlet-smoothed n-gram model built only from
already-scored val tokens, mixed linearly with the network's distribution.

n-gram distribution (recursive Dirichlet / PPM-style interpolation, spec 5.3):
    p_2(x | a)  = (n(a, x) + 0.5 / V) / (n(a) + 0.5)               (bigram, uniform prior)
    p_k(x | c)  = (n(c, x) + beta_k p_{k-1}(x)) / (n(c) + beta_k)   if n(c) > 0, else p_{k-1}
with c the previous k-1 tokens and beta_k = 0.5 k, for k = 3..K. Counts at target position j use
targets 0..j-1 only (score first, then count), so each distribution is causal and sums to 1.
Mixture: p = (1 - lam) p_nn + lam p_ngram, with lam fixed or entropy-adaptive
lam = 0.05 + 0.55 sigmoid(2 (H - 4)), H the network's entropy in bits; linear in probability,
so the mixture is normalized over the full vocabulary.

Vectorized: for every order, the number of earlier occurrences of each (context) and
(context, next) key at every position comes from one stable sort, so a whole stream is scored
in O(N log N) NumPy work instead of a per-token Python loop.
"""

from __future__ import annotations

import math

import numpy as np


def _previous_counts(keys: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions carry the same key."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.r_[0, np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    counts = np.empty(len(keys), np.int64)
    counts[order] = np.arange(len(keys)) - group_start
    return counts


def _context_ids(tokens: np.ndarray, pos: np.ndarray, length: int) -> np.ndarray:
    """Exact integer ids of the `length` tokens before each target (positions < 0 read as -1)."""
    idx = pos[:, None] + 1 - length + np.arange(length)[None, :]
    ctx = np.where(idx >= 0, tokens[np.clip(idx, 0, None)], -1)
    _, ids = np.unique(ctx, axis=0, return_inverse=True)
    return ids.reshape(-1)


def ngram_target_probs(tokens: np.ndarray, vocab: int, order: int = 6) -> np.ndarray:
    """p_order(target_j | history) for every target position j = 0..len(tokens)-2, causal counts."""
    tokens = np.asarray(tokens, np.int64)
    pos = np.arange(len(tokens) - 1)
    target = tokens[1:]
    p = None
    for k in range(2, order + 1):
        ctx = _context_ids(tokens, pos, k - 1)
        n_c = _previous_counts(ctx).astype(np.float64)
        n_cx = _previous_counts(ctx * vocab + target).astype(np.float64)
        if k == 2:
            p = (n_cx + 0.5 / vocab) / (n_c + 0.5)
        else:
            beta = 0.5 * k
            p = np.where(n_c > 0, (n_cx + beta * p) / (n_c + beta), p)
    return p


def ngram_distribution(tokens: np.ndarray, j: int, vocab: int, order: int = 6) -> np.ndarray:
    """The full n-gram distribution over the vocabulary at target position j, evaluated directly
    per token (the checking oracle for the vectorized path and for normalization)."""
    tokens = np.asarray(tokens, np.int64)

    def context(i, length):
        return tuple(int(tokens[q]) if q >= 0 else -1 for q in range(i - length + 1, i + 1))

    p = None
    for k in range(2, order + 1):
        c = context(j, k - 1)
        n_cx = np.zeros(vocab)
        for i in range(j):  # earlier targets only: score first, then count
            if context(i, k - 1) == c:
                n_cx[tokens[i + 1]] += 1
        n_c = n_cx.sum()
        if k == 2:
            p = (n_cx + 0.5 / vocab) / (n_c + 0.5)
        elif n_c > 0:
            p = (n_cx + 0.5 * k * p) / (n_c + 0.5 * k)
    return p


def mix_weight(entropy_bits: np.ndarray, mode: str, lam: float) -> np.ndarray:
    if mode == "fixed":
        return np.full(entropy_bits.shape, lam)
    if mode == "entropy":
        return 0.05 + 0.55 / (1.0 + np.exp(-2.0 * (entropy_bits.astype(np.float64) - 4.0)))
    raise ValueError(f"unknown n-gram mix {mode!r}; expected fixed or entropy")


def mixed_nll(nn_nll: np.ndarray, entropy_bits: np.ndarray, p_ngram: np.ndarray, mode: str = "entropy",
              lam: float = 0.1) -> np.ndarray:
    """-log((1 - lam) p_nn(target) + lam p_ngram(target)) per target, in nats (float64)."""
    w = mix_weight(entropy_bits, mode, lam)
    p = (1.0 - w) * np.exp(-nn_nll.astype(np.float64)) + w * p_ngram
    return -np.log(p)


def final_mix(cfg, mode: str, out, log) -> dict:
    """The n-gram mixture over a final eval mode's scored stream (out: its ModeOutput), logged and
    returned as {"<mode>+ngram<order>": its numbers} (pipeline.final_evals, registry.NGRAM_MIX)."""
    e = cfg.eval
    loss, b, tok_s = mix_report(out.nll, out.ent, out.ev.tokens, cfg.model.vocab_size, e.ngram_order, e.ngram_mix,
                                e.ngram_lambda, out.ev.byte_count)
    name = f"{mode}+ngram{e.ngram_order}"
    log(f"final_{name} val_loss:{loss:.4f} val_bpb:{b:.4f} ngram_tokens_per_s:{tok_s:.0f} (host)")
    row = {"val_loss": loss, "val_bpb": b, "ngram_tokens_per_s": round(tok_s)}
    log.metric(f"final_{name}", **row)
    return {name: row}


def mix_report(nn_nll, entropy_bits, tokens, vocab, order, mode, lam, byte_count) -> tuple[float, float, float]:
    """(val_loss, val_bpb, tokens/s of the n-gram pass) of the mixture over a scored stream."""
    import time
    t0 = time.perf_counter()
    p = ngram_target_probs(tokens, vocab, order)
    loss = mixed_nll(nn_nll, entropy_bits, p, mode, lam)
    seconds = time.perf_counter() - t0
    total = float(loss.sum())
    return total / len(loss), total / (math.log(2.0) * byte_count), len(loss) / max(seconds, 1e-9)
