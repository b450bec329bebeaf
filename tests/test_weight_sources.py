"""Seam: the weight sources (model.weight_source): basis sharing and the hypernet, SIREN, NCA and seed
generators."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pgolf_jax import config as C
from pgolf_jax.model.generators import generated_slots
from pgolf_jax.model.gpt import build_model, count_params
from pgolf_jax.model.topology import BlockRunner
from pgolf_jax.quant.interop import flatten_params
from conftest import perturbed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = C.ModelConfig(vocab_size=96, num_layers=3, model_dim=64, num_heads=4, num_kv_heads=2, attention_impl="xla")
LINEARS = ("attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj")


def ids(B=2, T=32, seed=0, vocab=96):
    return jax.random.randint(jax.random.key(seed), (B, T), 0, vocab)


def layer_module(gpt, layer: int):
    """Block `layer` with its generated weights filled in (what the layer scan runs)."""
    run = BlockRunner(gpt, None, gpt._context(8, 1))
    s = run.layer(layer, layer)
    return nnx.merge(run.stacks[s.stack][0], s.state)


def sub(tree, dotted):
    """tree.a.b for a module, tree["a"]["b"] for a dict."""
    for part in dotted.split("."):
        tree = tree[part] if isinstance(tree, dict) else getattr(tree, part)
    return tree


# ---------------------------------------------------------------------------------------------
# sizes and FLOPs at #1589's shapes


def test_hypernet_real_size_is_109m_in_its_heads():
    """Spec 4.9 [I]: each head is 512 x 32 (in + out) (+ bias); the six hold ~109 M parameters."""
    shapes = jax.eval_shape(build_model(C.load(ROOT / "configs" / "pr1589" / "hypernet_r32.py").model).init,
                            jax.random.key(0))["gen"]
    heads = {k: v for k, v in shapes.items() if k.startswith(("attn", "mlp"))}
    assert heads["attn_c_q"]["weight"].shape == (32 * 1024, 512)
    assert count_params(heads) == 513 * 32 * (1024 + 768 + 768 + 1024 + 1536 + 1536) == 109_264_896


def test_flops_count_what_a_token_multiplies():
    """Generated weights cost what stored ones do; basis sharing runs factored (U and C per layer)."""
    from pgolf_jax.model.flops import analytic_flops_per_token

    load = lambda name: C.load(ROOT / "configs" / "pr1589" / f"{name}.py").model  # noqa: E731
    base = analytic_flops_per_token(load("baseline"), 1024)["n_matmul_params"]
    assert analytic_flops_per_token(load("hypernet_r32"), 1024)["n_matmul_params"] == base
    assert analytic_flops_per_token(load("basis_r128"), 1024)["n_matmul_params"] == 9 * 128 * (3584 + 3072) + 1024 * 512
    surge = load("surge_m_v2_twopass")
    assert analytic_flops_per_token(surge, 1024)["matmul"] > analytic_flops_per_token(
        dataclasses.replace(surge, family="gpt"), 1024)["matmul"]


# ---------------------------------------------------------------------------------------------
# weight_source=basis


BASIS = TINY.replace(weight_source='basis', basis=dict(rank=8))


def test_basis_weights_are_one_shared_u_times_per_layer_c():
    model = build_model(BASIS)
    params = perturbed(model)
    assert sorted(params["gen"]) == sorted(s.replace(".", "_") for s in LINEARS)  # exactly one U per type
    assert not any("U" in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params["blocks"]))
    gpt = model.module(params)
    x = np.asarray(jax.random.normal(jax.random.key(3), (5, 128)))
    for layer in range(3):
        block = layer_module(gpt, layer)
        for site in LINEARS:
            U = np.asarray(params["gen"][site.replace(".", "_")])
            Ci = np.asarray(sub(params["blocks"], site)["C"][layer])
            assert U.shape[1] == Ci.shape[0] == 8
            xi = x[:, :Ci.shape[1]]
            np.testing.assert_allclose(np.asarray(sub(block, site)(jnp.asarray(xi))), xi @ (U @ Ci).T,
                                       rtol=1e-4, atol=1e-5)
    sp = model.param_specs()
    assert sp["gen"]["attn_c_q"].group == "matrix" and sp["blocks"]["attn"]["c_q"]["C"].group == "scalar"
    assert sp["blocks"]["mlp"]["fc"]["C"].always_quantize and sp["gen"]["mlp_fc"].always_quantize


def test_basis_init_is_the_shared_svd_with_zero_output_coefficients():
    params = jax.jit(build_model(BASIS).init)(jax.random.key(0))
    for site in LINEARS:
        U = np.asarray(params["gen"][site.replace(".", "_")])
        np.testing.assert_allclose(U.T @ U, np.eye(U.shape[1]), atol=1e-5)
        C_ = np.asarray(sub(params["blocks"], site)["C"])
        assert (np.abs(C_).max() == 0) == site.endswith("proj")  # o and MLP proj start at zero


# ---------------------------------------------------------------------------------------------
# Generated weights: never parameters, and they enter the blocks exactly as stored weights would


GENERATORS = {
    "hypernet": dict(rank=4, hidden=16, embed_dim=8),
    "siren": dict(hidden=16, chunk=1000),
    "nca": dict(steps=3, hidden=16),
    "seed": dict(dim=16, chunk=3000),
}


@pytest.mark.parametrize("source", list(GENERATORS))
def test_generated_weights_are_not_parameters_and_act_as_stored_weights(source):
    cfg = TINY.replace(weight_source=source, **{source: GENERATORS[source]})
    model, plain = build_model(cfg), build_model(TINY)
    params = perturbed(model)
    assert set(params["blocks"]["attn"]) == {"q_gain"} and "mlp" not in params["blocks"]
    assert not any(n.endswith(".weight") and n.startswith("blocks.") for n in flatten_params(params))
    W = jax.jit(lambda p: model.module(p).weight_source.generate(model.module(p), None))(params)
    assert set(W) == {f"{s}.weight" for s in LINEARS} and W["mlp.fc.weight"].shape == (3, 128, 64)
    # The same network with these weights stored as parameters gives the same logits.
    stored = {k: v for k, v in params.items() if k != "gen"}
    stored["blocks"] = jax.tree.map(lambda a: a, params["blocks"])
    for site in LINEARS:
        part, name = site.split(".")
        stored["blocks"].setdefault(part, {})[name] = {"weight": W[f"{site}.weight"]}
    x = ids()
    np.testing.assert_allclose(np.asarray(jax.jit(model.logits)(params, x)),
                               np.asarray(jax.jit(plain.logits)(stored, x)), rtol=1e-4, atol=1e-4)


def test_hypernet_weights_are_the_heads_low_rank_factors():
    cfg = TINY.replace(weight_source="hypernet", hypernet=GENERATORS["hypernet"])
    model = build_model(cfg)
    params = perturbed(model)
    g = jax.tree.map(np.asarray, params["gen"])
    gelu = lambda a: np.asarray(jax.nn.gelu(a, approximate=False))  # noqa: E731
    h = gelu(gelu(g["layer_embed"] @ g["trunk1"]["weight"].T + g["trunk1"]["bias"]) @ g["trunk2"]["weight"].T
             + g["trunk2"]["bias"])
    W = jax.jit(lambda p: model.module(p).weight_source.generate(model.module(p), None))(params)
    for layer in range(3):
        f = h[layer] @ g["attn_c_k"]["weight"].T + g["attn_c_k"]["bias"]
        A, B = f[:32 * 4].reshape(32, 4), f[32 * 4:].reshape(4, 64)
        np.testing.assert_allclose(np.asarray(W["attn.c_k.weight"][layer]), A @ B, rtol=1e-4, atol=1e-6)
        assert np.linalg.matrix_rank(np.asarray(W["mlp.fc.weight"][layer]), tol=1e-6) <= 4
    assert model.param_specs()["gen"]["attn_c_q"]["weight"].group == "adamw"


def test_siren_is_chunked_and_never_builds_the_full_activation():
    cfg = TINY.replace(weight_source="siren", siren=GENERATORS["siren"])
    model = build_model(cfg)
    params = perturbed(model, scale=0.01)
    gen = lambda p, c: model.module(p).weight_source.generate(model.module(p), None)  # noqa: E731
    small = jax.jit(gen, static_argnums=1)(params, 0)
    big = build_model(cfg.replace(siren=dict(chunk=10 ** 6)))
    full = jax.jit(lambda p: big.module(p).weight_source.generate(big.module(p), None))(params)
    for k in small:
        np.testing.assert_allclose(np.asarray(small[k]), np.asarray(full[k]), rtol=1e-5, atol=1e-6)
    # One value by hand: (row, col, layer) of attn.c_v (type 2) at layer 2, row 5, col 7.
    g = jax.tree.map(np.asarray, params["gen"])
    x = np.r_[5 / 31, 7 / 63, 2 / 2, g["type_embed"][2]]
    for i in range(3):
        x = np.sin(30.0 * (g[f"layer{i}"]["weight"] @ x + g[f"layer{i}"]["bias"]))
    v = g["layer3"]["weight"] @ x + g["layer3"]["bias"]
    assert float(small["attn.c_v.weight"][2, 5, 7]) == pytest.approx(float(v[0]), rel=1e-4, abs=1e-6)
    # Memory: the compiled loss-and-gradient holds one chunk's activations, not every coordinate's.
    n = sum(int(np.prod(s)) for s in generated_slots(model.module(params)).values())

    def loss(p):
        return sum(jnp.sum(w ** 2) for w in gen(p, 0).values())

    temp = jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes
    assert temp < n * cfg.siren.hidden * 4  # under one (all coordinates x hidden) fp32 temporary (unchunked: ~8x it)


def test_nca_is_stochastic_in_training_and_deterministic_in_eval():
    cfg = TINY.replace(weight_source="nca", nca=GENERATORS["nca"])
    model = build_model(cfg)
    params = perturbed(model)  # the rule's zero last layer nudged: updates are not zero

    @jax.jit
    def gen(p, key):
        m = model.module(p)
        return m.weight_source.generate(m, key)

    e1, e2 = gen(params, None), gen(params, None)
    t1, t1b, t2 = gen(params, jax.random.key(1)), gen(params, jax.random.key(1)), gen(params, jax.random.key(2))
    k = "attn.c_q.weight"
    assert np.array_equal(np.asarray(e1[k]), np.asarray(e2[k])) and np.array_equal(np.asarray(t1[k]), np.asarray(t1b[k]))
    assert not np.allclose(np.asarray(t1[k]), np.asarray(t2[k])) and not np.allclose(np.asarray(t1[k]), np.asarray(e1[k]))
    # A reference loop of the PR's rule: perceive (circular), MLP, masked add; eval = every cell.
    g = jax.tree.map(np.asarray, params["gen"])
    slots = generated_slots(model.module(params))
    total = sum(int(np.prod(s)) for s in slots.values())
    s = 0.02 * np.asarray(jax.random.normal(jax.random.key(cfg.nca.generator_seed), (-(-total // 16), 16)))
    for _ in range(cfg.nca.steps):
        p_ = np.concatenate([s, s - np.roll(s, 1, 0), s - np.roll(s, -1, 0)], -1)
        h = np.maximum(p_ @ g["fc1"]["weight"].T + g["fc1"]["bias"], 0)
        h = np.maximum(h @ g["fc2"]["weight"].T + g["fc2"]["bias"], 0)
        s = s + h @ g["out"]["weight"].T
    np.testing.assert_allclose(np.asarray(e1["attn.c_q.weight"]).ravel(), s.ravel()[:3 * 64 * 64], rtol=1e-4, atol=1e-5)


def test_seed_weights_are_theta0_plus_unit_column_p_times_phi_and_cost_no_bytes():
    from pgolf_jax.model.generators.seed import expand

    n, chunk, d = 50, 20, 4
    phi = jnp.asarray([0.3, -1.0, 2.0, 0.5])
    theta0 = expand(jnp.zeros(d), n, chunk, 7)
    P = np.asarray(jax.jacfwd(lambda f: expand(f, n, chunk, 7))(phi))  # (n, d): the regenerated P
    np.testing.assert_allclose(np.asarray(expand(phi, n, chunk, 7)), np.asarray(theta0) + P @ np.asarray(phi),
                               rtol=1e-5, atol=1e-6)
    for a in range(0, n, chunk):  # unit columns within each chunk of rows (the last one is shorter)
        np.testing.assert_allclose(np.linalg.norm(P[a:a + chunk], axis=0), 1.0, rtol=1e-5)
    assert np.array_equal(np.asarray(expand(phi, n, chunk, 7)), np.asarray(expand(phi, n, chunk, 7)))
    assert not np.allclose(np.asarray(expand(phi, n, chunk, 8)), np.asarray(expand(phi, n, chunk, 7)))
    # 0 bytes: the only stored generator tensor is phi.
    model = build_model(TINY.replace(weight_source="seed", seed=GENERATORS["seed"]))
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    assert jax.tree.map(lambda a: a.shape, shapes["gen"]) == {"phi": (16,)}
    assert "mlp" not in shapes["blocks"] and set(shapes["blocks"]["attn"]) == {"q_gain"}
