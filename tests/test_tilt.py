"""The n-gram token tilt (#1514): the hint rules, causality, the tilted distribution's
normalization, and log p(hint) from every scoring path."""

import math

import jax
import numpy as np
import pytest

from conftest import perturbed
from pgolf_jax import config as C
from pgolf_jax.data.tokenizer import ByteLuts
from pgolf_jax.evaluation import tilt
from pgolf_jax.evaluation.evaluate import Evaluator
from pgolf_jax.evaluation.ttt import full_ttt, lora_ttt
from pgolf_jax.model.gpt import build_model

C8 = list(range(500, 508))  # an 8-token context
X, Y = 900, 901


def _filler(i: int, n: int = 12) -> list[int]:
    """Tokens seen nowhere else: every context longer than 8 differs between repeats."""
    return list(range(1000 + 100 * i, 1000 + 100 * i + n))


def _stream(nexts, prefix=None) -> tuple[np.ndarray, list[int]]:
    """Filler, then C8 and the next token, per entry of nexts; the positions of those next tokens."""
    toks, at = [], []
    for i, nxt in enumerate(nexts):
        toks += _filler(i) + (prefix[i] if prefix else []) + C8
        at.append(len(toks))
        toks.append(nxt)
    return np.asarray(toks + _filler(len(nexts)), np.int64), at


def test_a_repeated_context_hints_after_its_count_threshold():
    toks, at = _stream([X] * 5)
    hint, beta = tilt.token_hints(toks)
    # Order 8 needs count >= 3: the 4th and 5th occurrences are hinted, with confidence 1.
    assert hint[at].tolist() == [-1, -1, -1, X, X] and beta[at].tolist() == [0, 0, 0, 2.0, 2.0]
    assert (hint >= 0).sum() == 2  # nothing else repeats
    ref = tilt.token_hints_reference(toks)
    np.testing.assert_array_equal(ref[0], hint) and np.testing.assert_allclose(ref[1], beta)


def test_below_the_confidence_threshold_there_is_no_hint():
    toks, at = _stream([X, Y, X, Y, X, Y, Y])
    hint, _ = tilt.token_hints(toks)
    # From the 4th occurrence (count >= 3) the confidence is 2/3, 2/4, 3/5, 3/6: below order 8's
    # 0.70. At threshold_scale 0.7 (0.49) all pass, and X, which reached each count first, stays
    # the best token while the counts tie.
    assert (hint[at] == -1).all()
    hint, beta = tilt.token_hints(toks, threshold_scale=0.7)
    assert hint[at].tolist() == [-1, -1, -1, X, X, X, X]
    np.testing.assert_allclose(beta[at[3:]], [2 * 2 / 3, 2 * 2 / 4, 2 * 3 / 5, 2 * 3 / 6])


def test_the_highest_confident_order_wins():
    # C8 -> X five times, then C8 -> Y three times behind the same 4 tokens (an order-12 context).
    ctx12 = [700, 701, 702, 703]
    toks, at = _stream([X] * 5 + [Y, Y, Y], prefix=[[]] * 5 + [ctx12] * 3)
    hint, beta = tilt.token_hints(toks)
    # Last occurrence: order 12 has seen Y twice (conf 1 >= 0.60, count 2 >= 2; order 10 would
    # need count 3); order 8 says X (5/7 >= 0.70).
    assert hint[at[-1]] == Y and beta[at[-1]] == 2.0
    only8, beta8 = tilt.token_hints(toks, max_order=8)
    assert only8[at[-1]] == X and beta8[at[-1]] == pytest.approx(2 * 5 / 7)
    np.testing.assert_array_equal(tilt.token_hints_reference(toks)[0], hint)


