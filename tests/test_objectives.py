"""Seam: the training objectives (train.objective): distillation from a teacher."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from pgolf_jax import config as C
from pgolf_jax.model.gpt import build_model
from pgolf_jax.train.objectives import CrossEntropy, Distill
from pgolf_jax.train.step import TrainState, initial_rng, make_train_step
from conftest import perturbed  # noqa: E402

TINY = C.ModelConfig(vocab_size=96, num_layers=3, model_dim=64, num_heads=4, num_kv_heads=2, attention_impl="xla")


def ids(B=2, T=32, seed=0, vocab=96):
    return jax.random.randint(jax.random.key(seed), (B, T), 0, vocab)


# ---------------------------------------------------------------------------------------------
# objective=distill


def test_distill_with_alpha_one_is_ce_and_the_teacher_gets_no_gradient():
    student, teacher = build_model(TINY), build_model(dataclasses.replace(TINY, num_layers=1, model_dim=32, num_heads=2,
                                                                          num_kv_heads=1))
    sp, tp = perturbed(student), perturbed(teacher, seed=5)
    x, y = ids(), ids(seed=1)
    base = C.Config(train=C.TrainConfig().replace(objective='distill', distill=dict(teacher='unused', alpha=1.0)))
    ce, _ = jax.jit(lambda p: CrossEntropy(base)(student, p, x, y, True, None))(sp)
    d1, m1 = jax.jit(lambda p, t: Distill(base, teacher)(student, p, x, y, True, None, t))(sp, tp)
    assert float(d1) == pytest.approx(float(ce), rel=1e-6) and float(m1["kl"]) > 0
    half = dataclasses.replace(base, train=base.train.replace(distill=dict(alpha=0.5)))
    obj = Distill(half, teacher)
    d5, m5 = jax.jit(lambda p, t: obj(student, p, x, y, True, None, t))(sp, tp)
    assert float(d5) == pytest.approx(0.5 * float(ce) + 0.5 * 4.0 * float(m5["kl"]), rel=1e-5)
    g_teacher = jax.jit(jax.grad(lambda t: obj(student, sp, x, y, True, None, t)[0]))(tp)
    assert all(float(jnp.abs(g).sum()) == 0.0 for g in jax.tree.leaves(g_teacher))
    # The teacher is an argument of the compiled step: another teacher, same compile, other loss.
    from pgolf_jax.optim.optimizers import labels_from_specs, make_optimizer
    tx = make_optimizer(half, jnp.float32, labels_from_specs(student.param_specs()))
    step = jax.jit(make_train_step(student, tx, obj))
    state = TrainState(jnp.zeros((), jnp.int32), sp, tx.init(sp), None, initial_rng(0))
    xb, yb = x[None], y[None]
    _, ma = step(state, xb, yb, 1.0, 0.0, tp)
    _, mb = step(state, xb, yb, 1.0, 0.0, jax.tree.map(lambda a: a * 0.5, tp))
    assert float(ma["kl"]) != float(mb["kl"]) and step._cache_size() == 1
