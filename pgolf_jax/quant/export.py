"""The reference's post-training int8 export (`int8_clean_per_row_v1`), in NumPy.

Float matrices with more than keep_float_max_numel elements: per-row int8, each row clipped at the
99.99984th percentile of |w| (linear interpolation, as torch.quantile), scale = max(clip/127, 1/127)
stored fp16. Other large float tensors: one per-tensor scale. Small float tensors pass through:
control tensors (matched by name) in fp32, the rest in fp16 with their dtype recorded. The math
runs in float32 step by step as torch does, so quantized values match the reference bit for bit.
"""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np

from pgolf_jax.config import CONTROL_TENSOR_NAME_PATTERNS
from pgolf_jax.model.params import ParamSpec, is_stacked
from pgolf_jax.quant.gptq import gptq_quantize, lqer_correct, lqer_delta
from pgolf_jax.quant import grid as grids
from pgolf_jax.quant.grid import (
    quantile_rows,
    round_to_nearest,
    row_scales,
    tensor_group,
)

FORMAT = "int8_clean_per_row_v1"
_HEAD_NAMES = ("tok_emb.weight", "lm_head.weight")  # what the calibration records for the head
_FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


def dtype_name(a: np.ndarray) -> str:
    return np.dtype(a.dtype).name


def _np_dtype(name: str):
    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


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


