"""The challenge's token shard format (.bin) and the loaders the trainer reads it with.

A shard is a 1024-byte header of 256 little-endian int32 (magic, version, token count, zeros)
followed by that many little-endian uint16 token ids. Readers check all three against the file
size, so a truncated download or a foreign file fails loudly instead of feeding garbage.
"""

from __future__ import annotations

import glob
import json
import os
import zlib
from pathlib import Path

import numpy as np

from pgolf_jax import registry
from pgolf_jax.fsio import atomic_output

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MAX_TOKENS = 2**31 - 1  # header[2] is an int32
CHECKSUM_KEY = "checksums"  # a manifest dataset entry's {shard file name: "crc32:<8 hex>"}


class ShardError(ValueError):
    """A file that is not a valid challenge shard; the message names the file and the defect."""


def read_num_tokens(path: str | os.PathLike) -> int:
    """Validate a shard's header and size; return its token count."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"shard not found: {path}") from None
    if size < HEADER_BYTES:
        raise ShardError(f"{path}: {size} bytes, shorter than the {HEADER_BYTES}-byte shard header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header.size != HEADER_INTS:
        raise ShardError(f"{path}: short read of the {HEADER_BYTES}-byte header")
    if int(header[0]) != MAGIC:
        raise ShardError(f"{path}: bad magic {int(header[0])} (expected {MAGIC})")
    if int(header[1]) != VERSION:
        raise ShardError(f"{path}: unsupported version {int(header[1])} (expected {VERSION})")
    n = int(header[2])
    if n < 0:
        raise ShardError(f"{path}: negative token count {n} in header")
    expected = HEADER_BYTES + 2 * n
    if size != expected:
        what = "truncated" if size < expected else "oversized"
        raise ShardError(f"{path}: {what}: {size} bytes, header says {HEADER_BYTES}+2*{n}={expected}")
    return n


def load_shard(path: str | os.PathLike) -> np.ndarray:
    """The shard's tokens as a read-only uint16 array (memory-mapped; validated first)."""
    n = read_num_tokens(path)
    if n == 0:
        # np.memmap refuses zero-length maps.
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(n,))


