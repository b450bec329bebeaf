"""y = x W^T + b with explicitly initialised weight (out, in) and optional bias: the small dense
layers of #1589's weight generators, meta-networks and non-GPT families, which follow torch
nn.Linear's layout and name their inits (model/layers.DenseLinear is the GPT's bias-free block
linear)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.model.params import param


def torch_uniform(key, shape, fan_in: int):
    """torch.nn.Linear's default for weight and bias alike: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class Affine(nnx.Module):
    """weight (out, in) and bias (out,) (or none) from the given arrays; both on `group`."""

    def __init__(self, weight, bias=None, *, group: str = "adamw", quant: str = "other"):
        self.weight = param(jnp.asarray(weight, jnp.float32), group=group, quant=quant)
        self.bias = None if bias is None else param(jnp.asarray(bias, jnp.float32), group=group, quant="other")

    @classmethod
    def torch_default(cls, key, in_f: int, out_f: int, bias: bool = True, **kw) -> Affine:
        kw_, kb = jax.random.split(key)
        return cls(torch_uniform(kw_, (out_f, in_f), in_f), torch_uniform(kb, (out_f,), in_f) if bias else None, **kw)

    def __call__(self, x):
        y = jnp.einsum("...i,oi->...o", x, self.weight[...].astype(x.dtype))
        return y if self.bias is None else y + self.bias[...].astype(x.dtype)
