"""Sliding-window eval, score-first TTT (full and LoRA) and n-gram mixing."""

import dataclasses
import json
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgolf_jax import config as C
from pgolf_jax.data.tokenizer import ByteLuts
from pgolf_jax.evaluation import ngram
from pgolf_jax.evaluation.evaluate import Evaluator, plan_windows
from pgolf_jax.evaluation.ttt import _Frontier, documents, full_ttt, lora_ttt
from pgolf_jax.model.gpt import build_model

TINY = str(Path(__file__).resolve().parent.parent / "configs" / "tiny.py")
MODEL = C.ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, attention_impl="xla")
LUTS = ByteLuts(np.r_[np.zeros(4, np.int16), np.ones(60, np.int16)], np.zeros(64, bool), np.r_[np.ones(4, bool), np.zeros(60, bool)])


@pytest.fixture(scope="module")
def tiny():
    model = build_model(MODEL)
    params = jax.jit(model.init)(jax.random.key(0))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
    return model, params


def stream(n=1201, seed=0):
    tokens = np.random.default_rng(seed).integers(4, 64, n).astype(np.int32)
    tokens[::150] = 1  # BOS every 150 tokens: documents
    return tokens


@pytest.mark.parametrize("total,T,S", [(1200, 64, 64), (1200, 64, 16), (1000, 64, 48), (65, 64, 8)])
def test_windows_score_every_target_once(total, T, S):
    w = plan_windows(total, T, S)
    covered = np.zeros(total, int)
    for ws, s0, n in zip(w.starts, w.score_from, w.lengths):
        covered[ws + s0: ws + n] += 1
        assert s0 == 0 or s0 >= T - S  # later windows keep at least T - S tokens of context
        assert n <= T
    np.testing.assert_array_equal(covered, 1)
    assert w.score_from[0] == 0


def test_stride_equal_to_seq_len_is_plain_eval(tiny):
    model, params = tiny
    tokens = stream(64 * 9 + 1)
    ev = Evaluator(model, tokens, LUTS, 64, 64 * 4, stride=64)
    nll = jax.jit(model.token_nll)(params, tokens[:-1].reshape(9, 64), tokens[1:].reshape(9, 64))
    want = float(np.asarray(nll, np.float64).sum())
    got = ev.score(params)
    assert got == pytest.approx(want, rel=1e-6)
    assert ev.byte_count == int((tokens[1:] >= 4).sum())


def test_sliding_scores_each_target_with_its_window_context(tiny):
    model, params = tiny
    tokens = stream(301)
    ev = Evaluator(model, tokens, LUTS, 64, 64 * 4, stride=16)
    loss, nll, _ = ev.score(params, per_token=True)
    assert loss == pytest.approx(float(nll.astype(np.float64).sum()), rel=1e-6)
    fn = jax.jit(model.token_nll)
    for j in (0, 63, 64, 200, 299):
        k = int(np.flatnonzero((ev.windows.starts + ev.windows.score_from <= j) &
                               (ev.windows.starts + ev.windows.lengths > j))[0])
        ws, n = ev.windows.starts[k], ev.windows.lengths[k]
        ref = fn(params, tokens[None, ws:ws + n], tokens[None, ws + 1:ws + n + 1])[0, j - ws]
        assert nll[j] == pytest.approx(float(ref), rel=1e-5, abs=1e-6)


EVAL = C.EvalConfig().replace(eval_batch_seqs=8, ttt=dict(chunk_tokens=256, batch_seqs=4, epochs=2, lr=0.05), lora_ttt=dict(chunk_tokens=32, batch_docs=4, lr=0.05, rank=4, alpha=4.0,
                                                                       phase_chunk_tokens=256, phase_batch_seqs=4))


def _ttt_nll(model, params, tokens, mode, cfg=EVAL):
    ev = Evaluator(model, tokens, LUTS, 64, 64 * 8, stride=32 if mode == "ttt" else 64)
    fn = full_ttt if mode == "ttt" else lora_ttt
    res, nll, _, _ = fn(model, params, ev, cfg, log=lambda *a: None, per_token=True)
    return res, nll


@pytest.mark.parametrize("mode", ["ttt", "lora_ttt"])
def test_score_first_no_future_token_moves_a_past_score(tiny, mode):
    """The leak test: change tokens after position p; every score before p must stay bit-identical
    (training on a token before scoring it would let the change leak backwards)."""
    model, params = tiny
    tokens = stream(1201)
    res, nll = _ttt_nll(model, params, tokens, mode)
    changed = tokens.copy()
    cut = 700  # inside chunk 2 (ttt) / document 4 (lora)
    changed[cut + 1:] = (changed[cut + 1:] * 7 + 3) % 60 + 4
    _, nll2 = _ttt_nll(model, params, changed, mode)
    np.testing.assert_array_equal(nll[:cut], nll2[:cut])
    assert not np.array_equal(nll[cut + 1:], nll2[cut + 1:])
    assert np.isfinite(res.val_bpb)


