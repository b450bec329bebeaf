"""Bare GEMMs of the baseline's 1 x 1024 train step, XLA:CPU (jnp.dot under jit) beside torch
(torch.mm), in one process, fp32 and bf16: is the step's gap to the reference in the GEMMs
themselves? Usage: python scripts/cpu_gemm.py [--reps 30]. Prints GFLOP/s (min time of reps)."""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import torch

from pgolf_jax.bench import _times

# (M, K, N) of the step's products at 1 x 1024 tokens, d 512, KV 256, MLP 1024, vocab 1024, and of
# Muon's Newton-Schulz on a 512 x 1024 matrix (X X^T, then (A) X).
SHAPES = {
    "fwd q/proj 1024x512x512": (1024, 512, 512),
    "fwd k/v 1024x512x256": (1024, 512, 256),
    "fwd mlp fc 1024x512x1024": (1024, 512, 1024),
    "fwd mlp proj 1024x1024x512": (1024, 1024, 512),
    "bwd dW fc 1024x1024x512 (T-contracting)": (512, 1024, 1024),
    "head 1024x512x1024": (1024, 512, 1024),
    "NS X X^T 512x1024x512": (512, 1024, 512),
    "NS A X 512x512x1024": (512, 512, 1024),
}


def best(fn, *args, reps: int) -> float:
    return min(_times(fn, *args, steps=reps, warmup=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reps", type=int, default=30)
    a = p.parse_args()
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}) torch {torch.__version__} "
          f"threads {torch.get_num_threads()}")
    print("| product (M x K x N) | dtype | XLA GFLOP/s | torch GFLOP/s | XLA speed / torch |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=x.dtype))
    for name, (m, k, n) in SHAPES.items():
        xa, ya = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
        for dt, jdt, tdt in (("fp32", jnp.float32, torch.float32), ("bf16", jnp.bfloat16, torch.bfloat16)):
            xj, yj = jnp.asarray(xa, jdt), jnp.asarray(ya, jdt)
            xt, yt = torch.from_numpy(xa).to(tdt), torch.from_numpy(ya).to(tdt)
            tj = best(dot, xj, yj, reps=a.reps)
            tt = best(torch.mm, xt, yt, reps=a.reps)
            flop = 2 * m * k * n
            print(f"| {name} | {dt} | {flop / tj / 1e9:.0f} | {flop / tt / 1e9:.0f} | {tt / tj:.2f} |")


if __name__ == "__main__":
    main()
