"""quant.compressor=pergroup: #1855's per-group compression of the artifact payload (codec id 4).

The int8 codes of the block matrices are cut out of the payload and grouped by role across layers
(GROUPS, layers in order); in tok_emb, c_q and fc the rows are put in greedy L1 nearest-neighbour
order (the permutation kept as uint16), each matrix is stored transposed, and each group goes
through `lrzip -z` (ZPAQ) on its own: similar rows side by side and columns of one role together
are what the context-mixing compressor gains on. The rest of the payload (manifest, scales,
passthrough tensors, other int8 tensors) is brotli-11 at a 2^lgwin window, the permutations
brotli-11. Which tensors were cut out is a function of the manifest alone (kept whole in the rest),
so the body carries no table of its own and decompression rebuilds the payload byte for byte.

Body: b"PGRP" | u8 flags (1 reorder, 2 transpose) | u8 stream count | u32 length per stream |
the streams: one per GROUPS entry (empty when the group is), the rest, the permutations.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from pgolf_jax.errors import ArtifactError
from pgolf_jax.quant.codecs import _brotli
from pgolf_jax.quant.options import LRZIP_MISSING

GROUPS = ("tok_emb.weight", "attn.c_k.weight", "attn.c_q.weight", "attn.c_v.weight", "attn.proj.weight",
          "mlp.fc.weight", "mlp.proj.weight")
REORDERED = ("tok_emb.weight", "attn.c_q.weight", "mlp.fc.weight")
_MAGIC = b"PGRP"
_REORDER, _TRANSPOSE = 1, 2
_MAX_ROWS = 1 << 16  # a permutation is uint16; taller matrices keep their row order


def lrzip_binary() -> str:
    path = shutil.which("lrzip")
    if path is None:
        raise ArtifactError(LRZIP_MISSING)
    return path


def nearest_neighbour_order(codes: np.ndarray) -> np.ndarray:
    """Greedy L1 nearest-neighbour row order: row 0 first, then repeatedly the unused row closest
    (sum of absolute differences) to the last one taken, ties to the lowest index (as #1855)."""
    n = codes.shape[0]
    rows = codes.astype(np.int16)  # differences of int8 codes fit int16; their row sums int32
    alive = np.arange(n)  # indices of the rows not yet taken, ascending (argmin's tie order)
    order = np.empty(n, np.int64)
    cur = 0
    for i in range(n):
        order[i] = cur
        keep = alive != cur
        alive, rows = alive[keep], rows[keep]
        if not len(alive):
            break
        pos = int(np.argmin(np.abs(rows - codes[cur].astype(np.int16)).sum(axis=1, dtype=np.int32)))
        cur = int(alive[pos])
    return order


def _role(name: str) -> str | None:
    if name == GROUPS[0]:  # tok_emb: one matrix, outside the blocks
        return name
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] in GROUPS[1:]:
        return parts[2]
    return None


