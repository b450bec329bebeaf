"""Command line: `run.py --config PRESET [section.field=value ...]` runs the main job; the verbs
`data`, `eval`, `quantize`, `bench`, `sweep`, `plot`, `submit`, `export`, `compile` and `pack` are
subcommands. Only this module reads sys.argv; a packed train_gpt.py enters at `packed_main`."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path

from pgolf_jax.errors import arg_parser  # JAX-free

_Parser = arg_parser()
VERBS = ("data", "eval", "quantize", "bench", "sweep", "plot", "submit", "export", "compile", "pack")


def _main_parser() -> argparse.ArgumentParser:
    return _job_args(_Parser(prog="run.py", description="pgolf_jax main job: train -> quantize -> pack -> round-trip "
                             f"eval. Other verbs: {', '.join(VERBS)} (run.py <verb> --help)."),
                     "preset file, e.g. configs/cpu.py")


def _packed_parser() -> argparse.ArgumentParser:
    """A packed train_gpt.py's: its config is the packed one (--config is kept only to be refused by name)."""
    return _job_args(_Parser(prog="train_gpt.py", description="Train, quantize, pack and score the packed config."))


def _job_args(p: argparse.ArgumentParser, config_help: str | None = None) -> argparse.ArgumentParser:
    from pgolf_jax import registry  # --resume only where the code can (a packed file's run may not checkpoint)
    p.add_argument("--config", required=config_help is not None, help=config_help or argparse.SUPPRESS)
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and model_params, then exit")
    p.set_defaults(resume=None, allow_code_change=False)
    if "resume" in registry.CHECKPOINTS:
        p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
        p.add_argument("--allow-code-change", action="store_true", help="with --resume: continue despite code changes")
    p.add_argument("overrides", nargs="*", metavar="section.field=value")
    return p


def _eval_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="run.py eval", description="Evaluate weights on the val split (val_loss, val_bpb).")
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
    from pgolf_jax.fsio import read_json

    sub = run_dir / "submission.json"
    if sub.is_file():
        payload = read_json(sub, "the run's submission")
        name = payload.get("artifact") if isinstance(payload, dict) else None
        if name and (run_dir / name).is_file():
            return run_dir / name
    found = sorted(p for p in run_dir.glob("final_model.*.*") if p.suffix not in (".npz", ".pt"))
    if not found:
        raise FileNotFoundError(f"no final_model.<scheme>.<codec> artifact in {run_dir}")
    return found[0]


def eval_command(argv: list[str]) -> int:
    """Scores only: it writes no file (its log is console-only), so it has no output path to guard."""
    from pgolf_jax import config as config_lib
    from pgolf_jax import dist, pipeline
    from pgolf_jax.data.source import dataset_paths
    from pgolf_jax.model.gpt import build_model
    from pgolf_jax.packing.select import package_tooling
    from pgolf_jax.quant import artifact, interop
    from pgolf_jax.quant.export import dequantize
    from pgolf_jax.runlog import RunLog

    args = _eval_parser().parse_args(argv)
    if args.run:
        run_dir = Path(args.run)
        cfg = config_lib.override(config_lib.load_run_config(run_dir), args.overrides)
        source = run_artifact(run_dir)
    else:
        cfg = config_lib.load(args.config, args.overrides) if args.config else config_lib.override(
            config_lib.Config(), args.overrides)
        source = Path(args.artifact or args.torch_state_dict or args.reference_ptz)
    # The weights first (a bad file fails before any data is read), then the data.
    if args.torch_state_dict:
        named = interop.load_torch_state_dict(source)
    elif args.reference_ptz:
        named = interop.load_reference_int8_ptz(source)
    else:
        named = dequantize(artifact.read(source))
    model = build_model(cfg.model)
    import jax
    template = jax.eval_shape(model.init, jax.random.key(0))
    params = interop.unflatten_params(named, template, source=str(source))
    data_path, tok_path = dataset_paths(cfg)
    log, tooling = RunLog(None), package_tooling()
    factory = pipeline.make_evaluator_factory(cfg, data_path, tok_path, log, tooling.unigram)
    mesh = dist.make_mesh()
    res = pipeline.finite_result(factory(model, mesh)(params), f"eval of {source}")
    print(f"eval source:{source} {res.line()}")
    print(f"eval_exact val_loss:{res.val_loss:.8f} val_bpb:{res.val_bpb:.8f}")
    if cfg.eval.final_modes != "plain" or cfg.eval.ngram_order or cfg.eval.ngram_tilt:
        pipeline.final_evals(cfg, model, params, factory, mesh, log, tooling.bound)
    return 0


