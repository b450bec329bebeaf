"""Shard format, token stream and loader: round trips, error messages, reference slicing."""

import json
import os

import numpy as np
import pytest

from pgolf_jax.data import shards
from pgolf_jax.data.shards import (
    ShardError,
    TokenLoader,
    TokenStream,
    list_shards,
    load_shard,
    load_val_tokens,
    read_num_tokens,
    write_shard,
)


def _raw_shard(path, magic=shards.MAGIC, version=shards.VERSION, header_n=None, payload=()):
    """Write header and payload bytes by hand, so malformed files can be built."""
    payload = np.asarray(payload, dtype="<u2")
    header = np.zeros(256, dtype="<i4")
    header[0], header[1] = magic, version
    header[2] = len(payload) if header_n is None else header_n
    path.write_bytes(header.tobytes() + payload.tobytes())
    return path


def _make_shards(tmp_path, sizes, prefix="fineweb_train", start=0):
    """Shards with consecutive token values (mod 65536), so every position is recognisable."""
    out, v = [], start
    for i, n in enumerate(sizes):
        toks = (np.arange(v, v + n) % 65536).astype(np.uint16)
        write_shard(tmp_path / f"{prefix}_{i:06d}.bin", toks)
        out.append(toks)
        v += n
    return np.concatenate(out)


def test_round_trip_and_header_layout(tmp_path):
    toks = np.random.default_rng(0).integers(0, 65536, size=1000).astype(np.uint16)
    path = tmp_path / "a.bin"
    write_shard(path, toks)
    raw = path.read_bytes()
    assert len(raw) == 1024 + 2 * 1000
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert header[:3].tolist() == [20240520, 1, 1000] and not header[3:].any()
    assert np.array_equal(np.frombuffer(raw[1024:], dtype="<u2"), toks)
    assert read_num_tokens(path) == 1000
    loaded = load_shard(path)
    assert loaded.dtype == np.uint16 and np.array_equal(loaded, toks)
    assert not loaded.flags.writeable
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # no temp file left behind


def test_write_accepts_int_lists_and_empty(tmp_path):
    write_shard(tmp_path / "l.bin", [0, 1, 65535])
    assert load_shard(tmp_path / "l.bin").tolist() == [0, 1, 65535]
    write_shard(tmp_path / "e.bin", np.zeros(0, dtype=np.int64))
    assert read_num_tokens(tmp_path / "e.bin") == 0 and load_shard(tmp_path / "e.bin").size == 0


@pytest.mark.parametrize("bad", [65536, -1])
def test_write_rejects_out_of_range_ids(tmp_path, bad):
    path = tmp_path / "bad.bin"
    with pytest.raises(ValueError, match=rf"bad\.bin.*token id {bad}"):
        write_shard(path, np.array([5, bad, 7], dtype=np.int64))
    assert not path.exists()


def test_bad_magic_names_file(tmp_path):
    path = _raw_shard(tmp_path / "m.bin", magic=12345, payload=[1, 2])
    with pytest.raises(ShardError, match=r"m\.bin.*bad magic 12345 \(expected 20240520\)"):
        read_num_tokens(path)
    with pytest.raises(ShardError, match=r"m\.bin"):
        load_shard(path)


def test_bad_version_names_file(tmp_path):
    path = _raw_shard(tmp_path / "v.bin", version=2, payload=[1])
    with pytest.raises(ShardError, match=r"v\.bin.*version 2 \(expected 1\)"):
        read_num_tokens(path)


def test_truncated_and_oversized_name_file(tmp_path):
    path = _raw_shard(tmp_path / "t.bin", header_n=600, payload=np.zeros(512))
    with pytest.raises(ShardError, match=r"t\.bin: truncated: 2048 bytes, header says 1024\+2\*600=2224"):
        read_num_tokens(path)
    path = _raw_shard(tmp_path / "o.bin", header_n=3, payload=np.zeros(10))
    with pytest.raises(ShardError, match=r"o\.bin: oversized: 1044 bytes, header says 1024\+2\*3=1030"):
        read_num_tokens(path)
    short = tmp_path / "h.bin"
    short.write_bytes(b"\0" * 100)
    with pytest.raises(ShardError, match=r"h\.bin: 100 bytes, shorter than the 1024-byte"):
        read_num_tokens(short)
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        read_num_tokens(tmp_path / "nope.bin")


