"""Run by test_scale.py in a fresh process with 8 fake CPU devices: one training step (two, to
cover optimizer state) on a 1-device mesh and on 8-device meshes (replicated and FSDP) must
agree. Prints the max relative difference per mode and exits non-zero on disagreement."""

import os
import sys

# appended: the suite's own flags (tests/conftest.py) stay
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from pgolf_jax import config as C  # noqa: E402
from pgolf_jax import dist
from pgolf_jax.train.loop import build  # noqa: E402
from pgolf_jax.train.step import make_train_step  # noqa: E402


def run(cfg, devices):
    mesh = dist.make_mesh(devices)
    model, tx, state = build(cfg, mesh)
    data = dist.batch_sharding(mesh, leading=1)
    sh = jax.tree.map(lambda a: a.sharding, state)
    step = jax.jit(make_train_step(model, tx), in_shardings=(sh, data, data, None, None),
                   out_shardings=(sh, dist.replicated(mesh)))
    rng = np.random.default_rng(0)
    for _ in range(2):
        x = rng.integers(0, cfg.model.vocab_size, (2, 8, 32), dtype=np.int32)
        y = rng.integers(0, cfg.model.vocab_size, (2, 8, 32), dtype=np.int32)
        state, m = step(state, dist.global_array(x, data), dist.global_array(y, data), 1.0, 0.0)
    return jax.device_get(state.params), float(m["train_loss"])


def main():
    assert jax.device_count() == 8, jax.devices()
    base = C.override(C.Config(), {"model.num_layers": 2, "model.model_dim": 64, "model.num_heads": 4,
                                   "model.num_kv_heads": 2, "model.vocab_size": 128, "optim.muon_dtype": "float32"})
    ref, ref_loss = run(base, jax.devices()[:1])
    worst = 0.0
    for mode in ("replicated", "fsdp"):
        cfg = C.override(base, {"train.param_sharding": mode})
        got, loss = run(cfg, jax.devices())
        diff = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))
                   for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)))
        print(f"{mode}: loss {loss:.6f} vs {ref_loss:.6f} max_rel_diff {diff:.2e}")
        worst = max(worst, diff, abs(loss - ref_loss))
    sys.exit(0 if worst < 1e-4 else 1)


if __name__ == "__main__":
    main()
