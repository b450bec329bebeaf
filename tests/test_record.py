"""The #1809 / #1493 record stack: each piece's defining property, and the presets."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pgolf_jax import config as C
from pgolf_jax.model.attention import exclusive_self_attention
from pgolf_jax.model.embeddings import BigramHash, SmearGateV1, SmearGateV2, bigram_hash
from pgolf_jax.model.gpt import build_model, count_params
from pgolf_jax.model.layers import Pass, apply_rotary, leaky_relu2, rms_norm, rotary_tables
from pgolf_jax.model.topology import num_skips, repeat_in_place_layers, unet_layers
from conftest import perturbed  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
STACK = C.ModelConfig(vocab_size=96, num_layers=5, model_dim=64, num_heads=4, num_kv_heads=2, mlp_mult=4.0,
                      activation="leaky_relu2", rope_dims=8, qk_gain_init=5.25, ln_scale=True, xsa_last_n=5,
                      skip_gates_enabled=True, num_loops=2, loop_start=2, loop_end=3, enable_looping_at=0.35,
                      parallel_residual_start=3, ortho_init=True, attention_impl="xla")




def test_record_presets_parameter_counts(capsys):
    from pgolf_jax.cli import main
    assert main(["--config", str(CONFIGS / "record_1809.py"), "--dry-run"]) == 0
    assert "model_params:35944536" in capsys.readouterr().out
    r1493 = C.load(CONFIGS / "record_1493.py")
    assert (r1493.optim.ns_coefficients, r1493.optim.muon_backend_steps, r1493.train.min_lr) == ("ns5", 5, 0.0)
    assert r1493.model == C.load(CONFIGS / "record_1809.py").model


def test_record_schedule_is_17_virtual_layers():
    cfg = C.load(CONFIGS / "record_1809.py").model
    layers = unet_layers(cfg)
    assert layers == (0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10)
    assert layers[:8] == (0, 1, 2, 3, 4, 5, 3, 4) and layers[8:] == (5, 3, 4, 5, 6, 7, 8, 9, 10)
    assert num_skips(layers) == 8
    in_place = dataclasses.replace(cfg, num_layers=9, loop_start=3, loop_end=4, num_loops=1)
    assert repeat_in_place_layers(in_place) == (0, 1, 2, 3, 3, 4, 4, 5, 6, 7, 8)
    assert build_model(cfg).has_two_schedules


def reference_forward(model, params, ids, layers):
    """An explicit U-Net walk written from the spec (not model._run_unet): blocks called one by
    one in virtual order, encoder outputs pushed, popped in reverse with lerp-gated skips."""
    gpt = model.module(params)
    B, T = ids.shape
    cfg = model.cfg
    x = gpt.embed(ids).reshape(B * T, cfg.model_dim)
    x0 = x
    ctx = Pass(shape_BT=(B, T), rope=rotary_tables(T, cfg.rope_dims, cfg.rope_base, jnp.float32))
    graphdef, stacked = nnx.split(gpt.blocks)
    n_enc = len(layers) // 2
    enc, dec = layers[:n_enc], layers[n_enc:]
    w, g = params["skip_weights"], jax.nn.sigmoid(params["skip_gates"])
    skips = []
    for i in enc:
        x = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], stacked))(x, x0, i, ctx)
        skips.append(x)
    for k, i in enumerate(dec):
        if skips:
            s = w[k] * skips.pop()
            x = s + g[k] * (x - s)  # torch.lerp(s, x, g)
        x = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], stacked))(x, x0, i, ctx)
    return rms_norm(x).reshape(B, T, cfg.model_dim)


@pytest.mark.parametrize("looped", [True, False])
def test_looped_scan_equals_explicit_unrolled_reference(looped):
    model = build_model(STACK)
    params = perturbed(model)
    ids = jax.random.randint(jax.random.key(2), (2, 24), 0, STACK.vocab_size)
    layers = unet_layers(STACK) if looped else tuple(range(STACK.num_layers))
    want = jax.jit(lambda p, i: reference_forward(model, p, i, layers))(params, ids)
    for scan in (True, False):
        m = build_model(dataclasses.replace(STACK, scan_layers=scan))
        got = jax.jit(lambda p, i: m.hidden(p, i, looped))(params, ids)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    # Gradients through the looped scan reach every physical layer.
    grads = jax.jit(jax.grad(lambda p: model.loss(p, ids, ids, looped)))(params)
    assert np.all(np.abs(np.asarray(grads["blocks"]["attn"]["c_q"]["weight"])).sum(axis=(1, 2)) > 0)


def block_reference(block, x, x0, layer, ctx, cfg):
    """The record block (spec 2.2 item 5) with XSA and parallel residual rules by physical index."""
    c = 1.0 / np.sqrt(layer + 1)
    mix = block.resid_mix[...]
    x_in = mix[0] * x + mix[1] * x0
    xsa = 1.0 if layer >= cfg.num_layers - cfg.xsa_last_n else 0.0
    a = block.attn(rms_norm(x_in) * c, ctx, xsa=xsa)
    if layer >= cfg.parallel_residual_start:
        return x_in + block.attn_scale[...] * a + block.mlp_scale[...] * block.mlp(rms_norm(x_in) * c)
    h = x_in + block.attn_scale[...] * a
    return h + block.mlp_scale[...] * block.mlp(rms_norm(h) * c)


def test_block_rules_follow_the_physical_layer():
    cfg = dataclasses.replace(STACK, xsa_last_n=2, parallel_residual_start=3)
    model = build_model(cfg)
    params = perturbed(model)
    gpt = model.module(params)
    graphdef, stacked = nnx.split(gpt.blocks)
    B, T = 2, 16
    x = jax.random.normal(jax.random.key(3), (B * T, cfg.model_dim))
    x0 = jax.random.normal(jax.random.key(4), (B * T, cfg.model_dim))
    ctx = Pass(shape_BT=(B, T), rope=rotary_tables(T, cfg.rope_dims, cfg.rope_base, jnp.float32))
    for layer in range(cfg.num_layers):
        block = nnx.merge(graphdef, jax.tree.map(lambda a: a[layer], stacked))
        want = block_reference(block, x, x0, layer, ctx, cfg)
        np.testing.assert_allclose(block(x, x0, layer, ctx), want, rtol=1e-5, atol=1e-5)
        traced = jax.jit(lambda l: block(x, x0, l, ctx))(jnp.int32(layer))  # as under scan
        np.testing.assert_allclose(traced, want, rtol=1e-5, atol=1e-5)


def test_xsa_removes_the_own_value_component():
    key = jax.random.split(jax.random.key(5), 2)
    y = jax.random.normal(key[0], (2, 7, 4, 16))
    v = jax.random.normal(key[1], (2, 7, 2, 16))
    out = exclusive_self_attention(y, v)
    vn = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    for h in range(4):
        dots = jnp.sum(out[:, :, h] * vn[:, :, h // 2], axis=-1)
        np.testing.assert_allclose(dots, 0.0, atol=1e-5)
        # The orthogonal part is untouched.
        resid = y[:, :, h] - jnp.sum(y[:, :, h] * vn[:, :, h // 2], -1, keepdims=True) * vn[:, :, h // 2]
        np.testing.assert_allclose(out[:, :, h], resid, atol=1e-5)


def test_partial_rope_and_ntk_rescale():
    T, K, rd = 10, 32, 8
    x = jax.random.normal(jax.random.key(6), (1, T, 2, K))
    cos, sin = rotary_tables(T, rd, 10000.0, jnp.float32)
    out = apply_rotary(x, cos, sin)
    np.testing.assert_array_equal(out[..., rd:], x[..., rd:])  # dims past rope_dims pass through
    assert not np.allclose(out[..., :rd], x[..., :rd])
    # Beyond the training length the base becomes base * (T/train)^(rd/(rd-2)).
    cos2, _ = rotary_tables(T, rd, 10000.0, jnp.float32, train_seq_len=5)
    base = 10000.0 * 2.0 ** (rd / (rd - 2))
    inv = 1.0 / base ** (np.arange(0, rd, 2) / rd)
    np.testing.assert_allclose(cos2, np.cos(np.arange(T)[:, None] * inv[None]), rtol=1e-5, atol=1e-6)
    cos3, _ = rotary_tables(T, rd, 10000.0, jnp.float32, train_seq_len=T)
    np.testing.assert_array_equal(cos3, cos)  # not longer than training: unchanged


def test_leaky_relu_squared():
    x = jnp.asarray([-2.0, -0.5, 0.0, 1.5])
    np.testing.assert_allclose(leaky_relu2(x), [1.0, 0.0625, 0.0, 2.25])


def test_orthogonal_init_and_qk_gain():
    params = jax.jit(build_model(STACK).init)(jax.random.key(0))
    fc = np.asarray(params["blocks"]["mlp"]["fc"]["weight"])  # (L, 256, 64): tall
    for w in fc:
        np.testing.assert_allclose(w.T @ w, np.eye(64), atol=1e-5)
    assert not np.allclose(fc[0], fc[1])
    q = np.asarray(params["blocks"]["attn"]["c_q"]["weight"][0])
    np.testing.assert_allclose(q @ q.T, np.eye(64), atol=1e-5)
    kv = np.asarray(params["blocks"]["attn"]["c_k"]["weight"][0])  # (32, 64): a dim < 64, torch default
    assert np.abs(kv).max() <= 1 / np.sqrt(64)
    assert not np.any(params["blocks"]["mlp"]["proj"]["weight"])
    np.testing.assert_array_equal(params["blocks"]["attn"]["q_gain"], 5.25)
    np.testing.assert_array_equal(params["skip_gates"], 0.0)


def test_smear_gates():
    x = jax.random.normal(jax.random.key(7), (2, 5, 16))
    v1 = SmearGateV1(16)
    out = v1(x)  # gate 0 -> sigmoid 0.5
    np.testing.assert_allclose(out[:, 0], 0.5 * x[:, 0], rtol=1e-6)
    np.testing.assert_allclose(out[:, 1:], 0.5 * x[:, 1:] + 0.5 * x[:, :-1], rtol=1e-6)
    ids = jnp.asarray([[5, 1, 7, 8, 1], [1, 3, 4, 5, 6]])
    v2 = SmearGateV2(bos_fix=True)
    np.testing.assert_array_equal(v2(x, ids), x)  # identity at init
    v2.smear_lambda[...] = jnp.ones((1,))
    out = v2(x, ids)
    bos = np.asarray(ids == 1)
    np.testing.assert_array_equal(np.asarray(out)[bos], np.asarray(x)[bos])  # never smear into a BOS
    np.testing.assert_allclose(out[0, 2], x[0, 2] + 0.5 * x[0, 1], rtol=1e-6)
    v2.bos_fix = False
    assert not np.allclose(v2(x, ids)[0, 1], x[0, 1])


def test_bigram_hash():
    ids = np.asarray([[3, 700, 12, 12]])
    got = np.asarray(bigram_hash(jnp.asarray(ids), 2048))
    want = [2047] + [((36313 * ids[0, i]) ^ (27191 * ids[0, i - 1])) % 2047 for i in range(1, 4)]
    np.testing.assert_array_equal(got[0], want)
    cfg = dataclasses.replace(STACK, bigram_vocab_size=2048, bigram_dim=32)
    bh = BigramHash(cfg, jnp.float32, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(bh(jnp.asarray(ids), jnp.float32), 0.0)  # zero table: no effect at init
    p = build_model(cfg).init(jax.random.key(0))
    assert p["bigram"]["embed"]["weight"].shape == (2048, 32) and p["bigram"]["scale"] == pytest.approx(0.05)


@pytest.mark.parametrize("extra", [{"smear_gate": "v1"}, {"smear_gate": "v2"}, {"bigram_vocab_size": 512}])
def test_embedding_extras_train(extra):
    from pgolf_jax.optim.optimizers import labels_from_specs
    cfg = dataclasses.replace(STACK, **extra)
    model = build_model(cfg)
    params = perturbed(model)
    ids = jax.random.randint(jax.random.key(8), (2, 16), 0, cfg.vocab_size)
    grads = jax.jit(jax.grad(lambda p: model.loss(p, ids, ids)))(params)
    extra_params = {k: v for k, v in grads.items() if k in ("smear", "bigram")}
    assert extra_params and all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(extra_params))
    labels = labels_from_specs(model.param_specs())
    if "bigram" in labels:
        assert labels["bigram"] == {"embed": {"weight": "embed"}, "proj": {"weight": "matrix"}, "scale": "scalar"}
    else:
        assert set(jax.tree.leaves(labels["smear"])) == {"scalar"}


def test_param_count_matches_record_inventory():
    """reference-spec.md 5.8 inventory, for the #1809 shapes (no banks, no gates)."""
    cfg = C.load(CONFIGS / "record_1809.py").model
    shapes = jax.eval_shape(build_model(cfg).init, jax.random.key(0))
    per_layer = 512 * 512 * 2 + 256 * 512 * 2 + 2048 * 512 * 2
    assert count_params(shapes) == 8192 * 512 + 11 * per_layer + 11 * (8 + 512 + 512 + 1024) + 2 * 8 * 512
