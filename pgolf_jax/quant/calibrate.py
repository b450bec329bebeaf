"""GPTQ calibration: H = mean over batches of sum X^T X for the input of every quantized linear,
through the (EMA) model with its looped schedule, on training data. The records collect these
inside the 600 s training budget (GPTQ_RESERVE_SECONDS), so the time is measured and reported."""

from __future__ import annotations

import time

import jax
import numpy as np

from pgolf_jax import dist
from pgolf_jax.data.shards import make_loader
from pgolf_jax.quant.interop import split_layers


def collect_hessians(model, params, train_pattern: str, batches: int, batch_tokens: int, seq_len: int,
                     data_sharding=None, looped: bool = True, log=print, loader: str = "sequential",
                     loader_seed: int = 0, vocab_size: int = 0) -> tuple[dict[str, np.ndarray], float]:
    """({reference name: H (in x in) float64}, seconds). Data: a fresh loader of the training
    run's kind over the training shards (the records: a fresh shuffled loader; never val)."""
    t0 = time.perf_counter()
    # Replicated Hessians: jit sums them over the data devices and every process reads them.
    rep = None if data_sharding is None else dist.replicated(data_sharding.mesh)
    fn = jax.jit(lambda p, x: model.input_hessians(p, x, looped), out_shardings=rep)
    loader = make_loader(loader, train_pattern, 1, seq_len, loader_seed, vocab_size)
    acc = None
    for _ in range(batches):
        x, _ = loader.next_batch(batch_tokens, seq_len)
        x = x.reshape(-1, seq_len)
        if data_sharding is not None:
            x = dist.global_array(x, data_sharding)
        h = fn(params, x)
        acc = h if acc is None else jax.tree.map(lambda a, b: a + b, acc, h)
    out: dict[str, np.ndarray] = {}
    for name, H in jax.device_get(acc).items():
        out.update(split_layers(name, np.asarray(H, np.float64) / batches))
    seconds = time.perf_counter() - t0
    log(f"gptq:collected {len(out)} Hessians from {batches} batches of {batch_tokens} tokens in {seconds:.1f}s")
    return out, seconds
