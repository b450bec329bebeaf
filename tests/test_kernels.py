"""The native CPU attention kernel: build cache, selection, errors, and its defining properties
beyond test_model's (exact causal attention and gradients equal to the XLA path)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgolf_jax.config import ModelConfig
from pgolf_jax.model import attention, kernels
from pgolf_jax.model import gpt as M

pytestmark = pytest.mark.skipif(kernels._compiler() is None, reason="no C++ compiler")


def qkv(B, T, H, G, K, seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(k[0], (B, T, H, K)), jax.random.normal(k[1], (B, T, G, K)),
            jax.random.normal(k[2], (B, T, G, K)))


def test_builds_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PGOLF_KERNEL_CACHE", str(tmp_path))
    first = kernels.build()
    assert first.parent == tmp_path and first.stat().st_size > 0
    mtime = first.stat().st_mtime_ns
    assert kernels.build() == first and first.stat().st_mtime_ns == mtime  # cached, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp files left behind


def test_auto_selects_the_kernel_on_cpu_and_falls_back(monkeypatch):
    assert kernels.load() is None, kernels.load()
    assert attention.resolve_impl("auto", jnp.float32) == "fused_cpu"
    monkeypatch.setattr(kernels, "available", lambda: False)
    assert attention.resolve_impl("auto", jnp.float32) == "flash"


def test_unavailable_kernel_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PGOLF_NO_NATIVE_KERNELS", "1")
    assert "PGOLF_NO_NATIVE_KERNELS" in kernels.load.__wrapped__()
    monkeypatch.setattr(kernels, "load", lambda: "no C++ compiler found")
    with pytest.raises(RuntimeError, match="attention_impl=fused_cpu.*no C\\+\\+ compiler"):
        attention.causal_attention(*qkv(1, 8, 2, 1, 8), impl="fused_cpu")


def test_bad_head_counts_are_rejected_by_the_kernel():
    q, k, v = qkv(1, 16, 3, 2, 8)
    with pytest.raises(Exception, match="multiple of kv heads"):
        jax.block_until_ready(attention.causal_attention(q, k, v, impl="fused_cpu"))


def test_long_sequence_and_bf16_inputs_match_xla():
    q, k, v = qkv(1, 1024, 8, 4, 64, seed=3)
    np.testing.assert_allclose(attention.causal_attention(q, k, v, "fused_cpu"),
                               attention.causal_attention(q, k, v, "xla"), rtol=1e-5, atol=1e-5)
    qb, kb, vb = (x.astype(jnp.bfloat16) for x in (q, k, v))
    got = attention.causal_attention(qb, kb, vb, "fused_cpu")
    assert got.dtype == jnp.bfloat16
    want = attention.causal_attention(*(x.astype(jnp.float32) for x in (qb, kb, vb)), "xla")
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=2e-2, atol=2e-2)


def test_vmap_equals_a_loop():
    q, k, v = (x.reshape(3, 1, *x.shape[1:]) for x in qkv(3, 70, 4, 2, 16, seed=1))
    got = jax.vmap(lambda a, b, c: attention.causal_attention(a, b, c, "fused_cpu"))(q, k, v)
    for i in range(3):
        np.testing.assert_allclose(got[i], attention.causal_attention(q[i], k[i], v[i], "xla"), rtol=1e-5, atol=1e-5)


def test_model_loss_and_gradients_match_xla():
    cfg = ModelConfig(vocab_size=64, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2)
    ids = jax.random.randint(jax.random.key(2), (2, 96), 0, 64)
    out = {}
    for impl in ("xla", "fused_cpu"):
        model = M.build_model(dataclasses.replace(cfg, attention_impl=impl))
        params = model.init(jax.random.key(0))
        params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(9), p.shape, p.dtype), params)
        out[impl] = jax.jit(jax.value_and_grad(model.loss))(params, ids, ids)
    assert float(out["fused_cpu"][0]) == pytest.approx(float(out["xla"][0]), rel=1e-6)
    for a, b in zip(jax.tree.leaves(out["xla"][1]), jax.tree.leaves(out["fused_cpu"][1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_gradient_of_vmap_equals_xla():
    q, k, v = (x.reshape(2, 1, *x.shape[1:]) for x in qkv(2, 70, 4, 2, 16, seed=4))

    def loss(impl):
        return lambda q, k, v: jnp.sum(jax.vmap(lambda a, b, c: attention.causal_attention(a, b, c, impl))(q, k, v) ** 2)
    for a, b in zip(jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v),
                    jax.grad(loss("fused_cpu"), argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


SHARDED_CHECK = r"""
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from pgolf_jax.model.attention import causal_attention
assert jax.device_count() == 4
sh = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
k = jax.random.split(jax.random.key(0), 4)
q, kk, v = (jax.random.normal(k[0], (4, 80, 4, 16)), jax.random.normal(k[1], (4, 80, 2, 16)),
            jax.random.normal(k[2], (4, 80, 2, 16)))
w = jax.random.normal(k[3], q.shape)
grad = lambda impl: jax.grad(lambda q, k, v: (causal_attention(q, k, v, impl) * w).sum(), argnums=(0, 1, 2))
f = jax.jit(grad("fused_cpu"), in_shardings=(sh,) * 3, out_shardings=(sh,) * 3)
hlo = f.lower(q, kk, v).compile().as_text()
assert "pgolf_causal_attention_bwd" in hlo and "all-gather" not in hlo, "the kernel's inputs were gathered"
got, want = f(q, kk, v), grad("xla")(q, kk, v)
print("max_diff", max(float(jnp.abs(a - b).max()) for a, b in zip(got, want)))
"""


def test_sharded_kernel_runs_per_batch_shard():
    """Under a 4-device mesh each device runs the kernel on its batch shard (no all-gather of
    q/k/v), and the gradients equal the single-device XLA path."""
    import os
    import subprocess
    import sys
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SHARDED_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.split("max_diff")[1]) < 1e-4
