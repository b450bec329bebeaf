import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgolf_jax.config import ModelConfig
from pgolf_jax.model import attention, kernels, layers
from pgolf_jax.model import gpt as M
from conftest import perturbed  # noqa: E402

TINY = ModelConfig(vocab_size=96, num_layers=5, model_dim=64, num_heads=4, num_kv_heads=2)



def test_baseline_parameter_count():
    model = M.build_model(ModelConfig())
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    assert M.count_params(shapes) == 17_059_912
    # reference-spec 3.3: embedding + 9 x (q, k, v, o, fc, proj) + 9 x 2,056 scalars + skip weights
    assert shapes["tok_emb"]["weight"].shape == (1024, 512)
    assert shapes["blocks"]["mlp"]["fc"]["weight"].shape == (9, 1024, 512)
    assert shapes["blocks"]["attn"]["c_k"]["weight"].shape == (9, 256, 512)
    assert shapes["skip_weights"].shape == (4, 512)


def test_reference_initialization():
    cfg = dataclasses.replace(TINY, tied_embed_init_std=0.005, qk_gain_init=1.5)
    p = M.build_model(cfg).init(jax.random.key(0))
    b = p["blocks"]
    assert not np.any(b["attn"]["proj"]["weight"]) and not np.any(b["mlp"]["proj"]["weight"])
    assert np.std(p["tok_emb"]["weight"]) == pytest.approx(0.005, rel=0.1)
    bound = 1 / np.sqrt(cfg.model_dim)  # torch.nn.Linear default U(-1/sqrt(in), 1/sqrt(in))
    assert np.abs(b["attn"]["c_q"]["weight"]).max() <= bound
    assert np.abs(b["attn"]["c_q"]["weight"]).max() > 0.9 * bound
    np.testing.assert_array_equal(b["attn"]["q_gain"], 1.5)
    np.testing.assert_array_equal(b["resid_mix"][:, 0], 1.0)
    np.testing.assert_array_equal(b["resid_mix"][:, 1], 0.0)
    np.testing.assert_array_equal(p["skip_weights"], 1.0)
    # layers draw independent weights
    assert not np.allclose(b["attn"]["c_q"]["weight"][0], b["attn"]["c_q"]["weight"][1])


def test_scan_equals_unrolled():
    ids = jax.random.randint(jax.random.key(3), (2, 40), 0, TINY.vocab_size)
    m_scan = M.build_model(TINY)
    m_loop = M.build_model(dataclasses.replace(TINY, scan_layers=False))
    params = perturbed(m_scan)
    l1, g1 = jax.jit(jax.value_and_grad(m_scan.loss))(params, ids, ids)
    l2, g2 = jax.jit(jax.value_and_grad(m_loop.loss))(params, ids, ids)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_remat_changes_nothing():
    ids = jax.random.randint(jax.random.key(4), (2, 24), 0, TINY.vocab_size)
    m0, m1 = M.build_model(TINY), M.build_model(dataclasses.replace(TINY, remat=True))
    params = perturbed(m0)
    g0, g1 = jax.jit(jax.grad(m0.loss))(params, ids, ids), jax.jit(jax.grad(m1.loss))(params, ids, ids)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# The native kernel is tested wherever a C++ compiler exists (a failed build then fails the test).
NATIVE = pytest.param("fused_cpu", marks=pytest.mark.skipif(
    kernels._compiler() is None, reason="no C++ compiler for the native CPU kernel"))


