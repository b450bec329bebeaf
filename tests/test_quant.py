import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from pgolf_jax import config as C
from pgolf_jax.quant import artifact
from pgolf_jax.quant import grid as grids
from pgolf_jax.quant.export import dequantize_int8, dequantize_mixed, name_rules, quantize_int8, quantize_mixed
from pgolf_jax.quant.gptq import hessian_error
from pgolf_jax.quant.grid import quantile_rows
from pgolf_jax.quant.qat import fake_quant_tensor, straight_through


def _int8(named, **kw):
    """quantize_int8 of a reference-named state dict under its name rules."""
    return quantize_int8(named, name_rules(named), **kw)


def _mixed(named, q, *args, **kw):
    return quantize_mixed(named, name_rules(named), q, *args, **kw)


def named_state(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "tok_emb.weight": (rng.normal(size=(512, 160)) * 0.02).astype(ml_dtypes.bfloat16),  # > 65,536: int8
        "blocks.0.attn.c_q.weight": (rng.normal(size=(384, 192)) * 0.05).astype(np.float32),
        "blocks.0.attn.q_gain": np.full((4,), 1.5, np.float32),  # control: fp32 passthrough
        "blocks.0.mlp.small.weight": rng.normal(size=(64, 64)).astype(np.float32),  # small: fp16
        "blocks.0.vector": rng.normal(size=(70_000,)).astype(np.float32),  # large non-2-D: per-tensor
        "step": np.array([7], np.int64),
    }


