"""GPTQ with fixed row scales, and LQER low-rank error correction (NumPy).

GPTQ (Frantar et al.) quantizes a matrix W (rows x cols) one input column at a time and pushes
each column's rounding error onto the columns not yet quantized, weighted by the inverse of the
input Hessian H = sum X^T X, so the layer output error ||(W - Q) X|| is minimized rather than
||W - Q||. As in the records (spec 4.19): dead columns (H_jj = 0) get H_jj = 1 and a zero
weight; damping 1% of mean(diag H); act-order (columns by descending H_jj); the upper Cholesky
factor of H^-1; blocks of 128 columns with the error of a block propagated to the rest at once.
"""

from __future__ import annotations

import numpy as np

from pgolf_jax.quant.grid import qmax


def gptq_quantize(w32: np.ndarray, H: np.ndarray, scales: np.ndarray, bits: int, block_size: int = 128,
                  damp: float = 0.01, act_order: bool = True, codec=None) -> np.ndarray:
    """int8 codes of w32 (rows x cols) for fixed fp16 row scales, minimizing the H-weighted error.
    The linear algebra runs in float64 (the records run it in fp32 on GPU): it never changes the
    codes' meaning and keeps the Cholesky factorization stable on near-singular Hessians.
    codec = (encode, decode) of one column (rows,) replaces the symmetric grid of `scales` (the
    min-max grids of quant.grid, with their fixed per-row parameters)."""
    rows, cols = w32.shape
    if H.shape != (cols, cols):
        raise ValueError(f"Hessian shape {H.shape} does not match {cols} input columns")
    W = w32.astype(np.float64).copy()
    H = np.asarray(H, np.float64).copy()
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H[np.diag_indices(cols)] += damp * np.mean(np.diag(H))
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(cols)
    W, H = W[:, perm], H[np.ix_(perm, perm)]
    # Upper Cholesky factor U of H^-1 (H^-1 = U^T U): row j of U gives the error propagation.
    Linv = np.linalg.inv(np.linalg.cholesky(H))
    U = np.linalg.cholesky(Linv.T @ Linv).T
    if codec is None:
        s = scales.astype(np.float32).astype(np.float64)
        qm = qmax(bits)
        nonzero = s != 0  # a row whose scale underflowed to 0 codes as 0 (torch's nan -> int8)

        def encode(col):
            return np.clip(np.round(np.divide(col, s, out=np.zeros(rows), where=nonzero)), -qm, qm)

        def decode(q):
            return q * s
    else:
        encode, decode = codec
    Q = np.zeros((rows, cols), np.int8)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        Wb, Ub = W[:, i1:i2].copy(), U[i1:i2, i1:i2]
        err = np.zeros((rows, i2 - i1))
        for j in range(i2 - i1):
            q = encode(Wb[:, j])
            Q[:, i1 + j] = q
            e = (Wb[:, j] - decode(q)) / Ub[j, j]
            err[:, j] = e
            Wb[:, j:] -= np.outer(e, Ub[j, j:])
        W[:, i2:] -= err @ U[i1:i2, i2:]
    return Q[:, np.argsort(perm)]


def hessian_error(w32: np.ndarray, deq: np.ndarray, H: np.ndarray) -> float:
    """tr((W - Q) H (W - Q)^T): the summed squared output error over the calibration inputs."""
    d = (w32 - deq).astype(np.float64)
    return float(np.einsum("ij,jk,ik->", d, np.asarray(H, np.float64), d))


# ---------------------------------------------------------------------------------------------
# LQER (PR #1797): E = W - deq(Q) ~ A B with a rank-r SVD, A = U_r S_r, B = V_r^T, stored in low
# bits. Asymmetric packing: A int2 in [-2, 1] with one fp16 scale max|A| / 1.5, B int4 in [-8, 7]
# with an fp16 scale per 64 consecutive elements (max|B| / 7.5); else both int4 per row.

def _pack_int2_global(a: np.ndarray):
    s = np.float16(max(np.abs(a).max() / 1.5, 1e-10))
    return np.clip(np.round(a / np.float32(s)), -2, 1).astype(np.int8), np.asarray([s], np.float16)


def _pack_int4_groups(b: np.ndarray, group: int = 64):
    flat = b.reshape(-1, group)
    s = np.maximum(np.abs(flat).max(axis=1) / 7.5, 1e-10).astype(np.float16)
    q = np.clip(np.round(flat / s.astype(np.float32)[:, None]), -8, 7).astype(np.int8)
    return q.reshape(b.shape), s


def _pack_int4_rows(a: np.ndarray):
    s = np.maximum(np.abs(a).max(axis=1) / 7.0, 1e-10).astype(np.float16)
    return np.clip(np.round(a / s.astype(np.float32)[:, None]), -8, 7).astype(np.int8), s


def lqer_correct(name: str, E: np.ndarray, rank: int, asym: bool = True) -> dict[str, np.ndarray]:
    """Packed low-rank factors of the quantization error E, keyed '<name>/A', '/B', '/sA', '/sB'."""
    U, S, Vt = np.linalg.svd(E.astype(np.float64), full_matrices=False)
    r = min(rank, len(S))
    A = (U[:, :r] * S[:r]).astype(np.float32)
    B = Vt[:r].astype(np.float32)
    if asym and B.size % 64 == 0:
        (qa, sa), (qb, sb) = _pack_int2_global(A), _pack_int4_groups(B)
    else:
        (qa, sa), (qb, sb) = _pack_int4_rows(A), _pack_int4_rows(B)
    return {f"{name}/A": qa, f"{name}/B": qb, f"{name}/sA": sa, f"{name}/sB": sb}


def lqer_delta(name: str, lqer: dict[str, np.ndarray]) -> np.ndarray:
    """A B from the packed factors (the scale layout is read off the scale shapes)."""
    qa, qb, sa, sb = (lqer[f"{name}/{k}"] for k in ("A", "B", "sA", "sB"))
    A = qa.astype(np.float32) * (sa.astype(np.float32) if sa.size == 1 else sa.astype(np.float32)[:, None])
    if sb.size == qb.shape[0]:  # per-row int4
        B = qb.astype(np.float32) * sb.astype(np.float32)[:, None]
    else:  # per-64-element groups
        B = (qb.reshape(-1, 64).astype(np.float32) * sb.astype(np.float32)[:, None]).reshape(qb.shape)
    return A @ B