def file_checksum(path: str | os.PathLike) -> str:
    """"crc32:<8 hex>" of a whole file (header included), as manifests record it."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return f"crc32:{crc:08x}"


_MANIFESTS: dict[tuple, dict] = {}  # (manifest path, mtime_ns) -> {dataset name: checksums}
_CHECKED: dict[tuple, int] = {}  # (shard path, size, mtime_ns, inode) -> max token id, once per process


def recorded_checksum(path: Path) -> tuple[str | None, Path]:
    """The checksum the dataset's manifest (<root>/manifest.json for <root>/datasets/<name>/<shard>,
    as prepare and download lay it out) records for a shard, or None when it lists none."""
    manifest = path.parent.parent.parent / "manifest.json"
    try:
        key = (manifest, manifest.stat().st_mtime_ns)
    except OSError:
        return None, manifest
    if key not in _MANIFESTS:
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            _MANIFESTS[key] = {d.get("name"): d.get(CHECKSUM_KEY) or {} for d in data.get("datasets", [])}
        except (OSError, ValueError, AttributeError, TypeError):
            raise ShardError(f"{manifest}: unreadable manifest (needed to check {path})") from None
    return (_MANIFESTS[key].get(path.parent.name) or {}).get(path.name), manifest


def open_shard(path: str | os.PathLike, vocab_size: int = 0) -> np.ndarray:
    """load_shard, plus the checks made once per process the first time a shard is opened: its
    checksum against the manifest's record and its largest token id against vocab_size."""
    path = Path(path)
    tokens = load_shard(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _CHECKED:
        want, manifest = recorded_checksum(path)
        if want is not None:
            got = file_checksum(path)
            if got != want:
                raise ShardError(f"{path}: checksum {got} differs from {want} recorded in {manifest} (corrupt or "
                                 "changed): prepare or download it again")
        _CHECKED[key] = int(tokens.max()) if tokens.size else -1
    if vocab_size and _CHECKED[key] >= vocab_size:
        raise ShardError(f"{path}: token id {_CHECKED[key]} >= model.vocab_size={vocab_size}: the shard is from "
                         "another tokenizer, or the config's vocab_size is wrong")
    return tokens


def write_shard(path: str | os.PathLike, tokens) -> None:
    """Write token ids (each in [0, 65536)) as a shard, atomically."""
    path = Path(path)
    toks = np.asarray(tokens)
    if toks.ndim != 1:
        raise ValueError(f"{path}: tokens must be 1-D, got shape {toks.shape}")
    if len(toks) > MAX_TOKENS:
        raise ValueError(f"{path}: {len(toks)} tokens do not fit the int32 header count")
    if toks.dtype != np.uint16:
        if toks.size and not np.issubdtype(toks.dtype, np.integer):
            raise ValueError(f"{path}: token ids must be integers, got dtype {toks.dtype}")
        if toks.size and (int(toks.min()) < 0 or int(toks.max()) >= 2**16):
            bad = int(toks[(toks < 0) | (toks >= 2**16)][0])
            raise ValueError(f"{path}: token id {bad} outside [0, 65536) cannot be stored as uint16")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, len(toks)
    with atomic_output(path) as f:
        f.write(header.tobytes())
        np.ascontiguousarray(toks, dtype=TOKEN_DTYPE).tofile(f)


def list_shards(pattern: str) -> list[Path]:
    """Token shards matching a glob, never a byte sidecar (data/sidecars.py), sorted; FileNotFoundError if none."""
    files = [Path(p) for p in sorted(glob.glob(str(pattern))) if "_bytes_" not in Path(p).name]
    if not files:
        raise FileNotFoundError(f"no shard files match {pattern}")
    return files


class TokenStream:
    """Shards read in sorted order, one after another, wrapping around forever (no shuffling).

    take(n) returns a fresh uint16 array. The position is (file index, offset into that file);
    state()/restore() save and reload it so a resumed run continues on the exact next token.
    """

    def __init__(self, pattern: str, vocab_size: int = 0):
        self.pattern, self.vocab_size = str(pattern), int(vocab_size)
        self.files = list_shards(self.pattern)
        # Validate every header up front: a bad shard 60 files in should fail now, not hours later.
        self.sizes = [read_num_tokens(f) for f in self.files]
        if sum(self.sizes) == 0:
            raise ShardError(f"all {len(self.files)} shards matching {self.pattern} are empty")
        self.file_idx = 0
        self.pos = 0
        self._tokens: np.ndarray | None = None

    def _current(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = open_shard(self.files[self.file_idx], self.vocab_size)
        return self._tokens

    def _advance_file(self) -> None:
        self.file_idx = (self.file_idx + 1) % len(self.files)
        self.pos = 0
        self._tokens = None

    def take(self, n: int) -> np.ndarray:
        """The next n tokens of the stream (uint16, crossing shard boundaries and wrapping)."""
        if n < 0:
            raise ValueError(f"TokenStream.take: n must be >= 0, got {n}")
        out = np.empty(n, dtype=np.uint16)
        filled = 0
        while filled < n:
            avail = self.sizes[self.file_idx] - self.pos
            if avail <= 0:
                self._advance_file()
                continue
            k = min(n - filled, avail)
            out[filled:filled + k] = self._current()[self.pos:self.pos + k]
            self.pos += k
            filled += k
        return out

    def state(self) -> dict:
        """A small JSON-able position: which file, how far into it."""
        return {"file_index": self.file_idx, "offset": self.pos, "file": self.files[self.file_idx].name}

    def restore(self, state: dict) -> None:
        """Continue from a position returned by state() (on the same set of shards)."""
        try:
            idx, off = int(state["file_index"]), int(state["offset"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad TokenStream state {state!r}: needs integer file_index and offset") from exc
        if not 0 <= idx < len(self.files):
            raise ValueError(f"TokenStream state file_index={idx} out of range: "
                             f"{self.pattern} has {len(self.files)} shards")
        name = state.get("file")
        if name is not None and name != self.files[idx].name:
            raise ValueError(f"TokenStream state points at {name} but shard {idx} of {self.pattern} "
                             f"is {self.files[idx].name}")
        if not 0 <= off <= self.sizes[idx]:
            raise ValueError(f"TokenStream state offset={off} outside {self.files[idx]} ({self.sizes[idx]} tokens)")
        self.file_idx, self.pos, self._tokens = idx, off, None


def span_tokens(global_tokens: int, num_spans: int, seq_len: int) -> int:
    """Tokens per span of a step (global_tokens // num_spans), checked to be whole sequences."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    local = global_tokens // num_spans
    if local <= 0 or local % seq_len:
        raise ValueError(
            f"train_batch_tokens={global_tokens} over {num_spans} spans gives {local} tokens per span, "
            f"which must be a positive multiple of seq_len={seq_len}")
    return local


class TokenLoader:
    """The reference DistributedTokenLoader with its span count made explicit.

    Each step takes one contiguous chunk of num_spans * (local + 1) tokens, local =
    global_tokens // num_spans, and cuts it into num_spans spans of local + 1 tokens. In the
    reference, num_spans = world_size * grad_accum_steps (8): rank r of 8 GPUs gets span r, or a
    single GPU gets span m at micro-step m. Either way a step sees the same tokens, so the data
    order does not depend on the device count; callers split the span axis over devices.
    """

    def __init__(self, pattern: str, num_spans: int, vocab_size: int = 0):
        if int(num_spans) < 1:
            raise ValueError(f"TokenLoader: num_spans must be >= 1, got {num_spans}")
        self.num_spans = int(num_spans)
        self.stream = TokenStream(pattern, vocab_size)

    def next_batch(self, global_tokens: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) int32 of shape (num_spans, local // seq_len, seq_len); y is x shifted by one."""
        local = span_tokens(global_tokens, self.num_spans, seq_len)
        span = local + 1
        chunk = self.stream.take(self.num_spans * span).astype(np.int32).reshape(self.num_spans, span)
        x = np.ascontiguousarray(chunk[:, :-1]).reshape(self.num_spans, local // seq_len, seq_len)
        y = np.ascontiguousarray(chunk[:, 1:]).reshape(self.num_spans, local // seq_len, seq_len)
        return x, y

    def state(self) -> dict:
        return self.stream.state()

    def restore(self, state: dict) -> None:
        if state.get("loader") == "shuffled":
            raise ValueError("the checkpoint's data position is from data.loader=shuffled, not the sequential loader")
        self.stream.restore(state)


def _rng_state(rng: np.random.Generator) -> dict:
    """A PCG64 state as JSON-safe strings (its 128-bit integers overflow JSON number readers)."""
    st = rng.bit_generator.state
    return {"state": hex(st["state"]["state"]), "inc": hex(st["state"]["inc"]),
            "has_uint32": int(st["has_uint32"]), "uinteger": int(st["uinteger"])}


def _rng_from(state: dict) -> np.random.Generator:
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = {"bit_generator": "PCG64", "state": {"state": int(state["state"], 16),
                               "inc": int(state["inc"], 16)}, "has_uint32": int(state["has_uint32"]),
                               "uinteger": int(state["uinteger"])}
    return rng


def _shard_windows(rng: np.random.Generator, n_tokens: int, seq_len: int) -> np.ndarray:
    """Start offsets of one shard's (seq_len + 1)-token windows after a random phase, shuffled."""
    max_phase = min(seq_len - 1, max(0, n_tokens - seq_len - 1))
    phase = int(rng.integers(max_phase + 1)) if max_phase > 0 else 0
    count = max(0, (n_tokens - 1 - phase) // seq_len)
    return phase + rng.permutation(count).astype(np.int64) * seq_len


class ShuffledSequenceLoader:
    """The records' ShuffledSequenceLoader (#1493 / #1809): every shard is cut into
    non-overlapping windows of seq_len + 1 tokens after a random phase in [0, seq_len), in a
    random order; each sequence comes from a shard drawn with probability proportional to its
    remaining windows, and all shards reshuffle once every window has been used.

    The reference gives rank r the shards r, r + world, ... and its own PCG64(r), so its data depend
    on the GPU count. Here one PCG64(seed) draws the whole global batch (seed 0 = the reference's
    single-GPU order) and the spans are cut from it like TokenLoader's, so the tokens of a step do
    not depend on how many devices share it. The state is the generator plus, per shard, the
    generator state its current order was drawn from and how many windows remain: resuming
    rebuilds the orders exactly without replaying the run.
    """

    def __init__(self, pattern: str, num_spans: int, seq_len: int, seed: int = 0, vocab_size: int = 0):
        if int(num_spans) < 1 or int(seq_len) < 1:
            raise ValueError(f"ShuffledSequenceLoader: num_spans={num_spans} and seq_len={seq_len} must be >= 1")
        self.pattern, self.num_spans, self.seq_len = str(pattern), int(num_spans), int(seq_len)
        self.vocab_size = int(vocab_size)
        self.files = list_shards(self.pattern)
        self.sizes = [read_num_tokens(f) for f in self.files]
        if all(n < seq_len + 1 for n in self.sizes):
            raise ShardError(f"no shard matching {self.pattern} holds one window of seq_len + 1 = {seq_len + 1} tokens")
        self.rng = np.random.Generator(np.random.PCG64(int(seed)))
        self._tokens: dict[int, np.ndarray] = {}
        self.orders: list[np.ndarray] = [np.zeros(0, np.int64)] * len(self.files)
        self.order_rng: list[dict] = [{}] * len(self.files)
        self.remaining = np.zeros(len(self.files), np.int64)
        self._reset_all()

    def _reset_all(self) -> None:
        for i, n in enumerate(self.sizes):
            self.order_rng[i] = _rng_state(self.rng)
            self.orders[i] = _shard_windows(self.rng, n, self.seq_len)
            self.remaining[i] = len(self.orders[i])

    def _window(self, i: int, start: int) -> np.ndarray:
        if i not in self._tokens:
            self._tokens[i] = open_shard(self.files[i], self.vocab_size)
        return self._tokens[i][start:start + self.seq_len + 1]

    def next_batch(self, global_tokens: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) int32 of shape (num_spans, local // seq_len, seq_len), like TokenLoader's."""
        if seq_len != self.seq_len:
            raise ValueError(f"ShuffledSequenceLoader was built for seq_len={self.seq_len}, asked for {seq_len}")
        local = span_tokens(global_tokens, self.num_spans, seq_len)
        n_seq = self.num_spans * (local // seq_len)
        windows = np.empty((n_seq, seq_len + 1), np.int32)
        for b in range(n_seq):
            total = self.remaining.sum()
            if total <= 0:
                self._reset_all()
                total = self.remaining.sum()
            i = int(self.rng.choice(len(self.files), p=self.remaining / total))
            self.remaining[i] -= 1
            windows[b] = self._window(i, int(self.orders[i][self.remaining[i]]))
        shape = (self.num_spans, local // seq_len, seq_len)
        return (np.ascontiguousarray(windows[:, :-1]).reshape(shape),
                np.ascontiguousarray(windows[:, 1:]).reshape(shape))

    def state(self) -> dict:
        return {"loader": "shuffled", "seq_len": self.seq_len, "rng": _rng_state(self.rng),
                "shards": [{"file": f.name, "order_rng": r, "remaining": int(k)}
                           for f, r, k in zip(self.files, self.order_rng, self.remaining)]}

    def restore(self, state: dict) -> None:
        if state.get("loader") != "shuffled":
            raise ValueError("the checkpoint's data position is from the sequential loader, not data.loader=shuffled")
        shards = state["shards"]
        if int(state["seq_len"]) != self.seq_len or [s["file"] for s in shards] != [f.name for f in self.files]:
            raise ValueError(f"the checkpoint's shuffled-loader state is for other shards or seq_len "
                             f"({len(shards)} shards, seq_len {state['seq_len']}) than {self.pattern}")
        for i, s in enumerate(shards):
            self.order_rng[i] = s["order_rng"]
            self.orders[i] = _shard_windows(_rng_from(s["order_rng"]), self.sizes[i], self.seq_len)
            self.remaining[i] = int(s["remaining"])
        self.rng = _rng_from(state["rng"])


def sequential_loader(pattern: str, num_spans: int, _seq_len: int, _seed: int, vocab_size: int) -> TokenLoader:
    """data.loader=sequential: the baseline's one contiguous stream (no seed: the order is the files')."""
    return TokenLoader(pattern, num_spans, vocab_size)


def make_loader(kind: str, pattern: str, num_spans: int, seq_len: int, seed: int = 0, vocab_size: int = 0):
    """data.loader (registry.LOADERS); vocab_size > 0: each shard's ids are checked when first opened."""
    return registry.resolve(registry.LOADERS, kind)(pattern, num_spans, seq_len, seed, vocab_size)


def load_val_tokens(pattern: str, seq_len: int, limit_tokens: int = 0, vocab_size: int = 0) -> np.ndarray:
    """All val shards concatenated (uint16), cut to a whole number of seq_len sequences plus one.

    limit_tokens > 0 first keeps at most limit_tokens + 1 tokens (a quick-eval subset)."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    files = list_shards(pattern)
    sizes = [read_num_tokens(f) for f in files]
    n = sum(sizes)
    if limit_tokens > 0:
        n = min(n, limit_tokens + 1)
    usable = ((n - 1) // seq_len) * seq_len
    if usable <= 0:
        raise ValueError(f"validation tokens from {pattern} ({n} tokens) are shorter than one sequence of "
                         f"seq_len={seq_len} plus one target")
    want = usable + 1
    out = np.empty(want, dtype=np.uint16)
    filled = 0
    # Read only as many shards as needed: a small limit on a big val split stays cheap.
    for f, size in zip(files, sizes):
        if filled >= want:
            break
        k = min(size, want - filled)
        if k:
            out[filled:filled + k] = open_shard(f, vocab_size)[:k]
            filled += k
    return out
