import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pgolf_jax import config as C
from pgolf_jax.model.gpt import build_model
from pgolf_jax.model.params import param, specs
from pgolf_jax.optim.optimizers import (
    clip_by_global_norm,
    labels_from_specs,
    make_optimizer,
    muon_momentum,
    scale_by_muon,
)
from pgolf_jax.optim.orthogonalize import ORTHOGONALIZERS, newton_schulz
from pgolf_jax.optim.schedule import cosine_multiplier, schedule_multiplier, warmdown_multiplier, warmup_factor


def ns5_numpy(G, steps=5, eps=1e-7):
    """zeropower_via_newtonschulz5 of the reference, in float64 numpy."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G / (np.linalg.norm(G) + eps)
    tr = G.shape[0] > G.shape[1]
    X = X.T if tr else X
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tr else X


def optimizer(cfg, dtype=jnp.float32):
    return make_optimizer(cfg, dtype, labels_from_specs(build_model(cfg.model).param_specs()))


def test_every_parameter_has_exactly_one_reference_group():
    model = build_model(C.ModelConfig())
    params = jax.eval_shape(model.init, jax.random.key(0))
    labels = labels_from_specs(model.param_specs())
    flat = {jax.tree_util.keystr(p): l for p, l in jax.tree_util.tree_leaves_with_path(labels)}
    assert len(flat) == len(jax.tree.leaves(params))
    assert set(flat.values()) <= {"embed", "head", "matrix", "scalar"}
    matrix = sorted(k for k, v in flat.items() if v == "matrix")
    assert matrix == sorted(f"['blocks']{s}['weight']" for s in (
        "['attn']['c_q']", "['attn']['c_k']", "['attn']['c_v']", "['attn']['proj']", "['mlp']['fc']", "['mlp']['proj']"))
    assert flat["['tok_emb']['weight']"] == "embed"
    for name in ("['blocks']['attn']['q_gain']", "['blocks']['attn_scale']", "['blocks']['mlp_scale']",
                 "['blocks']['resid_mix']", "['skip_weights']"):
        assert flat[name] == "scalar"
    # Muon gets 6 x 9 = 54 matrices, as in the reference's optimizer_muon param list.
    n_mats = sum(params["blocks"][a][b]["weight"].shape[0] for a, b in
                 (("attn", "c_q"), ("attn", "c_k"), ("attn", "c_v"), ("attn", "proj"), ("mlp", "fc"), ("mlp", "proj")))
    assert n_mats == 54


def reference_group(name: str, ndim: int) -> str:
    """The reference's grouping by name (train_gpt.py's optimizer set-up, plus the records' extra
    tables), to check that what our parameters declare agrees with it."""
    if name in ("tok_emb.weight", "bigram.embed.weight"):
        return "embed"
    if name == "lm_head.weight":
        return "head"
    if name == "bigram.proj.weight":
        return "matrix"
    control = any(p in name for p in C.CONTROL_TENSOR_NAME_PATTERNS)
    if name.startswith("blocks."):
        return "matrix" if ndim == 3 and not control else "scalar"
    return "scalar"


@pytest.mark.parametrize("preset", ["baseline_sp1024.py", "record_1809.py", "record_cpu.py"])
@pytest.mark.parametrize("extra", [{}, {"model.tie_embeddings": False, "model.bigram_vocab_size": 512,
                                        "model.smear_gate": "v2"}, {"model.smear_gate": "v1"}])
def test_declared_groups_agree_with_the_reference_rule(preset, extra):
    from pgolf_jax.model.params import path_name
    cfg = C.load(Path(__file__).resolve().parent.parent / "configs" / preset, extra)
    model = build_model(cfg.model)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    labels = dict(jax.tree_util.tree_leaves_with_path(labels_from_specs(model.param_specs())))
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
        assert labels[path] == reference_group(path_name(path), leaf.ndim), path_name(path)


def test_a_parameter_must_say_what_it_is():
    from flax import nnx
    with pytest.raises(ValueError, match="group 'weights' must be one of"):
        param(jnp.zeros(2), group="weights", quant="other")

    class Bare(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.zeros((2, 2)))

    with pytest.raises(ValueError, match="w was created without a group/quant rule"):
        specs(nnx.state(Bare()))


@pytest.mark.parametrize("shape", [(32, 48), (48, 32), (40, 40)])
def test_newton_schulz_matches_reference_math(shape):
    G = np.random.default_rng(0).normal(size=shape)
    got = np.asarray(newton_schulz(jnp.asarray(G, jnp.float32), steps=5, dtype=jnp.float32))
    np.testing.assert_allclose(got, ns5_numpy(G), rtol=2e-4, atol=2e-5)


def test_newton_schulz_orthogonalizes():
    G = jax.random.normal(jax.random.key(0), (128, 512))
    s = np.linalg.svd(np.asarray(newton_schulz(G, dtype=jnp.float32)), compute_uv=False)
    assert 0.6 < s.min() and s.max() < 1.25  # the quintic's known band, not exactly 1
    assert "newton_schulz" in ORTHOGONALIZERS


def test_muon_momentum_warmup():
    assert float(muon_momentum(jnp.asarray(0), 0.95, 0.85, 500)) == pytest.approx(0.85)
    assert float(muon_momentum(jnp.asarray(250), 0.95, 0.85, 500)) == pytest.approx(0.90)
    assert float(muon_momentum(jnp.asarray(900), 0.95, 0.85, 500)) == pytest.approx(0.95)


def test_muon_matches_reference_steps():
    """Two steps of scale_by_muon == the reference's Muon.step math (numpy), stacked and not."""
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=(2, 24, 16)) for _ in range(2)]
    tx = scale_by_muon(newton_schulz, steps=5, momentum=0.95, warmup_start=0.85, warmup_steps=2)
    state = tx.init(jnp.zeros((2, 24, 16)))
    buf = np.zeros((2, 24, 16))
    for step, g in enumerate(grads):
        upd, state = tx.update(jnp.asarray(g, jnp.float32), state)
        mu = (1 - min(step / 2, 1)) * 0.85 + min(step / 2, 1) * 0.95
        buf = mu * buf + g
        nest = g + mu * buf
        want = np.stack([ns5_numpy(nest[i]) for i in range(2)]) * math.sqrt(max(1, 24 / 16))
        np.testing.assert_allclose(np.asarray(upd), want, rtol=1e-3, atol=1e-4)


