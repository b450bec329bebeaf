"""The per-row integer grids every quantizer shares (export, GPTQ, QAT): widths, fp16 row scales
(SDClip, percentile, GPTQ-lite search), round-to-nearest, and the tensor groups by name."""

from __future__ import annotations

import numpy as np

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
    candidates = [percentile / 100.0] if method == "percentile" else SEARCH_QUANTILES
    best, best_err = None, np.inf
    for q in candidates:
        clip = quantile_rows(np.abs(w32), q)
        s = np.maximum(clip / qm, np.float32(1.0) / qm).astype(np.float16)
        err = float(np.mean((round_to_nearest(w32, s, bits) * s.astype(np.float32)[:, None] - w32) ** 2))
        if err < best_err:
            best, best_err = s, err
    return best
