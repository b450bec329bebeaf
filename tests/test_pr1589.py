"""#1589's remaining architectures (issue 13), each by its defining property: basis sharing, the
weight generators (hypernetwork, SIREN, NCA, seed model), the MPS / Hopfield / agents families, and
SURGE-M v2; the adamw optimizer group; the presets' parameter counts; the config rules."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pgolf_jax import config as C
from pgolf_jax.cli import main
from pgolf_jax.model.generators import generated_slots
from pgolf_jax.model.gpt import build_model, count_params
from pgolf_jax.model.topology import BlockRunner
from pgolf_jax.quant.interop import flatten_params
from conftest import perturbed  # noqa: E402
from test_seams import ids  # noqa: E402  (the same tiny ids)

ROOT = Path(__file__).resolve().parent.parent
TINY = C.ModelConfig(vocab_size=96, num_layers=3, model_dim=64, num_heads=4, num_kv_heads=2, attention_impl="xla")
LINEARS = ("attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj")


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


def assert_causal(logits_fn, params, vocab=96, positions=(0, 9, 20)):
    x = np.asarray(ids(vocab=vocab))
    base = np.asarray(logits_fn(params, x))
    for t in positions:
        y = x.copy()
        y[:, t + 1:] = (y[:, t + 1:] * 7 + 3) % vocab
        other = np.asarray(logits_fn(params, y))
        np.testing.assert_allclose(other[:, :t + 1], base[:, :t + 1], rtol=1e-4, atol=1e-4)
        assert not np.allclose(other[:, t + 1:], base[:, t + 1:])


# ---------------------------------------------------------------------------------------------
# #1589 presets: --dry-run counts (each checked against the spec / the PR's arithmetic in its docstring)

@pytest.mark.parametrize("preset,count", [
    ("basis_r128", 5_066_824), ("basis_r64", 2_805_832), ("hypernet_r32", 110_106_248), ("siren_h256", 677_833),
    ("nca_50", 569_672), ("seed_d2048", 546_888), ("mps_b64", 4_238_720), ("hopfield_e128", 638_978),
    ("agents_m64", 1_269_760), ("surge_m_v2_twopass", 5_131_174), ("surge_m_v2_single", 5_131_174)])
def test_issue13_preset_parameter_counts(preset, count, capsys):
    assert main(["--config", str(ROOT / "configs" / "pr1589" / f"{preset}.py"), "--dry-run"]) == 0
    assert f"model_params:{count}" in capsys.readouterr().out


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


# ---------------------------------------------------------------------------------------------
# Non-GPT families

MPS = TINY.replace(family='mps', mps=dict(bond_dim=6, pos_dim=4, max_len=32))


def test_mps_is_the_left_to_right_bond_contraction():
    model = build_model(MPS)
    params = perturbed(model)
    x = np.asarray(ids(B=1, T=12))
    logits = np.asarray(jax.jit(model.logits)(params, x))[0]
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    A = p["core"].reshape(96, 6, 6)
    u = np.asarray(jax.nn.gelu(p["pos_embed"][:12] @ p["mod_in"].T + p["mod_in_b"], approximate=False))
    ml, mr = np.split(1 + 0.5 * np.tanh(u @ p["mod_out"].T + p["mod_out_b"]), 2, -1)
    h = p["h0"]
    for t in range(12):  # read x_t, then score x_{t+1}
        h = (h * ml[t]) @ A[x[0, t]] * mr[t]
        h = (h - h.mean()) / np.sqrt(h.var() + 1e-5) * p["norm_w"] + p["norm_b"]
        ref = np.einsum("i,vij,j->v", h * ml[t], A, mr[t]) + p["out_bias"]
        np.testing.assert_allclose(logits[t], ref, rtol=2e-4, atol=2e-4)
    assert_causal(jax.jit(model.logits), params)
    assert {sp.group for sp in jax.tree.leaves(model.param_specs())} == {"adamw"}


def test_hopfield_logits_are_the_negative_energy_and_all_on_adamw():
    from pgolf_jax.model.families.encoder import encode
    from pgolf_jax.model.layers import rms_norm

    cfg = dataclasses.replace(TINY, family="hopfield", num_layers=2, num_kv_heads=4, logit_softcap=1e6)
    model = build_model(cfg)
    params = perturbed(model)
    x = ids()

    def by_hand(p):
        m = model.module(p)
        h = rms_norm(encode(m.blocks, rms_norm(p["tok_emb"][x]), cfg.rope_base))
        h0 = h
        for _ in range(3):
            h = h - p["alpha"] * (jax.nn.gelu(jnp.concatenate([h, h0], -1) @ p["refine_in"].T, approximate=False)
                                  @ p["refine_out"].T)
        E = p["tok_emb"]
        return p["gamma"] * (h @ p["W"] @ E.T - jnp.sum(E * E, -1))

    np.testing.assert_allclose(np.asarray(jax.jit(model.logits)(params, x)), np.asarray(jax.jit(by_hand)(params)),
                               rtol=1e-4, atol=1e-4)
    assert {sp.group for sp in jax.tree.leaves(model.param_specs())} == {"adamw"}
    grads = jax.jit(jax.grad(lambda p: jnp.mean(model.forward(p, x, True, None)[0] ** 2)))(params)
    assert float(jnp.abs(grads["alpha"])) > 0 and float(jnp.abs(grads["refine_out"]).sum()) > 0
    assert_causal(jax.jit(model.logits), params)


def test_agents_train_on_every_strided_position_and_evaluate_on_all():
    from pgolf_jax.train.objectives import CrossEntropy, weighted_mean
    from pgolf_jax.model.gpt import token_nll

    cfg = TINY.replace(family='agents', num_layers=2, agents=dict(local_ctx=4, loss_stride=8, decoder_hidden=32))
    model = build_model(cfg)
    params = perturbed(model)
    x, y = ids(), ids(seed=1)
    logits, aux, w = jax.jit(lambda p: model.forward(p, x, True, None))(params)
    assert np.flatnonzero(np.asarray(w[0])).tolist() == [4, 12, 20, 28] and aux == {}
    nll = np.asarray(token_nll(logits, y))
    loss, metrics = jax.jit(lambda p: CrossEntropy(None)(model, p, x, y, True, None))(params)
    assert float(loss) == pytest.approx(float(nll[:, [4, 12, 20, 28]].mean()), rel=1e-5)
    assert float(jax.jit(model.loss)(params, x, y)) == pytest.approx(float(nll.mean()), rel=1e-5)  # eval: all
    assert float(weighted_mean(jnp.asarray(nll), None)) == pytest.approx(float(nll.mean()), rel=1e-6)
    assert_causal(jax.jit(model.logits), params)


# ---------------------------------------------------------------------------------------------
# SURGE-M v2

SURGE = TINY.replace(family='surge_m', surge_m=dict(layer=1, chunk=8, d_err=8, d_state=8))


def test_wy_correction_equals_the_explicit_per_chunk_matrices():
    from pgolf_jax.model.families.surge import wy_correction

    rng = np.random.default_rng(0)
    B, C, K, D = 2, 5, 3, 4
    z = rng.normal(size=(B, C * K, D))
    u, v = rng.normal(size=(B, C, D)), rng.normal(size=(B, C, D))
    g = rng.uniform(0.1, 0.9, size=(B, C, 1))
    for a in (np.ones((B, C, 1)), rng.uniform(0.5, 1.0, size=(B, C, 1))):
        corr = np.asarray(wy_correction(*(jnp.asarray(t, jnp.float32) for t in (z, u, v, g, a)), K))
        for b in range(B):
            M = np.eye(D)
            product = np.eye(D)
            for c in range(C):
                zc = z[b, c * K:(c + 1) * K]
                np.testing.assert_allclose(corr[b, c * K:(c + 1) * K], zc @ (M - np.eye(D)).T, rtol=1e-4, atol=1e-4)
                step = np.eye(D) + g[b, c] * np.outer(u[b, c], v[b, c])
                if np.all(a == 1):  # no forgetting: M_c is the plain product of the chunks' matrices
                    np.testing.assert_allclose(M, product, rtol=1e-6, atol=1e-8)
                    product = product @ step
                M = np.eye(D) + a[b, c] ** 2 * (M - np.eye(D)) + M @ (step - np.eye(D))


def test_min_gru_associative_scan_is_the_sequential_recurrence():
    from pgolf_jax.model.affine import Affine
    from pgolf_jax.model.families.surge import min_gru

    rng = np.random.default_rng(1)
    gru = Affine(rng.normal(size=(6, 5)), rng.normal(size=(6,)))
    x = rng.normal(size=(2, 9, 5)).astype(np.float32)
    got = np.asarray(min_gru(jnp.asarray(x), gru))
    zh = 1 / (1 + np.exp(-(x @ np.asarray(gru.weight[...]).T + np.asarray(gru.bias[...]))))
    z, ht = zh[..., :3], zh[..., 3:]
    s = np.zeros((2, 3))
    for t in range(9):
        s = (1 - z[:, t]) * s + z[:, t] * ht[:, t]
        np.testing.assert_allclose(got[:, t], s, rtol=1e-5, atol=1e-6)


def test_surge_uv_zero_init_is_the_symmetry_trap():
    x = ids()

    def grads(std):
        model = build_model(SURGE.replace(surge_m=dict(uv_init_std=std)))
        params = perturbed(model, scale=0.05)
        meta = params["meta"]
        for head in ("u_head", "v_head"):
            meta[head] = jax.tree.map(lambda a: a * std, meta[head]) if std == 0 else meta[head]
        return jax.jit(jax.grad(lambda p: model.loss(p, x, x)))(params)["meta"]

    zero = grads(0.0)
    assert all(float(jnp.abs(a).max()) == 0.0 for h in ("u_head", "v_head") for a in jax.tree.leaves(zero[h]))
    live = grads(0.01)
    assert all(float(jnp.abs(a).max()) > 0.0 for h in ("u_head", "v_head") for a in jax.tree.leaves(live[h]))
    assert float(jnp.abs(zero["gru"]["weight"]).max()) == 0.0  # nothing reaches the controller either


def test_surge_single_pass_with_no_update_is_the_gpt_and_both_modes_are_causal():
    single = SURGE.replace(surge_m=dict(mode='single'))
    model, gpt = build_model(single), build_model(TINY)
    params = perturbed(model)
    params["meta"]["u_head"] = jax.tree.map(jnp.zeros_like, params["meta"]["u_head"])
    x = ids()
    base = {k: v for k, v in params.items() if k != "meta"}
    np.testing.assert_allclose(np.asarray(jax.jit(model.logits)(params, x)), np.asarray(jax.jit(gpt.logits)(base, x)),
                               rtol=1e-5, atol=1e-5)
    for cfg in (single, SURGE):
        m = build_model(cfg)
        assert_causal(jax.jit(m.logits), perturbed(m))
    assert {sp.group for sp in jax.tree.leaves(model.param_specs()["meta"])} == {"adamw"}


# ---------------------------------------------------------------------------------------------
# The adamw group and the config rules

def test_adamw_group_has_its_own_lr_decay_and_clip():
    from pgolf_jax.optim.optimizers import make_optimizer

    cfg = C.Config(optim=C.OptimConfig(adamw_lr=0.1, adamw_wd=0.5, adamw_beta2=0.99, adamw_clip=1.0, scalar_lr=0.0))
    params = {"a": jnp.ones((3,)), "s": jnp.ones((2,))}
    tx = make_optimizer(cfg, jnp.float32, {"a": "adamw", "s": "scalar"})
    g = {"a": jnp.asarray([3.0, 4.0, 0.0]), "s": jnp.asarray([100.0, 100.0])}
    upd, _ = tx.update(g, tx.init(params), params, lr_mul=1.0)
    # One Adam step is sign(g) (bias-corrected moments); then decoupled decay, both at lr 0.1. The
    # clip (norm 5 -> 1) sees only this group's gradients and does not change an Adam first step.
    np.testing.assert_allclose(np.asarray(upd["a"]), -0.1 * (np.sign([3.0, 4.0, 0.0]) + 0.5), rtol=1e-4)
    assert float(jnp.abs(upd["s"]).max()) == 0.0  # scalar_lr 0
    everything = make_optimizer(dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, adamw_all=True)),
                                jnp.float32, {"a": "adamw", "s": "scalar"})
    upd, _ = everything.update(g, everything.init(params), params, lr_mul=1.0)
    assert float(jnp.abs(upd["s"]).max()) > 0  # relabelled onto adamw


@pytest.mark.parametrize("overrides,message", [
    ({"model.family": "mps", "model.pause_tokens": 2}, "is not a GPT: model.pause_tokens"),
    ({"model.family": "hopfield", "quant.scheme": "gptq"}, "use quant.scheme=rtn"),
    ({"model.family": "agents", "eval.final_modes": "lora_ttt"}, "lora_ttt adapts a GPT"),
    ({"model.weight_source": "seed", "model.linear": "lowrank"}, "makes the block linears itself"),
    ({"model.weight_source": "nca", "eval.final_modes": "lora_ttt"}, "stores none"),
    ({"model.family": "surge_m", "model.num_loops": 1, "model.loop_end": 1}, "model.num_loops=1 is not supported"),
    ({"model.family": "surge_m", "model.surge_m.layer": 9}, "model.surge_m.layer=9"),
    ({"model.family": "mps", "train.train_seq_len": 2048, "train.train_batch_tokens": 16384},
     "model.mps.max_len=1024"),
    ({"model.weight_source": "nope"}, "is not registered"),
])
def test_issue13_config_errors_name_the_field(overrides, message):
    with pytest.raises(C.ConfigError, match=message.replace("(", r"\(")):
        C.override(C.Config(), overrides)
