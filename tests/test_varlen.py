"""VarLen (model.doc_mask, #1530): attention causal within a document only, on every kernel path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgolf_jax import config as C
from pgolf_jax.model import attention, varlen
from pgolf_jax.model.embeddings import BOS_ID
from pgolf_jax.model.gpt import build_model
from conftest import perturbed  # noqa: E402

# The record stack's token-mixing parts that stay per-document: XSA, partial RoPE, loops, parallel
# residuals, skip gates, SmearGate v2 with the BOS fix.
STACK = C.ModelConfig(vocab_size=96, num_layers=4, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2.0,
                      rope_dims=4, xsa_last_n=4, skip_gates_enabled=True, num_loops=1, loop_start=1, loop_end=2,
                      parallel_residual_start=2, smear_gate="v2", doc_mask=True, attention_impl="xla")


def _docs(rng, lengths):
    return [np.concatenate([[BOS_ID], rng.integers(2, 96, n - 1)]).astype(np.int32) for n in lengths]


def test_segment_ids_start_at_each_bos_and_every_split_len():
    ids = np.array([[5, 6, BOS_ID, 7, 8, 9, 10, 11, BOS_ID, 3]], np.int32)
    np.testing.assert_array_equal(varlen.segment_ids(jnp.asarray(ids)), [[0, 0, 2, 2, 2, 2, 2, 2, 8, 8]])
    np.testing.assert_array_equal(varlen.segment_ids(jnp.asarray(ids), 4), [[0, 0, 2, 2, 2, 2, 6, 6, 8, 8]])


def _logits(model, params, rows):
    """Logits of rows (one compile: each row padded to the longest at its end, which causal
    attention never reads back)."""
    T = max(map(len, rows))
    batch = np.stack([np.pad(r, (0, T - len(r)), constant_values=3) for r in rows])
    return np.asarray(jax.jit(model.logits)(params, jnp.asarray(batch)))


def _packed_equals_alone(cfg, T=64, lengths=(9, 23, 1, 17), atol=2e-5):
    """A packed row (a previous document's tail, then whole documents) gives each document the
    logits it gets alone: documents shorter than the split length."""
    model = build_model(cfg)
    params = perturbed(model)
    rng = np.random.default_rng(0)
    docs = [rng.integers(2, 96, 5).astype(np.int32)] + _docs(rng, lengths)  # a previous document's tail first
    docs += _docs(rng, [T - sum(map(len, docs))])  # the last document fills the row
    out = _logits(model, params, [np.concatenate(docs)] + docs)
    starts = np.cumsum([0] + [len(d) for d in docs])
    for i, doc in enumerate(docs):
        np.testing.assert_allclose(out[0, starts[i]:starts[i + 1]], out[1 + i, :len(doc)], atol=atol, rtol=0)


@pytest.mark.parametrize("impl", ["xla", "flash", "fused_cpu"])
def test_packed_logits_equal_each_document_alone(impl):
    if impl == "fused_cpu" and not attention.registry.resolve(attention.registry.ATTENTION_IMPLS, impl).available():
        pytest.skip("the native CPU kernel does not build here")
    _packed_equals_alone(STACK.replace(attention_impl=impl))


@pytest.mark.parametrize("impl", ["flash", "fused_cpu"])
def test_segmented_kernel_and_its_gradients_match_the_xla_oracle(impl, monkeypatch):
    """Forward and q/k/v gradients of a kernel with segments equal the masked xla path's (several
    query blocks, so off-diagonal blocks are masked and skipped too: the CPU kernel's tiles are 64)."""
    fn = attention.registry.resolve(attention.registry.ATTENTION_IMPLS, impl)
    if impl == "fused_cpu" and not fn.available():
        pytest.skip("the native CPU kernel does not build here")
    monkeypatch.setattr(attention, "BLOCK", 64)
    B, T, H, G, K = 2, 200, 4, 2, 8
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.standard_normal((B, T, n, K)), jnp.float32) for n in (H, G, G))
    ids = rng.integers(2, 96, (B, T))
    ids[0, [0, 7, 20, 21, 150]] = BOS_ID  # 21-149 spans two 64-key tiles; 150 skips two
    ids[1, [13, 30, 190]] = BOS_ID
    seg = varlen.segment_ids(jnp.asarray(ids))
    w = jnp.asarray(rng.standard_normal((B, T, H, K)), jnp.float32)

    def loss(fn):
        f = jax.value_and_grad(lambda q, k, v: jnp.sum(w * fn(q, k, v, 0.3, seg_BT=seg)), argnums=(0, 1, 2))
        return jax.jit(f)(q, k, v)

    want, got = loss(attention.xla_attention), loss(fn)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-5, rtol=1e-5)


def test_doc_split_len_splits_long_documents():
    """With doc_split_len = 8, a 20-token document is three documents of 8, 8 and 4 for attention."""
    cfg = STACK.replace(smear_gate="", doc_split_len=8)
    model = build_model(cfg)
    params = perturbed(model)
    doc = _docs(np.random.default_rng(1), [20])[0]
    out = _logits(model, params, [doc, doc[:8], doc[8:16], doc[16:]])
    for i, s in enumerate((0, 8, 16)):
        n = len(doc[s:s + 8])
        np.testing.assert_allclose(out[0, s:s + n], out[1 + i, :n], atol=2e-5, rtol=0)


def test_doc_mask_off_lets_attention_cross_a_bos():
    model = build_model(STACK.replace(doc_mask=False))
    params = perturbed(model)
    a, b = _docs(np.random.default_rng(2), [6, 6])
    out = _logits(model, params, [np.concatenate([a, b]), b])
    assert np.abs(out[0, 6:] - out[1, :6]).max() > 1e-3