def _repetitive(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pieces = [rng.integers(0, 8, 30) for _ in range(4)]
    toks = np.concatenate([pieces[rng.integers(4)] for _ in range(n // 30 + 1)])[:n]
    return np.where(rng.random(n) < 0.03, rng.integers(0, 8, n), toks)


@pytest.mark.parametrize("opts", [{}, {"min_order": 2, "max_order": 9, "order_stride": 1, "threshold_scale": 0.8}])
def test_vectorized_hints_equal_the_sequential_rule(opts):
    for seed in range(3):
        toks = _repetitive(1500, seed)
        hint, beta = tilt.token_hints(toks, **opts)
        ref_hint, ref_beta = tilt.token_hints_reference(toks, **opts)
        np.testing.assert_array_equal(hint, ref_hint)
        np.testing.assert_allclose(beta, ref_beta, rtol=1e-15)
        assert 0.1 < (hint >= 0).mean() < 0.9


def test_hints_use_only_the_prefix():
    toks = _repetitive(2000, 7)
    hint, beta = tilt.token_hints(toks, min_order=4)
    assert hint[0] == -1
    rng = np.random.default_rng(0)
    for p in (1, 5, 400, 1234, 1999):
        changed = toks.copy()
        changed[p:] = rng.integers(0, 8, len(toks) - p)  # the token at p and everything after it
        h2, b2 = tilt.token_hints(changed, min_order=4)
        np.testing.assert_array_equal(h2[:p + 1], hint[:p + 1])
        np.testing.assert_array_equal(b2[:p + 1], beta[:p + 1])


def test_the_tilted_distribution_is_normalized_and_scored_exactly():
    rng = np.random.default_rng(0)
    logits = 3 * rng.normal(size=50)
    logp = logits - np.log(np.exp(logits).sum())
    p = np.exp(logp)
    for hint, beta in [(7, 2.0), (int(np.argmax(p)), 1.4), (3, 0.0), (-1, 2.0)]:
        q = tilt.tilted_probs(p, hint, beta)
        assert q.sum() == pytest.approx(1.0, abs=1e-12) and (q > 0).all()
        targets = np.arange(50)
        got = tilt.tilted_nll(-logp[targets], np.full(50, logp[max(hint, 0)]), np.full(50, hint), np.full(50, beta),
                              targets)
        np.testing.assert_allclose(got, -np.log(q[targets]), rtol=1e-12, atol=1e-12)
        if hint < 0:
            np.testing.assert_array_equal(got, -logp)


MODEL = C.ModelConfig(vocab_size=64, num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1, attention_impl="xla")
LUTS = ByteLuts(np.ones(64, np.int16), np.zeros(64, bool), np.zeros(64, bool))


@pytest.fixture(scope="module")
def tiny():
    model = build_model(MODEL)
    return model, perturbed(model, seed=0, scale=0.1)


def _hints_for(tokens):
    """Hints: the target itself every 3rd position (so log p(hint) = -nll there), a random token
    every 3rd, none elsewhere."""
    n = len(tokens) - 1
    hints = np.full(n, -1, np.int32)
    hints[::3] = tokens[1:][::3]
    hints[1::3] = np.random.default_rng(1).integers(0, 64, len(hints[1::3]))
    return hints


@pytest.fixture(scope="module")
def scored(tiny):
    """A sliding evaluator over a stream with documents, its per-token scores, and hints."""
    model, params = tiny
    tokens = np.random.default_rng(0).integers(4, 64, 257).astype(np.int32)
    tokens[::64] = 1  # documents for lora_ttt
    ev = Evaluator(model, tokens, LUTS, 64, 64 * 4, stride=32)
    return ev, ev.score(params, per_token=True), _hints_for(tokens)


def test_sliding_scoring_returns_log_p_of_the_hint_and_nothing_else_changes(tiny, scored):
    model, params = tiny
    ev, (loss, nll, ent), hints = scored
    loss2, nll2, ent2, logp_hint = ev.score(params, hints=hints)
    assert loss2 == loss
    np.testing.assert_array_equal(nll2, nll) and np.testing.assert_array_equal(ent2, ent)
    np.testing.assert_allclose(logp_hint[::3], -nll[::3], rtol=1e-5, atol=1e-6)
    logits = jax.jit(lambda p, x: model.logits(p, x, True))(params, ev.tokens[None, :64])[0]
    logp = np.asarray(jax.nn.log_softmax(logits.astype(np.float32)))
    j = 31  # in the first window: scored with the context 0..j
    np.testing.assert_allclose(logp_hint[j], logp[j, hints[j]], rtol=1e-5, atol=1e-6)


def test_ttt_modes_return_log_p_of_the_hint(tiny, scored):
    """Scoring only (no training step: the per-token bookkeeping is what is new): full TTT's
    chunks give the sliding scores; LoRA TTT's document windows give log p(target) = -nll."""
    model, params = tiny
    ev, (loss, nll, _), hints = scored
    cfg = C.EvalConfig().replace(ttt=dict(chunk_tokens=64, epochs=0),
                                 lora_ttt=dict(chunk_tokens=32, steps=0, batch_docs=4, rank=2, targets="q,head"))
    res, nll2, _, extra = full_ttt(model, params, ev, cfg, log=lambda *a: None, hints=hints)
    np.testing.assert_array_equal(nll2, nll)
    np.testing.assert_array_equal(extra["logp_hint"], ev.score(params, hints=hints)[3])
    res, nll3, _, extra = lora_ttt(model, params, ev, cfg, log=lambda *a: None, hints=hints)
    np.testing.assert_allclose(extra["logp_hint"][::3], -nll3[::3], rtol=1e-5, atol=1e-6)
    assert (extra["logp_hint"] <= 1e-6).all() and math.isfinite(res.val_bpb)
