"""Quantization-aware training: straight-through fake quantization of the tensors the export
quantizes, with the export's own rule (group width, SDClip or percentile scales rounded to fp16,
round half to even, clamp), so the weights trained against are the weights that ship.

Forward uses w + stop_gradient(q(w) - w): the loss sees q(w), the gradient flows to w unchanged.
A traced `on` in {0, 1} switches it without recompiling (late QAT once the lr multiplier falls
below quant.qat_lr_threshold, as the 03-22 record did at 0.15)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from pgolf_jax.config import QuantConfig
from pgolf_jax.model.params import ParamSpec, is_stacked, path_name
from pgolf_jax.quant import grid as grids
from pgolf_jax.quant.grid import qmax


def export_rule(spec: ParamSpec, per_layer_shape: tuple, q: QuantConfig):
    """(bits, method, clip) the export applies to a tensor with this spec, or None when it
    passes through (the export's own test: 2-D and large, or declared always_quantize)."""
    if len(per_layer_shape) != 2 or (math.prod(per_layer_shape) <= q.keep_float_max_numel and not spec.always_quantize):
        return None
    if spec.quant == "gate" and q.gate_int8:  # QuantGate's rows lose ~1/254 of max|row|: not worth simulating
        return None
    if q.scheme == "int8_per_row":
        return 8, "int8_per_row", q.clip_percentile
    group = "embed" if spec.quant == "lookup" else spec.quant if spec.quant in ("attn", "mlp", "embed") else "other"
    if grids.grid_of(q.grid).minmax:  # a min-max grid: no clip, the grid's name is the method
        return getattr(q, f"{group}_bits"), q.grid, 0.0
    if q.scale_method == "search":
        raise ValueError("QAT follows the export scales: use quant.scale_method sdclip or percentile with QAT")
    return getattr(q, f"{group}_bits"), q.scale_method, getattr(q, f"{group}_clip_sigmas")


def _rows_quantile(a, q: float):
    """torch.quantile(a, q, dim=-1) for float32 rows: float32 rank, then torch.lerp's two forms
    (as quant.quantile_rows, so fake and export quantization agree to the bit)."""
    n = a.shape[-1]
    rank = np.float32(q) * np.float32(n - 1)
    lo = int(np.floor(rank))
    hi = min(int(np.ceil(rank)), n - 1)
    w = np.float32(rank - np.float32(lo))
    s = jnp.sort(a, axis=-1)
    x, y = s[..., lo], s[..., hi]
    return x + w * (y - x) if abs(w) < 0.5 else y - (y - x) * (np.float32(1.0) - w)


def fake_quant_tensor(w, bits: int, method: str, clip: float, levels=None):
    """Per-row quantize-dequantize over the last axis (leading axes are independent rows). method
    affine / nf: #1227's min-max grids (quant.grid), `levels` overriding nf's codebook."""
    w32 = w.astype(jnp.float32)
    if method in ("affine", "nf"):
        lo, step = (a[..., None] for a in grids.minmax_params(w32, method, bits, jnp))
        codes = grids.encode(w32, lo, step, method, bits, jnp, levels)
        return grids.decode(codes, lo, step, method, bits, jnp, levels).astype(w.dtype)
    qm = jnp.float32(qmax(bits))
    if method == "sdclip":
        scale = jnp.maximum(jnp.float32(clip) * jnp.std(w32, axis=-1, ddof=1) / qm, jnp.float32(1e-10))
    else:  # percentile: the baseline's rule at this width
        row_clip = _rows_quantile(jnp.abs(w32), clip / 100.0)
        scale = jnp.maximum(row_clip / qm, jnp.float32(1.0) / qm)
        if method == "int8_per_row":  # the reference int8 export codes clipped w with the fp32 scale
            clipped = jnp.clip(w32, -row_clip[..., None], row_clip[..., None])
            codes = jnp.clip(jnp.round(clipped / scale[..., None]), -qm, qm)
            return (codes * scale.astype(jnp.float16).astype(jnp.float32)[..., None]).astype(w.dtype)
    s = scale.astype(jnp.float16).astype(jnp.float32)[..., None]
    ratio = jnp.where(s != 0, w32 / jnp.where(s != 0, s, 1.0), 0.0)
    return (jnp.clip(jnp.round(ratio), -qm, qm) * s).astype(w.dtype)


def straight_through(w, quantized, on=1.0):
    """w + on * stop_gradient(quantized - w): the loss sees `quantized`, the gradient reaches w as
    if it were the identity, and nothing inside `quantized` (a codebook included) gets any."""
    return w + jnp.asarray(on, w.dtype) * jax.lax.stop_gradient(quantized - w)


def fake_quantize(params, q: QuantConfig, on=1.0, spec_tree=None):
    """params with every exported matrix replaced by w + on * stop_gradient(fq(w) - w);
    spec_tree is the model's param_specs() (the rule each tensor declared)."""

    def one(path, w, spec):
        stacked = is_stacked(path_name(path))
        rule = export_rule(spec, w.shape[1:] if stacked else w.shape, q)
        if rule is None:
            return w
        return straight_through(w, fake_quant_tensor(w, *rule), on)

    return jax.tree_util.tree_map_with_path(one, params, spec_tree)