def test_empty_glob_names_pattern(tmp_path):
    pattern = str(tmp_path / "fineweb_train_*.bin")
    with pytest.raises(FileNotFoundError, match=r"fineweb_train_\*\.bin"):
        list_shards(pattern)
    with pytest.raises(FileNotFoundError, match=r"fineweb_train_\*\.bin"):
        TokenStream(pattern)


def test_list_shards_sorted(tmp_path):
    for i in (2, 0, 1):
        write_shard(tmp_path / f"s_{i:06d}.bin", [i])
    assert [p.name for p in list_shards(str(tmp_path / "s_*.bin"))] == [f"s_{i:06d}.bin" for i in range(3)]


def test_stream_wraps_across_shards(tmp_path):
    full = _make_shards(tmp_path, [5, 7, 0, 3])  # an empty shard is skipped over
    stream = TokenStream(str(tmp_path / "fineweb_train_*.bin"))
    expected = np.tile(full, 6)
    pos = 0
    for n in [1, 4, 6, 0, 9, 15, 2, 30, 1]:
        chunk = stream.take(n)
        assert chunk.dtype == np.uint16 and len(chunk) == n
        assert np.array_equal(chunk, expected[pos:pos + n]), n
        pos += n


def test_stream_state_restore(tmp_path):
    _make_shards(tmp_path, [5, 7, 3])
    pattern = str(tmp_path / "fineweb_train_*.bin")
    a = TokenStream(pattern)
    a.take(11)
    state = json.loads(json.dumps(a.state()))  # must survive a JSON checkpoint
    want = a.take(20)
    b = TokenStream(pattern)
    b.restore(state)
    assert np.array_equal(b.take(20), want)
    with pytest.raises(ValueError, match="file_index=7 out of range"):
        b.restore({"file_index": 7, "offset": 0})
    with pytest.raises(ValueError, match="offset=99"):
        b.restore({"file_index": 0, "offset": 99})


def _expected_batches(stream_tokens, steps, global_tokens, seq_len, spans):
    """The reference slicing, written out directly: one chunk per step, span r = r-th slice."""
    local = global_tokens // spans
    per_span = local + 1
    pos, out = 0, []
    for _ in range(steps):
        chunk = stream_tokens[pos:pos + spans * per_span].astype(np.int64)
        pos += spans * per_span
        xs = [chunk[r * per_span:(r + 1) * per_span][:-1].reshape(-1, seq_len) for r in range(spans)]
        ys = [chunk[r * per_span:(r + 1) * per_span][1:].reshape(-1, seq_len) for r in range(spans)]
        out.append((np.stack(xs), np.stack(ys)))
    return out


