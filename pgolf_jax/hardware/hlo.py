"""What an optimized (post-compile) HLO module does per step: FLOPs and bytes from XLA's HLO cost
analysis with every while loop counted its known trip count of times (the analysis itself counts
a loop body once: scanned layers and micro-steps would be 10x undercounted), custom calls (cuDNN
attention, which the analysis counts as nothing) listed for the caller to add, and collectives
by kind."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

COLLECTIVES = ("all-reduce", "reduce-scatter", "all-gather", "collective-permute", "all-to-all")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5}
_INSTR = re.compile(r"^\s+(?:ROOT )?%([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$")
_HEADER = re.compile(r"^(ENTRY )?%([\w.\-]+) \(.*\{$")
_ARRAY = re.compile(r"\b([a-z]\w*)\[([\d,]*)\]")
_CALLEES = re.compile(r"\b(?:calls|to_apply|condition|body|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
# Attributes the GPU compiler prints that the HLO parser of the same jaxlib refuses on some instructions (0.11.2
# and 0.12: output_to_operand_aliasing on all-reduce-start); the cost analysis does not read them.
_UNPARSED = re.compile(r", output_to_operand_aliasing=\{(?:[^{}]|\{[^{}]*\})*\}")


def shape_bytes(shape: str) -> float:
    """Bytes of an HLO shape (a tuple's elements summed; layouts ignored)."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape):
        size = _DTYPE_BYTES.get(dtype, 1 if dtype.startswith("f8") else 0)
        total += size * math.prod(int(d) for d in dims.split(",") if d)
    return total


@dataclass
class Computation:
    name: str
    lines: list[str] = field(default_factory=list)
    whiles: list[tuple[str, int | None]] = field(default_factory=list)  # (body, trip count or None)
    callees: list[str] = field(default_factory=list)
    custom_calls: dict[str, list[float]] = field(default_factory=dict)  # target -> [count, operand+output bytes]
    collectives: dict[str, int] = field(default_factory=dict)


def parse(text: str) -> tuple[str, dict[str, Computation]]:
    """(entry name, computations by name) of an HLO module's text."""
    comps, entry, cur, shapes = {}, None, None, {}
    for line in text.splitlines():
        if cur is None:
            m = _HEADER.match(line)
            if m:
                cur, shapes = Computation(m.group(2)), {}
                comps[cur.name] = cur
                entry = cur.name if m.group(1) else entry
            continue
        if line.startswith("}"):
            cur = None
            continue
        cur.lines.append(line)
        m = _INSTR.match(line)
        if not m:
            continue
        name, shape, op, rest = m.groups()
        shapes[name] = shape
        if op == "while":
            body = re.search(r"\bbody=%([\w.\-]+)", rest).group(1)
            trip = _TRIP.search(rest)
            cur.whiles.append((body, int(trip.group(1)) if trip else None))
        callees = [c for c in _CALLEES.findall(rest) if not (op == "while" and f"body=%{c}" in rest)]
        for b in _BRANCHES.findall(rest):
            callees += [c.strip().lstrip("%") for c in b.split(",")]
        cur.callees += callees
        kind = op.removesuffix("-start")
        if kind in COLLECTIVES:
            cur.collectives[kind] = cur.collectives.get(kind, 0) + 1
        if op == "custom-call":
            target = re.search(r'custom_call_target="([^"]+)"', rest).group(1)
            operands = re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])
            nbytes = shape_bytes(shape) + sum(shape_bytes(shapes.get(o, "")) for o in operands)
            entry_ = cur.custom_calls.setdefault(target, [0, 0.0])
            entry_[0] += 1
            entry_[1] += nbytes
    return entry, comps


@dataclass
class Cost:
    flops: float
    bytes_accessed: float
    custom_calls: dict[str, list[float]]  # target -> [calls per step, operand+output bytes per step]
    collectives: dict[str, int]  # kind -> instructions in the module (not times executed)
    unknown_trip_counts: int