def test_int8_export_semantics():
    sd = named_state()
    obj, stats = quantize_int8(sd, name_rules(sd))
    assert obj["__quant_format__"] == "int8_clean_per_row_v1"
    assert set(obj["quantized"]) == {"tok_emb.weight", "blocks.0.attn.c_q.weight", "blocks.0.vector"}
    assert obj["passthrough"]["blocks.0.attn.q_gain"].dtype == np.float32
    assert obj["passthrough"]["blocks.0.mlp.small.weight"].dtype == np.float16
    assert obj["passthrough_orig_dtypes"]["blocks.0.mlp.small.weight"] == "float32"
    assert obj["scales"]["blocks.0.attn.c_q.weight"].dtype == np.float16
    assert obj["scales"]["blocks.0.vector"].shape == ()
    assert obj["qmeta"] == {"tok_emb.weight": {"scheme": "per_row", "axis": 0},
                            "blocks.0.attn.c_q.weight": {"scheme": "per_row", "axis": 0}}
    assert stats["param_count"] == sum(a.size for a in sd.values())
    out = dequantize_int8(obj)
    assert out["tok_emb.weight"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(out["step"], sd["step"])
    np.testing.assert_array_equal(out["blocks.0.attn.q_gain"], sd["blocks.0.attn.q_gain"])
    w = sd["blocks.0.attn.c_q.weight"]
    q, s = obj["quantized"]["blocks.0.attn.c_q.weight"], obj["scales"]["blocks.0.attn.c_q.weight"].astype(np.float32)
    assert q.dtype == np.int8 and np.abs(q).max() <= 127
    # Every weight inside its row's clip lands within half a step (plus the fp16 rounding of the scale).
    clip = quantile_rows(np.abs(w), 0.9999984)
    inside = np.abs(w) <= clip[:, None]
    err = np.abs(out["blocks.0.attn.c_q.weight"] - w)
    assert np.all(err[inside] <= (0.5 * s[:, None] + np.abs(q) * s[:, None] * 1e-3)[inside])


def test_scale_floor_is_one_over_127():
    w = np.full((4, 70_000 // 4 + 1), 1e-4, np.float32)
    obj, _ = quantize_int8({"m": w}, name_rules({"m": w}))
    np.testing.assert_allclose(obj["scales"]["m"].astype(np.float32), np.float16(1 / 127), rtol=0)
    assert np.all(obj["quantized"]["m"] == 0)


def test_quantile_matches_numpy_linear():
    # float32 rank arithmetic (as torch) differs from numpy's float64 by a few ulps; torch parity
    # is checked exactly in test_interop when the reference script is available.
    a = np.abs(np.random.default_rng(3).normal(size=(7, 513))).astype(np.float32)
    np.testing.assert_allclose(quantile_rows(a, 0.9999984), np.quantile(a.astype(np.float64), 0.9999984, axis=1),
                               rtol=5e-6)
    b = np.arange(10, dtype=np.float32)[None]
    np.testing.assert_allclose(quantile_rows(b, 0.5), [4.5])


@pytest.mark.parametrize("codec", ["zstd", "zlib"])
def test_pack_unpack_is_exact(codec, tmp_path):
    obj, _ = _int8(named_state(1))
    path = tmp_path / f"m.{codec}"
    artifact.write(path, artifact.pack(obj, codec))
    back = artifact.read(path)
    for slot in ("quantized", "scales", "passthrough"):
        assert set(back[slot]) == set(obj[slot])
        for name, arr in obj[slot].items():
            assert back[slot][name].dtype == arr.dtype and back[slot][name].shape == arr.shape
            assert back[slot][name].tobytes() == np.asarray(arr).tobytes()
    assert back["dtypes"] == obj["dtypes"] and back["qmeta"] == obj["qmeta"]
    assert not list(tmp_path.glob(".*tmp*"))  # no temp file left behind


def test_zstd_beats_zlib_on_int8_weights():
    obj, _ = _int8(named_state(2))
    assert len(artifact.pack(obj, "zstd", 22)) < len(artifact.pack(obj, "zlib"))


def test_corrupt_artifacts_are_rejected(tmp_path):
    blob = artifact.pack(_int8(named_state(4))[0], "zstd")
    cases = {
        "bad magic": b"NOTMAGIC" + blob[8:],
        "truncated": blob[: len(blob) // 2],
        "tiny": blob[:10],
        "flipped": blob[:-20] + bytes([blob[-20] ^ 0xFF]) + blob[-19:],
        "codec": blob[:8] + b"\x09" + blob[9:],
    }
    for name, data in cases.items():
        p = tmp_path / f"{name.replace(' ', '_')}.zstd"
        p.write_bytes(data)
        with pytest.raises(artifact.ArtifactError, match=str(p.name)):
            artifact.read(p)
    with pytest.raises(FileNotFoundError):
        artifact.read(tmp_path / "missing.zstd")


def test_manifest_lies_are_caught():
    obj, _ = _int8(named_state(5))
    raw = artifact.serialize(obj)
    import json
    import struct
    import zlib
    mlen = struct.unpack_from("<I", raw)[0]
    manifest = json.loads(raw[4:4 + mlen])
    manifest["tensors"][0]["shape"][0] += 1  # claims more bytes than it has
    m2 = json.dumps(manifest).encode()
    raw2 = struct.pack("<I", len(m2)) + m2 + raw[4 + mlen:]
    blob = struct.pack("<8sB3xQI", artifact.MAGIC, 2, len(raw2), zlib.crc32(raw2)) + artifact.compress(raw2, "zstd")
    with pytest.raises(artifact.ArtifactError, match="does not fit"):
        artifact.unpack(blob)


def test_size_cap():
    assert artifact.check_size(15_000_000, 900_000, 16_000_000, False) == 15_900_000
    with pytest.raises(artifact.ArtifactTooLarge, match="over the 16,000,000-byte cap by 1"):
        artifact.check_size(15_100_001, 900_000, 16_000_000, False)
    assert artifact.check_size(15_100_001, 900_000, 16_000_000, True) == 16_000_001


def test_affine_grid_is_1227s_minmax_formula_and_ships_as_trained():
    w = np.random.default_rng(0).normal(size=(6, 40)).astype(np.float32)
    fq = np.asarray(fake_quant_tensor(jnp.asarray(w), 5, "affine", 0.0))
    lo, step = grids.minmax_params(w, "affine", 5)
    lo32, s32 = lo.astype(np.float32)[:, None], step.astype(np.float32)[:, None]
    np.testing.assert_allclose(s32[:, 0], (w.max(1) - w.min(1)) / 31, rtol=1e-3)  # s = (max - min) / (2^b - 1)
    want = np.clip(np.round((w - lo32) / s32), 0, 31) * s32 + lo32  # q = clamp(round((w - min) / s)), w = q s + min
    np.testing.assert_allclose(fq, want, rtol=1e-6, atol=1e-6)
    assert max(len(np.unique(r)) for r in fq) <= 32
    q = C.QuantConfig(scheme="rtn", grid="affine", mlp_bits=5, keep_float_max_numel=0)
    obj, _ = _mixed({"blocks.0.mlp.fc.weight": w}, q)
    np.testing.assert_allclose(dequantize_mixed(obj)["blocks.0.mlp.fc.weight"], fq, rtol=1e-6, atol=1e-6)
    assert obj["quantized"]["blocks.0.mlp.fc.weight"].dtype == np.int8 and "blocks.0.mlp.fc.weight" in obj["offsets"]


def test_nf5_levels_and_gptq_on_the_grid():
    lv = grids.nf_levels(5)
    z0 = -2.1538746940614555  # Phi^-1(0.5 / 32)
    assert lv[0] == 0 and lv[-1] == 1 and np.all(np.diff(lv) > 0)
    np.testing.assert_allclose(lv + lv[::-1], 1.0, atol=1e-6)  # symmetric quantiles
    assert lv[16] == pytest.approx((0.03917608550309764 - z0) / (-2 * z0), rel=1e-6)  # Phi^-1(16.5 / 32)
    rng = np.random.default_rng(1)
    w = rng.normal(size=(8, 48)).astype(np.float32)
    X = rng.normal(size=(256, 48)) @ rng.normal(size=(48, 48)) * 0.3
    H = X.T @ X
    rtn, _ = _mixed({"blocks.0.attn.c_q.weight": w}, C.QuantConfig(scheme="rtn", grid="nf", attn_bits=5,
                                                                             keep_float_max_numel=0))
    gq, _ = _mixed({"blocks.0.attn.c_q.weight": w}, C.QuantConfig(scheme="gptq", grid="nf", attn_bits=5,
                                                                            keep_float_max_numel=0),
                           {"blocks.0.attn.c_q.weight": H})
    d_rtn, d_gq = (dequantize_mixed(o)["blocks.0.attn.c_q.weight"] for o in (rtn, gq))
    np.testing.assert_allclose(d_rtn, np.asarray(fake_quant_tensor(jnp.asarray(w), 5, "nf", 0.0)), atol=1e-6)
    lo, step = grids.minmax_params(w, "nf", 5)
    on_grid = (d_gq - lo.astype(np.float32)[:, None]) / step.astype(np.float32)[:, None]
    assert np.abs(on_grid[..., None] - lv).min(-1).max() < 1e-5  # GPTQ moves codes, never off the grid
    assert hessian_error(w, d_gq, H) < hessian_error(w, d_rtn, H)


def test_learned_nf_centroids_get_exactly_zero_gradient():
    """#1227's 'learned centroid' QAT: the lookup sits inside the straight-through stop-gradient,
    so the centroids never move (hence no such option); without the STE they would."""
    w = jnp.asarray(np.random.default_rng(2).normal(size=(4, 32)), jnp.float32)
    target = jnp.asarray(np.random.default_rng(3).normal(size=(4, 32)), jnp.float32)

    def loss(levels, ste=True):
        fq = fake_quant_tensor(w, 5, "nf", 0.0, levels=levels)
        return jnp.sum((straight_through(w, fq) if ste else fq) * target)

    levels = jnp.asarray(grids.nf_levels(5))
    g = jax.grad(loss)(levels)
    assert np.all(np.asarray(g) == 0.0)
    assert np.abs(np.asarray(jax.grad(lambda c: loss(c, ste=False))(levels))).sum() > 0
    g_w = jax.grad(lambda w_: jnp.sum(straight_through(w_, fake_quant_tensor(w_, 5, "nf", 0.0)) * target))(w)
    np.testing.assert_array_equal(np.asarray(g_w), np.asarray(target))  # the weights get the identity gradient
