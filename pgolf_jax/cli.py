"""Command line: `run.py --config PRESET [section.field=value ...]` runs the main job; the verbs
`data`, `eval` and `bench` are subcommands. Only this module reads sys.argv."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

VERBS = ("data", "eval", "quantize", "bench")


def _main_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run.py",
        description="pgolf_jax main job: train -> quantize -> pack -> round-trip eval. "
                    f"Other verbs: {', '.join(VERBS)} (run.py <verb> --help).")
    p.add_argument("--config", required=True, help="preset file, e.g. configs/cpu.py")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and model_params, then exit")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    p.add_argument("overrides", nargs="*", metavar="section.field=value")
    return p


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py eval", description="Evaluate weights on the val split (val_loss, val_bpb).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a run directory (uses its config.json and artifact)")
    src.add_argument("--artifact", help="a pgolf_jax artifact (final_model.<int8|gptq|rtn>.<zstd|zlib|brotli>)")
    src.add_argument("--torch-state-dict", help="a reference PyTorch state dict (final_model.pt)")
    src.add_argument("--reference-ptz", help="a reference int8+zlib artifact (final_model.int8.ptz)")
    p.add_argument("--config", help="preset for --artifact / --torch-state-dict / --reference-ptz "
                                    "(default: configs/baseline_sp1024.py values)")
    p.add_argument("overrides", nargs="*", metavar="section.field=value")
    return p


def run_artifact(run_dir: Path) -> Path:
    """The artifact a run wrote (named in its submission.json; any scheme and codec)."""
    sub = run_dir / "submission.json"
    if sub.is_file():
        name = json.loads(sub.read_text()).get("artifact")
        if name and (run_dir / name).is_file():
            return run_dir / name
    found = sorted(p for p in run_dir.glob("final_model.*.*") if p.suffix not in (".npz", ".pt"))
    if not found:
        raise FileNotFoundError(f"no final_model.<scheme>.<codec> artifact in {run_dir}")
    return found[0]


def eval_command(argv: list[str]) -> int:
    from pgolf_jax import artifact, config as config_lib, dist, interop, pipeline
    from pgolf_jax.model import build_model
    from pgolf_jax.quant import dequantize
    from pgolf_jax.runlog import RunLog

    args = _eval_parser().parse_args(argv)
    if args.run:
        run_dir = Path(args.run)
        cfg_path = run_dir / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path} not found: is {run_dir} a run directory?")
        cfg = config_lib.override(config_lib.from_dict(json.loads(cfg_path.read_text())), args.overrides)
        source = run_artifact(run_dir)
    else:
        cfg = config_lib.load(args.config, args.overrides) if args.config else config_lib.override(
            config_lib.Config(), args.overrides)
        source = Path(args.artifact or args.torch_state_dict or args.reference_ptz)
    data_path, tok_path = pipeline.dataset_paths(cfg)
    log = RunLog(None)
    factory = pipeline.make_evaluator_factory(cfg, data_path, tok_path, log)
    model = build_model(cfg.model)
    import jax
    template = jax.jit(model.init)(jax.random.key(0))
    if args.torch_state_dict:
        named = interop.load_torch_state_dict(source)
    elif args.reference_ptz:
        named = interop.load_reference_int8_ptz(source)
    else:
        named = dequantize(artifact.read(source))
    params = interop.unflatten_params(named, template, source=str(source))
    mesh = dist.make_mesh()
    res = factory(model, mesh)(params)
    print(f"eval source:{source} {res.line()}")
    print(f"eval_exact val_loss:{res.val_loss:.8f} val_bpb:{res.val_bpb:.8f}")
    if cfg.eval.final_modes != "plain" or cfg.eval.ngram_order:
        pipeline.final_evals(cfg, model, params, factory, mesh, log)
    return 0


def _quantize_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py quantize",
                                description="Re-quantize a trained run's float weights (no retraining) and "
                                            "score the round trip; writes <run>/quantize-<id>/.")
    p.add_argument("--run", required=True, help="a run directory with config.json and final_model.npz")
    p.add_argument("overrides", nargs="*", metavar="quant.field=value",
                   help="quant.* (and eval.*/data.* paths) overrides; model/optim/train are fixed by the run")
    return p


def quantize_command(argv: list[str]) -> int:
    import numpy as np

    from pgolf_jax import config as config_lib, dist, pipeline
    from pgolf_jax.config import ConfigError
    from pgolf_jax.interop import unflatten_params
    from pgolf_jax.model import build_model
    from pgolf_jax.runlog import RunLog

    args = _quantize_parser().parse_args(argv)
    run_dir = Path(args.run)
    for need in ("config.json", "final_model.npz"):
        if not (run_dir / need).is_file():
            raise FileNotFoundError(f"{run_dir / need} not found: is {run_dir} a finished run directory?")
    for item in args.overrides:
        if item.split("=", 1)[0].split(".", 1)[0] not in ("quant", "eval", "data"):
            raise ConfigError(f"{item!r}: quantize only changes quant.*, eval.* or data.* (the weights are fixed)")
    cfg = config_lib.override(config_lib.from_dict(json.loads((run_dir / "config.json").read_text())), args.overrides)
    out = run_dir / f"quantize-{pipeline.new_run_id()}"
    log = RunLog(out)
    try:
        pipeline.write_json(out / "config.json", config_lib.to_dict(cfg))
        log(config_lib.to_json(cfg), console=False)
        log(f"quantize run:{run_dir} overrides:{' '.join(args.overrides) or '-'}")
        data_path, tok_path = pipeline.dataset_paths(cfg, log)
        model = build_model(cfg.model)
        mesh = dist.make_mesh()
        factory = pipeline.make_evaluator_factory(cfg, data_path, tok_path, log)
        evaluator = factory(model, mesh)
        import jax
        template = jax.eval_shape(model.init, jax.random.key(0))
        with np.load(run_dir / "final_model.npz") as z:
            params = unflatten_params({k: z[k] for k in z.files}, template, source=str(run_dir / "final_model.npz"))
        summary = pipeline.export_and_roundtrip(cfg, params, model, out, evaluator,
                                                str(data_path / cfg.data.train_files), log, factory, mesh)
        pipeline.write_json(out / "summary.json", summary)
        log(f"quantize_dir:{out}")
    finally:
        log.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from pgolf_jax import dist
    from pgolf_jax.artifact import ArtifactError, ArtifactTooLarge
    from pgolf_jax.config import ConfigError
    from pgolf_jax.train import Interrupted

    dist.keep_freed_host_memory()

    try:
        if argv and argv[0] == "data":
            from pgolf_jax import prepare
            p = argparse.ArgumentParser(prog="run.py data", description="Prepare or download datasets.")
            prepare.add_data_args(p)
            return prepare.data_command(p.parse_args(argv[1:]))
        if argv and argv[0] == "eval":
            return eval_command(argv[1:])
        if argv and argv[0] == "quantize":
            return quantize_command(argv[1:])
        if argv and argv[0] == "bench":
            from pgolf_jax import bench
            return bench.main(argv[1:])
        args = _main_parser().parse_args(argv)
        from pgolf_jax import pipeline
        return pipeline.main_job(args.config, args.overrides, dry=args.dry_run, resume=args.resume)
    except ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
        return 2
    except ArtifactTooLarge as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except Interrupted as exc:
        print(f"error: {exc}; continue with: run.py --config ... --resume <run_dir>", file=sys.stderr)
        return 128 + exc.signum
    except (FileNotFoundError, FileExistsError, ValueError, ArtifactError, FloatingPointError, RuntimeError,
            OSError) as exc:
        if os.environ.get("PGOLF_TRACEBACK"):  # the one-line error hides where it came from
            traceback.print_exc()
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
