"""Bytes and seconds of each artifact codec on one run's quantized weights (BENCHMARKS.md).

    python scripts/bench_compressors.py runs/<id>/final_model.<tag>.<codec> [--codecs brotli,zstd,pergroup]

Reads the artifact, packs its quant object again with each codec (zstd at level 22, pergroup with
its defaults), unpacks it and checks the payload comes back exactly; prints a markdown table with
wall and CPU seconds (CPU: this process and the lrzip processes, steadier on a shared machine)."""

from __future__ import annotations

import argparse
import os
import time

from pgolf_jax import config as config_lib
from pgolf_jax.quant import artifact


def _clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its finished children: lrzip's included)."""
    t = os.times()
    return time.perf_counter(), t.user + t.system + t.children_user + t.children_system


def _since(start: tuple[float, float]) -> tuple[float, float]:
    now = _clock()
    return now[0] - start[0], now[1] - start[1]


def measure(obj: dict, codec: str, level=None) -> tuple[int, tuple, tuple]:
    """(artifact bytes, (wall, CPU) seconds to pack, the same to unpack)."""
    if level is None:
        level = {"zstd": 22, "pergroup": config_lib.QuantConfig().pergroup}.get(codec)
    start = _clock()
    blob = artifact.pack(obj, codec, level)
    packed = _since(start)
    start = _clock()
    back = artifact.unpack(blob, codec)
    unpacked = _since(start)
    if artifact.serialize(back) != artifact.serialize(obj):
        raise SystemExit(f"error: {codec} did not round-trip exactly")
    return len(blob), packed, unpacked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--codecs", default="brotli,zstd,pergroup")
    args = ap.parse_args()
    obj = artifact.read(args.artifact)
    raw = len(artifact.serialize(obj))
    print(f"payload {raw:,} bytes uncompressed\n")
    print("| codec | bytes | vs the first | pack s (wall / CPU) | unpack s (wall / CPU) |\n|---|---|---|---|---|")
    base = None
    for codec in args.codecs.split(","):
        size, (pw, pc), (uw, uc) = measure(obj, codec)
        base = base or size
        print(f"| {codec} | {size:,} | {size - base:+,} ({100 * (size - base) / base:+.2f}%) | {pw:.2f} / {pc:.2f} | "
              f"{uw:.2f} / {uc:.2f} |", flush=True)


if __name__ == "__main__":
    main()
