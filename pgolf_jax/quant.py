"""The reference's post-training int8 export (`int8_clean_per_row_v1`), in NumPy.

Float matrices with more than keep_float_max_numel elements: per-row int8, each row clipped at the
99.99984th percentile of |w| (linear interpolation, as torch.quantile), scale = max(clip/127, 1/127)
stored fp16. Other large float tensors: one per-tensor scale. Small float tensors pass through:
control tensors (matched by name) in fp32, the rest in fp16 with their dtype recorded. The math
runs in float32 step by step as torch does, so quantized values match the reference bit for bit.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from pgolf_jax.optim import CONTROL_TENSOR_NAME_PATTERNS

FORMAT = "int8_clean_per_row_v1"
_FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


def dtype_name(a: np.ndarray) -> str:
    return np.dtype(a.dtype).name


def _np_dtype(name: str):
    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


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


def quantize_float_tensor(t: np.ndarray, clip_q: float) -> tuple[np.ndarray, np.ndarray]:
    t32 = np.asarray(t, dtype=np.float32)
    if t32.ndim == 2:
        clip = quantile_rows(np.abs(t32), clip_q) if t32.size else np.zeros((t32.shape[0],), np.float32)
        clipped = np.maximum(np.minimum(t32, clip[:, None]), -clip[:, None])
        scale = np.maximum(clip / np.float32(127.0), np.float32(1.0 / 127.0)).astype(np.float32)
        q = np.clip(np.round(clipped / scale[:, None]), -127, 127).astype(np.int8)
        return q, scale.astype(np.float16)
    clip = float(quantile_rows(np.abs(t32).reshape(1, -1), clip_q)[0]) if t32.size else 0.0
    scale = np.float32(clip / 127.0 if clip > 0 else 1.0)
    q = np.clip(np.round(np.clip(t32, -clip, clip) / scale), -127, 127).astype(np.int8)
    return q, np.asarray(scale, np.float32)


def quantize_int8(named: dict[str, np.ndarray], clip_percentile: float = 99.99984,
                  keep_float_max_numel: int = 65_536) -> tuple[dict, dict]:
    """Reference-named float state dict -> (quant object, stats), as quantize_state_dict_int8."""
    clip_q = clip_percentile / 100.0
    obj = {"__quant_format__": FORMAT, "quantized": {}, "scales": {}, "dtypes": {}, "passthrough": {},
           "qmeta": {}, "passthrough_orig_dtypes": {}}
    stats = dict.fromkeys(("param_count", "num_tensors", "num_float_tensors", "num_nonfloat_tensors",
                           "baseline_tensor_bytes", "int8_payload_bytes"), 0)
    for name, t in named.items():
        t = np.asarray(t)
        stats["param_count"] += int(t.size)
        stats["num_tensors"] += 1
        stats["baseline_tensor_bytes"] += int(t.nbytes)
        if dtype_name(t) not in _FLOAT_DTYPES:
            stats["num_nonfloat_tensors"] += 1
            obj["passthrough"][name] = t
            stats["int8_payload_bytes"] += int(t.nbytes)
            continue
        if t.size <= keep_float_max_numel:
            if any(p in name for p in CONTROL_TENSOR_NAME_PATTERNS):
                kept = t.astype(np.float32)
            elif dtype_name(t) in ("float32", "bfloat16"):
                obj["passthrough_orig_dtypes"][name] = dtype_name(t)
                kept = t.astype(np.float16)
            else:
                kept = t
            obj["passthrough"][name] = kept
            stats["int8_payload_bytes"] += int(kept.nbytes)
            continue
        stats["num_float_tensors"] += 1
        q, s = quantize_float_tensor(t, clip_q)
        if s.ndim > 0:
            obj["qmeta"][name] = {"scheme": "per_row", "axis": 0}
        obj["quantized"][name], obj["scales"][name] = q, s
        obj["dtypes"][name] = dtype_name(t)
        stats["int8_payload_bytes"] += int(q.nbytes + s.nbytes)
    return obj, stats


def dequantize_int8(obj: dict) -> dict[str, np.ndarray]:
    """Quant object -> reference-named state dict in the original dtypes."""
    out: dict[str, np.ndarray] = {}
    qmeta = obj.get("qmeta", {}) or {}
    orig = obj.get("passthrough_orig_dtypes", {}) or {}
    for name, q in obj["quantized"].items():
        dtype = _np_dtype(obj["dtypes"][name])
        s = np.asarray(obj["scales"][name])
        if qmeta.get(name, {}).get("scheme") == "per_row" or s.ndim > 0:
            s32 = s.astype(np.float32).reshape(q.shape[0], *([1] * (q.ndim - 1)))
            out[name] = (q.astype(np.float32) * s32).astype(dtype)
        else:
            out[name] = (q.astype(np.float32) * np.float32(s)).astype(dtype)
    for name, t in obj["passthrough"].items():
        out[name] = np.asarray(t).astype(_np_dtype(orig[name])) if name in orig else np.asarray(t)
    return out
