"""The score-first test-time-training eval modes (registry.EVAL_MODES): ttt (full-weight SGD on
sliding windows, eval.ttt.*) and lora_ttt (per-document adapters, eval.lora_ttt.*)."""

from __future__ import annotations

from pgolf_jax.evaluation import ttt
from pgolf_jax.evaluation.modes import ModeContext, ModeResult
from pgolf_jax.runlog import Progress


def full_ttt(ctx: ModeContext) -> ModeResult:
    e = ctx.cfg.eval
    ev = ctx.evaluator(e.eval_stride)
    prog = Progress("eval:ttt", -(-ev.total // e.ttt.chunk_tokens), enabled=ctx.progress, unit="chunks")
    res, nll, ent, extra = ttt.full_ttt(ev.model, ctx.params, ev, e, ctx.log, per_token=ctx.per_token, progress=prog,
                                        hints=ctx.hints(ev.tokens) if ctx.hints else None)
    prog.close()
    return ModeResult(res, ev, nll, ent, extra, logp_hint=extra.pop("logp_hint", None))


def lora_ttt(ctx: ModeContext) -> ModeResult:
    e = ctx.cfg.eval
    ev = ctx.evaluator(ctx.seq_len)
    prog = Progress("eval:lora_ttt", len(ttt.documents(ev.tokens)), enabled=ctx.progress, unit="docs")
    res, nll, ent, extra = ttt.lora_ttt(ev.model, ctx.params, ev, e, ctx.log, per_token=ctx.per_token, progress=prog,
                                        hints=ctx.hints(ev.tokens) if ctx.hints else None)
    prog.close()
    return ModeResult(res, ev, nll, ent, extra, logp_hint=extra.pop("logp_hint", None))
