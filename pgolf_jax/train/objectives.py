"""Training objectives (registry.OBJECTIVES): the loss the train step differentiates, built from
the model family's outputs (logits, auxiliary losses, per-position loss weights). Evaluation
ignores all of this: it scores the plain cross-entropy of real tokens."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pgolf_jax import hyper
from pgolf_jax.config import Config, load_run_config
from pgolf_jax.model.gpt import Model, build_model, token_nll
from pgolf_jax.model.layers import softcap


def weighted_mean(nll_BT, weights_BT):
    """Mean over positions, or the weighted mean when the family gives per-position weights."""
    if weights_BT is None:
        return jnp.mean(nll_BT)
    w = weights_BT.astype(jnp.float32)
    return jnp.sum(nll_BT * w) / jnp.maximum(jnp.sum(w), 1e-9)


def options_line(cfg: Config) -> str:
    """`objective:<name> <field>:<value> ...`: the run's objective and its options (train.<name>)."""
    name = cfg.train.objective
    opts = getattr(cfg.train, name)
    return " ".join([f"objective:{name}", *(f"{f.name}:{getattr(opts, f.name)}" for f in dataclasses.fields(opts))])


class CrossEntropy:
    """train.objective=ce: mean next-token cross-entropy (weighted where the family says so) plus
    the weighted sum of the family's auxiliary losses (e.g. ACT's ponder cost)."""

    needs_teacher = False

    def __init__(self, cfg: Config):
        self.cfg = cfg

    @staticmethod
    def describe(cfg: Config) -> str:
        """The objective's line before training, for a member's config ("": ce says nothing)."""
        return ""

    def terms(self, model: Model, params, x_BT, y_BT, looped: bool, rng, traced: hyper.Traced = None):
        logits, aux, weights = model.forward(params, x_BT, looped, rng,
                                             logit_softcap=hyper.get(traced, "model.logit_softcap", None))
        ce = weighted_mean(token_nll(logits, y_BT), weights)
        total = ce + sum(model.aux_weights[k] * v for k, v in aux.items())
        return total, logits, weights, {"ce": ce, **aux}

    def __call__(self, model: Model, params, x_BT, y_BT, looped: bool, rng, teacher=None, traced: hyper.Traced = None):
        """(loss, metrics {name: scalar}) of one micro-batch; traced: a group member's values (hyper.py)."""
        total, _, _, metrics = self.terms(model, params, x_BT, y_BT, looped, rng, traced)
        return total, metrics


