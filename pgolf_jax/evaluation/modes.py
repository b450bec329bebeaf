"""The final eval modes without test-time training (registry.EVAL_MODES): plain non-overlapping
sequences and sliding windows. A mode is `mode(ctx) -> ModeResult`; the pipeline runs each mode
eval.final_modes names, in order, and reports the last one."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pgolf_jax.evaluation.evaluate import EvalResult, Evaluator, bpb
from pgolf_jax.runlog import Progress


@dataclass(frozen=True)
class ModeContext:
    """What a mode gets: the config, the round-tripped model and weights, a factory of evaluators
    over the val tokens (`evaluator(stride)`, windows of seq_len), the log and whether it shows
    progress. per_token: return each token's nll and entropy too (n-gram mixing reads them).
    hints: None, or (val tokens) -> a hint token per target position (-1 = none): return each
    target's log p(hint) too (the n-gram tilt reads it)."""
    cfg: object
    model: object
    params: object
    evaluator: object  # (stride: int) -> Evaluator
    seq_len: int
    log: object
    progress: bool
    per_token: bool
    hints: object = None


@dataclass
class ModeResult:
    result: EvalResult
    ev: Evaluator  # the evaluator it scored with (its tokens, bytes and windows)
    nll: object = None
    ent: object = None
    extra: dict = field(default_factory=dict)  # forward_tokens / train_tokens for the 8xH100 bound
    logp_hint: object = None  # log p(hint) per target where ModeContext.hints gave hints


def _score(ctx: ModeContext, name: str, stride: int) -> ModeResult:
    ev, t0 = ctx.evaluator(stride), time.perf_counter()
    prog = Progress(f"eval:{name}", len(ev.windows), enabled=ctx.progress, unit="windows")
    logp_hint = None
    if ctx.hints is not None:
        loss_sum, nll, ent, logp_hint = ev.score(ctx.params, progress=prog, hints=ctx.hints(ev.tokens))
    elif ctx.per_token:
        loss_sum, nll, ent = ev.score(ctx.params, per_token=True, progress=prog)
    else:
        loss_sum, nll, ent = ev.score(ctx.params, progress=prog), None, None
    prog.close()
    res = EvalResult(loss_sum / ev.total, bpb(loss_sum, ev.byte_count), ev.total, ev.byte_count,
                     time.perf_counter() - t0)
    return ModeResult(res, ev, nll, ent, logp_hint=logp_hint)


def plain(ctx: ModeContext) -> ModeResult:
    """Non-overlapping windows of seq_len: every token scored once, with its window's context."""
    return _score(ctx, "plain", ctx.seq_len)


def sliding(ctx: ModeContext) -> ModeResult:
    """Windows every eval.eval_stride tokens; each scores only its last stride tokens (full context)."""
    return _score(ctx, "sliding", ctx.cfg.eval.eval_stride)
