"""The challenge's token shard format (.bin) and the sequential token stream the trainer reads.

A shard is a 1024-byte header of 256 little-endian int32 (magic, version, token count, zeros)
followed by that many little-endian uint16 token ids. Readers check all three against the file
size, so a truncated download or a foreign file fails loudly instead of feeding garbage.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from pathlib import Path

import numpy as np

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MAX_TOKENS = 2**31 - 1  # header[2] is an int32

# mkstemp creates 0600 files; written files should get the usual umask-based permissions instead.
_UMASK = os.umask(0)
os.umask(_UMASK)


class ShardError(ValueError):
    """A file that is not a valid challenge shard; the message names the file and the defect."""


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb"):
    """Open a temp file beside `path` for writing; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory, so os.replace is a rename on one filesystem and readers never see half a file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
    """Files matching a glob, in sorted (= data) order; FileNotFoundError when there are none."""
    files = [Path(p) for p in sorted(glob.glob(str(pattern)))]
    if not files:
        raise FileNotFoundError(f"no shard files match {pattern}")
    return files


class TokenStream:
    """Shards read in sorted order, one after another, wrapping around forever (no shuffling).

    take(n) returns a fresh uint16 array. The position is (file index, offset into that file);
    state()/restore() save and reload it so a resumed run continues on the exact next token.
    """

    def __init__(self, pattern: str):
        self.pattern = str(pattern)
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
            self._tokens = load_shard(self.files[self.file_idx])
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


class TokenLoader:
    """The reference DistributedTokenLoader with its span count made explicit.

    Each step takes one contiguous chunk of num_spans * (local + 1) tokens, local =
    global_tokens // num_spans, and cuts it into num_spans spans of local + 1 tokens. In the
    reference, num_spans = world_size * grad_accum_steps (8): rank r of 8 GPUs gets span r, or a
    single GPU gets span m at micro-step m. Either way a step sees the same tokens, so the data
    order does not depend on the device count; callers split the span axis over devices.
    """

    def __init__(self, pattern: str, num_spans: int):
        if int(num_spans) < 1:
            raise ValueError(f"TokenLoader: num_spans must be >= 1, got {num_spans}")
        self.num_spans = int(num_spans)
        self.stream = TokenStream(pattern)

    def next_batch(self, global_tokens: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) int32 of shape (num_spans, local // seq_len, seq_len); y is x shifted by one."""
        if seq_len <= 0:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        local = global_tokens // self.num_spans
        if local <= 0 or local % seq_len:
            raise ValueError(
                f"train_batch_tokens={global_tokens} over {self.num_spans} spans gives {local} tokens per span, "
                f"which must be a positive multiple of seq_len={seq_len}")
        span = local + 1
        chunk = self.stream.take(self.num_spans * span).astype(np.int32).reshape(self.num_spans, span)
        x = np.ascontiguousarray(chunk[:, :-1]).reshape(self.num_spans, local // seq_len, seq_len)
        y = np.ascontiguousarray(chunk[:, 1:]).reshape(self.num_spans, local // seq_len, seq_len)
        return x, y

    def state(self) -> dict:
        return self.stream.state()

    def restore(self, state: dict) -> None:
        self.stream.restore(state)


def load_val_tokens(pattern: str, seq_len: int, limit_tokens: int = 0) -> np.ndarray:
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
            out[filled:filled + k] = load_shard(f)[:k]
            filled += k
    return out