def _quantize_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="run.py quantize",
                                description="Re-quantize a trained run's float weights (no retraining) and "
                                            "score the round trip; writes <run>/quantize-<id>/.")
    p.add_argument("--run", required=True, help="a run directory with config.json and final_model.npz")
    p.add_argument("overrides", nargs="*", metavar="quant.field=value",
                   help="quant.* (and eval.*/data.* paths) overrides; model/optim/train are fixed by the run")
    return p


def quantize_command(argv: list[str]) -> int:
    import shutil
    import zipfile

    import numpy as np

    from pgolf_jax import config as config_lib
    from pgolf_jax import dist, pipeline
    from pgolf_jax.config import ConfigError
    from pgolf_jax.data.source import dataset_paths
    from pgolf_jax.fsio import write_json
    from pgolf_jax.model.gpt import build_model
    from pgolf_jax.packing import select
    from pgolf_jax.quant.interop import unflatten_params
    from pgolf_jax.runlog import RunLog
    from pgolf_jax.train.run_dir import new_run_id

    args = _quantize_parser().parse_args(argv)
    run_dir = Path(args.run)
    for item in args.overrides:
        if item.split("=", 1)[0].split(".", 1)[0] not in ("quant", "eval", "data"):
            raise ConfigError(f"{item!r}: quantize only changes quant.*, eval.* or data.* (the weights are fixed)")
    cfg = config_lib.override(config_lib.load_run_config(run_dir), args.overrides)
    npz = run_dir / "final_model.npz"
    if not npz.is_file():
        raise FileNotFoundError(f"{npz} not found: is {run_dir} a finished run directory?")
    import jax
    model = build_model(cfg.model)
    template = jax.eval_shape(model.init, jax.random.key(0))
    try:
        with np.load(npz) as z:
            params = unflatten_params({k: z[k] for k in z.files}, template, source=str(npz))
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{npz}: not a readable weights file ({exc})") from None
    # The one write into a run directory the CLI allows: a new subfolder of the run it derives from
    # (a fresh random id, so never an existing folder).
    out = run_dir / f"quantize-{new_run_id()}"
    log = RunLog(out)
    try:
        write_json(out / "config.json", config_lib.to_dict(cfg))
        log(config_lib.to_json(cfg), console=False)
        log(f"quantize run:{run_dir} overrides:{' '.join(args.overrides) or '-'}")
        data_path, tok_path = dataset_paths(cfg, log)
        mesh, tooling = dist.make_mesh(), select.package_tooling()
        factory = pipeline.make_evaluator_factory(cfg, data_path, tok_path, log, tooling.unigram)
        evaluator = factory(model, mesh)
        summary = pipeline.export_and_roundtrip(cfg, params, model, out, evaluator,
                                                str(data_path / cfg.data.train_files), log, tooling, factory, mesh)
        write_json(out / "summary.json", summary)
        log(f"quantize_dir:{out}")
    except BaseException:
        log.close()
        shutil.rmtree(out, ignore_errors=True)  # a failed re-quantization leaves nothing behind
        raise
    finally:
        log.close()
    return 0


