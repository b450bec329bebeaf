"""Val byte sidecars: fineweb_val_bytes_NNNNNN.bin beside each val shard fineweb_val_NNNNNN.bin, in
the shard format, one uint16 per token of that shard = the original UTF-8 bytes the token stands
for (0 for BOS and CaseOps operators). The CaseOps variants ship them (data/caseops.py); bpb counts
its bytes from them where they exist (pipeline.py). Token-shard globs never list them
(shards.list_shards)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pgolf_jax.data.shards import ShardError, list_shards, open_shard, read_num_tokens

SIDECAR_TAG = "_bytes_"  # in a file name: a byte sidecar, never a token shard (shards.list_shards skips it)


def sidecar_for(shard: Path) -> Path:
    """The byte sidecar beside a val token shard: fineweb_val_000000.bin -> fineweb_val_bytes_000000.bin."""
    head, sep, index = shard.name.rpartition("_")
    return shard.with_name(f"{head}{SIDECAR_TAG}{index}" if sep else f"{SIDECAR_TAG}{shard.name}")


def load_val_bytes(pattern: str, length: int) -> np.ndarray | None:
    """The first `length` entries of the byte sidecars of the val shards matching pattern (int64:
    the original UTF-8 bytes each val token stands for), or None when the shards have none. Every
    shard needs its sidecar, as long as the shard itself."""
    files = list_shards(pattern)
    sides = [sidecar_for(f) for f in files]
    have = [s.is_file() for s in sides]
    if not any(have):
        return None
    if not all(have):
        raise FileNotFoundError(f"{sides[have.index(False)]} not found: the val shards matching {pattern} have byte "
                                "sidecars for some shards only")
    out, filled = np.empty(length, np.int64), 0
    for f, side in zip(files, sides):
        if filled >= length:
            break
        n = read_num_tokens(f)
        if read_num_tokens(side) != n:
            raise ShardError(f"{side}: {read_num_tokens(side)} byte counts for the {n} tokens of {f.name}")
        k = min(n, length - filled)
        out[filled:filled + k] = open_shard(side)[:k]
        filled += k
    if filled < length:
        raise ValueError(f"the byte sidecars of {pattern} hold {filled} entries, fewer than {length} val tokens")
    return out