@pytest.mark.parametrize("impl", ["xla", "flash", NATIVE])
def test_causality(impl):
    cfg = dataclasses.replace(TINY, attention_impl=impl)
    model = M.build_model(cfg)
    params = perturbed(model)
    T = 40 if impl == "xla" else 300  # several query blocks
    ids = jax.random.randint(jax.random.key(5), (1, T), 0, cfg.vocab_size)
    logits = jax.jit(model.logits)
    base = logits(params, ids)
    for t in (0, T // 2, T - 1):
        changed = ids.at[0, t:].set((ids[0, t:] + 7) % cfg.vocab_size)
        out = logits(params, changed)
        np.testing.assert_array_equal(out[:, :t], base[:, :t])
        assert not np.allclose(out[:, t], base[:, t])


def naive_attention(q, k, v):
    """Per-head loops in numpy with the GQA map h -> h // (H/G)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    B, T, H, K = q.shape
    G = k.shape[2]
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(H):
            g = h // (H // G)
            s = q[b, :, h] @ k[b, :, g].T / np.sqrt(K)
            s[np.triu_indices(T, 1)] = -np.inf
            p = np.exp(s - s.max(-1, keepdims=True))
            out[b, :, h] = (p / p.sum(-1, keepdims=True)) @ v[b, :, g]
    return out


@pytest.mark.parametrize("impl", ["xla", "flash", NATIVE])
def test_attention_matches_naive(impl):
    key = jax.random.split(jax.random.key(0), 3)
    T = 300
    q = jax.random.normal(key[0], (2, T, 4, 16))
    k = jax.random.normal(key[1], (2, T, 2, 16))
    v = jax.random.normal(key[2], (2, T, 2, 16))
    got = attention.causal_attention(q, k, v, impl)
    np.testing.assert_allclose(got, naive_attention(q, k, v), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("impl", ["flash", NATIVE])
@pytest.mark.parametrize("shape", [(2, 300, 4, 2, 16), (1, 64, 2, 2, 40), (1, 7, 3, 1, 8)])
def test_gradients_match_xla(impl, shape):
    """(B, T, H, G, K): several blocks with a partial last one; MHA with head_dim not a multiple
    of the kernel's vector width; fewer tokens than one tile."""
    B, T, H, G, K = shape
    key = jax.random.split(jax.random.key(1), 4)
    q, k, v = (jax.random.normal(kk, s) for kk, s in zip(key, [(B, T, H, K), (B, T, G, K), (B, T, G, K)]))
    w = jax.random.normal(key[3], (B, T, H, K))
    grads = {i: jax.jit(jax.grad(lambda q, k, v: jnp.sum(attention.causal_attention(q, k, v, i) * w),
                                 argnums=(0, 1, 2)))(q, k, v) for i in ("xla", impl)}
    for a, b in zip(grads["xla"], grads[impl]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_rotary_matches_reference_formula():
    T, K = 12, 8
    cos, sin = layers.rotary_tables(T, K, 10000.0, jnp.float32)
    x = np.random.default_rng(0).normal(size=(1, T, 2, K)).astype(np.float32)
    got = np.asarray(layers.apply_rotary(jnp.asarray(x), cos, sin))
    inv = 1.0 / (10000.0 ** (np.arange(0, K, 2) / K))
    ang = np.arange(T)[:, None] * inv[None]
    c, s = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    x1, x2 = x[..., :K // 2], x[..., K // 2:]
    want = np.concatenate([x1 * c + x2 * s, -x1 * s + x2 * c], -1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_rms_norm_uses_dtype_epsilon():
    x = jnp.asarray([[3.0, 4.0]], jnp.float32)
    want = np.array([[3.0, 4.0]]) / np.sqrt(12.5 + np.finfo(np.float32).eps)
    np.testing.assert_allclose(layers.rms_norm(x), want, rtol=1e-7)


def test_softcap_bounds_logits():
    model = M.build_model(dataclasses.replace(TINY, logit_softcap=2.0))
    params = perturbed(model, scale=3.0)
    logits = jax.jit(model.logits)(params, jnp.zeros((1, 8), jnp.int32))  # jitted: op by op took seconds
    assert float(jnp.max(jnp.abs(logits))) <= 2.0


def test_untied_head():
    cfg = dataclasses.replace(TINY, tie_embeddings=False)
    p = M.build_model(cfg).init(jax.random.key(0))
    assert p["lm_head"]["weight"].shape == (cfg.vocab_size, cfg.model_dim)
    assert not np.any(p["lm_head"]["weight"])
    assert np.std(p["tok_emb"]["weight"]) == pytest.approx(1.0, rel=0.1)  # nn.Embedding default


def test_initial_loss_is_uniform():
    """Zero-init output projections + tiny embedding: the first loss is ln V, as the reference's 6.93."""
    model = M.build_model(TINY)
    params = jax.jit(model.init)(jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (2, 33), 0, TINY.vocab_size)
    loss = jax.jit(model.loss)(params, ids[:, :-1], ids[:, 1:])
    assert float(loss) == pytest.approx(np.log(TINY.vocab_size), abs=0.01)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_slot_deltas_are_per_virtual_layer(scan_layers):
    """Test-time adapters ride on virtual slots (a hook on the pass): one delta shared by every pass
    of a looped layer equals editing that layer's weight; a delta on one pass changes only what that
    pass sees."""
    from pgolf_jax.evaluation.ttt import SlotAdapters
    cfg = dataclasses.replace(TINY, num_loops=2, loop_start=1, loop_end=2, attention_impl="xla",
                              scan_layers=scan_layers)
    model = M.build_model(cfg)
    params = jax.jit(model.init)(jax.random.key(0))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [a + 0.05 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
    ids = jax.random.randint(jax.random.key(2), (2, 12), 0, 96)
    slots = model.module(params).layers
    assert model.num_slots() == len(slots) == 9 and slots.count(1) == 3
    d_L = 0.1 * jax.random.normal(jax.random.key(3), (cfg.num_layers, 128, 64))  # mlp.fc: (hidden, dim)
    shared = {"mlp.fc.weight": d_L[jnp.asarray(slots)]}
    edited = jax.tree.map(lambda a: a, params)
    edited["blocks"]["mlp"]["fc"]["weight"] = params["blocks"]["mlp"]["fc"]["weight"] + d_L
    # a delta d as full-rank factors: A = I, B = d (the hook adds (x A^T) B^T = x d^T)
    eye = jnp.eye(64)[None].repeat(len(slots), 0)
    logits = jax.jit(lambda p, i, d: model.logits(p, i, True, hook=SlotAdapters(
        {k: (eye, v) for k, v in d.items()})))
    np.testing.assert_allclose(logits(params, ids, shared), model.logits(edited, ids), rtol=1e-5, atol=1e-5)
    second_pass = slots.index(1) + 1  # layer 1's second visit
    one = {"mlp.fc.weight": shared["mlp.fc.weight"].at[second_pass].add(0.2)}
    assert float(jnp.abs(logits(params, ids, one) - logits(params, ids, shared)).max()) > 1e-3


def test_parallel_adapters_read_the_sublayer_input():
    """Parallel adapters at the hook sites attn / mlp add norm(input) @ D^T to a sublayer's output
    before its scale: with the MLP branch silenced, an attn adapter changes the block output by
    exactly that."""
    from pgolf_jax.evaluation.ttt import SlotAdapters
    from flax import nnx
    cfg = dataclasses.replace(TINY, attention_impl="xla")
    block = M.Block(cfg, rngs=nnx.Rngs(params=0))
    block.mlp_scale[...] = jnp.zeros_like(block.mlp_scale[...])  # isolate the attention branch
    block.attn_scale[...] = jnp.full_like(block.attn_scale[...], 0.5)
    B, T, D = 2, 8, cfg.model_dim
    x = jax.random.normal(jax.random.key(1), (B * T, D))
    ctx = layers.Pass(shape_BT=(B, T), rope=layers.rotary_tables(T, D // cfg.num_heads, cfg.rope_base, jnp.float32))
    d = 0.1 * jax.random.normal(jax.random.key(2), (D, D))

    def hooked(site):  # one virtual slot (0) with a parallel adapter at `site`
        return dataclasses.replace(ctx.at(0, 0), hook=SlotAdapters({site: (jnp.eye(D)[None], d[None])}))

    base = block(x, x, 0, ctx)
    with_attn = block(x, x, 0, hooked("attn"))
    mixed = block.resid_mix[...][0] * x + block.resid_mix[...][1] * x
    np.testing.assert_allclose(with_attn - base, 0.5 * layers.rms_norm(mixed) @ d.T, rtol=1e-5, atol=1e-5)
    attn_out = base  # with mlp_scale = 0 the block output is the post-attention stream: the MLP input
    block.mlp_scale[...] = jnp.ones_like(block.mlp_scale[...])
    np.testing.assert_allclose(block(x, x, 0, hooked("mlp")) - block(x, x, 0, ctx),
                               layers.rms_norm(attn_out) @ d.T, rtol=1e-4, atol=1e-4)
