"""The main job, as the reference's main(): train -> quantize -> pack -> round-trip eval.

Writes runs/<run_id>/: log.txt, metrics.jsonl, config.json, final_model.npz (float weights),
the artifact final_model.<scheme>.<codec> (int8 / gptq / rtn; zstd / zlib / brotli), and
submission.json (which names it).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import math
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from pgolf_jax import config as config_lib
from pgolf_jax import dist, provenance, registry
from pgolf_jax.config import Config
from pgolf_jax.data.shards import load_val_tokens, open_shard
from pgolf_jax.data.sidecars import load_val_bytes
from pgolf_jax.data.tokenizer import build_luts
from pgolf_jax.errors import AlreadyFinished
from pgolf_jax.evaluation.evaluate import EvalResult, Evaluator, with_window
from pgolf_jax.fsio import atomic_output, write_bytes, write_json
from pgolf_jax.model.gpt import Model, build_model, count_params
from pgolf_jax.model.params import flat_specs
from pgolf_jax.quant import artifact
from pgolf_jax.quant.export import check_finite, dequantize
from pgolf_jax.quant.interop import flatten_params, unflatten_params
from pgolf_jax.runlog import RunLog
from pgolf_jax.train.run_dir import claim_run_dir, new_run_id

def val_byte_counts(cfg: Config, pattern: str, tokens: dict) -> dict | None:
    """{seq_len: the val tokens' byte sidecar} under data.val_byte_sidecar, or None for the tables."""
    mode = cfg.data.val_byte_sidecar
    found = None if mode == "off" else {seq: load_val_bytes(pattern, len(t)) for seq, t in tokens.items()}
    if found is None or any(v is None for v in found.values()):
        caseops = mode == "auto" and "caseops" in Path(pattern).parent.name  # its tables count operators as bytes
        if mode == "on" or caseops:
            why = "data.val_byte_sidecar='on'" if mode == "on" else f"{Path(pattern).parent.name} is a CaseOps set"
            raise FileNotFoundError(f"{why} but the val shards {pattern} have no byte sidecars (fineweb_val_bytes_*"
                                    ".bin); data.val_byte_sidecar='off' counts the tokenizer's bytes")
        return None
    return found


def make_evaluator_factory(cfg: Config, data_path: Path, tok_path: Path, log, unigram: Callable | None = None):
    """Load val tokens and byte tables once; returns factory(model, mesh, seq_len=None, stride=None)
    -> Evaluator (plain windows of train_seq_len by default; val tokens reloaded per length).
    unigram: Tooling.unigram, the package's reference line (a packed file has none)."""
    pattern, V = str(data_path / cfg.data.val_files), cfg.model.vocab_size
    luts = build_luts(tok_path, cfg.model.vocab_size)  # first: a tokenizer/vocab mismatch is the clearer error
    tokens = {cfg.train.train_seq_len: load_val_tokens(pattern, cfg.train.train_seq_len, cfg.eval.val_tokens_limit, V)}
    val_tokens = tokens[cfg.train.train_seq_len]
    log(f"val_bpb:enabled tokenizer_path:{tok_path}")
    val_bytes = val_byte_counts(cfg, pattern, tokens)
    if val_bytes is not None:  # the records' line: bpb counts the original bytes of each token
        log("val_bpb:byte_sidecar:enabled")
    log(f"val_loader:shards pattern={pattern} tokens:{len(val_tokens) - 1}")
    if cfg.eval.attention_window:
        log(f"eval:attention_window:{cfg.eval.attention_window}")  # every evaluation's sliding causal mask
    if unigram is not None:
        unigram(cfg, data_path, val_tokens, luts, val_bytes and val_bytes[cfg.train.train_seq_len], log)

    def factory(model: Model, mesh, seq_len: int | None = None, stride: int | None = None, batch_seqs: int = 0):
        n = dist.num_data_devices(mesh)
        seq = seq_len or cfg.train.train_seq_len
        if seq not in tokens:
            tokens[seq] = load_val_tokens(pattern, seq, cfg.eval.val_tokens_limit, V)
            if val_bytes is not None:
                val_bytes[seq] = load_val_bytes(pattern, len(tokens[seq]))
        batch_tokens = batch_seqs * seq or cfg.eval.val_batch_size // max(1, cfg.train.batch_spans // n)
        return Evaluator(with_window(model, cfg.eval.attention_window), tokens[seq], luts, seq, batch_tokens,
                         data_sharding=dist.batch_sharding(mesh),
                         num_devices=n, stride=stride or seq,
                         val_bytes=None if val_bytes is None else val_bytes[seq])

    return factory


UNIGRAM_TOKENS = 10_000_000


def unigram_line(cfg: Config, data_path: Path, val_tokens, luts, val_bytes, log) -> None:
    """Tooling.unigram: a reference point for "learns visibly", the add-one unigram floor fit on the
    first train shard (nothing without one)."""
    from pgolf_jax.evaluation.evaluate import unigram_bpb

    train_files = sorted(data_path.glob(cfg.data.train_files))
    if train_files:
        uni = unigram_bpb(open_shard(train_files[0], cfg.model.vocab_size)[:UNIGRAM_TOKENS], val_tokens, luts,
                          cfg.model.vocab_size, val_bytes)
        log(f"val_unigram_bpb:{uni:.4f} (add-one unigram fit on {train_files[0].name})")


def final_evals(cfg: Config, model: Model, params, factory, mesh, log, bound: Callable | None = None) -> dict:
    """Every eval.final_modes (registry.EVAL_MODES) on the round-tripped weights (and n-gram mixing
    and the n-gram tilt on top), each with its wall time (and with bound, Tooling.bound, a bound on
    its 8xH100 time from its analytic FLOPs); the last one is the score."""
    from pgolf_jax.evaluation.modes import ModeContext

    e = cfg.eval
    T = e.eval_seq_len or cfg.train.train_seq_len
    tilt = registry.resolve(registry.NGRAM_TILTS, e.ngram_tilt)(getattr(e, e.ngram_tilt)) if e.ngram_tilt else None
    ctx = ModeContext(cfg, model, params, lambda stride: factory(model, mesh, T, stride, e.eval_batch_seqs), T, log,
                      cfg.train.progress and dist.is_main(), bool(e.ngram_order), tilt and tilt.target_hints)
    results = {}
    for mode in registry.names("eval.final_modes", e.final_modes):
        out = registry.resolve(registry.EVAL_MODES, mode)(ctx)
        res = finite_result(out.result, f"final_{mode}")
        proj = bound(cfg, T, out.extra.get("forward_tokens") or len(out.ev.windows) * T,
                     out.extra.get("train_tokens", 0)) if bound else {}
        results[mode] = {"val_loss": res.val_loss, "val_bpb": res.val_bpb, "eval_seconds": round(res.seconds, 2),
                         **proj}
        log(f"final_{mode} {res.line()}" + "".join(f" {k[:-8]}:{v:.4f}s" for k, v in proj.items()))
        log(f"final_{mode}_exact val_loss:{res.val_loss:.8f} val_bpb:{res.val_bpb:.8f}")
        log.metric(f"final_{mode}", **results[mode])
        if e.ngram_order:  # n-gram mixing on top (registry.NGRAM_MIX: packed only for a run that mixes)
            results.update(registry.resolve(registry.NGRAM_MIX, "mix")(cfg, mode, out, log))
        if tilt:  # with mixing on too, the tilt is last
            results.update(tilt.final(mode, out, log))
    return results


def save_float_weights(params, run_dir: Path, log) -> Path:
    """final_model.npz: the trained (EMA) float weights under reference names, for re-quantizing."""
    named = flatten_params(params)
    bad = [k for k, v in named.items() if not np.all(np.isfinite(v.astype(np.float32)))]
    if bad:
        raise FloatingPointError(f"the trained weights are not finite ({', '.join(bad[:3])}"
                                 f"{' ...' if len(bad) > 3 else ''}): the training diverged; nothing exported")
    path = run_dir / "final_model.npz"
    with atomic_output(path) as f:
        np.savez(f, **{k: (v.astype(np.float32) if v.dtype.name == "bfloat16" else v) for k, v in named.items()})
    log(f"Serialized model: {path.stat().st_size} bytes")
    return path


@dataclasses.dataclass(frozen=True)
class Tooling:
    """What the package adds around a run and a packed train_gpt.py leaves out (passed in, so that
    the packed file never holds it): how the run's train_gpt.py is made, and the loss-curve picture."""
    code: Callable  # (cfg) -> (the bytes of train_gpt.py, {path: source} of what it holds, those zstd-22'd)
    dataset: Callable  # (cfg, log) -> (data_path, tokenizer_path), prepared from data.source or not
    curves: Callable | None = None  # (run_dir, cfg, log) -> None; never raises
    # Reports for runs off the target: the unigram floor of the val split (cfg, data_path, val_tokens, luts,
    # val_bytes, log), and each final eval's 8xH100 time bound from its FLOPs, (cfg, seq_len, forward tokens,
    # train tokens) -> {"bound_8xH100_seconds": s} (model/flops.py; submit's compliance reads it). A packed
    # file measures instead.
    unigram: Callable | None = None
    bound: Callable | None = None


def quantize_params(cfg: Config, params, model: Model, train_pattern: str, evaluator, log) -> tuple[dict, dict]:
    """(quant object, info) under cfg.quant's scheme (registry.QUANT_SCHEMES)."""
    from pgolf_jax.quant.schemes import QuantContext

    ctx = QuantContext(cfg, flatten_params(params), flat_specs(model.param_specs(), params), model, params,
                       train_pattern, evaluator.sharding, log)
    return registry.resolve(registry.QUANT_SCHEMES, cfg.quant.scheme).quantize(ctx)


def export_and_roundtrip(cfg: Config, params, model: Model, out_dir: Path, evaluator, train_pattern: str, log,
                         tooling: Tooling, factory=None, mesh=None) -> dict:
    """Evaluate the float weights, quantize, pack, write, read back, dequantize, evaluate: the
    round-trip number is the one that counts."""
    q = cfg.quant
    pre = finite_result(evaluator(params), "pre_quant")
    log(f"pre_quant {pre.line()}")
    obj, info = quantize_params(cfg, params, model, train_pattern, evaluator, log)
    check_finite(obj, flatten_params(params))
    tag = registry.resolve(registry.QUANT_SCHEMES, q.scheme).tag
    art_path = out_dir / f"final_model.{tag}.{q.compressor}"
    # Only zstd (its level) and pergroup (its options) take a setting, and their options exist only
    # where they are selected (a packed file registers no other codec's options); the others ignore it.
    level = q.zstd.level if q.compressor == "zstd" else q.pergroup if q.compressor == "pergroup" else None
    blob = artifact.pack(obj, q.compressor, level, q.byte_shuffle)
    model_bytes = len(blob)
    packed, shipped, code_zst = tooling.code(cfg)
    code_raw = sum(len(b) for b in shipped.values())
    code = {"raw": code_raw, "compressed": code_zst, "packed": len(packed)}[q.code_bytes]
    log(f"Code size: {code_raw} bytes raw, {code_zst} bytes zstd-22, {len(packed)} bytes packed as train_gpt.py "
        f"({len(shipped)} files; counting {q.code_bytes})")
    rules = flat_specs(model.param_specs(), params)
    breakdown = artifact.size_report(obj, lambda name, slot: slot if slot in ("passthrough", "lqer") else
                                     rules[name].quant if name in rules else "other", q.compressor, level,
                                     q.byte_shuffle)
    for g, b in breakdown.items():
        log(f"bytes:{g} raw:{b['raw']} compressed:{b['compressed']}")
    log(f"Serialized model {tag}+{q.compressor}: {model_bytes} bytes")
    total = model_bytes + code
    log(f"Total submission size {tag}+{q.compressor}: {total} bytes (cap {q.max_artifact_bytes})")
    log.metric("artifact", model_bytes=model_bytes, code_bytes=code, code_bytes_raw=code_raw,
               code_bytes_compressed=code_zst, total_bytes=total, breakdown=breakdown, **info)
    artifact.check_size(model_bytes, code, q.max_artifact_bytes, q.allow_oversize)  # before anything is written
    if dist.is_main():
        write_bytes(out_dir / "train_gpt.py", packed)
        artifact.write(art_path, blob)
        if art_path.read_bytes() != blob:
            raise artifact.ArtifactError(f"{art_path}: bytes on disk differ from the packed artifact")

    # Every process round-trips the packed bytes (identical to the file process 0 wrote).
    restored = unflatten_params(dequantize(artifact.unpack(blob, str(art_path))), params, source=str(art_path))
    if mesh is not None:
        restored = dist.global_tree(restored, dist.replicated(mesh))
    res: EvalResult = finite_result(evaluator(restored), "final_roundtrip")
    log(f"final_roundtrip {res.line()}")
    log(f"final_roundtrip_exact val_loss:{res.val_loss:.8f} val_bpb:{res.val_bpb:.8f}")
    log.metric("final_roundtrip", val_loss=res.val_loss, val_bpb=res.val_bpb, val_tokens=res.val_tokens,
               val_bytes=res.val_bytes, eval_seconds=res.seconds, pre_quant_val_bpb=pre.val_bpb)
    finals = {}
    if cfg.eval.final_modes != "plain" or cfg.eval.ngram_order or cfg.eval.ngram_tilt or cfg.eval.eval_seq_len:
        finals = final_evals(cfg, model, restored, factory, mesh, log, tooling.bound)
        last = list(finals.values())[-1]
        res = finite_result(dataclasses.replace(res, val_loss=last["val_loss"], val_bpb=last["val_bpb"]),
                            f"final_{list(finals)[-1]}")
        log(f"final_score mode:{list(finals)[-1]} val_loss:{res.val_loss:.8f} val_bpb:{res.val_bpb:.8f}")
    if not finals:  # the round trip is the scored eval: its time, and its projection like final_evals'
        proj = tooling.bound(cfg, cfg.train.train_seq_len, res.val_tokens) if tooling.bound else {}
        finals_time = {"plain": {"val_loss": res.val_loss, "val_bpb": res.val_bpb,
                                 "eval_seconds": round(res.seconds, 2), **proj}}
    else:
        finals_time = finals
    return {"val_loss": res.val_loss, "val_bpb": res.val_bpb, "final_modes": finals_time,
            "pre_quant_val_loss": pre.val_loss,
            "pre_quant_val_bpb": pre.val_bpb, "bytes_total": total, "bytes_code": code, "bytes_model": model_bytes,
            "bytes_code_raw": code_raw, "bytes_code_compressed": code_zst, "bytes_by_group": breakdown,
            "artifact": art_path.name, "val_tokens": res.val_tokens, "val_bytes": res.val_bytes,
            "code_files": sorted(shipped),
            "code_sha256": hashlib.sha256(packed).hexdigest(), "bytes_code_packed": len(packed), **info}


def finite_result(res: EvalResult, what: str) -> EvalResult:
    """A score that is NaN/inf is an error, never a number that gets printed or saved."""
    if not (math.isfinite(res.val_loss) and math.isfinite(res.val_bpb)):
        raise FloatingPointError(f"{what}: val_loss is {res.val_loss} and val_bpb {res.val_bpb} (not finite): no score "
                                 "is reported")
    return res


def log_header(cfg: Config, log: RunLog, preset: str | None) -> None:
    log(config_lib.to_json(cfg), console=False)
    log(f"config:{preset or '<defaults>'} run_id:{cfg.train.run_id}")
    log(f"pgolf_jax source:{provenance.code_version()} python:{platform.python_version()} jax:{jax.__version__} "
        f"backend:{jax.default_backend()} devices:{jax.devices()}", console=False)


def run_job(cfg: Config, tooling: Tooling, preset: str | None = None, resume: str | Path | None = None,
            allow_code_change: bool = False) -> dict:
    from pgolf_jax.train.loop import train

    dist.initialize(cfg.train)  # before any JAX computation
    main = dist.is_main()
    restore = None
    if resume:
        run_dir = Path(resume)  # (a packed file whose run never checkpoints offers no --resume: cli._job_args)
        cfg, restore = registry.resolve(registry.CHECKPOINTS, "resume")(cfg, run_dir, allow_code_change, main)
        run_id = cfg.train.run_id
    else:
        run_id = cfg.train.run_id or new_run_id()
        cfg = config_lib.override(cfg, {"train.run_id": run_id})
        run_dir = Path(cfg.train.out_dir) / run_id
        if main:
            claim_run_dir(run_dir, cfg)
    log = RunLog(run_dir if main else None, echo=main)  # process 0 logs and writes; all compute
    try:
        log_header(cfg, log, preset)
        for skipped in (restore.skipped if restore else ()):
            log(f"resume:skipped checkpoint {skipped}")
        data_path, tok_path = tooling.dataset(cfg, log)
        if main:  # what this run is made from, for a later --resume (and a sweep row) to compare
            provenance.record(run_dir, cfg)
        factory = make_evaluator_factory(cfg, data_path, tok_path, log, tooling.unigram)
        shards = sorted(data_path.glob(cfg.data.train_files))
        log(f"train_loader:dataset:{data_path.name} train_shards:{len(shards)}")
        t0 = time.perf_counter()
        train_pattern = str(data_path / cfg.data.train_files)
        result = train(cfg, log, train_pattern, factory, run_dir=run_dir, restore=restore)
        return finish_run(cfg, result, run_dir, log, preset, factory, train_pattern, t0, tooling)
    except BaseException:
        if main and not resume and not log.events.get("train"):
            # Failed before its first training step (bad data, a compile error, ^C): nothing worth
            # keeping, and the run_id stays free for a retry.
            log.close()
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        log.close()


def finish_run(cfg: Config, result, run_dir: Path, log: RunLog, preset: str | None, factory, train_pattern: str,
               t0: float, tooling: Tooling, **extra) -> dict:
    """After training: float weights, quantize, pack, round-trip, submission.json and the loss-curve
    picture (curves.png) of one run; returns the summary."""
    main = dist.is_main()
    mesh = dist.make_mesh()
    params = dist.replicate(result.params, mesh)
    if main:
        save_float_weights(params, run_dir, log)
    summary = export_and_roundtrip(cfg, params, result.model, run_dir, result.evaluator, train_pattern, log,
                                   tooling, factory, mesh)
    summary.update(
        name=cfg.train.run_id, date=datetime.datetime.now().isoformat(timespec="seconds"), config=preset,
        steps=result.steps, train_time_ms=round(result.train_time_ms, 1),
        last_val_bpb=result.val.val_bpb if result.val else None,
        model_params=count_params(result.params), wall_seconds=round(time.perf_counter() - t0, 1),
        hardware=f"{jax.device_count()}x {jax.devices()[0].device_kind}", processes=jax.process_count(),
        jax_version=jax.__version__, code_version=provenance.code_version(), **extra)
    if main:
        write_json(run_dir / "submission.json", summary)
        ck = run_dir / "checkpoints"  # a run that never checkpointed leaves no empty folder
        if ck.is_dir() and not any(ck.iterdir()):
            ck.rmdir()
        if tooling.curves is not None:
            tooling.curves(run_dir, cfg, log)
    log(f"run_dir:{run_dir}")
    return summary


def dry_run(cfg: Config, preset: str | None = None) -> int:
    """Resolved config and the parameter count, without data or training."""
    print(config_lib.to_json(cfg))
    model = build_model(cfg.model)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    print(f"model_params:{count_params(shapes)}")
    return 0


def main_job(preset: str, cfg: Config, tooling: Tooling, dry: bool = False, resume: str | None = None,
             allow_code_change: bool = False) -> int:
    """The main job of a loaded config (its preset path is logged); 0 on success."""
    if dry:
        return dry_run(cfg, preset)
    try:
        summary = run_job(cfg, tooling, preset, resume, allow_code_change)
    except AlreadyFinished as exc:
        print(f"resume: {exc}", file=sys.stderr)
        return 0
    print(f"val_bpb:{summary['val_bpb']:.8f} artifact_bytes:{summary['bytes_total']}", file=sys.stderr)
    return 0
