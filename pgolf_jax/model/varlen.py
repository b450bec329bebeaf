"""VarLen (#1530 onward; model.doc_mask): attention causal within a document only. The segments
come from the tokens (a BOS starts one), so training, every eval mode and TTT get them through the
model's forward pass; each attention kernel takes them as its `seg_BT` argument, cuDNN as its
packed-sequence layout. Reached through registry.VARLEN, so a packed file holds it only when a run
masks documents."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pgolf_jax import registry
from pgolf_jax.model.attention import windowed_attention
from pgolf_jax.model.embeddings import BOS_ID


def segment_ids(ids_BT, split_len: int = 0):
    """Each token's attention segment (the records' cu_seqlens as per-token ids): a segment starts
    at every BOS and, with split_len, every split_len tokens within a document; the id is the
    segment's first position, so ids never decrease along a row (tokens before a row's first BOS
    form the segment at 0)."""
    t_BT = jnp.broadcast_to(jnp.arange(ids_BT.shape[1], dtype=jnp.int32), ids_BT.shape)
    doc_BT = jax.lax.cummax(jnp.where(ids_BT == BOS_ID, t_BT, 0), axis=1)
    if split_len:
        doc_BT = doc_BT + (t_BT - doc_BT) // split_len * split_len
    return doc_BT


def segmented_attention(q_BTHK, k_BTGK, v_BTGK, impl: str, scale: float, window: int, seg_BT):
    """attention.causal_attention with segments (impl already resolved): a query sees only keys of
    its own segment. cuDNN in its packed layout; a sliding window on the masked windowed path."""
    if window and window < q_BTHK.shape[1]:
        return windowed_attention(q_BTHK, k_BTGK, v_BTGK, scale, window, seg_BT)
    if impl == "cudnn":
        return cudnn_packed(q_BTHK, k_BTGK, v_BTGK, scale, seg_BT)
    return registry.resolve(registry.ATTENTION_IMPLS, impl)(q_BTHK, k_BTGK, v_BTGK, scale, seg_BT=seg_BT)


def cudnn_packed(q_BTHK, k_BTGK, v_BTGK, scale, seg_BT):
    """cuDNN flash attention over packed sequences: every segment its own causal sequence. jax.nn's
    dot_product_attention takes no segment offsets; jax 0.10's cuDNN wrapper does (Hopper or later)."""
    from jax._src.cudnn.fused_attention_stablehlo import MaskType, dot_product_attention
    lengths, offsets = packed_segments(seg_BT)
    return dot_product_attention(q_BTHK, k_BTGK, v_BTGK, None, None, lengths, lengths, offsets, offsets,
                                 scale=scale, mask_type=MaskType.PADDING_CAUSAL, qkv_layout="BTNH")


def packed_segments(seg_BT):
    """cuDNN's packed layout of segment_ids' segments (the records' cu_seqlens, per row): lengths
    (B, T) and first positions (B, T + 1) of each row's segments, unused slots -1. A row has at most
    T segments, so T slots always suffice (a static shape, as the records pad cu_seqlens to one)."""
    B, T = seg_BT.shape
    t = jnp.arange(T, dtype=jnp.int32)
    starts = jnp.sort(jnp.where(seg_BT == t, t, T), axis=1)  # the row's segment starts, then T's
    ends = jnp.concatenate([starts[:, 1:], jnp.full((B, 1), T, jnp.int32)], axis=1)
    lengths = jnp.where(starts < T, ends - starts, -1).astype(jnp.int32)
    offsets = jnp.concatenate([jnp.where(starts < T, starts, -1), jnp.full((B, 1), -1, jnp.int32)], axis=1)
    return lengths, offsets.astype(jnp.int32)
