"""model.parallel_residual=two_lane (#1530): the defining property against today's parallel residual,
its parameters, scan == unrolled under depth recurrence, and the configs it refuses."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import perturbed
from pgolf_jax import config as C
from pgolf_jax.model.gpt import build_model, count_params
from pgolf_jax.model.layers import Pass, rotary_tables
from pgolf_jax.model.params import ParamSpec

# U-Net of 4 layers: encoder 0-1, decoder 2-3; lanes from layer 2 (looped: 0,1,1 | 1,2,3).
BASE = C.ModelConfig(vocab_size=64, num_layers=4, model_dim=16, num_heads=2, num_kv_heads=1, mlp_mult=2.0,
                     ln_scale=True, xsa_last_n=2, skip_gates_enabled=True, parallel_residual_start=2,
                     attention_impl="xla")
TWO = BASE.replace(parallel_residual="two_lane")


def _at_lane_init(params):
    """Perturbed weights with resid_mix at its init (1, 0) and, if present, resid_lambda = 1, post = 1."""
    blocks = dict(params["blocks"])
    blocks["resid_mix"] = jnp.zeros_like(blocks["resid_mix"]).at[:, 0].set(1.0)
    if "resid_lambda" in blocks:
        blocks["resid_lambda"] = jnp.ones_like(blocks["resid_lambda"])
        blocks["post_lambda"] = jnp.ones_like(blocks["post_lambda"])
    return {**params, "blocks": blocks}


def _one_lane_params(params):
    return {**params, "blocks": {k: v for k, v in params["blocks"].items() if k not in ("resid_lambda", "post_lambda")}}


def test_two_lanes_equal_to_x_are_todays_parallel_residual():
    """With resid_lambda = 1, post = 1 and both lanes x, each lane is today's GPT-J parallel block
    (and below the start layer the sequential block); the layer traced, as under scan (the static
    layers of the Python loop: test_two_lane_scan_equals_unrolled_under_recurrence)."""
    two = _at_lane_init(perturbed(build_model(TWO)))
    m1, m2 = build_model(BASE), build_model(TWO)
    B, T, D = 2, 8, BASE.model_dim
    x = jax.random.normal(jax.random.key(3), (B * T, D))
    x0 = jax.random.normal(jax.random.key(4), (B * T, D))
    ctx = Pass(shape_BT=(B, T), rope=rotary_tables(T, D // BASE.num_heads, BASE.rope_base, jnp.float32))

    def block(model, params, layer):
        graphdef, stacked = nnx.split(model.module(params).blocks)
        return nnx.merge(graphdef, jax.tree.map(lambda a: a[layer], stacked))

    @jax.jit
    def outputs(p, layer):
        return block(m1, _one_lane_params(p), layer)(x, x0, layer, ctx), block(m2, p, layer)((x, x), x0, layer, ctx)

    for layer in (1, 2):  # below the start layer (sequential) and from it (parallel)
        want, lanes = outputs(two, jnp.int32(layer))
        for lane in lanes:
            np.testing.assert_allclose(lane, want, rtol=1e-5, atol=1e-5)


def test_plain_stack_of_equal_lanes_is_todays_model():
    """Through a topology (plain: no skips, so the lanes stay equal) the logits are today's."""
    two_cfg, one_cfg = TWO.replace(topology="plain"), BASE.replace(topology="plain")
    two = _at_lane_init(perturbed(build_model(two_cfg)))
    ids = jax.random.randint(jax.random.key(2), (2, 16), 0, BASE.vocab_size)
    m2, m1 = build_model(two_cfg), build_model(one_cfg)
    got, want = jax.jit(lambda p: (m2.logits(p, ids), m1.logits(_one_lane_params(p), ids)))(two)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_lane_parameters_count_dtype_and_group():
    one, two = build_model(BASE), build_model(TWO)
    s1, s2 = (jax.eval_shape(m.init, jax.random.key(0)) for m in (one, two))
    assert count_params(s2) - count_params(s1) == BASE.num_layers * (2 + 4)  # the record's (L, 2) + (L, 2, 2)
    assert "resid_lambda" not in s1["blocks"]
    blocks = jax.jit(lambda k: {n: two.init(k)["blocks"][n] for n in ("resid_lambda", "post_lambda")})(
        jax.random.key(0))
    np.testing.assert_array_equal(blocks["resid_lambda"], np.full((BASE.num_layers, 2), 1.1, np.float32))
    np.testing.assert_array_equal(blocks["post_lambda"], np.ones((BASE.num_layers, 2, 2), np.float32))
    specs = two.param_specs()["blocks"]
    for name in blocks:
        assert blocks[name].dtype == jnp.float32 and specs[name] == ParamSpec("scalar", "control")


def test_two_lane_scan_equals_unrolled_under_recurrence():
    """U-Net with layer 1 looped (record_1809's shape; a decoder slot below the start layer): scan ==
    Python loop, with lanes diverged by the skips and perturbed lambdas."""
    cfg = TWO.replace(num_loops=1, loop_start=1, loop_end=1, enable_looping_at=0.3)
    params = perturbed(build_model(cfg))
    ids = jax.random.randint(jax.random.key(2), (2, 16), 0, cfg.vocab_size)
    scan, loop = (build_model(dataclasses.replace(cfg, scan_layers=s)) for s in (True, False))
    got, want = jax.jit(lambda p: (scan.hidden(p, ids, True), loop.hidden(p, ids, True)))(params)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("over,pattern", [
    ({}, r"needs its start layer: set model.parallel_residual_start in 0..1 \(got -1\)"),
    ({"model.parallel_residual_start": 1, "model.topology": "denseformer"}, "unet and plain topologies"),
])
def test_two_lane_refuses_what_it_cannot_carry(over, pattern):
    with pytest.raises(C.ConfigError, match=pattern):
        C.override(C.Config(), {"model.num_layers": 2, "model.parallel_residual": "two_lane", **over})
