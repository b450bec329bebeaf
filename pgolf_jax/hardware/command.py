"""`run.py compile`: compile a preset's programs for 1 and 8 H100s with XLA's real GPU compiler on
this machine (no GPU) and print, per program and device: compile seconds, memory (arguments,
outputs, aliased, temporaries, peak) against the budget a run gets, FLOPs per step (XLA's HLO
cost analysis, loops counted their trip counts, cuDNN attention added analytically) against the
analytic count, bytes accessed, collectives, and a roofline lower bound on the step time."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pgolf_jax import provenance
from pgolf_jax.errors import arg_parser, positive_int
from pgolf_jax.hardware import target

GIB = 1 << 30
EXIT_OVER_MEMORY = 4  # distinct from 3, the 16 MB artifact's "over size"
SECTION = "## Deviceless H100 compile of every preset (run.py compile --all)"


@dataclass
class Row:
    preset: str
    gpus: int
    program: str
    seconds: float = 0.0
    arg: float = 0.0
    out: float = 0.0
    alias: float = 0.0
    temp: float = 0.0
    peak: float = 0.0
    peak_reported: bool = False
    flops: float = 0.0
    analytic: float | None = None
    tokens: int = 0
    bytes_accessed: float = 0.0
    collectives: dict = field(default_factory=dict)
    unknown_trips: int = 0
    error: str = ""
    same_as: str = ""  # the earlier program of this preset whose lowered module this one repeats
    not_applicable: bool = False  # no program to build here: the batch does not split, or a run's input is missing

    def bound_ms(self) -> float:
        """Roofline lower bound: the larger of compute at peak and memory traffic at peak."""
        return 1e3 * max(self.flops / target.H100_PEAK_FLOPS, self.bytes_accessed / target.H100_PEAK_BYTES)


def gpu_counts(text: str) -> list[int]:
    """argparse type: '8' or '1,8'."""
    return [positive_int(v) for v in text.split(",")]


def parser():
    p = arg_parser()(prog="run.py compile", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="preset file, e.g. configs/baseline_sp1024.py")
    p.add_argument("--all", action="store_true",
                   help="every preset under configs/; writes the table into BENCHMARKS.md")
    p.add_argument("--gpus", type=gpu_counts, default=[1, 8], help="device counts, comma-separated (default: 1,8)")
    p.add_argument("--param-sharding", choices=("replicated", "fsdp"), help="sets train.param_sharding")
    p.add_argument("--target-config", help="a GpuTargetConfigProto text file (default: the H100 SXM shipped here)")
    p.add_argument("--benchmarks", default="BENCHMARKS.md", help="with --all: the file whose section is replaced")
    p.add_argument("--rows", help="a folder keeping each preset's rows, so a stopped run goes on where it was "
                                  "(--all: runs/compile_all unless given)")
    p.add_argument("--allow-code-change", action="store_true",
                   help="reuse kept rows that other pgolf_jax code compiled (--all's table names the versions)")
    p.add_argument("overrides", nargs="*", metavar="section.field=value")
    return p


def compile_program(prog, client, budget: float, full_square: bool = False, seen: dict | None = None) -> Row:
    """Lower and compile one program for the mesh its arguments name; measure it. full_square: the
    program's attention is XLA's own (model.attention_impl=xla), which computes the whole T x T.
    seen: {lowered module's digest: row} of the preset's earlier programs; a program that lowers to
    the same module (the periodic val and the final scoring at one shape) takes that row, not a compile."""
    from jax._src.lib import hlo as hlo_lib

    from pgolf_jax.hardware import hlo

    row = Row("", 0, prog.name, tokens=prog.tokens, analytic=prog.analytic_flops)
    t0 = time.perf_counter()
    try:
        lowered = prog.fn.lower(*prog.args)
        key = hashlib.sha256(lowered.as_text().encode()).hexdigest() if seen is not None else None
        if seen is not None and key in seen:
            return dataclasses.replace(seen[key], program=prog.name, seconds=0.0, same_as=seen[key].program)
        compiled = lowered.compile()
    except Exception as exc:  # XLA's GPU compiler refuses the program: one line naming why
        row.error = compile_error(exc)
        return row
    if seen is not None:
        seen[key] = row  # filled in below
    row.seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    row.arg, row.out = m.argument_size_in_bytes, m.output_size_in_bytes
    row.alias, row.temp = m.alias_size_in_bytes, m.temp_size_in_bytes
    peak = getattr(m, "peak_memory_in_bytes", 0)
    row.peak_reported = bool(peak)
    row.peak = peak or row.arg + row.out - row.alias + row.temp
    options = hlo_lib.HloPrintOptions()
    options.print_metadata = False
    text = compiled.runtime_executable().hlo_modules()[0].to_string(options)
    cost = hlo.cost(text, client)
    cudnn = any(t.startswith("__cudnn$fmha") for t in cost.custom_calls)
    row.flops = cost.flops + (prog.attention_flops if cudnn else 0.0)
    row.bytes_accessed, row.collectives, row.unknown_trips = cost.bytes_accessed, cost.collectives, \
        cost.unknown_trip_counts
    if full_square and not cudnn and prog.attention_flops and prog.analytic_flops is not None:
        # XLA's own attention computes the full T x T square: compare like with like. (The flash kernel,
        # taken for fp32, model.attention_impl=flash or document masks, runs only the causal blocks.)
        row.analytic = prog.analytic_flops + prog.attention_flops
    elif not cudnn and prog.backward and prog.attention_flops and prog.analytic_flops is not None:
        # The flash kernel's backward recomputes the scores (Q K^T) from Q and K: 7 attention matmuls where
        # the analytic forward + backward counts 6 (measured: record_1530/1855 train steps 1.035-1.064x).
        row.analytic = prog.analytic_flops + prog.attention_flops / 6
    return row


def compile_error(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    if "No FFI handler registered" in msg or "no FFI handler" in msg.lower():
        name = msg.split("for ")[-1].split(" on")[0] if "for " in msg else "?"
        return (f"the program calls a CPU-only FFI kernel on CUDA ({name}): XLA's GPU compiler refuses it "
                "(model.attention_impl=fused_cpu?)")
    return f"XLA's GPU compiler failed: {type(exc).__name__}: {msg[:300]}"


def compile_preset(cfg, preset: str, gpus: int, target_text: str, budget: float) -> list[Row]:
    import jax

    from pgolf_jax import dist
    from pgolf_jax.hardware import programs

    client = jax.devices("cpu")[0].client
    mesh = dist.make_mesh(target.devices(gpus, target_text))
    with target.traced_for_gpu(target_text):
        try:
            progs = programs.programs(cfg, mesh)
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            # not applicable: a batch that does not split over the GPUs, or an input only a run brings (the
            # distillation teacher's run directory, whose config gives the teacher's shapes)
            row = Row(preset, gpus, "-", error=f"{type(exc).__name__}: {' '.join(str(exc).split())}",
                      not_applicable=isinstance(exc, (programs.LayoutError, FileNotFoundError)))
            print(format_row(row, budget), flush=True)
            return [row]
        rows, seen = [], {}
        for prog in progs:
            row = compile_program(prog, client, budget, cfg.model.attention_impl == "xla", seen)
            row.preset, row.gpus = preset, gpus
            rows.append(row)
            print(format_row(row, budget), flush=True)
    return rows


def fmt_gib(b: float) -> str:
    return f"{b / GIB:.2f}"


def format_row(r: Row, budget: float) -> str:
    if r.error:
        what = "does not apply" if r.not_applicable else "error"
        return f"| {r.preset} | {r.gpus} | {r.program} | {what}: {r.error} |"
    per_tok = r.flops / r.tokens / 1e6 if r.tokens else 0.0
    if r.analytic is not None and r.tokens:
        ana = f"{r.analytic / r.tokens / 1e6:.1f} | {r.flops / r.analytic:.3f}"
    else:
        ana = "- | -"
    coll = ", ".join(f"{k} {v}" for k, v in sorted(r.collectives.items())) or "none"
    fits = "yes" if r.peak <= budget else "**no: over memory**"
    trips = f" ({r.unknown_trips} loops of unknown trip count counted once)" if r.unknown_trips else ""
    secs = f"= {r.same_as}" if r.same_as else f"{r.seconds:.1f}"
    return (f"| {r.preset} | {r.gpus} | {r.program} | {secs} | {fmt_gib(r.arg)} | {fmt_gib(r.out)} | "
            f"{fmt_gib(r.alias)} | {fmt_gib(r.temp)} | {fmt_gib(r.peak)}{'' if r.peak_reported else '*'} | {fits} | "
            f"{r.flops / 1e12:.2f} | {per_tok:.1f} | {ana} | {r.bytes_accessed / 1e9:.1f} | {coll} | "
            f"{r.bound_ms():.2f}{trips} |")


HEADER = ("| preset | GPUs | program | compile s | args GiB | out GiB | alias GiB | temp GiB | peak GiB | fits | "
          "TFLOP/step/dev (XLA) | MFLOP/token XLA | analytic | XLA/analytic | GB accessed | collectives (in HLO) | "
          "bound ms |\n" + "|---" * 17 + "|")


def compile_jobs(jobs, kept, text: str, budget: float) -> tuple[list[Row], set]:
    """Every (preset, config, GPU count) job's rows, kept ones reused, with progress and an ETA; and the
    source versions that made them (None: this code)."""
    pre = [kept.load(name, cfg, n) if kept else None for name, cfg, n in jobs]
    todo = sum(p is None for p in pre)
    rows, versions, t0, done = [], set(), time.perf_counter(), 0
    for i, ((name, cfg, n), got) in enumerate(zip(jobs, pre)):
        if got is None:
            got, version = compile_preset(cfg, name, n, text, budget), None
            done += 1
            if kept:
                kept.save(name, cfg, n, got)
        else:
            got, version = got
            for r in got:
                print(format_row(r, budget) + " (kept)", flush=True)
        versions.add(version)
        rows += got
        if len(jobs) > 1:
            eta = (time.perf_counter() - t0) / max(done, 1) * (todo - done)
            print(f"compile:progress {i + 1}/{len(jobs)} ({name} on {n}) eta:{eta / 60:.0f} min", flush=True)
    return rows, versions


def failures(rows: list[Row], all_presets: bool) -> list[Row]:
    """The rows that fail the command: every error, except, for --all, a preset whose batch does not split
    over that many GPUs (a CPU preset on 8; a run there refuses it too) or that needs a run's input (the
    distillation teacher): rows of the table."""
    return [r for r in rows if r.error and not (all_presets and r.not_applicable)]


class Kept:
    """`--all`'s rows, one JSON file per (preset, GPU count), keyed by what decides them: the resolved
    config, the GPU count, the target config, the budget and jax's version. pgolf_jax's source version
    is recorded: rows from other code are compiled again unless allow_code_change."""

    def __init__(self, folder: Path, target_text: str, budget: float, allow_code_change: bool):
        self.folder, self.target_text, self.budget, self.allow = folder, target_text, budget, allow_code_change

    def path(self, preset: str, cfg, gpus: int) -> Path:
        import jax

        from pgolf_jax import config as config_lib

        key = "\0".join([config_lib.to_json(cfg), str(gpus), self.target_text, repr(self.budget), jax.__version__])
        return self.folder / f"{preset.replace('/', '__')}-{gpus}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"

    def load(self, preset: str, cfg, gpus: int):
        """(rows, their source version), or None when none are kept for this key (or other code made them)."""
        try:
            data = json.loads(self.path(preset, cfg, gpus).read_text())
        except (OSError, ValueError):
            return None
        if data.get("source") != provenance.code_version() and not self.allow:
            return None
        if any(r["program"] == "-" for r in data["rows"]):  # no program was built: cheap to redo, never reused
            return None
        return [Row(**r) for r in data["rows"]], data.get("source")

    def save(self, preset: str, cfg, gpus: int, rows: list[Row]) -> str:
        from pgolf_jax.fsio import write_bytes

        version = provenance.code_version()
        self.folder.mkdir(parents=True, exist_ok=True)
        data = {"source": version, "rows": [dataclasses.asdict(r) for r in rows]}
        write_bytes(self.path(preset, cfg, gpus), json.dumps(data, indent=1).encode(), fsync=False)
        return version


def presets(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if not p.name.startswith("_"))


def legend(budget: float, why: str, target_path: str) -> str:
    return (f"Per device. Budget {budget / GIB:.2f} GiB = device memory x {why}. peak* = arguments + outputs - "
            f"aliased + temporaries (the plugin reports no peak). FLOPs: XLA's HLO cost analysis of the optimized "
            f"module, while loops times their trip counts, cuDNN attention (a custom call XLA does not count) "
            f"added as the analytic causal count; analytic = 6N matmul + causal attention per token (forward only "
            f"for eval programs; + 1/6 of the attention for the flash kernel's recomputation in gradient steps; "
            f"full T x T with model.attention_impl=xla). bound = max(FLOPs / 989 TFLOP/s, bytes / 3.35 TB/s): a "
            f"lower bound, not a "
            f"prediction. Target: {target_path}.")


def write_section(path: Path, body: str) -> None:
    from pgolf_jax.fsio import write_bytes

    text = path.read_text() if path.is_file() else ""
    if SECTION in text:
        head, rest = text.split(SECTION, 1)
        nxt = rest.find("\n## ")
        text = head + body + (rest[nxt:] if nxt >= 0 else "\n")
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    write_bytes(path, text.encode(), fsync=False)


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from pgolf_jax import config as config_lib

    if bool(args.all) == bool(args.config):
        raise ValueError("run.py compile: give --config PRESET or --all")
    target.require_cpu_platform()
    target.check_plugin()
    text, memory = target.read_target(args.target_config)
    fraction, why = target.memory_fraction()
    budget = memory * fraction
    overrides = list(args.overrides) + ([f"train.param_sharding={args.param_sharding}"] if args.param_sharding else [])
    paths = presets(Path("configs")) if args.all else [Path(args.config)]
    cfgs = [(p, config_lib.load(p, overrides)) for p in paths]  # every config checked before any compile
    import jax

    jax.config.update("jax_enable_compilation_cache", False)  # compile seconds are measured, never loaded
    print(f"compile: {memory / GIB:.2f} GiB per device x {why} = budget {budget / GIB:.2f} GiB", flush=True)
    print(HEADER, flush=True)
    jobs = [(str(p.with_suffix("")).removeprefix("configs/"), cfg, n) for p, cfg in cfgs for n in args.gpus]
    folder = args.rows or ("runs/compile_all" if args.all else None)
    kept = Kept(Path(folder), text, budget, args.allow_code_change) if folder else None
    rows, versions = compile_jobs(jobs, kept, text, budget)
    over = [r for r in rows if not r.error and r.peak > budget]
    if args.all:
        for r in over:
            print(f"over memory: {r.preset} on {r.gpus} H100s, {r.program}: peak {int(r.peak)} bytes "
                  f"({r.peak / GIB:.2f} GiB) > {int(budget)} bytes")
        date = datetime.date.today().isoformat()
        cmd = "JAX_PLATFORMS=cpu python run.py compile " + " ".join(shlex.quote(a) for a in argv)
        where = args.target_config or f"pgolf_jax/hardware/{target.DEFAULT_TARGET.name}"  # picked by jax version
        code = ", ".join(sorted({v or provenance.code_version() for v in versions}))
        body = (f"{SECTION}\n\n{date}, jax {jax.__version__}, pgolf_jax source {code}, on a CPU-only machine: "
                f"`{cmd}`\n\n"
                f"{legend(budget, why, where)}\n\n{HEADER}\n"
                + "\n".join(format_row(r, budget) for r in rows) + "\n")
        write_section(Path(args.benchmarks), body)
        print(f"wrote {args.benchmarks}")
    failed = failures(rows, args.all)
    if failed:
        print(f"error: {failed[0].preset} on {failed[0].gpus} H100s, {failed[0].program}: {failed[0].error}",
              file=sys.stderr)
        return 1
    if over and not args.all:
        r = over[0]
        print(f"error: over memory: {r.preset} on {r.gpus} H100s, {r.program}: peak {int(r.peak)} bytes per device "
              f"> budget {int(budget)} bytes", file=sys.stderr)
        return EXIT_OVER_MEMORY
    return 0