def test_loader_matches_reference_slicing(tmp_path):
    full = _make_shards(tmp_path, [300, 250, 410])
    pattern = str(tmp_path / "fineweb_train_*.bin")
    G, T, S = 128, 8, 4
    loader = TokenLoader(pattern, S)
    for x_ref, y_ref in _expected_batches(np.tile(full, 10), 12, G, T, S):  # 12 steps wrap around
        x, y = loader.next_batch(G, T)
        assert x.dtype == np.int32 and y.dtype == np.int32
        assert x.shape == (S, G // S // T, T)
        assert np.array_equal(x, x_ref) and np.array_equal(y, y_ref)


def test_loader_deterministic_and_resumable(tmp_path):
    _make_shards(tmp_path, [100, 90, 77])
    pattern = str(tmp_path / "fineweb_train_*.bin")
    a, b = TokenLoader(pattern, 2), TokenLoader(pattern, 2)
    for _ in range(5):
        (xa, ya), (xb, yb) = a.next_batch(32, 4), b.next_batch(32, 4)
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    state = a.state()
    want = [a.next_batch(32, 4) for _ in range(6)]
    c = TokenLoader(pattern, 2)
    c.restore(state)
    for x, y in want:
        xc, yc = c.next_batch(32, 4)
        assert np.array_equal(xc, x) and np.array_equal(yc, y)


def test_step_tokens_do_not_depend_on_span_split(tmp_path):
    """8 spans in one call (8 GPUs) == 1 span over 8 calls (1 GPU, 8 micro-steps) == 2 spans x 4 calls."""
    _make_shards(tmp_path, [333, 444, 555])
    pattern = str(tmp_path / "fineweb_train_*.bin")
    G, T = 256, 8
    eight, one, two = TokenLoader(pattern, 8), TokenLoader(pattern, 1), TokenLoader(pattern, 2)
    for _ in range(4):
        x8, y8 = eight.next_batch(G, T)
        x1 = np.concatenate([one.next_batch(G // 8, T)[0] for _ in range(8)])
        parts = [two.next_batch(G // 4, T) for _ in range(4)]
        x2 = np.concatenate([p[0] for p in parts])
        y2 = np.concatenate([p[1] for p in parts])
        assert np.array_equal(x8, x1) and np.array_equal(x8, x2) and np.array_equal(y8, y2)


def test_loader_rejects_indivisible_batch(tmp_path):
    _make_shards(tmp_path, [100])
    loader = TokenLoader(str(tmp_path / "fineweb_train_*.bin"), 8)
    with pytest.raises(ValueError, match=r"train_batch_tokens=100 over 8 spans.*12 tokens.*seq_len=8"):
        loader.next_batch(100, 8)
    with pytest.raises(ValueError, match="num_spans"):
        TokenLoader(str(tmp_path / "fineweb_train_*.bin"), 0)


def test_val_tokens_truncation(tmp_path):
    full = _make_shards(tmp_path, [40, 35], prefix="fineweb_val")  # N = 75
    pattern = str(tmp_path / "fineweb_val_*.bin")
    got = load_val_tokens(pattern, 16)
    assert len(got) == (74 // 16) * 16 + 1 == 65 and np.array_equal(got, full[:65])
    assert len(load_val_tokens(pattern, 74)) == 75
    limited = load_val_tokens(pattern, 16, limit_tokens=40)  # cut to 41 first, then to 33
    assert len(limited) == 33 and np.array_equal(limited, full[:33])
    assert len(load_val_tokens(pattern, 16, limit_tokens=1000)) == 65
    with pytest.raises(ValueError, match=r"fineweb_val_\*\.bin.*seq_len=75"):
        load_val_tokens(pattern, 75)
    with pytest.raises(FileNotFoundError):
        load_val_tokens(str(tmp_path / "nothing_*.bin"), 16)


# --- the records' shuffled loader ---

def _windows_of(x, y):
    return np.concatenate([x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])[:, -1:]], axis=1)


def test_shuffled_loader_draws_every_window_once_per_epoch(tmp_path):
    """Each shard is cut into non-overlapping seq_len + 1 windows after a phase < seq_len; one epoch
    uses each window exactly once (in a shuffled order), then every shard reshuffles."""
    sizes, T = [203, 150, 97], 8
    _make_shards(tmp_path, sizes)
    offsets = np.cumsum([0] + sizes[:-1])
    loader = shards.ShuffledSequenceLoader(str(tmp_path / "fineweb_train_*.bin"), 1, T, seed=3)
    per_epoch = int(loader.remaining.sum())
    starts = {i: sorted(int(s) for s in loader.orders[i]) for i in range(3)}
    for i, n in enumerate(sizes):  # phase in [0, T), stride T, every window inside the shard
        s = starts[i]
        assert 0 <= s[0] < T and np.all(np.diff(s) == T) and s[-1] + T + 1 <= n and s[-1] + 2 * T + 1 > n
    seen = []
    for _ in range(per_epoch // 4):  # half an epoch in batches of two windows
        x, y = loader.next_batch(2 * T, T)
        for w in _windows_of(x, y):
            assert np.array_equal(np.diff(w.astype(np.int64)), np.ones(T)), "a window is one contiguous run"
            seen.append(int(w[0]))
    expected = {int(offsets[i] + s) for i in range(3) for s in starts[i]}
    while loader.remaining.sum() > 0:  # finish the epoch
        seen.extend(int(w[0]) for w in _windows_of(*loader.next_batch(T, T)))
    assert len(seen) == per_epoch and set(seen) == expected and seen != sorted(seen)
    loader.next_batch(T, T)  # the next draw reshuffles every shard
    assert loader.remaining.sum() == sum(len(o) for o in loader.orders) - 1


def test_shuffled_loader_deterministic_resumable_and_span_independent(tmp_path):
    _make_shards(tmp_path, [120, 90, 61])
    pattern = str(tmp_path / "fineweb_train_*.bin")
    G, T = 32, 4
    a, b = shards.ShuffledSequenceLoader(pattern, 2, T), shards.ShuffledSequenceLoader(pattern, 2, T)
    for _ in range(5):
        assert all(np.array_equal(p, q) for p, q in zip(a.next_batch(G, T), b.next_batch(G, T)))
    state = json.loads(json.dumps(a.state()))  # goes through a checkpoint's JSON
    want = [a.next_batch(G, T) for _ in range(40)]  # crosses a reshuffle (about 67 windows per epoch)
    c = shards.ShuffledSequenceLoader(pattern, 2, T)
    c.restore(state)
    for x, y in want:
        xc, yc = c.next_batch(G, T)
        assert np.array_equal(xc, x) and np.array_equal(yc, y)
    # The step's tokens do not depend on how many spans (devices) share it.
    one, four = shards.ShuffledSequenceLoader(pattern, 1, T), shards.ShuffledSequenceLoader(pattern, 4, T)
    for _ in range(6):
        assert np.array_equal(one.next_batch(G, T)[0].reshape(-1), four.next_batch(G, T)[0].reshape(-1))
    other = shards.ShuffledSequenceLoader(pattern, 1, T, seed=1)
    assert not np.array_equal(other.next_batch(G, T)[0], shards.ShuffledSequenceLoader(pattern, 1, T).next_batch(G, T)[0])
    with pytest.raises(ValueError, match="sequential loader"):
        c.restore(TokenLoader(pattern, 2).state())
    with pytest.raises(ValueError, match="shuffled"):
        TokenLoader(pattern, 2).restore(state)
    with pytest.raises(ShardError, match="seq_len \\+ 1 = 1000"):
        shards.ShuffledSequenceLoader(pattern, 1, 999)


REF_RECORD = os.environ.get("PGOLF_REFERENCE_RECORD_TRAIN_GPT")


@pytest.mark.skipif(not REF_RECORD, reason="set PGOLF_REFERENCE_RECORD_TRAIN_GPT=path/to/a record's train_gpt.py "
                                           "with ShuffledSequenceLoader (e.g. #1493's)")
def test_shuffled_loader_matches_the_records(tmp_path):
    """Seed 0 on one span is the reference's ShuffledSequenceLoader on rank 0 of 1, through a reshuffle."""
    import glob as glob_mod
    import re
    import types
    from pathlib import Path
    torch = pytest.importorskip("torch")
    src = Path(REF_RECORD).read_text()
    start = src.index("_SHARD_HEADER_BYTES=")
    end = re.search(r"^class (?!ShuffledSequenceLoader)", src[src.index("class ShuffledSequenceLoader"):], re.M)
    code = src[start:src.index("class ShuffledSequenceLoader") + end.start()]
    ns = {"np": np, "torch": torch, "glob": glob_mod, "Path": Path}
    exec(code, ns)  # only the loader and its shard helpers (the user's file, never vendored)
    _make_shards(tmp_path, [3000, 2100, 777])
    pattern = str(tmp_path / "fineweb_train_*.bin")
    T, G = 16, 64
    ref = ns["ShuffledSequenceLoader"](types.SimpleNamespace(world_size=1, rank=0, train_seq_len=T, train_files=pattern),
                                      torch.device("cpu"))
    ours = shards.ShuffledSequenceLoader(pattern, 1, T, seed=0)
    for step in range(400 * T // G + 10):
        rx, ry = ref.next_batch(G, 1)
        x, y = ours.next_batch(G, T)
        assert np.array_equal(rx.numpy(), x.reshape(-1, T)) and np.array_equal(ry.numpy(), y.reshape(-1, T)), step