def test_ttt_learns_a_repeating_stream(tiny):
    model, params = tiny
    seg = np.random.default_rng(3).integers(4, 64, 128)
    tokens = np.r_[np.tile(seg, 10), seg[:1]].astype(np.int32)
    ev = Evaluator(model, tokens, LUTS, 64, 64 * 8, stride=32)
    base = ev.score(params) / ev.total
    cfg = EVAL.replace(ttt=dict(lr=0.2, epochs=4))
    res, _, _, info = full_ttt(model, params, ev, cfg, log=lambda *a: None)
    assert info["train_steps"] == 16 and res.val_loss < base - 0.5  # 4 trained chunks x 4 epochs


def test_frontier_catches_training_ahead_of_scoring():
    f = _Frontier()
    f.scored_through(512)
    f.check(0, 512)
    with pytest.raises(AssertionError, match="score-first violated"):
        f.check(448, 576)


@pytest.mark.parametrize("mode", ["ttt", "lora_ttt"])
def test_training_on_unscored_targets_is_caught(tiny, mode, monkeypatch):
    """Both TTT loops check what they train on against what they scored: with scoring that no
    longer records its progress, the first training step is refused (so the check can fail)."""
    model, params = tiny
    monkeypatch.setattr(_Frontier, "scored_through", lambda self, end: None)
    with pytest.raises(AssertionError, match=r"score-first violated: training on targets \[\d+, \d+\)"):
        _ttt_nll(model, params, stream(1201), mode)


def test_lora_documents_are_independent_and_start_from_the_base(tiny):
    model, params = tiny
    tokens = stream(1201)
    assert documents(tokens)[:2] == [(0, 150), (150, 300)]
    res, nll = _ttt_nll(model, params, tokens, "lora_ttt")
    other = tokens.copy()
    other[1:150] = (other[1:150] * 5 + 1) % 60 + 4  # rewrite document 0
    _, nll2 = _ttt_nll(model, params, other, "lora_ttt")
    np.testing.assert_array_equal(nll[150:], nll2[150:])  # fresh adapters per document
    # The first chunk of every document is scored by the untouched base model.
    ref = jax.jit(model.token_nll)(params, tokens[None, 150:182], tokens[None, 151:183])[0]
    np.testing.assert_allclose(nll[150:182], ref, rtol=1e-5, atol=1e-6)


def test_lora_ttt_on_a_looped_model_has_an_adapter_per_pass():
    """Looped schedule [0, 1, 1, 1]: 4 slots of adapters; still scores every token once."""
    cfg = dataclasses.replace(MODEL, num_loops=2, loop_start=1, loop_end=1)
    model = build_model(cfg)
    assert model.num_slots() == 4
    params = jax.jit(model.init)(jax.random.key(0))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
    tokens = stream(601)
    for targets in ("q,k,v,o,mlp,head", "q,k,v,o_par,mlp_par,head"):  # ours, the records' placement
        cfg = EVAL.replace(lora_ttt=dict(targets=targets))
        res, nll = _ttt_nll(model, params, tokens, "lora_ttt", cfg)
        _, frozen = _ttt_nll(model, params, tokens, "lora_ttt", cfg.replace(lora_ttt=dict(lr=0.0)))
        assert res.val_tokens == len(tokens) - 1 and np.all(np.isfinite(nll)) and np.all(nll > 0)
        np.testing.assert_array_equal(nll[:32], frozen[:32])  # first chunk: adapters still zero
        assert np.abs(nll - frozen).max() > 1e-4, targets  # later chunks see trained adapters


def test_lora_adamw_step():
    """beta1 = 0 makes the first moment the gradient; decoupled decay scales a zero-gradient
    adapter by exactly (1 - lr wd); wd = 0 with a zero gradient leaves it unchanged."""
    from pgolf_jax.evaluation.ttt import lora_update
    cfg = EVAL.replace(lora_ttt=dict(optimizer='adam', beta1=0.0, beta2=0.999, eps=1e-10, wd=1.0))
    a = {"A": jnp.full((3, 4), 2.0)}
    zeros = jax.tree.map(jnp.zeros_like, a)
    new, _ = lora_update(a, (zeros, zeros, 0), zeros, 0.1, cfg)
    np.testing.assert_allclose(new["A"], 2.0 * (1 - 0.1 * 1.0), rtol=1e-6)
    g = {"A": jnp.arange(12.0).reshape(3, 4) - 5.0}
    _, (m, v, n) = lora_update(a, (zeros, zeros, 0), g, 0.1, cfg)
    np.testing.assert_array_equal(m["A"], g["A"])
    same, _ = lora_update(a, (zeros, zeros, 0), zeros, 0.1, cfg.replace(lora_ttt=dict(wd=0.0)))
    np.testing.assert_array_equal(same["A"], a["A"])


