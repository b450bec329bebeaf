"""The per-row integer grids every quantizer shares (export, GPTQ, QAT): widths, fp16 row scales
(SDClip, percentile, GPTQ-lite search), round-to-nearest, and the tensor groups by name."""

from __future__ import annotations

import functools
import statistics

import numpy as np

from pgolf_jax import registry

SEARCH_QUANTILES = (0.999, 0.9995, 0.9999, 0.99999, 1.0)  # GPTQ-lite's candidates (03-22)


def quantile_rows(a32: np.ndarray, q: float) -> np.ndarray:
    """torch.quantile(a, q, dim=-1) for float32 input: float32 rank, floor/ceil, torch.lerp."""
    s = np.sort(a32, axis=-1)
    n = s.shape[-1]
    rank = np.float32(q) * np.float32(n - 1)
    lo, hi = int(np.floor(rank)), min(int(np.ceil(rank)), n - 1)
    w = np.float32(rank - np.float32(lo))
    a, b = s[..., lo], s[..., hi]
    diff = b - a
    return a + w * diff if abs(w) < 0.5 else b - diff * (np.float32(1.0) - w)


def tensor_group(name: str) -> str:
    """The quantization group of a reference-named tensor."""
    if name in ("tok_emb.weight", "lm_head.weight"):
        return "embed"
    if ".attn." in name:
        return "attn"
    if ".mlp." in name:
        return "mlp"
    return "other"


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def round_to_nearest(w32: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    """q = clamp(round(w / s), -qmax, qmax) with the fp16-rounded row scales, as int8 (a row whose
    scale underflowed to 0 codes as 0, which is what torch's nan -> int8 cast gives)."""
    s = scales.astype(np.float32)[:, None]
    ratio = np.divide(w32, s, out=np.zeros_like(w32), where=s != 0)
    return np.clip(np.round(ratio), -qmax(bits), qmax(bits)).astype(np.int8)


def row_scales(w32: np.ndarray, bits: int, method: str, clip_sigmas: float, percentile: float) -> np.ndarray:
    """fp16 per-row scales of a float32 matrix.

    sdclip (PR #1394): k * std(row) / qmax, unbiased std, floor 1e-10; clipping is implicit in
    the clamp. percentile: the baseline's rule at this width, max(quantile(|row|) / qmax, 1/qmax).
    search (GPTQ-lite): the percentile in SEARCH_QUANTILES with the least whole-matrix RTN error."""
    qm = np.float32(qmax(bits))
    if method == "sdclip":
        std = w32.std(axis=1, ddof=1) if w32.shape[1] > 1 else np.zeros(w32.shape[0], np.float32)
        return np.maximum(np.float32(clip_sigmas) * std.astype(np.float32) / qm, np.float32(1e-10)).astype(np.float16)
    return _clipped_scales(w32, bits, [percentile / 100.0] if method == "percentile" else SEARCH_QUANTILES)


def _clipped_scales(w32: np.ndarray, bits: int, candidates) -> np.ndarray:
    """The scales max(quantile(|row|, q) / qmax, 1/qmax) of the q in candidates with the least RTN error."""
    qm = np.float32(qmax(bits))
    best, best_err = None, np.inf
    for q in candidates:
        clip = quantile_rows(np.abs(w32), q)
        s = np.maximum(clip / qm, np.float32(1.0) / qm).astype(np.float16)
        err = float(np.mean((round_to_nearest(w32, s, bits) * s.astype(np.float32)[:, None] - w32) ** 2))
        if err < best_err:
            best, best_err = s, err
    return best


# ---------------------------------------------------------------------------------------------
# quant.grid: the grid of every low-bit row, the same in the export, GPTQ and QAT (so what QAT
# trains against is what ships). The two min-max grids are #1227's (spec 5.3); their per-row
# (lo, step) are stored fp16 and the codes c - 2^(bits-1) in int8 containers. Written once for
# NumPy and jax.numpy (`xp`).

# The grids are registry.GRIDS entries: Symmetric (no per-row offset) or a min-max grid with
# `step(span, bits)`, `codes(u, bits, levels, xp)` (u = (w - lo) / step) and `values(c, bits, levels, xp)`.

class Symmetric:
    """Codes -qmax..qmax times the row's scale (quant.scale_method)."""
    minmax = False


class Affine:
    """#1227: 2^bits levels evenly from the row's min to its max."""
    minmax = True

    @staticmethod
    def step(span, bits: int):
        return span / (2 ** bits - 1)

    @staticmethod
    def codes(u, bits: int, levels, xp):
        return xp.clip(xp.round(u), 0, 2 ** bits - 1)

    @staticmethod
    def values(c, bits: int, levels, xp):
        return c.astype(xp.float32)


class NF:
    """#1227's NormalFloat: standard-normal quantiles at (i + 0.5) / 2^bits, min-max rescaled to the row
    (levels in [0, 1], so the step is the row's span); `levels` overrides the codebook (QAT's learned one)."""
    minmax = True

    @staticmethod
    def step(span, bits: int):
        return span

    @staticmethod
    def codes(u, bits: int, levels, xp):
        lv = nf_levels(bits) if levels is None else levels
        return xp.searchsorted((lv[1:] + lv[:-1]) / 2, u)  # the nearest level (levels sorted)

    @staticmethod
    def values(c, bits: int, levels, xp):
        return xp.take(nf_levels(bits) if levels is None else levels, c)


def grid_of(name: str):
    """The registered grid (registry.GRIDS) named by quant.grid or an artifact's qmeta."""
    return registry.resolve(registry.GRIDS, name)


@functools.lru_cache(maxsize=8)
def nf_levels(bits: int) -> np.ndarray:
    """The NormalFloat codebook in [0, 1]: N(0, 1) quantiles at (i + 0.5) / 2^bits, min-max rescaled."""
    n = 2 ** bits
    z = np.asarray([statistics.NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)])
    return ((z - z.min()) / (z.max() - z.min())).astype(np.float32)


def minmax_params(w32, grid: str, bits: int, xp=np):
    """Per-row (lo, step) of a min-max grid, as fp16: lo = min, step = (max - min) / (2^bits - 1)
    for affine, max - min for nf (whose levels live in [0, 1])."""
    lo, hi = w32.min(axis=-1), w32.max(axis=-1)
    step = grid_of(grid).step(hi - lo, bits)
    return lo.astype(xp.float16), step.astype(xp.float16)


def encode(w32, lo, step, grid: str, bits: int, xp=np, levels=None):
    """Signed codes of w on a min-max grid with (lo, step) broadcast against w (float32 math)."""
    lo, step = lo.astype(xp.float32), step.astype(xp.float32)
    u = xp.where(step != 0, (w32 - lo) / xp.where(step != 0, step, 1.0), 0.0)
    c = grid_of(grid).codes(u, bits, levels, xp)
    return (c - 2 ** (bits - 1)).astype(xp.int8)


def decode(codes, lo, step, grid: str, bits: int, xp=np, levels=None):
    """float32 values of signed codes on a min-max grid."""
    c = codes.astype(xp.int32) + 2 ** (bits - 1)
    v = grid_of(grid).values(c, bits, levels, xp)
    return v * step.astype(xp.float32) + lo.astype(xp.float32)
