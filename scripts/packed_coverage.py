"""Which lines of a packed train_gpt.py's code one run executes, and what the file would weigh
without the rest: the floor of the packed-size work (BENCHMARKS.md, 2026-12-06 session 12).

    python scripts/packed_coverage.py --config configs/record_1809.py --platform gpu [--top 40] \
        section.field=value ...   # shapes and the data paths (data.data_path=..., data.tokenizer_path=...)

Packs the preset with the overrides, writes the packed modules as plain files to a temp folder,
runs the packed entry (cli.packed_main on the embedded config, in a subprocess with
JAX_PLATFORMS=cpu and PGOLF_NO_NATIVE_KERNELS=1, as the clean-dir test runs a GPU file) under a
line tracer, then prints the compressed payload as it is, without the statements that never ran
but the error paths (a `raise`, an `if` branch that raises, an `except` handler), and without
any statement that never ran; then the largest never-run blocks that are not error paths. The
file adds the stub, the checksum line and base 253 to a payload (~0.8 KB). A short tiny run leaves
some code unexecuted that a full GPU run reaches (cuDNN, warm-up, progress lines).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgolf_jax import config as config_lib  # noqa: E402
from pgolf_jax.packing import file, select  # noqa: E402

BODIES = ("body", "orelse", "finalbody")
# The traced run: argv = tree folder, the packed file; writes <tree>/lines.json {relative path: [line, ...]}.
TRACER = r"""
import collections, json, sys, threading
tree, packed = sys.argv[1], sys.argv[2]
sys.path.insert(0, tree)
hits = collections.defaultdict(set)
def local(frame, event, arg):
    if event == "line":
        hits[frame.f_code.co_filename].add(frame.f_lineno)
    return local
def call(frame, event, arg):
    if not frame.f_code.co_filename.startswith(tree):
        return None
    hits[frame.f_code.co_filename].add(frame.f_lineno)
    return local
sys.settrace(call)
threading.settrace(call)
import pgolf_jax
pgolf_jax.__packed__ = packed
from pgolf_jax.cli import packed_main
try:
    code = packed_main(["train.run_id=coverage"], json.load(open(tree + "/config.json")))
finally:
    sys.settrace(None)
    json.dump({k[len(tree) + 1:]: sorted(v) for k, v in hits.items()}, open(tree + "/lines.json", "w"))
sys.exit(code)
"""


def write_tree(cfg, platform: str, tree: Path) -> tuple[dict[str, bytes], dict]:
    """The packed file's modules as plain files under tree, its config.json and train_gpt.py."""
    data, files = select.pack_config(cfg, platform)
    embedded = select.without_defaults(file.run_config(config_lib.to_dict(cfg)))
    for rel, body in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(body)
    (tree / "config.json").write_text(json.dumps(embedded))
    (tree / "train_gpt.py").write_bytes(data)
    return files, embedded


def trace(tree: Path) -> dict[str, set[int]]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PGOLF_NO_NATIVE_KERNELS": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", TRACER, str(tree), str(tree / "train_gpt.py")], cwd=tree, env=env)
    if proc.returncode:
        sys.exit(f"error: the traced run exited {proc.returncode}")
    return {k: set(v) for k, v in json.loads((tree / "lines.json").read_text()).items()}


def _raises(stmts: list) -> bool:
    return bool(stmts) and (isinstance(stmts[-1], ast.Raise) or isinstance(stmts[0], ast.Raise))


def never_ran(tree: ast.Module, hit: set[int]) -> list[tuple[ast.AST, bool]]:
    """(node, is an error path) of each maximal statement (or except handler) that never ran."""
    out = []

    def visit(stmts, err):
        for s in stmts:
            if isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant):
                continue  # a docstring: never a traced line, and minification drops it
            if s.lineno not in hit and not isinstance(s, (ast.Import, ast.ImportFrom)):
                out.append((s, err or isinstance(s, ast.Raise)))
                continue
            for f in BODIES:
                sub = getattr(s, f, None)
                if isinstance(sub, list) and sub and isinstance(sub[0], ast.stmt):
                    visit(sub, err or (isinstance(s, ast.If) and f != "finalbody" and _raises(sub)))
            for h in getattr(s, "handlers", []):
                if h.body[0].lineno not in hit:
                    out.append((h, True))
                else:
                    visit(h.body, err)

    visit(tree.body, False)
    return out


def without(text: str, hit: set[int], keep_errors: bool) -> str:
    """text less what never ran (error paths too unless keep_errors), as Python that still parses."""
    tree = ast.parse(text)
    drop = {id(n) for n, err in never_ran(tree, hit) if not (keep_errors and err)}

    class Cut(ast.NodeTransformer):
        def generic_visit(self, node):
            super().generic_visit(node)
            for f in BODIES:
                sub = getattr(node, f, None)
                if isinstance(sub, list) and sub and isinstance(sub[0], ast.stmt):
                    kept = [s for s in sub if id(s) not in drop]
                    if len(kept) != len(sub):
                        setattr(node, f, kept or ([ast.Pass()] if f == "body" else []))
            if isinstance(node, ast.Try):
                node.handlers = [h for h in node.handlers if id(h) not in drop]
                if not node.handlers and not node.finalbody:
                    node.finalbody = [ast.Pass()]
            return node

    return ast.unparse(ast.fix_missing_locations(Cut().visit(tree)))


def payload(files: dict[str, bytes], embedded: dict, lines: dict[str, set[int]], keep_errors: bool | None) -> int:
    """Compressed payload bytes: as packed (keep_errors None), or without what never ran."""
    cut = {rel: without(raw.decode(), lines.get(rel, set()), keep_errors).encode()
           if keep_errors is not None and rel.endswith(".py") else raw for rel, raw in files.items()}
    return len(file.compress(file.payload(cut, embedded)))  # as packing/file.py builds it (minified, renamed)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--platform", choices=select.PLATFORMS, default="gpu")
    p.add_argument("--top", type=int, default=30, help="never-run blocks to list (not error paths)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    try:
        cfg = config_lib.load(args.config, args.overrides)
    except config_lib.ConfigError as exc:
        sys.exit(f"error: config: {exc}")
    with tempfile.TemporaryDirectory(prefix="packed-coverage-") as tmp:
        tree = Path(tmp)
        files, embedded = write_tree(cfg, args.platform, tree)
        size = (tree / "train_gpt.py").stat().st_size
        lines = trace(tree)
        full, errors_kept, bare = (payload(files, embedded, lines, k) for k in (None, True, False))
        print(f"coverage: train_gpt.py {size:,} bytes, payload {full:,} compressed (the rest: {size - full:,})")
        print(f"coverage: without what never ran but the error paths: payload {errors_kept:,}, "
              f"file ~{errors_kept + size - full:,}")
        print(f"coverage: without anything that never ran: payload {bare:,}, file ~{bare + size - full:,}")
        rows = []
        for rel, raw in files.items():
            if rel.endswith(".py"):
                text = raw.decode()
                for node, err in never_ran(ast.parse(text), lines.get(rel, set())):
                    if not err:
                        src = ast.get_source_segment(text, node) or ""
                        rows.append((len(src), rel, node.lineno, src.splitlines()[0][:90] if src else ""))
        for n, rel, line, head in sorted(rows, reverse=True)[:args.top]:
            print(f"coverage:never_ran {rel}:{line} chars:{n} {head}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
