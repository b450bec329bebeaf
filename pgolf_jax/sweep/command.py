"""`run.py sweep FILE`: every (variant, seed) row of a sweep file through the main job (rows that
can share one compiled step trained as a group), then the tables and pictures of the results."""

from __future__ import annotations

import argparse
from pathlib import Path

from pgolf_jax.config import ConfigError
from pgolf_jax.errors import arg_parser
from pgolf_jax.sweep.spec import load_sweep, parse_shard

_Parser = arg_parser()


def _sweep_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="run.py sweep", description="Run every (variant, seed) row of a sweep file "
                                "through the main job, then write results.csv, results.md and plots.")
    p.add_argument("file", help="a sweep file, e.g. sweeps/pr1589.py")
    p.add_argument("--out", help="the sweep folder (default runs/sweeps/<file stem>)")
    p.add_argument("--shard", metavar="I/N", help="run rows I, I+N, ... only (machines sharing --out merge rows)")
    p.add_argument("--retry-failed", action="store_true", help="run failed rows again")
    p.add_argument("--no-vmap", action="store_true", help="run every row as its own process")
    p.add_argument("--group-mode", choices=("auto", "vmap", "loop"), default="auto",
                   help="how a group's one compiled step runs its members: jax.vmap over stacked states, or "
                        "a loop over them (auto: loop on CPU, where vmapped products are slower; vmap elsewhere)")
    p.add_argument("--report-only", action="store_true", help="rebuild the tables and plots from the rows present")
    p.add_argument("--dry-run", action="store_true", help="list the rows and how they would be batched")
    p.add_argument("--force", action="store_true", help="write into a folder another sweep file made, or over "
                   "tables this sweep did not make (rows are still reused only for the same inputs)")
    p.add_argument("--rerun-changed", action="store_true", help="rows made from other inputs (config, data, code) "
                   "or recording none: move them to <out>/replaced/ and run them again")
    p.add_argument("--allow-code-change", action="store_true", help="reuse rows that other pgolf_jax code made")
    p.add_argument("--accept-unkeyed", action="store_true", help="reuse rows that record no inputs (made before "
                   "sweep rows were keyed) as they are")
    return p


def sweep_command(argv: list[str]) -> int:
    args = _sweep_parser().parse_args(argv)
    sweep = load_sweep(args.file)  # every row's config is checked before anything runs
    shard = parse_shard(args.shard)
    from pgolf_jax.sweep import group, report, runner  # the training stack, once the file is known good

    if args.no_vmap and args.group_mode != "auto":
        raise ConfigError(f"--group-mode {args.group_mode} groups rows, and --no-vmap runs every row alone: pick one")
    out = Path(args.out) if args.out else runner.default_out(sweep)
    if args.dry_run:
        mode = group.resolve_mode(args.group_mode)
        for batch in (group.plan(sweep.shard(*shard)) if not args.no_vmap else [[r] for r in sweep.shard(*shard)]):
            print((f"one group ({mode}): " if len(batch) > 1 else "") + ", ".join(r.run_id for r in batch))
        return 0
    if args.report_only and not (out / "rows").is_dir():
        # A wrong --out must not get an empty table written over whatever results.md it holds.
        raise ConfigError(f"--report-only: {out} holds no rows/ folder: not a sweep folder (check --out)")
    runner.check_folder(sweep, out, args.force)  # another sweep's folder, or tables it did not make: refused
    if not args.report_only:
        reuse = runner.Reuse(args.rerun_changed, args.allow_code_change, args.accept_unkeyed)
        res = runner.run_sweep(sweep, out, shard, args.retry_failed, vmap=not args.no_vmap, group_mode=args.group_mode,
                               reuse=reuse, force=args.force)
        print(f"sweep:{sweep.name} ran:{res['ran']} skipped:{res['skipped']} failed:{res['failed']}")
    rep = report.write_report(sweep, out, "run.py sweep " + " ".join(argv))
    print(f"sweep:{sweep.name} rows:{len(rep['rows'])} results:{out / 'results.md'}")
    return 0