def submit_command(argv: list[str]) -> int:
    from pgolf_jax import submit

    p = _Parser(prog="run.py submit", description="Runs of one config (one per seed) -> a records "
                                "folder: README.md, submission.json, train logs, requirements.txt, train_gpt.py.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--name", required=True, help="the submission's title")
    p.add_argument("--author", required=True)
    p.add_argument("--github-id", required=True)
    p.add_argument("--track", default="10min_16mb", help="10min_16mb (default) or non_record_16mb")
    p.add_argument("--out", help="the records/ folder to add to (default ./records)")
    p.add_argument("--vs", help="the val_bpb to beat (a number or a submission.json): prints the record test")
    p.add_argument("--force", action="store_true", help="add to an --out folder that exists but holds no "
                   "track_* folders (an existing submission folder is never replaced)")
    args = p.parse_args(argv)
    submit.submit([Path(r) for r in args.runs], args.name, args.author, args.github_id, args.track,
                  Path(args.out) if args.out else None, args.vs, force=args.force)
    return 0


def export_command(argv: list[str]) -> int:
    from pgolf_jax import submit
    from pgolf_jax.config import ConfigError
    from pgolf_jax.fsio import check_output

    p = _Parser(prog="run.py export", description="A reference-architecture run's weights in "
                                "train_gpt.py's formats (written outside any run directory).")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--torch", metavar="PATH", help="write a state dict (final_model.pt)")
    p.add_argument("--reference-ptz", metavar="PATH", help="write the int8+zlib artifact (final_model.int8.ptz)")
    p.add_argument("--force", action="store_true", help="replace existing --torch/--reference-ptz files")
    args = p.parse_args(argv)
    if not args.torch and not args.reference_ptz:
        p.error("give --torch PATH and/or --reference-ptz PATH")
    # Both paths are checked before either is written: a refusal leaves nothing half-exported.
    torch_path = check_output(args.torch, "--torch", force=args.force) if args.torch else None
    ptz_path = check_output(args.reference_ptz, "--reference-ptz", force=args.force) if args.reference_ptz else None
    if torch_path and ptz_path and torch_path.resolve() == ptz_path.resolve():
        raise ConfigError(f"--torch and --reference-ptz both name {ptz_path}: give two paths")
    submit.export(Path(args.run), torch_path, ptz_path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line. SIGTERM is handled as ^C is (every command's cleanup runs, exit 128+signal)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "data":  # NumPy and SentencePiece only: no JAX to import (seconds)
        return _with_sigterm(lambda: _data_command(argv[1:]))
    return _with_sigterm(lambda: guarded(lambda: _dispatch(argv)))


def packed_main(argv: list[str], config: dict) -> int:
    """The main job of a packed train_gpt.py (packing/file.py): the config it embeds, with the
    command line's overrides on top. The only entry the packed file holds."""
    return _with_sigterm(lambda: guarded(lambda: _packed_job(list(argv), config)))


def _with_sigterm(run) -> int:
    old = _terminate_as_interrupt()
    try:
        return run()
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _terminate_as_interrupt():
    """Make SIGTERM raise errors.Terminated (a KeyboardInterrupt); returns the old handler."""
    from pgolf_jax.errors import Terminated

    def handle(signum, frame):
        raise Terminated(signum)

    try:
        return signal.signal(signal.SIGTERM, handle)
    except ValueError:  # not the main thread (a test driving main from a worker): leave it
        return None


def interrupted_line(exc: BaseException) -> str:
    from pgolf_jax.errors import signum_of
    return "SIGTERM" if signum_of(exc) == signal.SIGTERM else "^C"


def _data_command(argv: list[str]) -> int:
    from pgolf_jax.data import commands
    from pgolf_jax.errors import UsageError
    p = _Parser(prog="run.py data", description="Prepare or download datasets.")
    commands.add_data_args(p)
    try:
        args = p.parse_args(argv)
    except UsageError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    return commands.data_command(args)


def _packed_job(argv: list[str], config: dict) -> int:
    from pgolf_jax import config as config_lib

    # The config is checked before JAX is imported: a bad value costs no seconds.
    args = _packed_parser().parse_args(argv)
    if args.config is not None:
        raise config_lib.ConfigError(f"--config {args.config}: refused, {config_lib.packed_line()}")
    cfg = config_lib.place_override(config_lib.from_dict(config), args.overrides)
    from pgolf_jax.data.source import prepared_dataset
    from pgolf_jax.pipeline import Tooling

    return _main_job("<packed>", cfg, args, Tooling(code=_this_file, dataset=prepared_dataset))


def _this_file(cfg) -> tuple[bytes, dict[str, bytes], int]:
    """A packed file's code is itself (compressed already): a run of it writes a copy of it."""
    import pgolf_jax
    data = Path(pgolf_jax.__packed__).read_bytes()
    return data, {"train_gpt.py": data}, len(data)


def _main_job(config_name: str, cfg, args, tooling) -> int:
    from pgolf_jax import dist, pipeline

    dist.keep_freed_host_memory()
    dist.claim_device_memory()
    _persistent_compile_cache()
    return pipeline.main_job(config_name, cfg, tooling, dry=args.dry_run, resume=args.resume,
                             allow_code_change=args.allow_code_change)


def _dispatch(argv: list[str]) -> int:
    from pgolf_jax import config as config_lib

    if not argv or argv[0] not in VERBS:
        # The main job's config is checked before JAX is imported: a bad value costs no seconds.
        args = _main_parser().parse_args(argv)
        from pgolf_jax.packing.select import package_tooling
        cfg = config_lib.load(args.config, args.overrides)
        return _main_job(args.config, cfg, args, package_tooling())
    if argv[0] == "compile":  # before anything imports jax: it sets JAX_PLATFORMS=cpu
        from pgolf_jax.hardware import command
        return command.run(argv[1:])  # its errors end in guarded's handlers
    if argv[0] == "pack":  # no JAX: only the config and the package's sources
        from pgolf_jax.packing.command import pack_command
        return pack_command(argv[1:])
    from pgolf_jax import dist
    dist.keep_freed_host_memory()
    dist.claim_device_memory()
    _persistent_compile_cache()
    verbs = {"eval": eval_command, "quantize": quantize_command, "submit": submit_command,
             "export": export_command, "sweep": _lazy("pgolf_jax.sweep.command", "sweep_command"),
             "plot": _lazy("pgolf_jax.plots", "plot_command"), "bench": _lazy("pgolf_jax.bench", "main")}
    return verbs[argv[0]](argv[1:])


def _lazy(module: str, attr: str):
    """A verb whose module is imported only when that verb runs."""
    def run(argv):
        import importlib
        return getattr(importlib.import_module(module), attr)(argv)
    return run


def guarded(run) -> int:
    """Run a command; bad input, interrupts and errors become one `error:` line and an exit code."""
    from pgolf_jax.config import ConfigError
    from pgolf_jax.errors import ArtifactError, ArtifactTooLarge, Interrupted, UsageError

    try:
        return run()
    except UsageError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"error: config: {_one_line(exc)}", file=sys.stderr)
        return 2
    except ArtifactTooLarge as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 3
    except Interrupted as exc:
        print(f"error: {exc}; continue with: run.py --config ... --resume <run_dir>", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt as exc:
        from pgolf_jax.errors import signum_of

        print(f"error: interrupted ({interrupted_line(exc)}); nothing half-written was kept", file=sys.stderr)
        return 128 + signum_of(exc)
    except (FileNotFoundError, FileExistsError, ValueError, ArtifactError, FloatingPointError, RuntimeError,
            OSError) as exc:
        if os.environ.get("PGOLF_TRACEBACK"):  # the one-line error hides where it came from
            traceback.print_exc()
        print(f"error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug, not bad input: still one line, the traceback on request
        if os.environ.get("PGOLF_TRACEBACK"):
            traceback.print_exc()
        print(f"error: internal error {type(exc).__name__}: {_one_line(exc)} (a bug; PGOLF_TRACEBACK=1 shows where)",
              file=sys.stderr)
        return 1


def _persistent_compile_cache() -> None:
    """JAX's persistent compilation cache, so a shape compiled by an earlier run (the same preset
    again, a resume, a sweep) loads in well under a second: ~/.cache/pgolf_jax/jax_cache unless
    JAX_COMPILATION_CACHE_DIR says otherwise; PGOLF_NO_COMPILE_CACHE=1 turns it off."""
    if os.environ.get("PGOLF_NO_COMPILE_CACHE"):
        return
    import jax

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(Path.home() / ".cache" / "pgolf_jax" / "jax_cache"))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (library messages sometimes span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__
