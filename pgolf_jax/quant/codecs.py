"""Compressors of the artifact's payload (registry.COMPRESSORS, quant.compressor). A codec has the
id the artifact header stores, `compress(raw, level)` (level: the codec's setting where it has one:
quant.zstd.level, or the quant.pergroup options of quant/groupzip.py) and `decompress(body, raw_len)`."""

from __future__ import annotations

import zlib

import zstandard

from pgolf_jax.errors import ArtifactError


class Zlib:
    """The reference's codec: zlib level 9."""
    id = 1

    @staticmethod
    def compress(raw: bytes, level: int = 22) -> bytes:
        return zlib.compress(raw, 9)

    @staticmethod
    def decompress(body: bytes, raw_len: int) -> bytes:
        return zlib.decompress(body)


class Zstd:
    """zstandard at quant.zstd.level (22 by default)."""
    id = 2

    @staticmethod
    def compress(raw: bytes, level: int = 22) -> bytes:
        return zstandard.ZstdCompressor(level=level).compress(raw)

    @staticmethod
    def decompress(body: bytes, raw_len: int) -> bytes:
        return zstandard.ZstdDecompressor().decompress(body, max_output_size=raw_len)


def _brotli():
    try:
        import brotli
    except ImportError:
        raise ArtifactError("quant.compressor=brotli needs the brotli package: "
                            "pip install 'pgolf_jax[brotli]'") from None
    return brotli


class Brotli:
    """The records' codec: brotli quality 11 (an optional dependency)."""
    id = 3

    @staticmethod
    def compress(raw: bytes, level: int = 22) -> bytes:
        return _brotli().compress(raw, quality=11)

    @staticmethod
    def decompress(body: bytes, raw_len: int) -> bytes:
        return _brotli().decompress(body)
