"""The packed artifact: a quant object in a small self-describing container, compressed.

File layout (all integers little-endian):

    magic     8 bytes  b"PGJXART1"
    codec     1 byte   1 = zlib (level 9, the reference's codec), 2 = zstd
    reserved  3 bytes  zero
    raw_len   8 bytes  length of the decompressed payload
    crc32     4 bytes  of the decompressed payload
    body      the compressed payload

    payload = u32 manifest_len | manifest (UTF-8 JSON) | tensor bytes, back to back

The manifest holds the quant object's metadata and, per tensor, its slot ("quantized/<name>",
"scales/<name>", "passthrough/<name>"), dtype, shape, offset and size. Reading never trusts the
file: every field is checked and any mismatch raises ArtifactError naming the file.
Artifact bytes (what the 16,000,000-byte cap counts) = this file + the counted code bytes.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import ml_dtypes
import numpy as np
import zstandard

MAGIC = b"PGJXART1"
CODECS = {"zlib": 1, "zstd": 2}
_HEADER = struct.Struct("<8sB3xQI")
_SLOTS = ("quantized", "scales", "passthrough")
_DTYPES = {"int8", "uint8", "int16", "int32", "int64", "uint16", "float16", "float32", "float64", "bfloat16", "bool"}


class ArtifactError(ValueError):
    pass


class ArtifactTooLarge(RuntimeError):
    pass


def _dtype(name: str):
    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


def serialize(obj: dict) -> bytes:
    """Quant object -> uncompressed payload."""
    tensors, blobs, offset = [], [], 0
    for slot in _SLOTS:
        for name, arr in obj[slot].items():
            arr = np.asarray(arr)
            data = arr.tobytes(order="C")  # (ascontiguousarray would turn a 0-d scale into 1-d)
            tensors.append({"slot": slot, "name": name, "dtype": np.dtype(arr.dtype).name,
                            "shape": list(arr.shape), "offset": offset, "nbytes": len(data)})
            blobs.append(data)
            offset += len(data)
    meta = {k: v for k, v in obj.items() if k not in _SLOTS}
    manifest = json.dumps({"format": "pgolf_jax.artifact.v1", "meta": meta, "tensors": tensors},
                          separators=(",", ":")).encode()
    return struct.pack("<I", len(manifest)) + manifest + b"".join(blobs)


def compress(raw: bytes, codec: str, level: int = 22) -> bytes:
    if codec == "zlib":
        return zlib.compress(raw, 9)
    if codec == "zstd":
        return zstandard.ZstdCompressor(level=level).compress(raw)
    raise ArtifactError(f"unknown codec {codec!r} (expected one of {sorted(CODECS)})")


def pack(obj: dict, codec: str = "zstd", level: int = 22) -> bytes:
    raw = serialize(obj)
    return _HEADER.pack(MAGIC, CODECS[codec], len(raw), zlib.crc32(raw)) + compress(raw, codec, level)


def write(path: Path, data: bytes) -> None:
    """Atomic write: a reader never sees a half-written artifact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def unpack(data: bytes, source: str = "artifact") -> dict:
    """Compressed artifact bytes -> quant object, validating every field."""
    if len(data) < _HEADER.size:
        raise ArtifactError(f"{source}: truncated ({len(data)} bytes, header needs {_HEADER.size})")
    magic, codec_id, raw_len, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ArtifactError(f"{source}: bad magic {magic!r} (expected {MAGIC!r}); not a pgolf_jax artifact")
    body = data[_HEADER.size:]
    try:
        if codec_id == CODECS["zlib"]:
            raw = zlib.decompress(body)
        elif codec_id == CODECS["zstd"]:
            raw = zstandard.ZstdDecompressor().decompress(body, max_output_size=raw_len)
        else:
            raise ArtifactError(f"{source}: unknown codec id {codec_id}")
    except (zlib.error, zstandard.ZstdError) as exc:
        raise ArtifactError(f"{source}: corrupt or truncated compressed body ({exc})") from None
    if len(raw) != raw_len or zlib.crc32(raw) != crc:
        raise ArtifactError(f"{source}: payload check failed (length {len(raw)} vs {raw_len}, crc mismatch)")
    (mlen,) = struct.unpack_from("<I", raw)
    try:
        manifest = json.loads(raw[4:4 + mlen].decode())
        tensors, meta = manifest["tensors"], manifest["meta"]
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
        obj[slot][name] = np.frombuffer(raw, dtype=_dtype(dt), count=int(np.prod(shape, dtype=np.int64)),
                                        offset=base + off).reshape(shape)
    return obj


def read(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"artifact not found: {path}")
    return unpack(path.read_bytes(), source=str(path))


def code_files(root: Path | None = None) -> list[Path]:
    """The source that ships with an artifact: the package and run.py (what the eval needs)."""
    root = Path(root) if root else Path(__file__).resolve().parent.parent
    files = sorted((root / "pgolf_jax").glob("*.py"))
    if (root / "run.py").is_file():
        files.append(root / "run.py")
    return files


def code_bytes(root: Path | None = None) -> int:
    """Raw UTF-8 bytes of the shipped source, counted as the reference counts train_gpt.py."""
    return sum(len(f.read_bytes()) for f in code_files(root))


def check_size(model_bytes: int, code: int, cap: int, allow_oversize: bool) -> int:
    total = model_bytes + code
    if total > cap and not allow_oversize:
        raise ArtifactTooLarge(f"artifact is {total:,} bytes (model {model_bytes:,} + code {code:,}), over the "
                               f"{cap:,}-byte cap by {total - cap:,}; set quant.allow_oversize=true to keep going")
    return total