def quantize_gate_rows(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """QuantGate (#1736): symmetric int8 rows, scale = max|row| / 127 stored fp16, no clipping (a
    gate row is 12..model_dim values, all of which matter). A row whose scale is 0 in fp16 stores 0."""
    w = np.asarray(t, np.float32)
    s = (np.abs(w).max(axis=1) / np.float32(127.0)).astype(np.float16)
    s32 = s.astype(np.float32)[:, None]
    q = np.where(s32 > 0, np.round(w / np.where(s32 > 0, s32, 1)), 0)
    return np.clip(q, -127, 127).astype(np.int8), s


def _store_gate(obj: dict, name: str, t: np.ndarray) -> int:
    """A gate tensor into a quant object as per-row int8 (both formats read it back as q * s); its bytes."""
    q, s = quantize_gate_rows(t)
    obj["quantized"][name], obj["scales"][name], obj["dtypes"][name] = q, s, dtype_name(t)
    obj["qmeta"][name] = {"scheme": "per_row", "axis": 0}  # as the int8 format's rows; the mixed one reads
    # a missing grid as symmetric (q * s), and the manifest stays small: a gate tensor is a few hundred bytes
    return int(q.nbytes + s.nbytes)


def _gate_int8(t: np.ndarray, spec: ParamSpec, gate_int8: bool) -> bool:
    return gate_int8 and spec.quant == "gate" and t.ndim == 2


# A float16 cast that overflows is reported by check_finite (naming the tensor), not as a warning.
@np.errstate(over="ignore")
def quantize_int8(named: dict[str, np.ndarray], rules: dict[str, ParamSpec], clip_percentile: float = 99.99984,
                  keep_float_max_numel: int = 65_536, gate_int8: bool = False) -> tuple[dict, dict]:
    """Reference-named float state dict -> (quant object, stats), as quantize_state_dict_int8;
    rules (model.params.flat_specs, or name_rules for a reference state dict) say which small
    tensors are control tensors (kept fp32: `control`, and `gate` unless gate_int8 makes it int8
    rows) and which are quantized however small (always_quantize)."""
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
        if _gate_int8(t, rules[name], gate_int8):
            stats["num_float_tensors"] += 1
            stats["int8_payload_bytes"] += _store_gate(obj, name, t)
            continue
        if t.size <= keep_float_max_numel and not (t.ndim == 2 and rules[name].always_quantize):
            if rules[name].quant in ("control", "gate"):
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


# ---------------------------------------------------------------------------------------------
# Low-bit per-row export (the record stacks): per tensor-group widths int2..int8 stored in int8
# containers (the entropy coder does the packing), fp16 row scales, GPTQ or round-to-nearest.

MIXED_FORMAT = "pgolf_mixed_v1"


# Row lookups (the token table when the head is untied, BigramHash's table) see no activations:
# GPTQ's objective ||(W - Q) X|| has no X, so they take round-to-nearest on the same scale grid.
_LOOKUP_TABLE = re.compile(r"(^|\.)(tok_emb|embed)\.weight$")


def name_rules(named: dict) -> dict[str, ParamSpec]:
    """The quantization rule of each tensor of a state dict that comes without specs (the
    reference's own files): the reference's control-name patterns, its row lookups, and the
    tensor group by name. Our models declare theirs (model.params.flat_specs)."""
    def rule(name):
        if "attn_gate" in name:  # the records' attn_gate_proj / attn_gate_w
            return "gate"
        if any(p in name for p in CONTROL_TENSOR_NAME_PATTERNS):
            return "control"
        if _LOOKUP_TABLE.search(name) and (name != "tok_emb.weight" or "lm_head.weight" in named):
            return "lookup"  # tied tok_emb is also the head (it has a Hessian)
        return tensor_group(name)

    return {name: ParamSpec("scalar", rule(name)) for name in named}


def _quantized(t: np.ndarray, spec: ParamSpec, keep_float_max_numel: int) -> bool:
    """Whether a float tensor is quantized (else passed through): 2-D and large, or declared so."""
    return t.ndim == 2 and (t.size > keep_float_max_numel or spec.always_quantize)


@np.errstate(over="ignore")
def quantize_mixed(named: dict[str, np.ndarray], rules: dict[str, ParamSpec], q, hessians: dict | None = None,
                   log=None) -> tuple[dict, dict]:
    """Reference-named float state dict -> (quant object, report) under QuantConfig q and each tensor's rule.

    2-D float tensors above keep_float_max_numel (or declared always_quantize) get per-row scales
    of their rule's width and clip, then GPTQ (scheme "gptq", needs hessians[name]) or
    round-to-nearest (rule "lookup": no activation multiplies it; and the tensors outside the
    blocks the calibration pass cannot see, a weight generator's or meta-network's, logged); smaller
    float tensors pass through in fp16 (every record stores them so), except gates under
    quant.gate_int8 (int8 rows, quantize_gate_rows; no LQER). Then optional LQER. rules:
    {name: ParamSpec} (model.params.flat_specs, or name_rules for a reference state dict)."""
    groups = {g: (getattr(q, f"{g}_bits"), getattr(q, f"{g}_clip_sigmas")) for g in ("attn", "mlp", "embed", "other")}
    obj = {"__quant_format__": MIXED_FORMAT, "quantized": {}, "scales": {}, "dtypes": {}, "passthrough": {},
           "qmeta": {}, "passthrough_orig_dtypes": {}, "lqer": {}, "offsets": {}}
    report = {"tensors": {}}
    no_hessian = []
    for name, t in named.items():
        t = np.asarray(t)
        if dtype_name(t) not in _FLOAT_DTYPES:
            obj["passthrough"][name] = t
            continue
        if _gate_int8(t, rules[name], q.gate_int8):  # before the size test: gates are small
            _store_gate(obj, name, t)
            continue
        if not _quantized(t, rules[name], q.keep_float_max_numel):
            if dtype_name(t) != "float16":
                obj["passthrough_orig_dtypes"][name] = dtype_name(t)
            obj["passthrough"][name] = t.astype(np.float16)
            continue
        rule = rules[name].quant
        group = "embed" if rule == "lookup" else rule if rule in groups else "other"
        bits, k = groups[group]
        w32 = t.astype(np.float32)
        method = "rtn" if rule == "lookup" else q.scheme
        if method == "gptq" and not rules[name].hessian:
            method = "rtn"
            no_hessian.append(name)
        if method == "gptq" and (hessians is None or name not in hessians):
            # The calibration pass sees every block linear and the head: one of those without a
            # Hessian is a bug. What it cannot see (a weight generator's or meta-network's
            # parameters, outside the blocks) is rounded to nearest, and the log says so.
            if is_stacked(name) or name in _HEAD_NAMES:
                raise ValueError(f"GPTQ needs a calibration Hessian for {name}")
            method = "rtn"
            no_hessian.append(name)
        if not grids.grid_of(q.grid).minmax:
            s = row_scales(w32, bits, q.scale_method, k, q.clip_percentile)
            codec = None
        else:  # a min-max grid: fixed (lo, step) per row, stored beside the codes
            lo, s = grids.minmax_params(w32, q.grid, bits)
            obj["offsets"][name] = lo
            codec = _codec(q.grid, bits, lo, s)
        if method == "gptq":
            qt = gptq_quantize(w32, hessians[name], s, bits, block_size=q.gptq.block_size, damp=q.gptq.damp,
                               act_order=q.gptq.act_order, codec=codec)
        else:
            qt = round_to_nearest(w32, s, bits) if codec is None else codec[0](w32.T).T
        obj["quantized"][name], obj["scales"][name], obj["dtypes"][name] = qt, s, dtype_name(t)
        obj["qmeta"][name] = {"scheme": "per_row", "bits": bits, "group": group, "method": method, "grid": q.grid}
        err = float(np.linalg.norm(_dequant(obj, name) - w32))
        report["tensors"][name] = {"group": group, "bits": bits, "error_fro": err}
    if no_hessian and log:
        log(f"gptq:round-to-nearest for {len(no_hessian)} tensors without a calibration Hessian: "
            f"{', '.join(no_hessian[:4])}{' ...' if len(no_hessian) > 4 else ''}")
    report["no_hessian"] = no_hessian
    if q.lqer_rank > 0:
        _add_lqer(obj, report, named, q, log)
    return obj, report


def _add_lqer(obj: dict, report: dict, named: dict, q, log) -> None:
    """LQER's low-rank correction of the quant.lqer_top_k tensors with the largest error."""
    worst = sorted(report["tensors"], key=lambda n: -report["tensors"][n]["error_fro"])[: q.lqer_top_k]
    for name in worst:
        w32 = np.asarray(named[name], np.float32)
        obj["lqer"].update(lqer_correct(name, w32 - _dequant(obj, name), q.lqer_rank, q.lqer_asym))
        obj["qmeta"][name]["lqer_rank"] = q.lqer_rank
    if log:
        log(f"lqer:rank {q.lqer_rank} on {', '.join(worst)}")


def _codec(grid: str, bits: int, lo: np.ndarray, step: np.ndarray):
    """(encode, decode) over the rows of a min-max grid: of one column (rows,), or of w^T."""
    return (lambda col: grids.encode(col, lo, step, grid, bits),
            lambda codes: grids.decode(codes, lo, step, grid, bits))


def _dequant(obj: dict, name: str) -> np.ndarray:
    """float32 rows of a quantized tensor (before any LQER correction), on its grid."""
    qt, s = obj["quantized"][name], np.asarray(obj["scales"][name])
    grid = obj["qmeta"].get(name, {}).get("grid", "symmetric")
    if not grids.grid_of(grid).minmax:
        return qt.astype(np.float32) * s.astype(np.float32)[:, None]
    return grids.decode(qt, np.asarray(obj["offsets"][name])[:, None], s[:, None], grid, obj["qmeta"][name]["bits"])


def dequantize_mixed(obj: dict) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    orig = obj.get("passthrough_orig_dtypes", {}) or {}
    for name in obj["quantized"]:
        w = _dequant(obj, name)
        if obj["qmeta"].get(name, {}).get("lqer_rank"):
            w = w + lqer_delta(name, obj["lqer"])
        out[name] = w.astype(_np_dtype(obj["dtypes"][name]))
    for name, t in obj["passthrough"].items():
        out[name] = np.asarray(t).astype(_np_dtype(orig[name])) if name in orig else np.asarray(t)
    return out


def check_finite(obj: dict, named: dict[str, np.ndarray] | None = None) -> None:
    """Refuse to export a quant object holding NaN/inf (a float16 cast that overflowed, a scale of
    a diverged row): FloatingPointError naming the tensor and, given the float weights, why."""
    bad = []
    for slot in ("scales", "passthrough", "lqer", "offsets"):
        for name, arr in (obj.get(slot) or {}).items():
            a = np.asarray(arr)
            if a.dtype.kind == "f" or dtype_name(a) == "bfloat16":
                n = int(np.size(a) - np.count_nonzero(np.isfinite(a.astype(np.float32))))
                if n:
                    bad.append((name, slot, dtype_name(a), n))
    if not bad:
        return
    name, slot, dt, n = bad[0]
    why = ""
    if named is not None and name in named:
        w = np.asarray(named[name], np.float32)
        finite = w[np.isfinite(w)]
        if finite.size < w.size:
            why = f"; the float weights themselves hold {w.size - finite.size} NaN/inf"
        elif finite.size:
            why = f"; the float weights reach |w| = {float(np.abs(finite).max()):.4g} (float16 max 65504)"
    more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
    raise FloatingPointError(f"export: {name} ({slot}, {dt}) has {n} non-finite values{why}{more}; no artifact "
                             "was written")


def dequantize(obj: dict) -> dict[str, np.ndarray]:
    """Any quant object this package writes (or the reference's int8 format) -> float state dict."""
    fmt = obj.get("__quant_format__")
    if fmt == FORMAT:
        return dequantize_int8(obj)
    if fmt == MIXED_FORMAT:
        return dequantize_mixed(obj)
    raise ValueError(f"unknown quant format {fmt!r}")