def test_lr_multiplier_scales_every_group():
    cfg = C.override(C.Config(), {"model.num_layers": 2, "model.model_dim": 32, "model.num_heads": 2,
                                  "model.num_kv_heads": 1, "model.vocab_size": 64})
    params = build_model(cfg.model).init(jax.random.key(0))
    grads = jax.tree.map(lambda p: jnp.ones_like(p), params)
    tx = optimizer(cfg)
    u1, _ = tx.update(grads, tx.init(params), params, lr_mul=1.0)
    u3, _ = tx.update(grads, tx.init(params), params, lr_mul=0.25)
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u3)):
        np.testing.assert_allclose(np.asarray(b), 0.25 * np.asarray(a), rtol=1e-6)
    # Adam's first step is lr * sign(g) for every group: check the per-group learning rates.
    lr = jax.tree.map(lambda u: float(-u.reshape(-1)[0]), u1)
    assert lr["tok_emb"]["weight"] == pytest.approx(cfg.optim.tied_embed_lr, rel=1e-5)
    assert lr["skip_weights"] == pytest.approx(cfg.optim.scalar_lr, rel=1e-5)


def test_adam_matches_torch_formula():
    """optax's scale_by_adam with bias correction is torch.optim.Adam's update."""
    g = np.array([0.3, -1.2, 2.0])
    tx = optax.scale_by_adam(0.9, 0.95, 1e-8)
    st = tx.init(jnp.zeros(3))
    m = v = np.zeros(3)
    for t in range(1, 4):
        u, st = tx.update(jnp.asarray(g * t), st)
        m = 0.9 * m + 0.1 * g * t
        v = 0.95 * v + 0.05 * (g * t) ** 2
        want = (m / (1 - 0.9 ** t)) / (np.sqrt(v) / math.sqrt(1 - 0.95 ** t) + 1e-8)
        np.testing.assert_allclose(np.asarray(u), want, rtol=1e-5)