def test_lora_warm_start_keeps_a_across_document_batches(tiny):
    model, params = tiny
    tokens = stream()
    cfg = EVAL.replace(lora_ttt=dict(optimizer='adam', lr=0.01, batch_docs=2))
    _, cold = _ttt_nll(model, params, tokens, "lora_ttt", cfg)
    res, warm = _ttt_nll(model, params, tokens, "lora_ttt", cfg.replace(lora_ttt=dict(warm_start_a=True)))
    first_batch_end = 2 * 150  # documents of 150 tokens, two per batch
    np.testing.assert_array_equal(warm[:first_batch_end], cold[:first_batch_end])
    assert np.abs(warm[first_batch_end:] - cold[first_batch_end:]).max() > 1e-5
    assert res.val_tokens == len(tokens) - 1


def test_phased_lora_ttt_trains_the_base_on_scored_documents(tiny):
    model, params = tiny
    tokens = stream(1201)
    cfg = EVAL.replace(lora_ttt=dict(phases=2, phase_prefix_docs=4, phase_lr=0.05))
    res, nll = _ttt_nll(model, params, tokens, "lora_ttt", cfg)
    _, plain_nll = _ttt_nll(model, params, tokens, "lora_ttt")
    np.testing.assert_array_equal(nll[:600], plain_nll[:600])  # before the first phase: identical
    assert not np.array_equal(nll[600:], plain_nll[600:])


def test_ngram_vectorized_equals_direct_and_is_causal():
    tokens = np.random.default_rng(4).integers(0, 6, 160)
    p = ngram.ngram_target_probs(tokens, 6, order=4)
    for j in (0, 3, 40, 158):
        d = ngram.ngram_distribution(tokens, j, 6, order=4)
        assert d.sum() == pytest.approx(1.0)
        assert p[j] == pytest.approx(d[tokens[j + 1]])
    later = tokens.copy()
    later[100:] = (later[100:] + 1) % 6
    np.testing.assert_array_equal(ngram.ngram_target_probs(later, 6, 4)[:99], p[:99])


def test_ngram_mixture_is_normalized():
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 8, 80)
    logits = rng.normal(size=8)
    p_nn = np.exp(logits) / np.exp(logits).sum()
    H = -(p_nn * np.log2(p_nn)).sum()
    for mode in ("entropy", "fixed"):
        lam = ngram.mix_weight(np.asarray([H]), mode, 0.2)[0]
        mix = (1 - lam) * p_nn + lam * ngram.ngram_distribution(tokens, 50, 8, 6)
        assert mix.sum() == pytest.approx(1.0)
        nll = ngram.mixed_nll(np.asarray([-np.log(p_nn[tokens[51]])]), np.asarray([H]),
                              ngram.ngram_target_probs(tokens, 8, 6)[50:51], mode, 0.2)
        assert nll[0] == pytest.approx(-np.log(mix[tokens[51]]))
    assert ngram.mix_weight(np.asarray([4.0]), "entropy", 0)[0] == pytest.approx(0.05 + 0.55 / 2)