def cost(text: str, client) -> Cost:
    """Per-step cost of an optimized module: XLA's HLO cost analysis (on `client`'s analysis; a CPU
    client reads a GPU module fine) of the entry, with each while body scaled by its trip count."""
    from jax._src.lib import _jax
    from jax._src.lib import hlo as hlo_lib

    entry, comps = parse(text)
    blocks = _blocks(text)
    memo_c: dict[str, tuple[float, float]] = {}

    def analyse(name: str) -> tuple[float, float]:
        if name not in memo_c:
            body = _UNPARSED.sub("", "\n".join(("ENTRY " if n == name else "") + b for n, b in blocks.items()))
            props = _jax.hlo_module_cost_analysis(client, hlo_lib.hlo_module_from_text(f"HloModule sub\n\n{body}"))
            memo_c[name] = (float(props.get("flops", 0.0)), float(props.get("bytes accessed", 0.0)))
        return memo_c[name]

    loops: dict[str, bool] = {}

    def has_loop(name: str) -> bool:
        if name not in loops:
            loops[name] = False  # no recursion in HLO; guards a malformed module
            c = comps.get(name)
            loops[name] = bool(c and (c.whiles or any(has_loop(x) for x in c.callees)))
        return loops[name]

    unknown = [0]
    memo_t: dict[str, tuple[float, float]] = {}

    def total(name: str) -> tuple[float, float]:
        """(flops, bytes) with loops counted their trip counts."""
        if name in memo_t:
            return memo_t[name]
        f, b = analyse(name)
        c = comps[name]
        for body, trip in c.whiles:
            unknown[0] += trip is None
            n = trip or 1
            tf, tb = total(body)
            cf, cb = analyse(body)
            f, b = f + n * tf - cf, b + n * tb - cb
        for x in set(c.callees):
            if has_loop(x):
                tf, tb = total(x)
                cf, cb = analyse(x)
                f, b = f + tf - cf, b + tb - cb
        memo_t[name] = (f, b)
        return f, b

    flops, nbytes = total(entry)
    calls: dict[str, list[float]] = {}
    collectives: dict[str, int] = {}
    for name, mult in _multiplicities(entry, comps).items():
        for target, (n, by) in comps[name].custom_calls.items():
            acc = calls.setdefault(target, [0, 0.0])
            acc[0] += mult * n
            acc[1] += mult * by
    for c in comps.values():
        for kind, n in c.collectives.items():
            collectives[kind] = collectives.get(kind, 0) + n
    # The analysis counts each custom call as -1 FLOP and -1 byte: undo that, add their operand bytes.
    n_calls = sum(v[0] for v in calls.values())
    return Cost(flops + n_calls, nbytes + n_calls + sum(v[1] for v in calls.values()), calls, collectives,
                unknown[0])


def _blocks(text: str) -> dict[str, str]:
    """Each computation's full text (header to closing brace), the header without ENTRY."""
    blocks, cur, lines = {}, None, []
    for line in text.splitlines():
        if cur is None:
            m = _HEADER.match(line)
            if m:
                cur, lines = m.group(2), [line.removeprefix("ENTRY ")]
            continue
        lines.append(line)
        if line.startswith("}"):
            blocks[cur] = "\n".join(lines)
            cur = None
    return blocks


def _multiplicities(entry: str, comps: dict[str, Computation]) -> dict[str, int]:
    """How many times per step each computation reachable from the entry runs (fusions and
    other called computations as often as their caller; loop bodies times their trip count)."""
    mult: dict[str, int] = {}

    def visit(name: str, m: int):
        if name not in comps:
            return
        mult[name] = mult.get(name, 0) + m
        c = comps[name]
        for body, trip in c.whiles:
            visit(body, m * (trip or 1))
        for x in c.callees:
            visit(x, m)

    visit(entry, 1)
    return mult
