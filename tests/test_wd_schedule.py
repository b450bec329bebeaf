"""optim.wd_schedule: constant (the default) and #1729's taper of the matrix group's weight decay."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgolf_jax import config as C
from pgolf_jax.optim.optimizers import make_optimizer
from pgolf_jax.optim.schedule import constant_wd, taper_wd, wd_multiplier
from pgolf_jax.train.step import rates

TAPER = {"optim.wd_schedule": "taper", "optim.muon_wd": 0.1, "optim.adam_wd": 0.3}


@pytest.mark.parametrize("frac,want", [(0.0, 1.0), (0.7, 1.0), (0.85, 0.75), (1.0, 0.5), (1.2, 0.5)])
def test_taper_multiplier(frac, want):
    o = C.override(C.Config(), TAPER).optim
    assert taper_wd(frac, o) == pytest.approx(want)
    assert constant_wd(frac, o) == 1.0


def test_taper_follows_the_training_fraction_by_steps_and_by_clock():
    by_steps = C.override(C.Config(), {**TAPER, "train.iterations": 100, "train.max_wallclock_seconds": 0})
    assert wd_multiplier(85, 0.0, by_steps) == pytest.approx(0.75)
    by_clock = C.override(C.Config(), {**TAPER, "train.max_wallclock_seconds": 110, "train.gptq_reserve_seconds": 10})
    assert wd_multiplier(1, 85_000.0, by_clock) == pytest.approx(0.75)  # 85 s of the 100 s left after the reserve


def test_a_muon_step_decays_by_the_tapered_wd_and_other_groups_do_not():
    cfg = C.override(C.Config(), TAPER)
    params = {"w": jax.random.normal(jax.random.key(0), (8, 4)), "s": jnp.ones((4,))}
    tx = make_optimizer(cfg, jnp.float32, {"w": "matrix", "s": "scalar"})
    zeros = jax.tree.map(jnp.zeros_like, params)  # zero grads: only the decay moves the weights
    upd, _ = jax.jit(lambda p: tx.update(zeros, tx.init(p), p, **rates((0.5, 0.75))))(params)
    o = cfg.optim
    np.testing.assert_allclose(upd["w"], -0.5 * o.matrix_lr * o.muon_wd * 0.75 * params["w"], rtol=1e-6)
    np.testing.assert_allclose(upd["s"], -0.5 * o.scalar_lr * o.adam_wd * params["s"], rtol=1e-6)
    assert rates(0.5) == {"lr_mul": 0.5}  # the default run passes the lr multiplier alone


def test_taper_without_muon_wd_is_refused():
    with pytest.raises(C.ConfigError, match="optim.wd_schedule=taper tapers optim.muon_wd, which is 0"):
        C.override(C.Config(), {"optim.wd_schedule": "taper"})
