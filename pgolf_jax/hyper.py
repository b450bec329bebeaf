"""Traced hyperparameters: the scalar config values a group of runs varies (learning rates,
momenta, weight decays, the logit softcap, ...), so one compiled program trains K variants
(train/group.py). A member's values travel as an explicit argument, a {key: scalar} dict the step
hands to the optimizer, the objective and the model's forward, read there through `get`.

A plain run passes None: every `get(None, key, default)` is `default` (the config's own number, a
Python constant of the graph), so it is unchanged. Config fields that only set an initial value
(qk_gain_init, tied_embed_init_std, the seed) need no tracing: each variant is initialised on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Fields a vmapped group may vary: they only enter arithmetic, never shapes or control flow.
TRACED = (
    "optim.embed_lr", "optim.head_lr", "optim.tied_embed_lr", "optim.matrix_lr", "optim.scalar_lr",
    "optim.muon_momentum", "optim.muon_momentum_warmup_start", "optim.beta1", "optim.beta2", "optim.adam_eps",
    "optim.muon_wd", "optim.embed_wd", "optim.adam_wd", "model.logit_softcap",
    "train.distill.alpha", "train.distill.temperature", "optim.adamw_lr", "optim.adamw_wd", "optim.adamw_beta2",
)
# Fields that only set the initial state: each variant is initialised with its own value.
INIT_ONLY = ("train.seed", "model.qk_gain_init", "model.tied_embed_init_std")
# eval.* fields training never reads (the periodic val reads the others): members that differ only
# in these (and in quant.*, when no QAT reads it) train once and are scored each their own way.
EVAL_DURING_TRAINING = ("eval.val_loss_every", "eval.val_batch_size", "eval.val_tokens_limit",
                        "eval.attention_window")


def after_training(key: str, cfg) -> bool:
    """Whether a config field is read only after training (the export and the final evals)."""
    section = key.split(".")[0]
    if section == "eval":
        return key not in EVAL_DURING_TRAINING
    return section == "quant" and not cfg.quant.qat


# A member's traced values, {TRACED key: scalar}, or None (a plain run: the config's numbers).
Traced = Mapping[str, Any] | None


def get(traced: Traced, key: str, default):
    """traced[key] where the group traces that field, else `default` (the config's own value)."""
    if traced is not None and key in traced:
        return traced[key]
    return default