def test_clip_like_torch():
    g = {"a": jnp.array([3.0, 4.0])}
    out, _ = clip_by_global_norm(1.0).update(g, None)
    np.testing.assert_allclose(out["a"], np.array([3.0, 4.0]) / (5.0 + 1e-6), rtol=1e-6)
    out, _ = clip_by_global_norm(10.0).update(g, None)
    np.testing.assert_allclose(out["a"], [3.0, 4.0])


def test_warmdown_by_wallclock_and_by_steps():
    t = C.TrainConfig()  # 600 s cap, warmdown 1200 iterations
    # 43.5 ms/step: warmdown window = 52.2 s; at 560 s elapsed (step 12874) 40 s remain.
    assert warmdown_multiplier(1000, 43.5 * 1000, t) == 1.0
    assert warmdown_multiplier(12874, 560_000.0, t) == pytest.approx(40_000 / (1200 * 560_000 / 12874), rel=1e-9)
    assert warmdown_multiplier(14000, 601_000.0, t) == 0.0
    s = dataclasses.replace(t, max_wallclock_seconds=0.0, iterations=100, warmdown_iters=20)
    assert warmdown_multiplier(79, 0, s) == 1.0
    assert warmdown_multiplier(80, 0, s) == pytest.approx(1.0)
    assert warmdown_multiplier(90, 0, s) == pytest.approx(0.5)
    assert warmdown_multiplier(99, 0, s) == pytest.approx(0.05)
    assert warmdown_multiplier(5, 0, dataclasses.replace(s, warmdown_iters=0)) == 1.0


# ---------------------------------------------------------------------------------------------
# Record-stack optimizer pieces (#1809 / #1493)

from pgolf_jax.optim.coefficients import YOU  # noqa: E402
from pgolf_jax.optim.orthogonalize import (  # noqa: E402
    coefficient_schedule,
    gram_newton_schulz,
    gram_newton_schulz_flops,
    newton_schulz_flops,
)
from pgolf_jax.optim.schedule import training_fraction  # noqa: E402


def test_coefficient_tables():
    assert coefficient_schedule("ns5", 3) == ((3.4445, -4.7750, 2.0315),) * 3
    assert coefficient_schedule("you", 4) == YOU[1:]  # #1809: the last 4 of 5
    assert coefficient_schedule("polar_express_modded", 5)[0] == (8.156554524902461, -22.48329292557795,
                                                                  15.878769915207462)
    a, b, c = coefficient_schedule("polar_express_paper", 1)[0]
    assert (a, b, c) == pytest.approx((8.28721201814563 / 1.05, -23.595886519098837 / 1.05 ** 3,
                                       17.300387312530933 / 1.05 ** 5))
    with pytest.raises(ValueError, match="has 5 steps, 6 requested"):
        coefficient_schedule("you", 6)
    with pytest.raises(ValueError, match="unknown Newton-Schulz coefficients"):
        coefficient_schedule("nope", 5)


@pytest.mark.parametrize("name,steps,aol", [("ns5", 5, False), ("polar_express_paper", 5, False),
                                            ("polar_express_modded", 5, False), ("you", 4, True)])
