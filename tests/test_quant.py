import json
import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from pgolf_jax.quant import artifact
from pgolf_jax.quant.export import dequantize_int8, quantize_int8
from pgolf_jax.quant.grid import quantile_rows


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
    obj, stats = quantize_int8(sd)
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
    obj, _ = quantize_int8({"m": w})
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
    obj, _ = quantize_int8(named_state(1))
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
    obj, _ = quantize_int8(named_state(2))
    assert len(artifact.pack(obj, "zstd", 22)) < len(artifact.pack(obj, "zlib"))


def test_corrupt_artifacts_are_rejected(tmp_path):
    blob = artifact.pack(quantize_int8(named_state(4))[0], "zstd")
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
    obj, _ = quantize_int8(named_state(5))
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


def test_code_bytes_count_what_the_run_imports():
    """Only the modules a process imported are shipped and counted: a module the run does not
    import (the hub download) costs nothing; importing it adds exactly its bytes. Tooling around
    runs (bench, sweeps) is never counted, imported or not."""
    script = """
import json
from pgolf_jax import pipeline  # what the main job imports
from pgolf_jax.quant import artifact
before, n_before = artifact.code_files(), artifact.code_bytes()
import pgolf_jax.data.hub
import pgolf_jax.bench
after, n_after = artifact.code_files(), artifact.code_bytes()
print(json.dumps({"before": [f.name for f in before], "extra": [str(f) for f in set(after) - set(before)],
                  "n_before": n_before, "n_after": n_after}))
"""
    r = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                  env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout)
    assert "pipeline.py" in r["before"] and "run.py" in r["before"] and "export.py" in r["before"]
    assert not {"bench.py", "hub.py", "commands.py"} & set(r["before"])
    extra = [Path(f) for f in r["extra"]]
    assert "hub.py" in {f.name for f in extra} and "bench.py" not in {f.name for f in extra}
    assert r["n_after"] - r["n_before"] == sum(f.stat().st_size for f in extra)
