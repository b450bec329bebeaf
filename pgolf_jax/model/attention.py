"""Causal attention: one core function with interchangeable implementations, and the
attention-module registry (GQA now; MLA / XSA / gated variants plug in as entries)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pgolf_jax import registry
from pgolf_jax.model.layers import Pass, apply_rotary, block_linear, linear_init, rms_norm
from pgolf_jax.model.params import param

# Query/key block of the "flash" path. 128 measured fastest for T = 1024 on the 2-core CPU.
BLOCK = 128


def xla_attention(q_BTHK, k_BTGK, v_BTGK, scale, seg_BT=None):
    """Reference path: full T x T logits with a causal mask, softmax in fp32; the test oracle.
    seg_BT (varlen.segment_ids): a query sees only keys of its own segment too."""
    B, T, H, K = q_BTHK.shape
    G = k_BTGK.shape[2]
    q_BTGRK = q_BTHK.reshape(B, T, G, H // G, K)
    logits_BGRTS = jnp.einsum("btgrk,bsgk->bgrts", q_BTGRK, k_BTGK).astype(jnp.float32) * scale
    mask_TS = jnp.tril(jnp.ones((T, T), dtype=bool))
    if seg_BT is not None:
        mask_TS = (mask_TS & (seg_BT[:, :, None] == seg_BT[:, None, :]))[:, None, None]
    logits_BGRTS = jnp.where(mask_TS, logits_BGRTS, -jnp.inf)
    probs = jax.nn.softmax(logits_BGRTS, axis=-1).astype(v_BTGK.dtype)
    out_BTGRK = jnp.einsum("bgrts,bsgk->btgrk", probs, v_BTGK)
    return out_BTGRK.reshape(B, T, H, K)


# The "flash" path: exact causal attention by query blocks with a hand-written backward.
# Query heads of a KV group are folded into the rows (q_BGQK with Q = T*R, position-major) so
# every product is one wide GEMM per (batch, group). Per query block only the keys up to its end
# are touched: an unmasked off-diagonal part and a masked diagonal block, so the upper triangle
# costs nothing. Forward keeps the row logsumexp; backward recomputes probabilities from it
# (FlashAttention's recipe), which measured 2x faster on CPU than differentiating the forward.

def _fold(x_BTHK, G):
    B, T, H, K = x_BTHK.shape
    return x_BTHK.reshape(B, T, G, H // G, K).transpose(0, 2, 1, 3, 4).reshape(B, G, T * (H // G), K)


def _unfold(x_BGQK, T):
    B, G, Q, K = x_BGQK.shape
    R = Q // T
    return x_BGQK.reshape(B, G, T, R, K).transpose(0, 2, 1, 3, 4).reshape(B, T, G * R, K)


def _block_logits(q_BGQK, k_BGSK, s0, s1, R, seg=None):
    """Logits of queries [s0, s1): off-diagonal keys [0, s0) (None when s0 = 0), masked diagonal.
    seg: None, or varlen.segment_ids: keys of other segments masked too."""
    q = q_BGQK[:, :, s0 * R:s1 * R]
    f32 = dict(preferred_element_type=jnp.float32)
    diag = jnp.einsum("bgqk,bgsk->bgqs", q, k_BGSK[:, :, s0:s1], **f32)
    n = s1 - s0
    visible = jnp.arange(n)[None, :] <= (jnp.arange(n * R) // R)[:, None]
    seg_q = None if seg is None else jnp.repeat(seg[:, s0:s1], R, axis=1)[:, None, :, None]  # rows as q's
    if seg is not None:
        visible = visible & (seg_q == seg[:, None, None, s0:s1])
    diag = jnp.where(visible, diag, -jnp.inf)
    off = jnp.einsum("bgqk,bgsk->bgqs", q, k_BGSK[:, :, :s0], **f32) if s0 else None
    if off is not None and seg is not None:
        off = jnp.where(seg_q == seg[:, None, None, :s0], off, -jnp.inf)
    return off, diag


def _flash_forward(q_BTHK, k_BTGK, v_BTGK, scale, seg_BT=None):
    T, G = q_BTHK.shape[1], k_BTGK.shape[2]
    R = q_BTHK.shape[2] // G
    q = _fold(q_BTHK, G) * jnp.asarray(scale, q_BTHK.dtype)
    k, v = k_BTGK.transpose(0, 2, 1, 3), v_BTGK.transpose(0, 2, 1, 3)
    outs, lses = [], []
    for s0 in range(0, T, BLOCK):
        s1 = min(s0 + BLOCK, T)
        off, diag = _block_logits(q, k, s0, s1, R, seg_BT)
        m = diag.max(-1, keepdims=True)  # finite: a query always sees itself
        if off is not None:
            m = jnp.maximum(m, off.max(-1, keepdims=True))
        e = jnp.exp(diag - m)
        z = e.sum(-1, keepdims=True)
        acc = jnp.einsum("bgqs,bgsk->bgqk", e.astype(v.dtype), v[:, :, s0:s1]).astype(jnp.float32)
        if off is not None:
            e = jnp.exp(off - m)
            z = z + e.sum(-1, keepdims=True)
            acc = acc + jnp.einsum("bgqs,bgsk->bgqk", e.astype(v.dtype), v[:, :, :s0]).astype(jnp.float32)
        outs.append((acc / z).astype(v.dtype))
        lses.append(m + jnp.log(z))
    o = jnp.concatenate(outs, axis=2)
    return _unfold(o, T), (q, k, v, o, jnp.concatenate(lses, axis=2), seg_BT)


def _flash(q_BTHK, k_BTGK, v_BTGK, scale, seg_BT=None):
    return _flash_forward(q_BTHK, k_BTGK, v_BTGK, scale, seg_BT)[0]


def _flash_backward(scale, res, do_BTHK):
    q, k, v, o, lse, seg = res
    G, T = k.shape[1], k.shape[2]
    R = q.shape[2] // T
    do = _fold(do_BTHK, G)
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), -1, keepdims=True)
    n_blocks = -(-T // BLOCK)
    dq_parts, dk_parts, dv_parts = [], [[] for _ in range(n_blocks)], [[] for _ in range(n_blocks)]

    def grads(p, qc, doc, keys, vals, d):
        """dV, dK contributions and dQ for one (query block, key range) tile."""
        dv = jnp.einsum("bgqs,bgqk->bgsk", p.astype(doc.dtype), doc)
        ds = (p * (jnp.einsum("bgqk,bgsk->bgqs", doc, vals, preferred_element_type=jnp.float32) - d)).astype(qc.dtype)
        return dv, jnp.einsum("bgqs,bgqk->bgsk", ds, qc), jnp.einsum("bgqs,bgsk->bgqk", ds, keys)

    for i, s0 in enumerate(range(0, T, BLOCK)):
        s1 = min(s0 + BLOCK, T)
        rows = slice(s0 * R, s1 * R)
        qc, doc, lse_c, d = q[:, :, rows], do[:, :, rows], lse[:, :, rows], delta[:, :, rows]
        off, diag = _block_logits(q, k, s0, s1, R, seg)
        dv, dk, dq = grads(jnp.exp(diag - lse_c), qc, doc, k[:, :, s0:s1], v[:, :, s0:s1], d)
        dv_parts[i].append(dv)
        dk_parts[i].append(dk)
        if off is not None:
            dv, dk, dq_off = grads(jnp.exp(off - lse_c), qc, doc, k[:, :, :s0], v[:, :, :s0], d)
            dq = dq + dq_off
            for j in range(i):
                dv_parts[j].append(dv[:, :, j * BLOCK:(j + 1) * BLOCK])
                dk_parts[j].append(dk[:, :, j * BLOCK:(j + 1) * BLOCK])
        dq_parts.append(dq)
    dq = _unfold(jnp.concatenate(dq_parts, axis=2) * jnp.asarray(scale, q.dtype), T)
    dk = jnp.concatenate([sum(p) for p in dk_parts], axis=2).transpose(0, 2, 1, 3)
    dv = jnp.concatenate([sum(p) for p in dv_parts], axis=2).transpose(0, 2, 1, 3)
    return dq, dk, dv, None  # no cotangent for the integer segment ids


def _with_vjp(fun, fwd, bwd, nondiff_argnums):
    f = jax.custom_vjp(fun, nondiff_argnums=nondiff_argnums)
    f.defvjp(fwd, bwd)
    return f


# An assignment, not a decorated def and a defvjp call: packing drops it (and the blocked passes) from
# a file whose run never picks flash (packing/shake.py keeps every top-level call).
flash_attention = _with_vjp(_flash, _flash_forward, _flash_backward, (3,))


def cudnn_attention(q_BTHK, k_BTGK, v_BTGK, scale):
    """Flash attention through cuDNN (GPU, bf16/fp16); skips the masked half, handles GQA."""
    return jax.nn.dot_product_attention(q_BTHK, k_BTGK, v_BTGK, scale=scale, is_causal=True,
                                        implementation="cudnn")


def resolve_impl(impl: str, dtype) -> str:
    """'auto' = cuDNN flash attention on GPU in half precision; on CPU the native fused kernel
    when it builds here, else our blocked flash path (in a file packed for GPUs, the plain XLA path:
    packing/select.py)."""
    if impl != "auto":
        return impl
    backend = jax.default_backend()
    if backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    impls = registry.ATTENTION_IMPLS  # a packed GPU file registers no fused_cpu (and holds no kernel)
    if backend == "cpu" and "fused_cpu" in impls and registry.resolve(impls, "fused_cpu").available():
        return "fused_cpu"
    return "flash" if "flash" in impls else "xla"


def windowed_attention(q_BTHK, k_BTGK, v_BTGK, scale, window: int, seg_BT=None):
    """Causal attention over a sliding window: query t sees keys t - window < s <= t (#2114's eval
    mask). Exact, by query blocks of BLOCK: each block reads only its own keys and the halo of
    ceil((window - 1) / BLOCK) blocks before it, so the cost is T (window + BLOCK), not T^2.
    seg_BT (varlen.segment_ids): and only keys of its own segment."""
    B, T, H, K = q_BTHK.shape
    G = k_BTGK.shape[2]
    blk = min(BLOCK, T)
    nb = -(-T // blk)
    halo = -(-(window - 1) // blk) * blk
    pad = nb * blk - T
    q = jnp.pad(q_BTHK, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(B, nb, blk, G, H // G, K)
    k, v = (jnp.pad(a, ((0, 0), (halo, pad), (0, 0), (0, 0))) for a in (k_BTGK, v_BTGK))
    span = np.arange(nb)[:, None] * blk + np.arange(halo + blk)[None, :]  # block n's keys, in padded positions
    k_win, v_win = k[:, span], v[:, span]  # (B, nb, S, G, K)
    logits = jnp.einsum("bnqgrk,bnsgk->bngrqs", q, k_win, preferred_element_type=jnp.float32) * scale
    q_pos = np.arange(nb)[:, None, None] * blk + np.arange(blk)[None, :, None]
    k_pos = span[:, None, :] - halo
    visible = (k_pos <= q_pos) & (k_pos > q_pos - window) & (k_pos >= 0)  # (nb, q, S)
    visible = visible[None, :, None, None]
    if seg_BT is not None:  # padded keys get segment -1 (never a query's), padded queries -2
        seg_k = jnp.pad(seg_BT, ((0, 0), (halo, pad)), constant_values=-1)[:, span]  # (B, nb, S)
        seg_q = jnp.pad(seg_BT, ((0, 0), (0, pad)), constant_values=-2).reshape(B, nb, blk)
        visible = visible & (seg_q[:, :, None, None, :, None] == seg_k[:, :, None, None, None, :])
    logits = jnp.where(visible, logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1).astype(v_BTGK.dtype)
    out = jnp.einsum("bngrqs,bnsgk->bnqgrk", probs, v_win)
    return out.reshape(B, nb * blk, H, K)[:, :T]


def causal_attention(q_BTHK, k_BTGK, v_BTGK, impl: str = "auto", scale: float | None = None, window: int = 0,
                     seg_BT=None):
    """softmax(q k^T * scale + causal mask) v with GQA (query head h reads kv head h // (H/G));
    with a window (< T), each query sees only its `window` most recent keys (itself included);
    with seg_BT (varlen.segment_ids), only keys of its own segment."""
    scale = 1.0 / math.sqrt(q_BTHK.shape[-1]) if scale is None else scale
    impl = resolve_impl(impl, q_BTHK.dtype)
    if seg_BT is not None:
        return registry.resolve(registry.VARLEN, "attention")(q_BTHK, k_BTGK, v_BTGK, impl, scale, window, seg_BT)
    if window and window < q_BTHK.shape[1]:
        if impl == "cudnn":
            return jax.nn.dot_product_attention(q_BTHK, k_BTGK, v_BTGK, scale=scale, is_causal=True,
                                                local_window_size=(window - 1, 0), implementation="cudnn")
        return windowed_attention(q_BTHK, k_BTGK, v_BTGK, scale, window)
    return registry.resolve(registry.ATTENTION_IMPLS, impl)(q_BTHK, k_BTGK, v_BTGK, scale)


# ---------------------------------------------------------------------------------------------
# Attention modules. Each takes the normalized block input x_ND (the flat residual stream,
# N = B*T) and the pass (layers.Pass: the rotary tables, (B, T), the window, handed on to every
# linear); it returns the pre-residual output (after the output projection), shape (N, D).

def exclusive_self_attention(y_BTHK, v_BTGK):
    """XSA (spec 4.8): remove from each head's output its component along the token's own
    (normalized) value vector, in the GQA form: query head h uses kv head h // (H/G)."""
    B, T, H, K = y_BTHK.shape
    G = v_BTGK.shape[2]
    y = y_BTHK.reshape(B, T, G, H // G, K)
    v32 = v_BTGK.astype(jnp.float32)
    vn = (v32 / jnp.maximum(jnp.linalg.norm(v32, axis=-1, keepdims=True), 1e-12)).astype(y.dtype)[:, :, :, None, :]
    return (y - jnp.sum(y * vn, axis=-1, keepdims=True) * vn).reshape(B, T, H, K)


class GQA(nnx.Module):
    """Grouped-query attention with QK RMSNorm, (partial) RoPE, a learned per-head query gain,
    optional XSA and an optional output gate (model.attn_gate)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        D, H, G = cfg.model_dim, cfg.num_heads, cfg.num_kv_heads
        self.num_heads, self.num_kv_heads, self.head_dim = H, G, D // H
        self.impl = cfg.attention_impl
        kv = G * self.head_dim
        self.c_q = block_linear(cfg, D, D, site="attn", init=linear_init(cfg, D, D), rngs=rngs)
        self.make_kv(cfg, D, kv, rngs)
        self.proj = block_linear(cfg, D, D, site="attn", init="zeros", rngs=rngs)
        self.q_gain = param(jnp.full((H,), cfg.qk_gain_init, jnp.float32), group="scalar", quant="control")
        # model.attn_gate (registry.ATTN_GATES): made last, so without one the rng stream is unchanged.
        self.attn_gate = registry.resolve(registry.ATTN_GATES, cfg.attn_gate)(cfg, rngs=rngs) if cfg.attn_gate else None

    def make_kv(self, cfg, D: int, kv: int, rngs: nnx.Rngs) -> None:
        """The K and V projections (D -> kv each); variants that make K/V differently override this."""
        self.c_k = block_linear(cfg, D, kv, site="attn", init=linear_init(cfg, D, kv), rngs=rngs)
        self.c_v = block_linear(cfg, D, kv, site="attn", init=linear_init(cfg, D, kv), rngs=rngs)

    def __call__(self, x_ND, ctx: Pass, xsa=0.0):
        """`xsa` in {0, 1} (a traced per-layer flag under scan) switches XSA on."""
        B, T = ctx.shape_BT
        G, K = self.num_kv_heads, self.head_dim
        return self.attend(x_ND, self.c_k(x_ND, ctx).reshape(B, T, G, K), self.c_v(x_ND, ctx).reshape(B, T, G, K),
                           ctx, xsa)

    def attend(self, x_ND, k_BTGK, v_BTGK, ctx: Pass, xsa):
        """Everything after the K/V projections (shared by the attention variants that only
        change how K and V are made): q, QK norm, RoPE, q gain, attention, XSA, output."""
        B, T = ctx.shape_BT
        H, K = self.num_heads, self.head_dim
        q_BTHK = rms_norm(self.c_q(x_ND, ctx).reshape(B, T, H, K))
        k_BTGK = rms_norm(k_BTGK)
        cos, sin = ctx.rope
        q_BTHK = apply_rotary(q_BTHK, cos, sin)
        k_BTGK = apply_rotary(k_BTGK, cos, sin)
        q_BTHK = q_BTHK * self.q_gain[...].astype(q_BTHK.dtype)[:, None]
        y_BTHK = causal_attention(q_BTHK, k_BTGK, v_BTGK, self.impl, window=ctx.window, seg_BT=ctx.segments)
        if not (isinstance(xsa, (int, float)) and xsa == 0):
            y_BTHK = jnp.where(jnp.asarray(xsa) > 0, exclusive_self_attention(y_BTHK, v_BTGK), y_BTHK)
        if self.attn_gate is not None:  # per token and head, after XSA, before the projection (#1667, #1736)
            y_BTHK = y_BTHK * self.attn_gate(x_ND).reshape(B, T, H, 1).astype(y_BTHK.dtype)
        return self.proj(y_BTHK.reshape(B * T, H * K), ctx)

