"""Orthogonalizers for Muon: pure functions G (rows x cols) -> approximately U V^T.

Each maps every singular value s of the normalized input through a fixed odd polynomial
s -> a s + b s^3 + c s^5 per step, keeping the singular vectors. They work on the wide
orientation (rows <= cols) so the Gram matrix X X^T is the small side.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Keller Jordan's quintic, used for every step by the reference Muon (modded-nanogpt).
NS5_COEFFS = (3.4445, -4.7750, 2.0315)


def _mm(spec, x, y):
    """Matmul accumulating in fp32 and rounding to the input dtype, as a torch bf16 matmul does.
    (On CPUs with AVX512-BF16 this form is also 2x faster than an fp32 matmul; the einsum form
    avoids materializing X^T, which halved the speed of the batched product.)"""
    return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32).astype(x.dtype)


def newton_schulz5(G: jax.Array, steps: int = 5, dtype=jnp.bfloat16, eps: float = 1e-7) -> jax.Array:
    """The reference's zeropower_via_newtonschulz5: Frobenius-normalize, then `steps` quintic steps."""
    a, b, c = NS5_COEFFS
    # The norm is accumulated in fp32 (torch's bf16 norm also accumulates in fp32).
    X = G.astype(dtype)
    X = X / (jnp.linalg.norm(G.astype(jnp.float32)).astype(dtype) + eps)
    # A tall matrix is iterated from the right (A = X^T X, X <- aX + X B), which is the
    # reference's transpose-iterate-transpose without moving any data.
    tall = G.shape[0] > G.shape[1]
    for _ in range(steps):
        A = _mm("ki,kj->ij", X, X) if tall else _mm("ik,jk->ij", X, X)
        B = b * A + c * _mm("ij,jk->ik", A, A)
        X = a * X + (_mm("ij,jk->ik", X, B) if tall else _mm("ij,jk->ik", B, X))
    return X


ORTHOGONALIZERS = {"newton_schulz5": newton_schulz5}
