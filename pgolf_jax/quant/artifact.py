"""The packed artifact: a quant object in a small self-describing container, compressed.

File layout (all integers little-endian):

    magic     8 bytes  b"PGJXART1"
    codec     1 byte   the codec's id (quant/codecs.py): 1 = zlib (level 9, the reference's), 2 = zstd, 3 = brotli,
                       4 = pergroup (quant/groupzip.py: lrzip per group of int8 codes, brotli for the rest)
    reserved  3 bytes  zero
    raw_len   8 bytes  length of the decompressed payload
    crc32     4 bytes  of the decompressed payload
    body      the compressed payload

    payload = u32 manifest_len | manifest (UTF-8 JSON) | tensor bytes, back to back

The manifest holds the quant object's metadata and, per tensor, its slot (quantized, scales,
passthrough, lqer), name, dtype, shape, offset and size. With "byte_shuffle" in the manifest,
each multi-byte tensor is stored byte-plane by byte-plane (all first bytes, then all second
bytes, ...: the records' byte shuffle, per tensor), which lets the compressor see the slowly
varying high bytes of fp16 scales together. Reading never trusts the file: every field is
checked and any mismatch raises ArtifactError naming the file.
Artifact bytes (what the 16,000,000-byte cap counts) = this file + the counted code bytes.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import ml_dtypes
import numpy as np

from pgolf_jax import registry
from pgolf_jax.errors import ArtifactError, ArtifactTooLarge  # noqa: F401  (raised here, caught by cli)
from pgolf_jax.fsio import write_bytes

MAGIC = b"PGJXART1"
_HEADER = struct.Struct("<8sB3sQI")  # magic, codec, reserved (zero), raw_len, crc32
_SLOTS = ("quantized", "scales", "passthrough", "lqer", "offsets")  # offsets: min-max grids' row minima
_DTYPES = {"int8", "uint8", "int16", "int32", "int64", "uint16", "float16", "float32", "float64", "bfloat16", "bool"}




def _dtype(name: str):
    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


def _shuffle(data: bytes, itemsize: int) -> bytes:
    if itemsize <= 1:
        return data
    return np.frombuffer(data, np.uint8).reshape(-1, itemsize).T.tobytes()


def _unshuffle(data: bytes, itemsize: int) -> bytes:
    if itemsize <= 1:
        return data
    return np.frombuffer(data, np.uint8).reshape(itemsize, -1).T.tobytes()


def serialize(obj: dict, byte_shuffle: bool = True) -> bytes:
    """Quant object -> uncompressed payload."""
    tensors, blobs, offset = [], [], 0
    for slot in _SLOTS:
        for name, arr in obj.get(slot, {}).items():
            arr = np.asarray(arr)
            data = arr.tobytes(order="C")  # (ascontiguousarray would turn a 0-d scale into 1-d)
            if byte_shuffle:
                data = _shuffle(data, arr.dtype.itemsize)
            tensors.append({"slot": slot, "name": name, "dtype": np.dtype(arr.dtype).name,
                            "shape": list(arr.shape), "offset": offset, "nbytes": len(data)})
            blobs.append(data)
            offset += len(data)
    meta = {k: v for k, v in obj.items() if k not in _SLOTS}
    manifest = json.dumps({"format": "pgolf_jax.artifact.v1", "byte_shuffle": byte_shuffle, "meta": meta,
                           "tensors": tensors}, separators=(",", ":")).encode()
    return struct.pack("<I", len(manifest)) + manifest + b"".join(blobs)


def _codec(name: str):
    try:
        return registry.resolve(registry.COMPRESSORS, name)
    except KeyError:
        raise ArtifactError(f"unknown codec {name!r} (expected one of {', '.join(registry.COMPRESSORS)})") from None


def compress(raw: bytes, codec: str, level: int = 22) -> bytes:
    return _codec(codec).compress(raw, level)


def pack(obj: dict, codec: str = "zstd", level: int = 22, byte_shuffle: bool = True) -> bytes:
    raw = serialize(obj, byte_shuffle)
    return _HEADER.pack(MAGIC, _codec(codec).id, bytes(3), len(raw), zlib.crc32(raw)) + compress(raw, codec, level)


def write(path: Path, data: bytes) -> None:
    """Atomic write: a reader never sees a half-written artifact."""
    write_bytes(path, data)


def unpack(data: bytes, source: str = "artifact") -> dict:
    """Compressed artifact bytes -> quant object, validating every field."""
    if len(data) < _HEADER.size:
        raise ArtifactError(f"{source}: truncated ({len(data)} bytes, header needs {_HEADER.size})")
    magic, codec_id, reserved, raw_len, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ArtifactError(f"{source}: bad magic {magic!r} (expected {MAGIC!r}); not a pgolf_jax artifact")
    if reserved != bytes(3):
        raise ArtifactError(f"{source}: corrupt header (reserved bytes {reserved!r} are not zero)")
    body = data[_HEADER.size:]
    try:
        codec = next((c for c in map(_codec, registry.COMPRESSORS) if c.id == codec_id), None)
        if codec is None:
            raise ArtifactError(f"{source}: unknown codec id {codec_id}")
        raw = codec.decompress(body, raw_len)
    except ArtifactError:
        raise
    except Exception as exc:  # zlib.error, zstandard.ZstdError, brotli.error: all mean a bad body
        raise ArtifactError(f"{source}: corrupt or truncated compressed body ({exc})") from None
    if len(raw) != raw_len or zlib.crc32(raw) != crc:
        raise ArtifactError(f"{source}: payload check failed (length {len(raw)} vs {raw_len}, crc mismatch)")
    (mlen,) = struct.unpack_from("<I", raw)
    try:
        manifest = json.loads(raw[4:4 + mlen].decode())
        tensors, meta, shuffled = manifest["tensors"], manifest["meta"], bool(manifest.get("byte_shuffle"))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{source}: unreadable manifest ({exc})") from None
    base = 4 + mlen
    obj = dict(meta)
    for slot in _SLOTS:
        obj[slot] = {}
    for t in tensors:
        try:
            slot, name, dt, shape, off, nb = t["slot"], t["name"], t["dtype"], t["shape"], t["offset"], t["nbytes"]
        except (KeyError, TypeError):
            raise ArtifactError(f"{source}: malformed tensor entry {t!r}") from None
        if slot not in _SLOTS or dt not in _DTYPES:
            raise ArtifactError(f"{source}: tensor {name!r} has bad slot/dtype {slot!r}/{dt!r}")
        expected = int(np.prod(shape, dtype=np.int64)) * _dtype(dt).itemsize
        if nb != expected or off < 0 or base + off + nb > len(raw):
            raise ArtifactError(f"{source}: tensor {name!r} ({dt}{shape}) does not fit the payload "
                                f"(offset {off}, {nb} bytes)")
        data = raw[base + off: base + off + nb]
        if shuffled:
            data = _unshuffle(data, _dtype(dt).itemsize)
        obj[slot][name] = np.frombuffer(data, dtype=_dtype(dt)).reshape(shape)
    return obj


def read(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"artifact not found: {path}")
    return unpack(path.read_bytes(), source=str(path))


def size_report(obj: dict, group_of, codec: str, level: int = 22, byte_shuffle: bool = True) -> dict:
    """{group: {"raw": tensor bytes, "compressed": bytes of that group packed on its own}}: where
    the artifact's bytes go (compressing groups apart slightly overstates the whole)."""
    parts: dict[str, dict] = {}
    for slot in _SLOTS:
        for name, arr in obj.get(slot, {}).items():
            parts.setdefault(group_of(name, slot), {}).setdefault(slot, {})[name] = arr
    report = {}
    for group, slots in sorted(parts.items()):
        raw = sum(np.asarray(a).nbytes for tensors in slots.values() for a in tensors.values())
        report[group] = {"raw": int(raw), "compressed": len(compress(serialize(slots, byte_shuffle), codec, level))}
    return report


def check_size(model_bytes: int, code: int, cap: int, allow_oversize: bool) -> int:
    total = model_bytes + code
    if total > cap and not allow_oversize:
        raise ArtifactTooLarge(f"artifact is {total:,} bytes (model {model_bytes:,} + code {code:,}), over the "
                               f"{cap:,}-byte cap by {total - cap:,}; set quant.allow_oversize=true to keep going")
    return total
