"""The GPU path on a real GPU (skipped elsewhere; scripts/gpu_check.sh runs it with
JAX_PLATFORMS=cuda): bf16 cuDNN flash attention against the XLA path, values and gradients; the
train step; the main job with GPTQ, sliding eval and score-first TTT."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu",
                                reason="needs a GPU (scripts/gpu_check.sh sets JAX_PLATFORMS=cuda)")


@pytest.mark.parametrize("B,T,H,G,K", [(2, 1024, 8, 4, 64), (1, 2048, 8, 8, 128), (3, 333, 4, 2, 64)])
def test_cudnn_attention_matches_xla_in_values_and_gradients(B, T, H, G, K):
    from pgolf_jax.model.attention import causal_attention

    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (B, T, H, K), jnp.bfloat16)
    k, v = (jax.random.normal(kk, (B, T, G, K), jnp.bfloat16) for kk in keys[1:3])
    w = jax.random.normal(keys[3], (B, T, H, K), jnp.float32)

    def f(impl):
        return jax.jit(jax.value_and_grad(
            lambda q, k, v: jnp.sum(causal_attention(q, k, v, impl).astype(jnp.float32) * w), argnums=(0, 1, 2)))

    (vc, gc), (vx, gx) = f("cudnn")(q, k, v), f("xla")(q, k, v)
    assert abs(float(vc) - float(vx)) <= 2e-2 * max(1.0, abs(float(vx)))
    for a, b in zip(gc, gx):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.max(np.abs(a - b)) <= 3e-2 * max(1.0, float(np.max(np.abs(b))))


def test_bf16_train_steps_learn_on_gpu():
    from pgolf_jax import config as C
    from pgolf_jax.model.gpt import build_model
    from pgolf_jax.optim.optimizers import labels_from_specs, make_optimizer
    from pgolf_jax.train.step import TrainState, make_train_step

    cfg = C.override(C.Config(), {"model.num_layers": 4, "model.model_dim": 256, "model.num_heads": 4,
                                  "model.num_kv_heads": 2})
    model = build_model(cfg.model)
    tx = make_optimizer(cfg, jnp.bfloat16, labels_from_specs(model.param_specs()))
    params = model.init(jax.random.key(0))
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    step = jax.jit(make_train_step(model, tx))
    x = jax.random.randint(jax.random.key(1), (1, 8, 1024), 0, 1024)
    y = jnp.roll(x, -1, axis=-1)  # learnable: predict the next token of a fixed batch
    losses = []
    for _ in range(20):
        state, m = step(state, x, y, 1.0)
        losses.append(float(m["train_loss"]))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.5, losses


def test_main_job_gptq_sliding_ttt_on_gpu(sample_data, tmp_path):
    from pgolf_jax.cli import main

    over = [f"{k}={v}" for k, v in sample_data["overrides"].items()]
    assert main(["--config", os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py"), *over,
                 f"train.out_dir={tmp_path}", "train.run_id=gpu", "train.iterations=30", "train.progress=false",
                 "quant.scheme=gptq", "quant.gptq.calibration_batches=2", "eval.final_modes=plain,sliding,ttt",
                 "eval.eval_stride=32", "eval.ttt.chunk_tokens=4096"]) == 0
    sub = json.loads((tmp_path / "gpu" / "submission.json").read_text())
    assert "cpu" not in sub["hardware"].lower()
    modes = sub["final_modes"]
    assert set(modes) == {"plain", "sliding", "ttt"} and all(np.isfinite(v["val_bpb"]) for v in modes.values())
    assert modes["sliding"]["val_bpb"] <= modes["plain"]["val_bpb"] + 1e-3  # more context per scored token
