"""Phased global-SGD TTT as the records run it (#1610, #1626, #1855; eval.lora_ttt.phase_style=records):
the length-sorted queue, the phase boundaries, document-bounded windows, a fresh optimizer per phase
and score-first, at tiny shapes."""

import re

import jax
import numpy as np
import pytest

from pgolf_jax import config as C
from pgolf_jax.data.tokenizer import ByteLuts
from pgolf_jax.evaluation import phases, ttt
from pgolf_jax.evaluation.evaluate import Evaluator
from pgolf_jax.model.embeddings import BOS_ID
from pgolf_jax.model.gpt import build_model

MODEL = C.ModelConfig(vocab_size=64, num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1, attention_impl="xla")
LUTS = ByteLuts(np.r_[np.zeros(4, np.int16), np.ones(60, np.int16)], np.zeros(64, bool),
                np.r_[np.ones(4, bool), np.zeros(60, bool)])
LENGTHS = [40, 90, 25, 130, 60, 75, 110, 35, 50, 95, 70, 45]  # 12 documents of distinct lengths
# P = 9 documents in 3 phases (the records' 2500 / 3 scaled to the sample): phases at 3, 6 and 9 documents.
CFG = C.EvalConfig().replace(lora_ttt=dict(
    chunk_tokens=32, batch_docs=1, lr=0.05, rank=2, alpha=2.0, phases=3, phase_prefix_docs=9, phase_style="records",
    phase_chunk_tokens=128, phase_batch_seqs=4, phase_lr=0.05))  # a step: 2 sequences of 64, 4 rows


def doc_tokens(lengths=LENGTHS, seed=0):
    """Documents of the given lengths (BOS, then length - 1 ordinary tokens), and a closing BOS."""
    rng = np.random.default_rng(seed)
    parts = [np.r_[BOS_ID, rng.integers(4, 64, n - 1)] for n in lengths] + [[BOS_ID]]
    return np.concatenate(parts).astype(np.int32)


@pytest.fixture(scope="module")
def tiny():
    model = build_model(MODEL)
    return model, jax.jit(model.init)(jax.random.key(0))


def run(model, params, tokens, cfg=CFG, logs=None):
    ev = Evaluator(model, tokens, LUTS, 64, 64 * 8, stride=64)
    res, nll, _, extra = ttt.lora_ttt(model, params, ev, cfg, log=(logs.append if logs is not None else
                                                                    lambda *a: None), per_token=True)
    return res, nll, extra


def test_phase_k_of_n_starts_after_p_k_over_n_documents():
    assert phases.records_phase_boundaries(2500, 3, 50_000) == [833, 1666, 2500]  # #1855
    assert phases.records_phase_boundaries(2000, 3, 50_000) == [666, 1333, 2000]  # #1626
    assert phases.records_phase_boundaries(2000, 1, 50_000) == [2000]  # #1610
    assert phases.records_phase_boundaries(2500, 3, 100) == [33, 66, 100]  # the prefix clamped to the documents


def test_queue_is_length_sorted_batches_longest_first():
    docs = [(0, 5), (5, 7), (7, 17), (17, 20), (20, 27)]  # lengths 5, 2, 10, 3, 7
    assert phases.length_sorted_queue(docs, 2) == [(2, [2]), (1, [0, 4]), (0, [1, 3])]
    assert [ids for _, ids in phases.length_sorted_queue(docs, 1)] == [[2], [4], [0], [3], [1]]


def test_global_sgd_windows_never_cross_a_document(tiny):
    """Each row of a step is one segment of one document (BOS only at its start, at most T long); the
    rows' loss equals the mean over every target of each segment run alone (the records' varlen loss)."""
    model, params = tiny
    tokens = doc_tokens([3, 1, 70, 2, 20])  # a one-token document: two BOS in a row
    src = phases.doc_stream(ttt.documents(tokens), [0, 2, 1, 4, 3])  # seams: closing BOS then the next BOS
    flat = tokens[src]
    T = 32
    x, y, w, y0, w0 = phases.doc_rows(flat, T, 4)
    assert x.shape[0] >= 4 and x.shape[1] <= T
    for r in range(len(x)):
        n = int(w[r].sum())
        assert n == 0 or not np.any(x[r, 1:n] == BOS_ID), x[r]
    assert w.sum() + w0.sum() == len(flat) - 1  # every target once
    alone = jax.jit(model.token_nll)  # one segment alone, right-padded to T (causal: the padding is unseen)
    want, count = 0.0, 0
    for s, e in phases.doc_segments(flat[:-1], T):
        assert e - s <= T and not np.any(flat[s + 1:e] == BOS_ID)  # a BOS only opens a segment
        seg = np.zeros((2, T), np.int32)
        seg[0, :e - s], seg[1, :e - s] = flat[s:e], flat[s + 1:e + 1]
        want += float(alone(params, seg[:1], seg[1:])[0, :e - s].sum())
        count += e - s
    got = float(jax.jit(phases.rows_loss(model))(params, x, y, w, y0, w0))
    assert got == pytest.approx(want / count, rel=1e-5)


