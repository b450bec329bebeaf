"""Quantization schemes (registry.QUANT_SCHEMES): how the trained weights become the artifact's
integers. A scheme has a `tag` (the artifact's name: final_model.<tag>.<codec>), a one-line
`describe(q)` for the submission, and `quantize(ctx) -> (quant object, info)`."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from pgolf_jax.quant.export import quantize_int8, quantize_mixed
from pgolf_jax.quant.grid import grid_of


@dataclass(frozen=True)
class QuantContext:
    """The run's config, its float weights by reference name, each tensor's declared quantization
    rule, and what calibration needs (the model, its params, the train shards, a sharding)."""
    cfg: object
    named: dict
    rules: dict
    model: object
    params: object
    train_pattern: str
    sharding: object
    log: object


class Int8PerRow:
    """The reference baseline's export: int8 rows with percentile clipping, fp16 pass-through."""
    tag = "int8"

    @staticmethod
    def describe(q) -> str:
        return "int8 per-row"

    @staticmethod
    def quantize(ctx: QuantContext):
        q = ctx.cfg.quant
        obj, stats = quantize_int8(ctx.named, ctx.rules, q.clip_percentile, q.keep_float_max_numel, q.gate_int8)
        return obj, {"payload_bytes": stats["int8_payload_bytes"]}


class RTN:
    """Per-group widths and clips (quant.*_bits, *_clip_sigmas) on quant.grid, rounded to nearest."""
    tag = "rtn"

    @staticmethod
    def describe(q) -> str:
        return f"RTN int{q.mlp_bits}"

    @classmethod
    def quantize(cls, ctx: QuantContext, hessians=None, info=None):
        q, info = ctx.cfg.quant, info or {}
        t0 = time.perf_counter()
        obj, report = quantize_mixed(ctx.named, ctx.rules, q, hessians, log=ctx.log)
        info["quantize_seconds"] = round(time.perf_counter() - t0, 2)
        groups = {}
        for r in report["tensors"].values():
            groups.setdefault((r["group"], r["bits"]), []).append(r["error_fro"])
        minmax = grid_of(q.grid).minmax
        grid = f"grid:{q.grid} (per-row min-max)" if minmax else f"scale:{q.scale_method}"
        for (g, bits), errs in sorted(groups.items()):
            ctx.log(f"quant:{g} {len(errs)} tensors int{bits} {q.scheme} {grid} mean_error_fro:{np.mean(errs):.4f}")
        return obj, info


class GPTQ(RTN):
    """Hessian-aware GPTQ (the records): the same grid, error-compensated column by column, from
    Hessians of each linear's inputs on quant.gptq.calibration_batches training batches."""
    tag = "gptq"

    @staticmethod
    def describe(q) -> str:
        return f"GPTQ int{q.mlp_bits}/int{q.embed_bits}"

    @classmethod
    def quantize(cls, ctx: QuantContext, hessians=None, info=None):
        from pgolf_jax.quant.calibrate import collect_hessians

        cfg, info = ctx.cfg, {}
        t, g = cfg.train, cfg.quant.gptq
        hessians, seconds = collect_hessians(ctx.model, ctx.params, ctx.train_pattern, g.calibration_batches,
                                             t.train_batch_tokens, t.train_seq_len, ctx.sharding, log=ctx.log,
                                             loader=_calibration_loader(cfg.data.loader),
                                             loader_seed=cfg.data.loader_seed,
                                             vocab_size=cfg.model.vocab_size)
        info["calibration_seconds"] = round(seconds, 2)
        # The records count calibration on training data against the 600 s training budget.
        if t.max_wallclock_seconds > 0:
            within = seconds <= t.gptq_reserve_seconds
            ctx.log(f"gptq:calibration_time:{seconds:.1f}s reserve:{t.gptq_reserve_seconds:.1f}s "
                    f"{'within' if within else 'OVER'} the training-budget reserve")
            info["calibration_within_reserve"] = within
        else:
            ctx.log(f"gptq:calibration_time:{seconds:.1f}s (no wall-clock cap: no budget to count it against)")
        return super().quantize(ctx, hessians, info)


def _calibration_loader(loader: str) -> str:
    """The records that train from the doc-packing loader (#1530 onward) still calibrate GPTQ on a fresh
    ShuffledSequenceLoader; every other loader calibrates on its own kind. (Their calibration forward also
    attends across documents; ours keeps model.doc_mask.)"""
    return "shuffled" if loader == "doc_packed" else loader