@pytest.mark.parametrize("shape", [(64, 160), (160, 64), (96, 96)])
def test_gram_newton_schulz_equals_standard(name, steps, aol, shape):
    G = jax.random.normal(jax.random.key(sum(shape)), shape)
    kw = dict(steps=steps, dtype=jnp.float32, coefficients=name, aol=aol)
    std = np.asarray(newton_schulz(G, **kw))
    gram = np.asarray(gram_newton_schulz(G, **kw))
    assert np.linalg.norm(gram - std) / np.linalg.norm(std) < 1e-4  # fp32 rounding only
    s = np.linalg.svd(std, compute_uv=False)
    # (A square Gaussian has singular values near 0 that five steps cannot lift.)
    assert s.max() < 1.3 and (shape[0] == shape[1] or s.min() > 0.5)


def test_polar_express_tightens_the_band():
    G = jax.random.normal(jax.random.key(3), (128, 384))
    band = {}
    for name, steps, aol in [("ns5", 5, False), ("polar_express_modded", 5, False), ("you", 4, True)]:
        s = np.linalg.svd(np.asarray(newton_schulz(G, steps=steps, dtype=jnp.float32, coefficients=name, aol=aol)),
                          compute_uv=False)
        band[name] = s.max() - s.min()
    assert band["you"] < band["polar_express_modded"] < band["ns5"]


def test_gram_saves_flops_on_wide_matrices():
    assert gram_newton_schulz_flops(512, 2048, 4) < 0.8 * newton_schulz_flops(512, 2048, 4)
    assert gram_newton_schulz_flops(512, 512, 4) > newton_schulz_flops(512, 512, 4)  # no gain when square


def test_muon_row_normalize_ignores_row_scale():
    g = np.random.default_rng(4).normal(size=(24, 16)).astype(np.float32)
    scaled = g * np.linspace(0.1, 10, 24, dtype=np.float32)[:, None]
    kw = dict(steps=5, momentum=0.95, warmup_start=0.95, warmup_steps=0, dtype=jnp.float32)
    outs = []
    for row_normalize in (True, False):
        tx = scale_by_muon(newton_schulz, row_normalize=row_normalize, **kw)
        a = tx.update(jnp.asarray(g), tx.init(jnp.zeros((24, 16))))[0]
        b = tx.update(jnp.asarray(scaled), tx.init(jnp.zeros((24, 16))))[0]
        outs.append(np.abs(np.asarray(a) - np.asarray(b)).max())
    assert outs[0] < 1e-5 < outs[1]


def test_decoupled_weight_decay_uses_the_scheduled_lr():
    cfg = C.override(C.Config(), {"model.num_layers": 2, "model.model_dim": 32, "model.num_heads": 2,
                                  "model.num_kv_heads": 1, "model.vocab_size": 64, "optim.muon_wd": 0.1,
                                  "optim.embed_wd": 0.2, "optim.adam_wd": 0.3})
    params = jax.jit(build_model(cfg.model).init)(jax.random.key(0))
    zeros = jax.tree.map(jnp.zeros_like, params)
    tx = optimizer(cfg)
    upd, _ = tx.update(zeros, tx.init(params), params, lr_mul=0.5)  # zero grads: only the decay moves
    o = cfg.optim
    pairs = [(upd["blocks"]["mlp"]["fc"]["weight"], params["blocks"]["mlp"]["fc"]["weight"], o.matrix_lr * o.muon_wd),
             (upd["tok_emb"]["weight"], params["tok_emb"]["weight"], o.tied_embed_lr * o.embed_wd),
             (upd["blocks"]["resid_mix"], params["blocks"]["resid_mix"], o.scalar_lr * o.adam_wd)]
    for u, p, lr_wd in pairs:
        np.testing.assert_allclose(np.asarray(u), -0.5 * lr_wd * np.asarray(p), rtol=1e-5, atol=1e-9)


