"""Analytic FLOPs of a model (what a token costs along the block schedule) and the lower bound on
an evaluation's time on 8xH100 they give."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
from flax import nnx

from pgolf_jax import registry
from pgolf_jax.config import Config, ModelConfig, layer_mixers
from pgolf_jax.model.gpt import build_model
from pgolf_jax.model.topology import schedule


def analytic_flops_per_token(cfg: ModelConfig, seq_len: int, looped: bool = True) -> dict[str, float]:
    """Training FLOPs per token (3x forward; the optimizer aside) along the block schedule:
    matmuls 6N (N = the matrix weights of every virtual layer + the head), attention QK^T and PV
    (at most the sliding window's keys per query). A family with its own count (`flops_per_token`)
    gives it; a weight source's generation pass, once per forward and not per token, is not included."""
    family = registry.resolve(registry.FAMILIES, cfg.family)
    if hasattr(family, "flops_per_token"):
        return family.flops_per_token(cfg, seq_len, looped)
    D, V = cfg.model_dim, cfg.vocab_size
    per_layer = layer_matmul_weights(cfg)
    # ACT runs its shared block act_max_steps times for every token (masked, not exited early).
    order = (0,) * cfg.act.max_steps if cfg.topology == "act" else schedule(cfg) if looped else range(cfg.num_layers)
    n_attn = sum(1 for layer in order if layer_mixers(cfg)[layer] == "attn")
    # Pause slots are positions too: every real token pays for its share of them.
    inflate = 1.0 + cfg.pause_tokens / cfg.pause_interval if cfg.pause_tokens else 1.0
    n_matmul = inflate * sum(per_layer[layer] for layer in order) + V * D
    keys = inflate * seq_len  # the full T' x T' square, fwd + bwd
    attn_full = inflate * 3 * n_attn * 2 * 2 * keys * D
    window = cfg.attention_window
    causal = attn_full / 2 if not window or window >= keys else attn_full * window / keys
    return {"matmul": 6.0 * n_matmul, "attn_causal": causal, "attn_full": attn_full,
            "n_matmul_params": float(n_matmul)}


@functools.lru_cache(maxsize=32)
def layer_matmul_weights(cfg: ModelConfig) -> dict[int, int]:
    """{physical layer: the weights a token multiplies in that block}: its matrices from the model's
    own block state (so factorized linears, attention variants and generated weights count what
    they really hold: a generated weight is a non-parameter variable of the blocks), plus what a
    linear materializes without storing (`matmul_extra`: RLMA's random bases)."""
    model = build_model(cfg)
    gpt = nnx.merge(model.graphdef, model.abstract_state, model.abstract_rest)
    spec_of = dict(jax.tree_util.tree_leaves_with_path(model.param_specs()))
    rest = nnx.to_pure_dict(model.abstract_rest)
    out = {}
    for name, layers in gpt.stacks.items():
        total = sum(math.prod(leaf.shape[1:]) for path, leaf in
                    jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(model.abstract_state)[name])
                    if spec_of[(jax.tree_util.DictKey(name), *path)].group == "matrix"
                    or spec_of[(jax.tree_util.DictKey(name), *path)].quant in ("attn", "mlp"))
        total += sum(math.prod(leaf.shape[1:]) for leaf in jax.tree.leaves(rest.get(name, {})))
        total += sum(getattr(m, "matmul_extra", 0) for _, m in nnx.iter_modules(getattr(gpt, name)))
        out.update(dict.fromkeys(layers, total))
    return out


def block_matrix_params(cfg: ModelConfig) -> int:
    """The weights a token multiplies in one block of a uniform stack (layer 0's)."""
    return layer_matmul_weights(cfg)[0]


# bf16 dense tensor-core peak of one H100 SXM (the projection's denominator, times eval.h100_mfu).
H100_BF16_FLOPS = 989e12


def h100x8_seconds_bound(cfg: Config, seq_len: int, forward_tokens: float, train_tokens: float = 0) -> float:
    """A lower bound on an eval's time on 8xH100: its analytic FLOPs (forward passes, plus
    forward+backward of any test-time training) at eval.h100_mfu of the bf16 peak. Launches, host
    work and communication are not counted, so a real eval takes longer."""
    window = cfg.eval.attention_window or cfg.model.attention_window
    fl = analytic_flops_per_token(dataclasses.replace(cfg.model, attention_window=window), seq_len)
    fwd_per_token = (fl["matmul"] + fl["attn_causal"]) / 3
    flops = fwd_per_token * forward_tokens + 3 * fwd_per_token * train_tokens
    return flops / (8 * H100_BF16_FLOPS * cfg.eval.h100_mfu)
