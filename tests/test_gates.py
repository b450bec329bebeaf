"""Seam: the attention gates (model.attn_gate: output_gate, gated_attn, sparse_gate) and QuantGate
(quant.gate_int8): their values at init, where they act, and the export of their weights."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pgolf_jax import config as C
from pgolf_jax.model import kernels
from pgolf_jax.model.attention import GQA
from pgolf_jax.model.gates import GatedAttn, SparseGate
from pgolf_jax.model.gpt import build_model
from pgolf_jax.model.layers import Pass, rotary_tables
from pgolf_jax.model.params import ParamSpec, flat_specs
from pgolf_jax.quant import artifact
from pgolf_jax.quant.export import dequantize, name_rules, quantize_gate_rows, quantize_int8, quantize_mixed
from pgolf_jax.quant.interop import flatten_params
from conftest import TINY_PRESET  # noqa: E402

TINY = C.ModelConfig(vocab_size=96, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2, attention_impl="xla")
B, T = 2, 16


def _attention(cfg):
    """A GQA of cfg with a non-zero output projection, its pass, and an input n."""
    attn = GQA(cfg, rngs=nnx.Rngs(0))
    attn.proj.weight[...] = 0.1 * jax.random.normal(jax.random.key(1), attn.proj.weight.shape)
    K = cfg.model_dim // cfg.num_heads
    ctx = Pass(shape_BT=(B, T), rope=rotary_tables(T, K, cfg.rope_base, jnp.float32))
    return attn, ctx, jax.random.normal(jax.random.key(2), (B * T, cfg.model_dim))


def test_output_gate_is_the_identity_at_init():
    """#1667: W = 0 (heads, 12) gives 2 sigmoid(0) = 1: the attention output equals the gateless one."""
    attn, ctx, n = _attention(TINY.replace(attn_gate="output_gate"))
    assert attn.attn_gate.weight.shape == (4, 12) and not np.any(np.asarray(attn.attn_gate.weight[...]))
    plain, _, _ = _attention(TINY)
    for xsa in (0.0, 1.0):
        np.testing.assert_allclose(np.asarray(attn(n, ctx, xsa=xsa)), np.asarray(plain(n, ctx, xsa=xsa)),
                                   rtol=1e-6, atol=1e-7)


def test_sparse_gate_is_exactly_one_half_at_init():
    """#1787: W = 0 gives sigmoid(scale * 0) = 0.5 for every token and head, whatever the scale; the
    attention output (after the projection) is exactly half the gateless one."""
    attn, ctx, n = _attention(TINY.replace(attn_gate="sparse_gate", sparse_gate=dict(scale=0.5)))
    assert np.all(np.asarray(attn.attn_gate(n)) == 0.5)
    plain, _, _ = _attention(TINY)
    np.testing.assert_array_equal(np.asarray(attn(n, ctx)), 0.5 * np.asarray(plain(n, ctx)))
    one = SparseGate(TINY.replace(attn_gate="sparse_gate"), rngs=nnx.Rngs(0))
    assert np.all(np.asarray(one(100 * n)) == 0.5)


def test_sparse_gate_reads_the_first_width_channels_with_its_scale():
    cfg = TINY.replace(attn_gate="sparse_gate", sparse_gate=dict(width=8, scale=0.5))
    attn, _, n = _attention(cfg)
    w = jax.random.normal(jax.random.key(4), (4, 8))
    attn.attn_gate.weight[...] = w
    want = jax.nn.sigmoid(0.5 * n[:, :8] @ w.T)
    np.testing.assert_allclose(np.asarray(attn.attn_gate(n)), np.asarray(want), rtol=1e-6)
    assert np.array_equal(attn.attn_gate(n.at[:, 8:].set(7.0)), attn.attn_gate(n))  # blind past width


def test_gated_attn_init_std_and_shape():
    """#1736: W (heads, model_dim) ~ N(0, init_std^2), one per layer."""
    shapes = jax.eval_shape(build_model(TINY.replace(attn_gate="gated_attn")).init, jax.random.key(0))
    assert shapes["blocks"]["attn"]["attn_gate"]["weight"].shape == (2, 4, 64)
    for std in (0.005, 0.02):
        cfg = TINY.replace(model_dim=1024, num_heads=8, attn_gate="gated_attn", gated_attn=dict(init_std=std))
        w = np.asarray(GatedAttn(cfg, rngs=nnx.Rngs(0)).weight[...])
        assert w.shape == (8, 1024)
        assert abs(w.std() / std - 1) < 0.05 and abs(w.mean()) < std / 20  # 8192 draws: std error ~0.8%