@pytest.mark.parametrize("item, match", [
    ("model.mixers=s4d_lin", "model.mixers='s4d_lin'"),
    ("model.bigram_vocab_size=64", "model.bigram_vocab_size=64"),
    ("model.smear_gate=v1", "model.smear_gate='v1'"),
    ("model.smear_gate_bos_fix=false", "model.smear_gate_bos_fix=false"),
    ("model.pause_tokens=2", "model.pause_tokens=2"),
    ("model.family=mps", "model.family='mps'"),
])
def test_doc_mask_refuses_what_mixes_across_a_bos(item, match):
    items = ["model.doc_mask=true", item] + (["model.smear_gate=v2"] if "bos_fix" in item else [])
    with pytest.raises(C.ConfigError, match=rf"^model.doc_mask=true does not combine with {match}: it would mix "
                                             "tokens across documents$"):
        C.override(C.Config(), items)
    C.override(C.Config(), items[1:])  # each alone is fine


def test_doc_split_len_needs_doc_mask():
    with pytest.raises(C.ConfigError, match=r"^model.doc_split_len=8 needs model.doc_mask=true$"):
        C.override(C.Config(), ["model.doc_split_len=8"])


def test_doc_packed_loader_starts_at_the_first_bos_and_skips_shard_tails(tmp_path):
    """Spans from each shard's first BOS, consecutive; a shard whose rest cannot hold a whole step is
    left for the next one, and the files wrap around; state/restore continue exactly."""
    from pgolf_jax.data.doc_packing import DocPackingLoader
    from pgolf_jax.data.shards import write_shard
    a = np.array([7, 8, BOS_ID] + list(range(10, 40)), np.uint16)  # first BOS at 2
    b = np.array([BOS_ID] + list(range(50, 70)), np.uint16)  # first BOS at 0
    write_shard(tmp_path / "t_000.bin", a)
    write_shard(tmp_path / "t_001.bin", b)
    loader = DocPackingLoader(str(tmp_path / "t_*.bin"), num_spans=2, seq_len=4)
    x, y = loader.next_batch(16, 4)  # 2 spans x (8 + 1) tokens = 18 a step
    assert x.shape == (2, 2, 4)
    np.testing.assert_array_equal(x[0].ravel(), a[2:10]) and np.testing.assert_array_equal(y[0].ravel(), a[3:11])
    np.testing.assert_array_equal(x[1].ravel(), a[11:19])
    saved = loader.state()
    x2, _ = loader.next_batch(16, 4)  # a has 13 tokens left < 18: on to b, from its BOS
    np.testing.assert_array_equal(x2[0].ravel(), b[0:8])
    x3, _ = loader.next_batch(16, 4)  # b has 3 left: wrap around to a's first BOS
    np.testing.assert_array_equal(x3[0].ravel(), a[2:10])
    loader.restore(saved)
    np.testing.assert_array_equal(loader.next_batch(16, 4)[0], x2)


@pytest.mark.parametrize("stride", [64, 16], ids=["plain", "sliding"])
def test_eval_scores_of_a_document_ignore_the_documents_before_it(stride):
    """Plain and sliding eval of a doc-masked model: rewriting one document leaves the scores of the
    next one (every target whose input lies in it) unchanged, windows crossing the seam included."""
    from pgolf_jax.data.tokenizer import ByteLuts
    from pgolf_jax.evaluation.evaluate import Evaluator
    luts = ByteLuts(np.ones(96, np.int16), np.zeros(96, bool), np.zeros(96, bool))
    cfg = C.ModelConfig(vocab_size=96, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1,
                        attention_impl="xla", doc_mask=True)
    model = build_model(cfg)
    params = perturbed(model)
    tokens = np.random.default_rng(4).integers(2, 96, 601).astype(np.int32)
    tokens[::150] = BOS_ID
    changed = tokens.copy()
    changed[151:300] = (changed[151:300] * 7 + 3) % 90 + 2
    nll = [Evaluator(model, t, luts, 64, 64 * 4, stride=stride).score(params, per_token=True)[1]
           for t in (tokens, changed)]
    np.testing.assert_allclose(nll[1][300:450], nll[0][300:450], atol=1e-5, rtol=0)
    assert np.abs(nll[1][151:299] - nll[0][151:299]).max() > 1e-3


def test_windowed_attention_with_segments_is_both_masks(monkeypatch):
    """A sliding window (model/eval.attention_window) and document segments together: query i sees
    key j iff i - window < j <= i and both lie in one segment (blocks of 16, T not a multiple)."""
    monkeypatch.setattr(attention, "BLOCK", 16)
    B, T, H, G, K, window = 2, 50, 4, 2, 8, 12
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((B, T, n, K)).astype(np.float32) for n in (H, G, G))
    ids = rng.integers(2, 96, (B, T))
    ids[0, [9, 30, 31]] = BOS_ID
    seg = np.asarray(varlen.segment_ids(jnp.asarray(ids)))
    got = np.asarray(jax.jit(attention.windowed_attention, static_argnums=(3, 4))(q, k, v, 0.5, window, seg))
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    mask = (j <= i) & (j > i - window) & (seg[:, :, None] == seg[:, None, :])  # (B, T, T)
    kq, vq = (np.repeat(a, H // G, axis=2) for a in (k, v))
    logits = np.where(mask[:, None], np.einsum("bthk,bshk->bhts", q, kq) * 0.5, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    want = np.einsum("bhts,bshk->bthk", p / p.sum(-1, keepdims=True), vq)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