def test_global_sgd_batches_skip_the_last_chunk():
    got = list(phases.global_sgd_batches(1000, 64, 256, 2, 1))
    assert {c for c, *_ in got} == {0, 1, 2} and all(n == 4 for _, n, _, _ in got)  # chunk 3 (the last) untrained
    assert got[:2] == [(0, 4, 0, 128), (0, 4, 128, 256)]  # 2 sequences of 64 a step, inside the chunk
    assert len(list(phases.global_sgd_batches(1000, 64, 256, 2, 3))) == 3 * len(got)  # epochs


@pytest.fixture(scope="module")
def phased(tiny, request):
    """One records-style run, its log, and whether each global SGD step found a zero momentum buffer."""
    model, params = tiny
    zero, real = [], ttt.make_sgd_step
    mp = pytest.MonkeyPatch()

    def spy(*a, **k):
        step = real(*a, **k)

        def wrapped(p, buf, *rest):
            zero.append(not any(np.any(np.asarray(b)) for b in jax.tree.leaves(buf)))
            return step(p, buf, *rest)
        return wrapped

    mp.setattr(ttt, "make_sgd_step", spy)
    logs = []
    try:
        res, nll, extra = run(model, params, doc_tokens(), logs=logs)
    finally:
        mp.undo()
    return res, nll, extra, logs, zero


def test_phases_trigger_at_their_boundaries_with_a_fresh_optimizer(phased):
    res, _, extra, logs, zero = phased
    phases = [line for line in logs if line.startswith("lora_ttt:phase")]
    assert [re.search(r"after (\d+) docs", line)[1] for line in phases] == ["3", "6", "9"], phases
    assert [re.search(r"over (\d+) scored docs", line)[1] for line in phases] == ["3", "6", "9"]
    # a fresh momentum buffer at each phase's first step only (momentum carried would give one zero)
    assert zero.count(True) == 3 and zero[0] and len(zero) > 3, zero
    assert extra["train_tokens"] > 0 and np.isfinite(res.val_bpb)


def test_one_phase_at_most_per_document_batch():
    """A batch that passes two boundaries runs one phase; the next batch runs the other (the records
    pause once per batch, then compare the new count with the next boundary)."""
    assert phases.records_phase_points([4, 4, 4], [1, 2, 3]) == [4, 8, 12]
    assert phases.records_phase_points([64] * 40, [833, 1666, 2500]) == [896, 1728, 2560]  # #1855, 64 a batch
    assert phases.records_phase_points([5, 5], [3, 6, 9]) == [5, 10]  # the queue ends before the third


def test_no_token_is_trained_on_before_it_is_scored(tiny, phased):
    """Rewrite the 5th document of the queue: every document scored before the phase that follows it
    (queue positions 0-5; phase 2 comes after 6 documents) keeps its scores bit for bit; later ones move."""
    model, params = tiny
    tokens = doc_tokens()
    docs = ttt.documents(tokens)
    queue = [ids[0] for _, ids in phases.length_sorted_queue(docs, 1)]
    a, b = docs[queue[4]]
    changed = tokens.copy()
    changed[a + 1:b] = (changed[a + 1:b] * 7 + 3) % 60 + 4  # same length, no BOS: the same queue
    _, nll2, _ = run(model, params, changed)
    nll = phased[1]
    for pos, d in enumerate(queue):
        a, b = docs[d]
        if pos < 4 or pos == 5:
            np.testing.assert_array_equal(nll[a:b], nll2[a:b], err_msg=f"queue position {pos}")
        elif pos > 5:
            assert not np.array_equal(nll[a:b], nll2[a:b]), pos


def test_training_on_unscored_targets_is_caught(tiny, monkeypatch):
    """The global pass checks its targets against the scored ones: with scoring that no longer records
    itself, the first phase's first step is refused."""
    monkeypatch.setattr(phases._ScoredTargets, "scored", lambda self, a, b: None)
    with pytest.raises(AssertionError, match=r"score-first violated: training on targets \[\d+, \d+\)"):
        run(*tiny, doc_tokens())


def test_scored_check_reads_inputs_and_targets():
    """Stream pairs need their target scored, every non-BOS token read needs to have been scored, and a
    seam (a document's last token, then another document's BOS) may only predict that BOS."""
    tokens = np.array([BOS_ID, 5, 6, BOS_ID, 7, 8, 9], np.int32)  # documents [0, 3) and [3, 6) (cut: no BOS)
    seen = phases._ScoredTargets(len(tokens) - 1)
    seen.scored(3, 6)
    seen.check(tokens, np.r_[3:7, 3])  # document 2 through its last token, then a seam to a BOS
    seen.check(tokens, np.r_[4:7])  # inputs 7, 8 were scored as targets 3, 4
    for src in (np.r_[3:7, 1], np.r_[0:4]):  # a seam to an ordinary token; document 1's unscored targets
        with pytest.raises(AssertionError, match="score-first violated"):
            seen.check(tokens, src)
    seen = phases._ScoredTargets(len(tokens) - 1)
    seen.scored(4, 6)  # targets 4, 5 scored, but token 4 (the target of 3) was never scored
    with pytest.raises(AssertionError, match=r"training on targets \[3, 4\)"):
        seen.check(tokens, np.r_[4:7])