def test_the_gate_acts_after_xsa_and_before_the_projection():
    """y_h <- g_h(n) y_h on every head of the XSA output: projection^-1 of the output is g * y."""
    cfg = TINY.replace(attn_gate="gated_attn", gated_attn=dict(init_std=0.5))
    attn, ctx, n = _attention(cfg)
    plain = GQA(TINY, rngs=nnx.Rngs(0))
    P = np.asarray(attn.proj.weight[...], np.float64)  # (D, D), invertible almost surely
    for xsa in (0.0, 1.0):
        y_gate = np.linalg.solve(P, np.asarray(attn(n, ctx, xsa=xsa), np.float64).T).T.reshape(B * T, 4, 16)
        plain.proj.weight[...] = attn.proj.weight[...]
        y = np.linalg.solve(P, np.asarray(plain(n, ctx, xsa=xsa), np.float64).T).T.reshape(B * T, 4, 16)
        np.testing.assert_allclose(y_gate, np.asarray(attn.attn_gate(n))[..., None] * y, rtol=2e-3, atol=2e-4)


def test_every_cpu_attention_kernel_takes_the_gate():
    """The gate sits outside the kernel: flash (and the native kernel where it builds) give the
    xla path's gated output; cudnn is lowered in tests/test_lowering.py."""
    cfg = TINY.replace(attn_gate="gated_attn", gated_attn=dict(init_std=0.5))
    attn, ctx, n = _attention(cfg)
    want = np.asarray(attn(n, ctx, xsa=1.0))
    for impl in ("flash", "fused_cpu") if kernels.available() else ("flash",):
        attn.impl = impl
        np.testing.assert_allclose(np.asarray(attn(n, ctx, xsa=1.0)), want, rtol=1e-4, atol=1e-5, err_msg=impl)


def test_gate_weights_are_scalar_adam_with_the_gate_rule():
    model = build_model(TINY.replace(attn_gate="sparse_gate"))
    spec = model.param_specs()["blocks"]["attn"]["attn_gate"]["weight"]
    assert (spec.group, spec.quant, spec.hessian) == ("scalar", "gate", False)


# ---------------------------------------------------------------------------------------------
# QuantGate (quant.gate_int8)


def test_quant_gate_round_trip_error_is_half_a_step():
    """Symmetric int8 rows, scale = max|row| / 127 in fp16: every value within half its row's step;
    the row maximum is a code of +-127 (rows whose scale is an fp16 normal); a zero row stays zero."""
    w = np.asarray(jax.random.normal(jax.random.key(5), (8, 512)), np.float32) * np.logspace(-2, 1, 8)[:, None]
    w[3] = 0
    q, s = quantize_gate_rows(w)
    assert q.dtype == np.int8 and s.dtype == np.float16 and s.shape == (8,)
    back = q.astype(np.float32) * s.astype(np.float32)[:, None]
    step = s.astype(np.float32)[:, None]
    assert np.all(np.abs(back - w) <= 0.5 * step + 1e-9)
    assert np.all(np.abs(q[np.arange(8) != 3]).max(axis=1) == 127) and not np.any(back[3])


@functools.lru_cache(maxsize=None)
def _tiny_weights(gate: str):
    """The tiny preset's model with `gate`: N(0, 0.02^2) weights by reference name (shapes from
    eval_shape, nothing compiled) and each tensor's declared rule."""
    model = build_model(C.load(TINY_PRESET, {"model.attn_gate": gate}).model)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: (0.02 * rng.standard_normal(a.shape)).astype(a.dtype), shapes)
    return flatten_params(params), flat_specs(model.param_specs(), params)


def _tiny_export(gate: str, gate_int8: bool, scheme: str = "rtn"):
    """The quant object of _tiny_weights(gate) and its artifact's bytes (zstd-22)."""
    named, rules = _tiny_weights(gate)
    q = C.load(TINY_PRESET, {"model.attn_gate": gate, "quant.gate_int8": gate_int8, "quant.scheme": scheme}).quant
    obj = (quantize_mixed(named, rules, q)[0] if scheme == "rtn"
           else quantize_int8(named, rules, q.clip_percentile, q.keep_float_max_numel, q.gate_int8)[0])
    return named, obj, len(artifact.pack(obj, "zstd", 22))


