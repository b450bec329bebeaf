"""VarLen (#1530 onward; model.doc_mask): attention causal within a document only. The segments
come from the tokens (a BOS starts one), so training, every eval mode and TTT get them through the
model's forward pass; each attention kernel takes them as its `seg_BT` argument (cuDNN: the flash
kernel, see segmented_attention). Reached through registry.VARLEN, so a packed file holds it only when a run
masks documents."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pgolf_jax import registry
from pgolf_jax.model.attention import flash_attention, windowed_attention
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
    its own segment. A sliding window takes the masked windowed path. cuDNN takes the flash path:
    jax 0.10's cuDNN wrapper has a packed-sequence layout (segment offsets) that lowers, but compiling
    it for H100s fails ("cannot reshape array of shape (64, 1, 2048) into shape (64,)": `run.py compile
    --config configs/record_1530.py`), so the blockwise flash kernel, which never holds a T x T score
    matrix, masks the segments instead."""
    if window and window < q_BTHK.shape[1]:
        return windowed_attention(q_BTHK, k_BTGK, v_BTGK, scale, window, seg_BT)
    # named, not looked up: a packed GPU file holds flash only through this reference
    fn = flash_attention if impl == "cudnn" else registry.resolve(registry.ATTENTION_IMPLS, impl)
    return fn(q_BTHK, k_BTGK, v_BTGK, scale, seg_BT=seg_BT)


