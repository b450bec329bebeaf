from pathlib import Path

import jax
import numpy as np
import pytest

from pgolf_jax import config as C
from pgolf_jax import dist
from pgolf_jax.pipeline import make_evaluator_factory
from pgolf_jax.runlog import RunLog
from pgolf_jax.train.loop import build, train
from pgolf_jax.train.step import make_train_step, micro_batches

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.py"


def tiny_cfg(sample_data, **extra):
    return C.load(TINY, {**sample_data["overrides"], **extra})


def run_train(cfg, tmp_path=None):
    data = Path(cfg.data.data_path)
    log = RunLog(tmp_path, echo=False) if tmp_path else RunLog(None, echo=False)
    factory = make_evaluator_factory(cfg, data, Path(cfg.data.tokenizer_path), lambda *a, **k: None)
    return train(cfg, log, str(data / cfg.data.train_files), factory)


def test_micro_batch_layout():
    """Micro-step a on device d gets span a*D + d, as rank d at micro-step a in the reference."""
    S, N, T, D = 8, 4, 3, 2
    x = np.arange(S * N * T).reshape(S, N, T)
    out = micro_batches(x, D, 0)
    assert out.shape == (4, D * N, T)
    for a in range(4):
        for d in range(D):
            np.testing.assert_array_equal(out[a, d * N:(d + 1) * N], x[a * D + d])
    split = micro_batches(x, 1, 2)  # each span cut in 2-sequence micro-batches
    assert split.shape == (16, 2, T)
    np.testing.assert_array_equal(split[1], x[0, 2:4])


def test_accumulation_equals_one_big_batch(sample_data):
    """Four accumulated micro-batches give the gradient of the whole batch (SGD lr 1 exposes it)."""
    import optax

    from pgolf_jax.train.step import TrainState
    cfg = tiny_cfg(sample_data)
    model, _, state = build(cfg, dist.make_mesh())
    tx = optax.with_extra_args_support(optax.sgd(1.0))
    state = TrainState(state.step, state.params, tx.init(state.params))
    step = jax.jit(make_train_step(model, tx))
    x = np.random.default_rng(0).integers(0, 1024, (4, 2, 64), dtype=np.int32)
    y = np.random.default_rng(1).integers(0, 1024, (4, 2, 64), dtype=np.int32)
    s_acc, m_acc = step(state, x, y, 1.0)
    s_one, m_one = step(state, x.reshape(1, 8, 64), y.reshape(1, 8, 64), 1.0)
    assert float(m_acc["train_loss"]) == pytest.approx(float(m_one["train_loss"]), rel=1e-6)
    for a, b in zip(jax.tree.leaves(s_acc.params), jax.tree.leaves(s_one.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_training_learns_and_is_deterministic(sample_data):
    cfg = tiny_cfg(sample_data)
    r1, r2 = run_train(cfg), run_train(cfg)
    for a, b in zip(jax.tree.leaves(r1.params), jax.tree.leaves(r2.params)):
        np.testing.assert_array_equal(a, b)
    assert r1.steps == cfg.train.iterations
    assert r1.val.val_bpb == r2.val.val_bpb
    assert r1.val.val_loss < np.log(1024) - 0.5  # well below the uniform 6.93 after 20 steps


def test_warmup_steps_are_rolled_back(sample_data):
    """Compile warm-up trains and then restores weights, optimizer and data: no trace remains."""
    a = run_train(tiny_cfg(sample_data, **{"train.warmup_steps": 0, "train.iterations": 4}))
    b = run_train(tiny_cfg(sample_data, **{"train.warmup_steps": 3, "train.iterations": 4}))
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)


def test_wallclock_cap_stops_early(sample_data, tmp_path):
    cfg = tiny_cfg(sample_data, **{"train.iterations": 100_000, "train.max_wallclock_seconds": 1.0,
                                   "train.warmdown_iters": 50})
    r = run_train(cfg, tmp_path)
    assert 1 <= r.steps < 100_000
    log = (tmp_path / "log.txt").read_text()
    assert "stopping_early: wallclock_cap" in log
    assert 1000.0 <= r.train_time_ms < 30_000


def test_non_finite_loss_stops_with_the_step(sample_data):
    cfg = tiny_cfg(sample_data, **{"optim.tied_embed_lr": 1e30, "optim.scalar_lr": 1e30})
    with pytest.raises(FloatingPointError, match=r"train_loss is (nan|inf) at step \d+"):
        run_train(cfg)


def test_ema_follows_every_step(sample_data):
    import optax

    from pgolf_jax.train.step import TrainState
    cfg = tiny_cfg(sample_data, **{"train.ema_decay": 0.9})
    model, _, state = build(cfg, dist.make_mesh())
    assert state.ema is not None
    tx = optax.with_extra_args_support(optax.sgd(0.1))
    state = TrainState(state.step, state.params, tx.init(state.params), state.ema)
    step = jax.jit(make_train_step(model, tx, ema_decay=0.9))
    x = np.random.default_rng(0).integers(0, 1024, (1, 4, 64), dtype=np.int32)
    s1, _ = step(state, x, x, 1.0)
    s2, _ = step(s1, x, x, 1.0)
    for e0, p1, p2, e2 in zip(*(jax.tree.leaves(t) for t in (state.ema, s1.params, s2.params, s2.ema))):
        want = 0.9 * (0.9 * np.asarray(e0) + 0.1 * np.asarray(p1)) + 0.1 * np.asarray(p2)
        np.testing.assert_allclose(e2, want, rtol=1e-5, atol=1e-7)


def test_loop_switch_warms_both_graphs(sample_data, tmp_path):
    cfg = tiny_cfg(sample_data, **{"model.num_loops": 1, "model.loop_start": 0, "model.loop_end": 0,
                                   "model.enable_looping_at": 0.5, "train.iterations": 4, "train.warmup_steps": 1,
                                   "train.ema_decay": 0.5})
    r = run_train(cfg, tmp_path)
    log = (tmp_path / "log.txt").read_text()
    assert "warmup_step:1/1" in log and "loop_warmup_step:1/1" in log
    assert "layer_loop:enabled step:2 frac:0.500 layers:[0, 0, 1]" in log
    assert "ema:applying EMA weights" in log
    assert r.steps == 4