def _grouped(raw: bytes) -> dict[str, list[dict]]:
    """{role: manifest entries of the 2-D int8 codes cut out for it, by layer}; {} when raw is not
    a payload (then it is all rest)."""
    try:
        (mlen,) = struct.unpack_from("<I", raw)
        tensors = json.loads(raw[4:4 + mlen].decode())["tensors"]
        base = 4 + mlen
        found: dict[str, list[dict]] = {}
        for t in tensors:
            role = _role(t["name"])
            if role and t["slot"] == "quantized" and t["dtype"] == "int8" and len(t["shape"]) == 2:
                found.setdefault(role, []).append(dict(t, offset=base + t["offset"]))
    except (struct.error, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    for entries in found.values():
        entries.sort(key=lambda t: int(t["name"].split(".")[1]) if t["name"].startswith("blocks.") else 0)
    return found


def _reorders(role: str, shape, flags: int) -> bool:
    return bool(flags & _REORDER) and role in REORDERED and shape[0] <= _MAX_ROWS


def _run_lrzip(args: list[str], data: bytes, suffix: str) -> bytes:
    """lrzip reads and writes files: data through it in a private folder."""
    binary = lrzip_binary()
    with tempfile.TemporaryDirectory(prefix="pgolf_lrzip_") as tmp:
        src, dst = Path(tmp) / f"in{suffix}", Path(tmp) / "out"
        src.write_bytes(data)
        done = subprocess.run([binary, "-q", *args, "-o", str(dst), str(src)], capture_output=True)
        if done.returncode != 0 or not dst.is_file():
            msg = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
            raise ValueError(f"lrzip {' '.join(args)} failed: {msg[-1] if msg else f'exit {done.returncode}'}")
        return dst.read_bytes()


def _each(fn, items: list) -> list:
    """fn over items, the lrzip processes side by side (the groups are independent)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(fn, items))


def _pack_group(raw: bytes, role: str, entries: list[dict], flags: int, perms: list[bytes]) -> bytes:
    parts = []
    for t in entries:
        codes = np.frombuffer(raw, np.int8, t["nbytes"], t["offset"]).reshape(t["shape"])
        if _reorders(role, t["shape"], flags):
            order = nearest_neighbour_order(codes)
            perms.append(order.astype("<u2").tobytes())
            codes = codes[order]
        parts.append((codes.T if flags & _TRANSPOSE else codes).tobytes())
    return b"".join(parts)


def compress(raw: bytes, level: int = 9, lgwin: int = 24, reorder: bool = True, transpose: bool = True) -> bytes:
    """Payload -> body (lrzip level `level` per group, brotli window 2^lgwin for the rest)."""
    flags = _REORDER * reorder | _TRANSPOSE * transpose
    groups, perms = _grouped(raw), []
    datas = [_pack_group(raw, role, groups.get(role, []), flags, perms) for role in GROUPS]
    streams = _each(lambda data: _run_lrzip(["-z", "-L", str(level)], data, ".bin") if data else b"", datas)
    cut = sorted((t["offset"], t["offset"] + t["nbytes"]) for entries in groups.values() for t in entries)
    rest, pos = [], 0
    for start, end in cut:
        rest.append(raw[pos:start])
        pos = end
    rest.append(raw[pos:])
    brotli = _brotli()
    streams.append(brotli.compress(b"".join(rest), quality=11, lgwin=lgwin))
    streams.append(brotli.compress(b"".join(perms), quality=11) if perms else b"")
    head = _MAGIC + struct.pack(f"<BB{len(streams)}I", flags, len(streams), *map(len, streams))
    return head + b"".join(streams)


def _split(body: bytes) -> tuple[int, list[bytes]]:
    if body[:4] != _MAGIC or len(body) < 6:
        raise ValueError("not a per-group body (bad magic)")
    flags, n = body[4], body[5]
    if n != len(GROUPS) + 2:
        raise ValueError(f"per-group body has {n} streams, expected {len(GROUPS) + 2}")
    lengths = struct.unpack_from(f"<{n}I", body, 6)
    pos, streams = 6 + 4 * n, []
    for length in lengths:
        streams.append(body[pos:pos + length])
        pos += length
    if pos != len(body):
        raise ValueError(f"per-group body is {len(body)} bytes, its streams say {pos}")
    return flags, streams


def _unpack_group(data: bytes, role: str, entries: list[dict], flags: int, perms: memoryview) -> tuple[list, int]:
    """[(offset, codes bytes)] of a group's tensors in payload order, and the permutation bytes used."""
    out, pos, used = [], 0, 0
    for t in entries:
        rows, cols = t["shape"]
        chunk = np.frombuffer(data, np.int8, rows * cols, pos)
        pos += rows * cols
        codes = chunk.reshape(cols, rows).T if flags & _TRANSPOSE else chunk.reshape(rows, cols)
        if _reorders(role, t["shape"], flags):
            order = np.frombuffer(perms, "<u2", rows, used).astype(np.int64)
            used += 2 * rows
            restored = np.empty_like(codes)
            restored[order] = codes
            codes = restored
        out.append((t["offset"], np.ascontiguousarray(codes).tobytes()))
    if pos != len(data):
        raise ValueError(f"group {role} holds {len(data)} bytes, its tensors {pos}")
    return out, used


def decompress(body: bytes, raw_len: int) -> bytes:
    """Body -> the payload, exactly."""
    flags, streams = _split(body)
    brotli = _brotli()
    rest = brotli.decompress(streams[len(GROUPS)])
    perms = memoryview(brotli.decompress(streams[-1]) if streams[-1] else b"")
    groups, pieces, used = _grouped(rest), [], 0
    datas = _each(lambda stream: _run_lrzip(["-d", "-f"], stream, ".lrz") if stream else b"", streams[:len(GROUPS)])
    for role, data in zip(GROUPS, datas):
        placed, n = _unpack_group(data, role, groups.get(role, []), flags, perms[used:])
        pieces += placed
        used += n
    if used != len(perms):
        raise ValueError(f"{len(perms) - used} permutation bytes left over")
    out, pos = bytearray(), 0
    for offset, codes in sorted(pieces):
        take = offset - len(out)
        out += rest[pos:pos + take] + codes
        pos += take
    out += rest[pos:]
    if len(out) != raw_len:
        raise ValueError(f"per-group payload is {len(out)} bytes, expected {raw_len}")
    return bytes(out)


class Pergroup:
    """#1855's per-group compression: lrzip (ZPAQ) per role group, brotli-11 for the rest."""
    id = 4

    @staticmethod
    def compress(raw: bytes, level=None) -> bytes:
        opts = level  # the pipeline passes quant.pergroup (artifact.pack's codec setting)
        if opts is None or isinstance(opts, int):
            return compress(raw)
        return compress(raw, opts.level, opts.lgwin, opts.reorder, opts.transpose)

    @staticmethod
    def decompress(body: bytes, raw_len: int) -> bytes:
        return decompress(body, raw_len)