@pytest.mark.parametrize("gate", ["gated_attn", "sparse_gate"])
def test_quant_gate_stores_int8_rows_and_saves_bytes(gate):
    named, fp16, _ = _tiny_export(gate, False)
    _, int8, _ = _tiny_export(gate, True)
    names = [n for n in named if n.endswith("attn_gate.weight")]
    assert len(names) == 2
    for n in names:
        assert n in fp16["passthrough"] and fp16["passthrough"][n].dtype == np.float16
        assert n not in int8["passthrough"] and int8["quantized"][n].dtype == np.int8
        rows, cols = named[n].shape
        assert fp16["passthrough"][n].nbytes - (int8["quantized"][n].nbytes + int8["scales"][n].nbytes) == \
            rows * cols - 2 * rows
    back = dequantize(artifact.unpack(artifact.pack(int8, "zstd", 22)))
    for n in names:
        step = np.asarray(int8["scales"][n], np.float32)[:, None]
        assert np.all(np.abs(back[n] - named[n]) <= 0.5 * step + 1e-9)
    others = [n for n in named if n not in names]
    for n in others:  # nothing else changed
        np.testing.assert_array_equal(back[n], dequantize(fp16)[n])


def test_quant_gate_saves_40kb_at_the_records_shapes():
    """#1736's gates (11 layers x 8 heads x 512) alone: fp16 passthrough against int8 rows, zstd-22
    (the record reports ~40 KB; synthetic N(0, 0.05^2) weights here)."""
    rng = np.random.default_rng(0)
    named = {f"blocks.{i}.attn.attn_gate.weight": (0.05 * rng.standard_normal((8, 512))).astype(np.float32)
             for i in range(11)}
    rules = {n: ParamSpec("scalar", "gate", hessian=False) for n in named}
    q = C.QuantConfig(scheme="rtn")
    fp16, int8 = (len(artifact.pack(quantize_mixed(named, rules, q.replace(gate_int8=f))[0], "zstd", 22))
                  for f in (False, True))
    assert fp16 - int8 > 38_000, (fp16, int8)


def test_gates_are_control_tensors_in_the_int8_format_unless_quant_gate():
    named, fp32, _ = _tiny_export("output_gate", False, scheme="int8_per_row")
    _, int8, _ = _tiny_export("output_gate", True, scheme="int8_per_row")
    n = "blocks.0.attn.attn_gate.weight"
    assert fp32["passthrough"][n].dtype == np.float32
    assert int8["quantized"][n].dtype == np.int8 and int8["qmeta"][n]["scheme"] == "per_row"
    step = np.asarray(int8["scales"][n], np.float32)[:, None]
    assert np.all(np.abs(dequantize(int8)[n] - named[n]) <= 0.5 * step + 1e-9)


def test_the_records_gate_tensors_take_the_gate_rule_by_name():
    """A record's own state dict (no specs): attn_gate_proj / attn_gate_w are gates, as QuantGate finds them."""
    rules = name_rules({"blocks.0.attn.attn_gate_w": 0, "blocks.0.attn.attn_gate_proj.weight": 0,
                        "blocks.0.attn_scale": 0})
    assert [r.quant for r in rules.values()] == ["gate", "gate", "control"]


# ---------------------------------------------------------------------------------------------
# refused combinations


@pytest.mark.parametrize("over,pattern", [
    (["model.attn_gate=sigmoid"], r"model.attn_gate='sigmoid' is not registered; choose from , output_gate"),
    (["model.attn_gate=sparse_gate", "model.sparse_gate.width=65"],
     r"model.sparse_gate.width=65 exceeds model.model_dim=64"),
    (["model.attn_gate=sparse_gate", "model.sparse_gate.scale=0"], r"model.sparse_gate.scale=0.0 must be > 0"),
    (["model.attn_gate=output_gate", "model.sparse_gate.scale=0.5"],
     r"model.sparse_gate.\* is set but model.attn_gate does not select sparse_gate"),
    (["model.attn_gate=gated_attn", "model.mixers=s4d_lin*2"],
     r"model.attn_gate=gated_attn gates attention; model.mixers='s4d_lin\*2' leaves no attention layer"),
    (["quant.gate_int8=true"], r"quant.gate_int8 stores the attention gates as int8 rows; model.attn_gate='' "),
    (["model.family=hopfield", "model.attn_gate=output_gate"],
     r"model.family=hopfield is not a GPT: model.attn_gate='output_gate' does not apply"),
])
def test_bad_gate_configs_are_one_line(over, pattern, refused, tmp_path):
    refused(["--config", TINY_PRESET, *over, f"train.out_dir={tmp_path}"], 2, pattern, watch=[tmp_path])


def test_default_config_has_no_gate():
    assert C.ModelConfig().attn_gate == "" and not C.QuantConfig().gate_int8
    params = jax.eval_shape(build_model(TINY).init, jax.random.key(0))
    assert "attn_gate" not in params["blocks"]["attn"]
    assert dataclasses.replace(TINY, attn_gate="").attn_gate == ""
