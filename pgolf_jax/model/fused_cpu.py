"""The "fused_cpu" causal attention: the FlashAttention recipe of model/attention.py's flash path as
one native kernel per direction (kernels/causal_attention_cpu.cc, an XLA FFI call), fp32 inside;
CPU only. Registered in registry.ATTENTION_IMPLS; `fused_cpu_attention.available()` says whether
the kernel builds here ("auto" picks it then)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from pgolf_jax.model import kernels

def _batch_partitioned(name, rule, out_shapes):
    """The FFI call `name`, split over dim 0 (batch) under a mesh: each device runs the kernel on
    its own batch shard. (XLA has no partitioning rule for a foreign call and would gather every
    input onto every device.) Other dimensions are replicated into the call. `out_shapes` maps the
    operand shapes to each result's shape."""
    def call(scale, *args):
        shapes = [a.shape for a in args]
        outs = tuple(jax.ShapeDtypeStruct(f(*shapes), jnp.float32) for f in out_shapes)
        return jax.ffi.ffi_call(name, outs, vmap_method="sequential")(*args, scale=np.float32(scale))

    def batch_only(sharding, rank):
        return NamedSharding(sharding.mesh, PartitionSpec(sharding.spec[0] if sharding.spec else None,
                                                          *([None] * (rank - 1))))

    def infer(scale, mesh, arg_shapes, result_shape):
        first = arg_shapes[0].sharding
        return jax.tree.map(lambda r: batch_only(first, len(r.shape)), result_shape)

    def partition(scale, mesh, arg_shapes, result_shape):
        first = arg_shapes[0].sharding
        args = tuple(batch_only(first, len(a.shape)) for a in arg_shapes)
        return mesh, functools.partial(call, scale), infer(scale, mesh, arg_shapes, result_shape), args

    wrapped = custom_partitioning(call, static_argnums=(0,))
    wrapped.def_partition(partition=partition, infer_sharding_from_operands=infer, sharding_rule=rule)
    return wrapped


# fwd (q, k, v, lo) -> (o, lse); bwd (q, k, v, o, lse, do, lo) -> (dq, dk, dv). lo: each query's
# first visible key (zeros, or model.doc_mask's segment starts).
_FUSED = {
    "pgolf_causal_attention_fwd": _batch_partitioned(
        "pgolf_causal_attention_fwd", "b t h k, b s g k, b s g k, b t -> b t h k, b h t",
        (lambda q, *_: q, lambda q, *_: (q[0], q[2], q[1]))),
    "pgolf_causal_attention_bwd": _batch_partitioned(
        "pgolf_causal_attention_bwd",
        "b t h k, b s g k, b s g k, b t h k, b h t, b t h k, b t -> b t h k, b s g k, b s g k",
        (lambda q, *_: q, lambda q, k, *_: k, lambda q, k, v, *_: v)),
}


def _fused_call(name, *args, scale):
    """The kernel on fp32 operands; under vmap the mapped axis is folded into the batch dim."""
    kernels.require()

    @jax.custom_batching.custom_vmap
    def call(*xs):
        return _FUSED[name](float(scale), *xs)

    @call.def_vmap
    def _(axis_size, in_batched, *xs):
        xs = [x if b else jnp.broadcast_to(x, (axis_size, *x.shape)) for x, b in zip(xs, in_batched)]
        outs = call(*(x.reshape(-1, *x.shape[2:]) for x in xs))
        return tuple(o.reshape(axis_size, -1, *o.shape[1:]) for o in outs), (True,) * len(outs)

    return call(*(a.astype(jnp.float32 if a.dtype != jnp.int32 else a.dtype) for a in args))


def _fused_forward(q_BTHK, k_BTGK, v_BTGK, scale, seg_BT=None):
    lo = jnp.zeros(q_BTHK.shape[:2], jnp.int32) if seg_BT is None else seg_BT.astype(jnp.int32)
    o_BTHK, lse_BHT = _fused_call("pgolf_causal_attention_fwd", q_BTHK, k_BTGK, v_BTGK, lo, scale=scale)
    return o_BTHK.astype(q_BTHK.dtype), (q_BTHK, k_BTGK, v_BTGK, o_BTHK, lse_BHT, lo)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def fused_cpu_attention(q_BTHK, k_BTGK, v_BTGK, scale, seg_BT=None):
    """seg_BT: None, or varlen.segment_ids (each token's segment start): attention within it."""
    return _fused_forward(q_BTHK, k_BTGK, v_BTGK, scale, seg_BT)[0]


def _fused_backward(scale, res, do_BTHK):
    q, k, v, o, lse, lo = res
    dq, dk, dv = _fused_call("pgolf_causal_attention_bwd", q, k, v, o, lse, do_BTHK, lo, scale=scale)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


fused_cpu_attention.defvjp(_fused_forward, _fused_backward)


def available() -> bool:
    """Whether the kernel builds and loads here (asked at call time: tests switch it off)."""
    return kernels.available()


fused_cpu_attention.available = available