def test_final_modes_through_the_main_job(sample_data, tmp_path, capsys):
    from pgolf_jax.cli import main
    over = [f"{k}={v}" for k, v in sample_data["overrides"].items()]
    assert main(["--config", TINY, *over, f"train.out_dir={tmp_path}", "train.run_id=e", "train.iterations=4",
                 "eval.final_modes=plain,sliding,ttt,lora_ttt", "eval.eval_stride=32", "eval.ttt.chunk_tokens=2048",
                 "eval.ttt.batch_seqs=8", "eval.ttt.epochs=1", "eval.lora_ttt.chunk_tokens=32", "eval.lora_ttt.batch_docs=8",
                 "eval.ngram_order=4", "eval.val_tokens_limit=4096", "train.progress=true",
                 "eval.ngram_tilt=token_tilt", "eval.token_tilt.min_order=2"]) == 0
    err = capsys.readouterr().err
    for label in ("eval:plain [", "eval:sliding [", "eval:ttt [", "eval:lora_ttt ["):  # progress with an ETA
        assert label in err, label
    log = (tmp_path / "e" / "log.txt").read_text()
    for mode in ("plain", "sliding", "ttt", "lora_ttt"):
        assert re.search(rf"final_{mode} val_loss:[\d.]+ val_bpb:[\d.]+ .*bound_8xH100:[\d.]+s", log), mode
        assert re.search(rf"final_{mode}\+ngram4 val_loss:[\d.]+ val_bpb:[\d.]+ ngram_tokens_per_s:\d+", log), mode
        hints = re.search(rf"final_{mode}\+tilt val_loss:[\d.]+ val_bpb:[\d.]+ hints:([\d.]+) hits:[\d.]+ ", log)
        assert hints and float(hints.group(1)) > 0, mode
    sub = json.loads((tmp_path / "e" / "submission.json").read_text())
    assert "lora_ttt+ngram4" in sub["final_modes"]
    assert sub["val_bpb"] == pytest.approx(sub["final_modes"]["lora_ttt+tilt"]["val_bpb"])  # the tilt comes last
    assert sub["final_modes"]["plain+tilt"]["val_bpb"] != sub["final_modes"]["plain"]["val_bpb"]
    plain = float(re.search(r"final_plain_exact val_loss:[\d.]+ val_bpb:([\d.]+)", log).group(1))
    rt = float(re.search(r"final_roundtrip_exact val_loss:[\d.]+ val_bpb:([\d.]+)", log).group(1))
    assert plain == pytest.approx(rt, abs=1e-7)  # plain at the same length is the round-trip eval
    assert math.isfinite(sub["val_bpb"])
    # The 8xH100 projections count each mode's forward and training tokens.
    proj = {m: sub["final_modes"][m]["bound_8xH100_seconds"] for m in ("plain", "sliding", "ttt", "lora_ttt")}
    assert proj["plain"] < proj["sliding"] < proj["ttt"] and proj["plain"] < proj["lora_ttt"], proj


def test_lora_chunk_head_equals_the_full_logits(tiny):
    """LoRA TTT's programs run the head on each row's chunk only: their scores and the adapters'
    gradient equal what the full (B, T, V) logits give at those positions (a short last chunk too)."""
    from pgolf_jax.evaluation import ttt
    from pgolf_jax.model.gpt import token_nll
    model, params = tiny
    cfg = EVAL.replace(lora_ttt=dict(chunk_tokens=8, targets="q,k,v,o,mlp,head", optimizer="sgd", momentum=0.0))
    targets, head = ttt.lora_targets(cfg)
    nd, T = 3, 32
    lora = ttt.lora_init(jax.random.key(2), params, targets, cfg.lora_ttt.rank, nd, head, model.num_slots())
    leaves, tree = jax.tree.flatten(lora)  # B starts at 0: make every adapter move the logits
    keys = jax.random.split(jax.random.key(3), len(leaves))
    lora = jax.tree.unflatten(tree, [a + 0.05 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
    rng = np.random.default_rng(0)
    x, y = (jnp.asarray(rng.integers(4, 64, (nd, T)), jnp.int32) for _ in range(2))
    lo, hi = jnp.array([0, 12, 27]), jnp.array([8, 20, 32])  # row 2: 5 targets left in its window
    score, train = ttt.lora_functions(model, cfg, ttt._Placer(None))
    nll, ent = score(params, lora, x, y, lo)
    assert nll.shape == (nd, 8)
    scale = cfg.lora_ttt.alpha / cfg.lora_ttt.rank

    def full_nll(lora):
        logits = jax.vmap(lambda lr, xt: model.logits(params, xt[None], True, hook=ttt.lora_hook(lr, scale, head))[0])(
            lora, x)
        return token_nll(logits, y)

    ref = full_nll(lora)
    for r in range(nd):
        np.testing.assert_allclose(nll[r, :hi[r] - lo[r]], ref[r, lo[r]:hi[r]], rtol=1e-5, atol=1e-6)

    def ref_loss(lora):
        pos = jnp.arange(T)[None]
        mask = (pos >= lo[:, None]) & (pos < hi[:, None])
        return jnp.sum(jnp.sum(jnp.where(mask, full_nll(lora), 0.0), -1) / jnp.sum(mask, -1))

    g_ref = jax.grad(ref_loss)(lora)
    new, _ = train(lora, jax.tree.map(jnp.zeros_like, lora), params, x, y, lo, hi, 1.0)  # SGD, lr 1: lora - g
    for a, b, g in zip(jax.tree.leaves(lora), jax.tree.leaves(new), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a - b, g, rtol=1e-4, atol=1e-6)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_ref)) > 1e-4  # the gradient is not trivially 0
