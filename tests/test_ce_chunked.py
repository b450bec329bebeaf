"""train.objective=ce_chunked: ce's loss and gradients without the (B, T, V) logits (issue 25 item 8)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgolf_jax import config as C
from pgolf_jax.errors import ConfigError
from pgolf_jax.model.gpt import build_model, token_nll
from pgolf_jax.model.layers import softcap
from pgolf_jax.train.objectives import ChunkedCrossEntropy, CrossEntropy, chunked_token_nll
from conftest import perturbed  # noqa: E402

TINY = C.ModelConfig(vocab_size=96, num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1, attention_impl="xla")


def full_nll(h, w, y, cap):
    """Today's path: the whole (B, T, V) soft-capped logits, then token_nll."""
    return token_nll(softcap(jnp.einsum("btd,vd->btv", h, w).astype(jnp.float32), cap), y)


def lean_nll(h, w, y, cap, chunk):
    return chunked_token_nll(h, w, y, cap, chunk)


@pytest.mark.parametrize("chunk", [5, 8, 40])  # vocabulary rows per chunk; 40: one chunk
def test_nll_and_its_gradients_in_hidden_states_and_head_equal_the_full_path(chunk):
    kh, kw, ky = jax.random.split(jax.random.key(0), 3)
    h, w = jax.random.normal(kh, (3, 16, 8)), 2.0 * jax.random.normal(kw, (40, 8))
    y, cap = jax.random.randint(ky, (3, 16), 0, 40), 7.0  # a small cap, so the tanh bends
    ref, (gh, gw) = jax.value_and_grad(lambda a, b: jnp.mean(full_nll(a, b, y, cap)), (0, 1))(h, w)
    got, (lh, lw) = jax.jit(jax.value_and_grad(lambda a, b: jnp.mean(lean_nll(a, b, y, cap, chunk)), (0, 1)))(h, w)
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    np.testing.assert_allclose(lh, gh, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(lw, gw, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(lean_nll(h, w, y, cap, chunk), full_nll(h, w, y, cap), rtol=1e-6)


def objectives(**model):
    cfg = C.Config(model=dataclasses.replace(TINY, **model),
                   train=C.TrainConfig().replace(objective="ce_chunked", ce_chunked=dict(vocab_chunk=32)))
    return cfg, CrossEntropy(cfg), ChunkedCrossEntropy(cfg)


@pytest.mark.parametrize("model,tol", [({}, 1e-6), ({"tie_embeddings": False, "logit_softcap": 5.0}, 1e-6),
                                       ({"compute_dtype": "bfloat16"}, 1e-2)], ids=["tied", "untied_cap5", "bf16"])
def test_objective_equals_ce_in_loss_and_every_parameter_gradient(model, tol):
    """bf16 (the GPU's logit dtype before the fp32 cap): the head's matmul rounds per chunk as in the
    full path, but the head's gradient sums over chunks in fp32, so only close, not equal."""
    cfg, ce, lean = objectives(**model)
    m = build_model(cfg.model)
    p = perturbed(m)
    x, y = (jax.random.randint(jax.random.key(s), (2, 32), 0, 96) for s in (1, 2))

    def both(p):
        return [jax.value_and_grad(lambda q, o=o: o(m, q, x, y, True, None), has_aux=True)(p) for o in (ce, lean)]

    ((l0, m0), g0), ((l1, m1), g1) = jax.jit(both)(p)
    np.testing.assert_allclose(l1, l0, rtol=tol)
    np.testing.assert_allclose(m1["ce"], m0["ce"], rtol=tol)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(np.float32(a), np.float32(b), rtol=200 * tol, atol=tol)


def test_the_loss_and_grad_temp_bytes_drop_by_at_least_the_fp32_logits():
    """XLA's own memory analysis (CPU): at B*T = 2048, V = 8192 the full path holds the fp32 logits
    (and their softmax) at once; the chunked one a (B, T, chunk) slice at a time."""
    B, T, D, V, chunk = 4, 512, 32, 8192, 1024
    h, w = jax.ShapeDtypeStruct((B, T, D), jnp.float32), jax.ShapeDtypeStruct((V, D), jnp.float32)
    y = jax.ShapeDtypeStruct((B, T), jnp.int32)

    def temp(nll):
        f = jax.value_and_grad(lambda a, b, t: jnp.mean(nll(a, b, t)), (0, 1))
        return jax.jit(f).lower(h, w, y).compile().memory_analysis().temp_size_in_bytes

    full = temp(lambda a, b, t: full_nll(a, b, t, 30.0))
    lean = temp(lambda a, b, t: lean_nll(a, b, t, 30.0, chunk))
    assert full - lean >= B * T * V * 4, (full, lean)


def test_other_families_and_a_chunk_that_does_not_divide_the_vocabulary_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"train.objective=ce_chunked needs model.family=gpt; got 'mps'"):
        C.override(C.Config(), {"train.objective": "ce_chunked", "model.family": "mps"})
    with pytest.raises(ConfigError, match=r"^train.ce_chunked.vocab_chunk=1000 must divide model.vocab_size=1024$"):
        C.override(C.Config(), {"train.objective": "ce_chunked", "train.ce_chunked.vocab_chunk": 1000})