def chunked_token_nll(h_BTD, w_VD, y_BT, cap, chunk: int):
    """token_nll(softcap(h @ w.T in h's dtype, then fp32, cap), y), shape (B, T), computed over `chunk`
    vocabulary rows at a time: a scan with an online log-sum-exp whose body is rematerialized, so the
    backward pass recomputes each chunk's logits and no (B, T, V) tensor is ever live, only (B, T, chunk).
    Chunking the vocabulary, not the tokens, keeps the batch-sharded axis whole: the head's gradient is
    one (chunk, D) slice per step, reduced over the batch once, as the full path reduces it."""
    V, D = w_VD.shape
    f32 = jnp.float32

    @jax.checkpoint
    def step(carry, xs):
        m_BT, s_BT, tgt_BT = carry
        w_CD, off = xs
        # The same ops as the full path (GPT.head, GPT.forward): the matmul in h's dtype, the cap in fp32.
        z_BTC = softcap(jnp.einsum("btd,vd->btv", h_BTD, w_CD.astype(h_BTD.dtype)).astype(f32), cap)
        # The running max only keeps exp in range; the log-sum-exp does not depend on it, so no gradient.
        m_new = jax.lax.stop_gradient(jnp.maximum(m_BT, jnp.max(z_BTC, axis=-1)))
        s_BT = s_BT * jnp.exp(m_BT - m_new) + jnp.sum(jnp.exp(z_BTC - m_new[..., None]), axis=-1)
        idx = y_BT - off
        inside = (idx >= 0) & (idx < chunk)
        z_y = jnp.take_along_axis(z_BTC, jnp.clip(idx, 0, chunk - 1)[..., None], axis=-1)[..., 0]
        return (m_new, s_BT, tgt_BT + jnp.where(inside, z_y, 0.0)), None

    zeros = jnp.zeros(y_BT.shape, f32)
    # -1e30, not -inf: exp(m - m_new) is then exactly 0 in the first step, with no inf - inf anywhere.
    init = (jnp.full(y_BT.shape, -1e30, f32), zeros, zeros)
    xs = (w_VD.reshape(V // chunk, chunk, D), jnp.arange(0, V, chunk, dtype=y_BT.dtype))
    (m_BT, s_BT, tgt_BT), _ = jax.lax.scan(step, init, xs)
    return m_BT + jnp.log(s_BT) - tgt_BT


def head_weight(module):
    """The GPT's (V, D) output head, as GPT.head reads it: the tied embedding or lm_head's weight."""
    return (module.tok_emb if module.lm_head is None else module.lm_head).weight[...]


class ChunkedCrossEntropy(CrossEntropy):
    """train.objective=ce_chunked: ce's loss (and gradients, within float tolerance) without the
    (B, T, V) fp32 logits: the GPT's hidden states go through the head and the soft-cap
    train.ce_chunked.vocab_chunk vocabulary rows at a time (chunked_token_nll). GPT family only."""

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.chunk = cfg.train.ce_chunked.vocab_chunk

    describe = staticmethod(options_line)

    def terms(self, model: Model, params, x_BT, y_BT, looped: bool, rng, traced: hyper.Traced = None):
        module = model.module(params)
        h_BTD, aux = module.hidden_and_aux(x_BT, looped, rng=rng)
        cap = hyper.get(traced, "model.logit_softcap", None)
        cap = model.cfg.logit_softcap if cap is None else cap
        # The GPT gives no per-position weights: the plain mean, as ce takes it.
        ce = jnp.mean(chunked_token_nll(h_BTD, head_weight(module), y_BT, cap, self.chunk))
        total = ce + sum(model.aux_weights[k] * v for k, v in aux.items())
        return total, None, None, {"ce": ce, **aux}


class Distill(CrossEntropy):
    """train.objective=distill (#1227, spec 5.3): L = a CE + (1 - a) T^2 KL(softmax(t / T) ||
    softmax(s / T)), batch-mean KL, from a frozen teacher trained before (train.distill.teacher). The
    teacher's weights are an argument of the jitted step, not captured constants, and only the
    student's parameters are differentiated."""

    needs_teacher = True

    def __init__(self, cfg: Config, teacher_model: Model):
        super().__init__(cfg)
        self.teacher_model = teacher_model
        self.alpha, self.T = cfg.train.distill.alpha, cfg.train.distill.temperature

    describe = staticmethod(options_line)

    @staticmethod
    def teacher(cfg: Config) -> tuple[Model, dict]:
        """(teacher Model, its weights) of train.distill.teacher (here, not in make_objective: a packed
        file holds the loading code only with this objective)."""
        return load_teacher(cfg.train.distill.teacher)

    def __call__(self, model: Model, params, x_BT, y_BT, looped: bool, rng, teacher=None, traced: hyper.Traced = None):
        total, logits, weights, metrics = self.terms(model, params, x_BT, y_BT, looped, rng, traced)
        # A group member's traced values (hyper.py), the config's numbers otherwise.
        alpha = hyper.get(traced, "train.distill.alpha", self.alpha)
        T = hyper.get(traced, "train.distill.temperature", self.T)
        t_logits = jax.lax.stop_gradient(self.teacher_model.logits(teacher, x_BT))
        t_logp = jax.nn.log_softmax(t_logits / T, axis=-1)
        s_logp = jax.nn.log_softmax(logits / T, axis=-1)
        kl = weighted_mean(jnp.sum(jnp.exp(t_logp) * (t_logp - s_logp), axis=-1), weights)
        loss = alpha * total + (1.0 - alpha) * T ** 2 * kl
        return loss, {**metrics, "kl": kl}


def load_teacher(path: str | Path) -> tuple[Model, dict]:
    """(teacher Model, its weights) from a run directory (config.json + final_model.npz) or a
    packed artifact inside one (its config.json beside it; the weights are dequantized)."""
    from pgolf_jax.quant import artifact
    from pgolf_jax.quant.export import dequantize
    from pgolf_jax.quant.interop import unflatten_params

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"train.distill.teacher={path} not found (a run directory or an artifact inside one)")
    run_dir = path if path.is_dir() else path.parent
    model = build_model(load_run_config(run_dir).model)
    template = jax.eval_shape(model.init, jax.random.key(0))
    if path.is_dir():
        weights = path / "final_model.npz"
        if not weights.is_file():
            raise FileNotFoundError(f"train.distill.teacher={path}: {weights} not found "
                                    "(has the teacher run finished?)")
        with np.load(weights) as z:
            named = {k: z[k] for k in z.files}
        source = weights
    else:
        named, source = dequantize(artifact.read(path)), path
    return model, unflatten_params(named, template, source=f"train.distill.teacher {source}")


def make_objective(cfg: Config):
    """(objective, teacher weights or None) for cfg.train.objective."""
    from pgolf_jax import registry

    cls = registry.resolve(registry.OBJECTIVES, cfg.train.objective)
    if not cls.needs_teacher:
        return cls(cfg), None
    teacher_model, teacher_params = cls.teacher(cfg)
    return cls(cfg, teacher_model), teacher_params
