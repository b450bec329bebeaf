"""quant.compressor=pergroup (#1855's per-group lrzip compression): the greedy nearest-neighbour
order's defining property, and an exact pack/unpack of a tiny model's quantized state."""

import dataclasses
import shutil

import numpy as np
import pytest

from conftest import TINY_PRESET
from pgolf_jax import config as C
from pgolf_jax.errors import ArtifactError, ConfigError
from pgolf_jax.quant import artifact, groupzip

needs_lrzip = pytest.mark.skipif(shutil.which("lrzip") is None, reason="needs the lrzip binary (apt-get install lrzip)")


def test_nearest_neighbour_order_is_greedy_l1_from_row_0():
    """Row 0 first; each next row is an unused row at least as close (L1) to the previous one as every
    other unused row, the lowest index among equals."""
    rng = np.random.default_rng(0)
    codes = rng.integers(-3, 4, size=(40, 6)).astype(np.int8)
    codes[7] = codes[3]  # exact ties
    codes[21] = codes[3]
    order = groupzip.nearest_neighbour_order(codes)
    assert sorted(order.tolist()) == list(range(40)) and order[0] == 0
    wide = codes.astype(np.int64)
    for i in range(1, len(order)):
        unused = sorted(order[i:].tolist())
        dist = [np.abs(wide[j] - wide[order[i - 1]]).sum() for j in unused]
        assert order[i] == unused[int(np.argmin(dist))]
    assert order[order.tolist().index(3) + 1] == 7  # a duplicate row follows at distance 0


def tiny_quantized_state():
    """The tiny preset's model (its parameter tree, Gaussian values: no compile), every matrix
    RTN-quantized to int8 codes."""
    import jax

    from pgolf_jax.model.gpt import build_model
    from pgolf_jax.model.params import flat_specs
    from pgolf_jax.quant.export import quantize_mixed
    from pgolf_jax.quant.interop import flatten_params

    cfg = C.load(TINY_PRESET, {"quant.scheme": "rtn", "quant.keep_float_max_numel": 0})
    model = build_model(cfg.model)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype),
                          jax.eval_shape(model.init, jax.random.key(0)))
    named = flatten_params(params)
    obj, _ = quantize_mixed(named, flat_specs(model.param_specs(), params), cfg.quant)
    return obj


@needs_lrzip
def test_pack_unpack_exact_on_a_tiny_model():
    """Every group is filled (2 layers of each role, tok_emb); with and without reordering and
    transposition the payload comes back byte for byte (pack checks its crc32), every tensor the same."""
    obj = tiny_quantized_state()
    raw = artifact.serialize(obj)
    grouped = groupzip._grouped(raw)
    assert sorted(grouped) == sorted(groupzip.GROUPS)
    assert all(len(v) == 2 for k, v in grouped.items() if k != "tok_emb.weight")
    # (lrzip level 1: each level-9 call allocates ~160 MB, ~0.3 s; the seam run packs at level 9)
    body = groupzip.compress(raw, level=1, lgwin=24, reorder=False, transpose=False)
    assert groupzip.decompress(body, len(raw)) == raw
    opts = dataclasses.replace(C.QuantConfig().pergroup, level=1)
    back = artifact.unpack(artifact.pack(obj, "pergroup", opts))  # reordered and transposed
    for slot in ("quantized", "scales", "passthrough"):
        assert set(back[slot]) == set(obj[slot])
        for name, arr in obj[slot].items():
            assert back[slot][name].tobytes() == np.asarray(arr).tobytes()


@needs_lrzip
def test_the_stored_permutation_restores_row_order():
    """A group's stream holds the reordered, transposed codes; the stored permutation's inverse
    puts the rows back."""
    rng = np.random.default_rng(1)
    codes = rng.integers(-20, 21, size=(48, 16)).astype(np.int8)
    obj = {"quantized": {"blocks.0.mlp.fc.weight": codes}, "scales": {}, "passthrough": {}}
    raw = artifact.serialize(obj)
    perms = []
    stream = groupzip._pack_group(raw, "mlp.fc.weight", groupzip._grouped(raw)["mlp.fc.weight"], 3, perms)
    order = np.frombuffer(perms[0], "<u2")
    np.testing.assert_array_equal(order, groupzip.nearest_neighbour_order(codes))
    np.testing.assert_array_equal(np.frombuffer(stream, np.int8).reshape(16, 48), codes[order].T)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    np.testing.assert_array_equal(codes[order][inverse], codes)
    blob = artifact.pack(obj, "pergroup")
    assert artifact.unpack(blob)["quantized"]["blocks.0.mlp.fc.weight"].tobytes() == codes.tobytes()
    flags, streams = groupzip._split(blob[artifact._HEADER.size:])
    assert streams[-1] and not any(streams[:5])  # only the fc group and the permutations are filled


def test_pergroup_options_are_checked():
    with pytest.raises(ConfigError, match=r"quant\.pergroup\.level=10 must be in \[1, 9\]"):
        C.load(TINY_PRESET, {"quant.compressor": "pergroup", "quant.pergroup.level": 10})
    with pytest.raises(ConfigError, match=r"quant\.pergroup\.\* is set but quant\.compressor does not select pergroup"):
        C.load(TINY_PRESET, {"quant.pergroup.lgwin": 22})


def test_a_missing_lrzip_is_one_line_naming_it(monkeypatch, refused, tmp_path):
    """Refused with the config, before any run folder exists; loading such an artifact says the same."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    refused(["--config", TINY_PRESET, "quant.compressor=pergroup", f"train.out_dir={tmp_path}"], 2,
            r"quant\.compressor=pergroup needs the lrzip binary \(ZPAQ\): apt-get install -y lrzip$", [tmp_path])
    with pytest.raises(ArtifactError, match="apt-get install -y lrzip"):
        groupzip.compress(artifact.serialize({"quantized": {"tok_emb.weight": np.ones((4, 4), np.int8)}}))


def test_the_packed_file_holds_the_codec_only_when_selected():
    from pgolf_jax.packing import select, shake

    sources = shake.package_sources(select.repo_root())
    for codec in ("pergroup", "brotli"):
        cfg = C.load(TINY_PRESET, {"quant.compressor": codec})
        files = select.packed_sources(cfg, "cpu", select.repo_root(), sources)
        assert ("pgolf_jax/quant/groupzip.py" in files) == (codec == "pergroup"), codec


def test_a_records_folder_says_the_binary_is_needed():
    from types import SimpleNamespace

    from pgolf_jax.submit import _readme, _requirements

    run = SimpleNamespace(seed=1, sub={"val_bpb": 2.0, "bytes_total": 10, "bytes_model": 8, "bytes_code": 2,
                                       "artifact": "final_model.int8.pergroup"})
    sub = {"val_bpb": 2.0, "val_bpb_std": 0.0, "hardware": "cpu", "technique_summary": "", "compliance": {}}
    for codec in ("pergroup", "zstd"):
        cfg = C.load(TINY_PRESET, {"quant.compressor": codec})
        readme = _readme("x", [run], sub, cfg, None)
        assert ("apt-get install -y lrzip" in readme) == (codec == "pergroup"), codec
        assert any(r.startswith("brotli") for r in _requirements(cfg)) == (codec == "pergroup"), codec