def test_warmdown_fraction_with_floor_and_reserve():
    t = C.TrainConfig(max_wallclock_seconds=600.0, gptq_reserve_seconds=12.0, warmdown_frac=0.72, min_lr=0.1)
    assert training_fraction(0, 294_000.0, t) == pytest.approx(0.5)  # 294 s of an effective 588 s
    assert warmdown_multiplier(0, 0.27 * 588_000, t) == 1.0
    assert warmdown_multiplier(0, 0.64 * 588_000, t) == pytest.approx(0.5)
    assert warmdown_multiplier(0, 0.95 * 588_000, t) == pytest.approx(0.1)  # floored at min_lr
    steps = dataclasses.replace(t, max_wallclock_seconds=0.0, iterations=100, min_lr=0.0)
    assert warmdown_multiplier(64, 0.0, steps) == pytest.approx(0.5)
    assert warmdown_multiplier(100, 0.0, steps) == 0.0


# ---------------------------------------------------------------------------------------------
# AdamW on matrices, the cosine schedule, the adamw group and the warmdown fix


def test_matrix_optimizer_adamw_steps_matrices_like_adamw():
    cfg = C.Config(optim=C.OptimConfig(matrix_optimizer="adamw", matrix_lr=0.01, muon_wd=0.1, beta2=0.999))
    params = {"blocks": {"w": jnp.ones((1, 4, 6), jnp.float32)}}
    grads = {"blocks": {"w": jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, 6)), jnp.float32)}}
    tx = make_optimizer(cfg, jnp.float32, {"blocks": {"w": "matrix"}})
    upd, _ = tx.update(grads, tx.init(params), params, lr_mul=0.5)
    g = np.asarray(grads["blocks"]["w"])
    want = -0.01 * 0.5 * (g / (np.abs(g) + 1e-8) + 0.1 * 1.0)  # Adam's first step is g / |g|; decoupled wd
    np.testing.assert_allclose(np.asarray(upd["blocks"]["w"]), want, rtol=1e-5)
    muon = make_optimizer(C.Config(), jnp.float32, {"blocks": {"w": "matrix"}})
    assert not np.allclose(np.asarray(muon.update(grads, muon.init(params), params)[0]["blocks"]["w"]), want)


def test_cosine_schedule_with_linear_warmup():
    t = C.TrainConfig(iterations=110, lr_schedule="cosine", lr_warmup_steps=10, min_lr=0.1, max_wallclock_seconds=0.0)
    assert [warmup_factor(s, t) for s in (0, 4, 9, 50)] == [0.1, 0.5, 1.0, 1.0]
    assert cosine_multiplier(10, 0.0, t) == pytest.approx(1.0)
    assert cosine_multiplier(60, 0.0, t) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cosine_multiplier(110, 0.0, t) == pytest.approx(0.1)
    torch_like = dataclasses.replace(t, lr_warmup_steps=0, min_lr=0.0, iterations=1500)  # CosineAnnealingLR(T_max)
    assert schedule_multiplier(375, 0.0, torch_like) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    capped = dataclasses.replace(t, max_wallclock_seconds=100.0)
    assert cosine_multiplier(3, 50_000.0, capped) == pytest.approx(0.1 + 0.9 * 0.5)  # by the time budget


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


def test_capped_run_that_stops_on_iterations_ends_at_the_floor():
    t = C.TrainConfig(iterations=100, warmdown_iters=20, max_wallclock_seconds=600.0, min_lr=0.1)
    step_ms = 10.0  # the cap (600 s) is far away: the iteration limit binds
    muls = [warmdown_multiplier(s, s * step_ms, t) for s in range(100)]
    assert muls[79] == 1.0 and muls[90] == pytest.approx(0.5) and muls[-1] == pytest.approx(0.1)
    # The wall-clock branch alone (the reference's rule) never decays this run.
    assert warmdown_multiplier(99, 99 * step_ms, dataclasses.replace(t, iterations=10**9, min_lr=0.0)) == 1.0
    # When the cap binds first both branches agree: the reference's schedule is unchanged.
    ref = dataclasses.replace(t, iterations=20_000, warmdown_iters=1200, min_lr=0.0)
    assert warmdown_multiplier(12874, 560_000.0, ref) == pytest.approx(40_000 / (1200 * 560_000 / 12874), rel=1e-9)
