"""Orthogonalizers for Muon: pure functions G (rows x cols) -> approximately U V^T.

Each Newton-Schulz step maps every singular value s of the normalized input through an odd
quintic s -> a s + b s^3 + c s^5 and keeps the singular vectors; a coefficient table gives
(a, b, c) per step. The iteration runs on the wide orientation (the Gram matrix is the small
side). Products are bf16 x bf16 accumulated in fp32 and rounded back, as a torch bf16 matmul.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pgolf_jax import registry


def coefficient_schedule(name: str, steps: int) -> tuple[tuple[float, float, float], ...]:
    """The (a, b, c) of each of `steps` iterations for a named table (registry.NS_COEFFICIENTS)."""
    if name not in registry.NS_COEFFICIENTS:
        raise ValueError(f"unknown Newton-Schulz coefficients {name!r}; expected one of "
                         f"{sorted(registry.NS_COEFFICIENTS)}")
    table = registry.resolve(registry.NS_COEFFICIENTS, name)
    if len(table) == 1:
        return table * steps
    if steps > len(table):
        raise ValueError(f"coefficient table {name!r} has {len(table)} steps, {steps} requested")
    return table[-steps:] if name == "you" else table[:steps]


def _mm(spec, x, y):
    """Matmul accumulating in fp32 and rounding to the input dtype, as a torch bf16 matmul does.
    (On CPUs with AVX512-BF16 this form is also 2x faster than an fp32 matmul; the einsum form
    avoids materializing X^T, which halved the speed of the batched product.)"""
    return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32).astype(x.dtype)


def _normalized_wide(G, dtype, eps):
    """X = G / (||G||_F + eps) in `dtype`, transposed to rows <= cols."""
    X = G.astype(dtype)
    # The norm is accumulated in fp32 (torch's bf16 norm also accumulates in fp32).
    X = X / (jnp.linalg.norm(G.astype(jnp.float32)).astype(dtype) + eps)
    return X.T if G.shape[0] > G.shape[1] else X


def _aol(X, A, eps):
    """AOL pre-scaling (Turbo-Muon): s_i = (sum_j |A_ij|)^-1/2, X <- diag(s) X, A <- diag(s) A diag(s),
    which bounds the spectral norm by 1 more tightly than the Frobenius normalization."""
    s = jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.abs(A.astype(jnp.float32)), axis=-1), eps)).astype(X.dtype)
    return X * s[:, None], A * s[:, None] * s[None, :]


def newton_schulz(G, steps: int = 5, dtype=jnp.bfloat16, coefficients: str = "ns5", aol: bool = False,
                  eps: float = 1e-7):
    """X <- a X + (b A + c A^2) X with A = X X^T, one (a, b, c) per step. With the default
    table this is the reference's zeropower_via_newtonschulz5."""
    tall = G.shape[0] > G.shape[1]
    X = _normalized_wide(G, dtype, eps)
    for i, (a, b, c) in enumerate(coefficient_schedule(coefficients, steps)):
        A = _mm("ik,jk->ij", X, X)
        if aol and i == 0:
            X, A = _aol(X, A, eps)
        B = b * A + c * _mm("ij,jk->ik", A, A)
        X = a * X + _mm("ij,jk->ik", B, X)
    return X.T if tall else X


def gram_newton_schulz(G, steps: int = 5, dtype=jnp.bfloat16, coefficients: str = "ns5", aol: bool = False,
                       eps: float = 1e-7, restart: int = 2):
    """The same iteration on the n x n Gram matrix of a wide n x m X (n < m).

    Each step is X <- P X with P = aI + Z, Z = bR + cR^2, R = X X^T, a polynomial in R; so
    accumulate Q = P_k ... P_0 and update R <- P R P (P and R commute) with n x n products, and
    touch X only at a restart (X <- QX, R = X X^T, which bounds rounding growth in bf16) and at
    the end. Equal to newton_schulz up to rounding; cheaper when m >> n (#1809, spec 2.4 d)."""
    tall = G.shape[0] > G.shape[1]
    X = _normalized_wide(G, dtype, eps)
    eye = jnp.eye(X.shape[0], dtype=X.dtype)
    R, Q = _mm("ik,jk->ij", X, X), eye
    schedule = coefficient_schedule(coefficients, steps)
    for i, (a, b, c) in enumerate(schedule):
        if i == restart:
            X = _mm("ij,jk->ik", Q, X)
            R, Q = _mm("ik,jk->ij", X, X), eye
        if aol and i == 0:
            X, R = _aol(X, R, eps)
        Z = b * R + c * _mm("ij,jk->ik", R, R)
        Q = a * eye + Z if i in (0, restart) else a * Q + _mm("ij,jk->ik", Z, Q)
        if i + 1 < len(schedule) and i + 1 != restart:
            RZ = _mm("ij,jk->ik", Z, R) + a * R
            R = _mm("ij,jk->ik", Z, RZ) + a * RZ
    X = _mm("ij,jk->ik", Q, X)
    return X.T if tall else X


def newton_schulz_flops(rows: int, cols: int, steps: int) -> float:
    n, m = min(rows, cols), max(rows, cols)
    return steps * (4.0 * n * n * m + 2.0 * n ** 3)


def gram_newton_schulz_flops(rows: int, cols: int, steps: int, restart: int = 2) -> float:
    n, m = min(rows, cols), max(rows, cols)
    flops = 2.0 * n * n * m * (2 + (2 if 0 < restart < steps else 0))  # first R, final QX, restart
    for i in range(steps):
        flops += 2.0 * n ** 3 * (1 + (i not in (0, restart)) + 2 * (i + 1 < steps and i + 1 != restart))
    return flops


ORTHOGONALIZERS = {"newton_schulz": newton_schulz, "gram_newton_schulz": gram_newton_schulz}
