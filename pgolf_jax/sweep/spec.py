"""Sweep files: a Python file like a preset that names a grid of runs.

    BASE = "../configs/cpu.py"            # a preset, relative to the sweep file
    OVERRIDES = {"train.iterations": 200}  # every row: the budget (steps or wall-clock) goes here
    VARIANTS = {                           # name -> dotted overrides, or a preset path
        "baseline": {},
        "mla64": {"model.attention": "mla", "model.mla.latent_dim": 64},
    }
    SEEDS = [1337]                         # every variant runs once per seed
    CONTROL = "baseline"                   # optional (default: the first variant)
    CONTROL_SEEDS = [1337, 1, 2]           # optional: more seeds for the control, to measure noise
    REFERENCE = {"baseline": 1.3094, "mla64": 1.3362}   # optional: the seed's own numbers
    REFERENCE_NOTE = "#1589, 1xH100, 600 s"             # optional: where they come from
    COMPARE = {"distilled": "student"}     # optional: a variant's own control (default CONTROL)

A row's config is the BASE preset (or the variant's own preset), then OVERRIDES, then the
variant's overrides, then train.seed. A variant may not change a key OVERRIDES sets: that is the
budget every row shares, and a fair comparison depends on it. Everything is checked (each row's
config built and validated) before any run starts.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from pathlib import Path

from pgolf_jax import config as config_lib
from pgolf_jax.config import Config, ConfigError
from pgolf_jax.options import in_range

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclasses.dataclass(frozen=True)
class Row:
    """One (variant, seed) of a sweep: its run id, resolved config and the preset that builds it."""
    index: int
    variant: str
    seed: int
    cfg: Config
    base: Path  # the preset the row's overrides apply to
    overrides: dict

    @property
    def run_id(self) -> str:
        return f"{self.variant}-s{self.seed}"


@dataclasses.dataclass(frozen=True)
class Sweep:
    path: Path
    name: str
    doc: str
    base: Path
    overrides: dict
    variants: dict  # name -> dict of overrides or a preset Path
    seeds: tuple[int, ...]
    control: str
    control_seeds: tuple[int, ...]
    reference: dict
    reference_note: str
    compare: dict  # variant -> the variant it is compared with (CONTROL unless COMPARE says)
    rows: tuple[Row, ...]

    def shard(self, index: int, count: int) -> list[Row]:
        """Rows index, index + count, ... of the file's order: N shards partition the rows exactly."""
        return [r for r in self.rows if r.index % count == index]


def _duplicate_keys(tree: ast.Module, name: str) -> list[str]:
    """Keys written twice in the dict literal assigned to `name` (Python would keep only the last)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            if isinstance(node.value, ast.Dict):
                keys = [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
                return sorted({k for k in keys if keys.count(k) > 1})
    return []


# Every seed becomes a row's train.seed: the train section's own range for it, checked here so that
# a bad seed is named as SEEDS' entry before any row is built or run.
SEED_RULE = config_lib.TrainConfig.RANGES["seed"]


def _seeds(value, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{where} must be a non-empty list of integer seeds, got {value!r}")
    for s in value:
        if not isinstance(s, int) or isinstance(s, bool):
            raise ConfigError(f"{where}: {s!r} is not an integer seed ({type(s).__name__})")
        if not in_range(s, SEED_RULE):
            raise ConfigError(f"{where}: seed {s} is out of range: a seed (train.seed) must be in {SEED_RULE}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where} lists a seed twice: {list(value)}")
    return tuple(value)


def _reference(value, variants: dict, where: str) -> dict:
    """REFERENCE: {variant: the seed's val_bpb}; report.py subtracts and prints these, so each is a
    finite positive number (None: no number for that variant)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a dict {{variant: the seed's val_bpb}}, got {type(value).__name__}")
    for k, v in value.items():
        if k not in variants:
            raise ConfigError(f"{where}: {k!r} is not one of the VARIANTS ({', '.join(map(str, variants))})")
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"{where}[{k!r}] = {v!r}: expected a finite positive number (the seed's val_bpb)")
    return dict(value)


def load_sweep(path: str | Path) -> Sweep:
    """Parse and check a sweep file; every row's config is built (and so validated) here."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise ConfigError(f"{path}: not valid Python ({exc.msg}, line {exc.lineno})") from None
    dup = _duplicate_keys(tree, "VARIANTS")
    if dup:
        raise ConfigError(f"{path}: VARIANTS names {', '.join(map(repr, dup))} more than once")
    module = config_lib._exec_preset(path)
    get = lambda k, default=None: getattr(module, k, default)  # noqa: E731
    base, variants = get("BASE"), get("VARIANTS")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: BASE must name a preset file (relative to the sweep file)")
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{path}: VARIANTS must be a non-empty dict "
                          f"{{name: {{'section.field': value}} or 'preset.py'}}")
    overrides = get("OVERRIDES", {})
    if not isinstance(overrides, dict):
        raise ConfigError(f"{path}: OVERRIDES must be a dict of 'section.field': value")
    seeds = _seeds(get("SEEDS", [1337]), f"{path}: SEEDS")
    control = get("CONTROL", next(iter(variants)))
    if control not in variants:
        raise ConfigError(f"{path}: CONTROL={control!r} is not one of the VARIANTS ({', '.join(variants)})")
    control_seeds = _seeds(get("CONTROL_SEEDS", list(seeds)), f"{path}: CONTROL_SEEDS")
    if not set(seeds) <= set(control_seeds):
        raise ConfigError(f"{path}: CONTROL_SEEDS must include every one of SEEDS {list(seeds)}")
    reference = _reference(get("REFERENCE", {}), variants, f"{path}: REFERENCE")
    compare = get("COMPARE", {})
    if not isinstance(compare, dict) or any(k not in variants or v not in variants for k, v in compare.items()):
        raise ConfigError(f"{path}: COMPARE must map variant names to variant names")
    base_path = (path.parent / base).resolve()
    resolved, rows = {}, []
    for name, spec in variants.items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ConfigError(f"{path}: variant name {name!r}: use letters, digits, '.', '_' and '-' (it names a run)")
        where = f"{path}: variant {name!r}"
        if isinstance(spec, str):
            preset, extra = (path.parent / spec).resolve(), {}
        elif isinstance(spec, dict):
            preset, extra = base_path, dict(spec)
            clash = sorted(set(extra) & set(overrides))
            if clash:
                raise ConfigError(f"{where} changes {', '.join(clash)}, which OVERRIDES sets for every row "
                                  "(the shared budget); move it out of OVERRIDES to vary it")
            if "train.seed" in extra:
                raise ConfigError(f"{where}: seeds come from SEEDS, not train.seed")
        else:
            raise ConfigError(f"{where}: expected a dict of overrides or a preset path, got {type(spec).__name__}")
        resolved[name] = spec if isinstance(spec, dict) else preset
        for seed in (control_seeds if name == control else seeds):
            try:
                # OVERRIDES, then the variant: options OVERRIDES set for a variant the row deselects
                # are dropped with it (the row's recorded overrides too), as a preset's BASE would be.
                cfg = config_lib.override(config_lib.load(preset, overrides), {**extra, "train.seed": seed})
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            row_over = {k: v for k, v in {**overrides, **extra, "train.seed": seed}.items()
                        if config_lib.applies(cfg, k)}
            rows.append(Row(len(rows), name, seed, cfg, preset, row_over))
    return Sweep(path, path.stem, (ast.get_docstring(tree) or "").strip(), base_path, dict(overrides), resolved,
                 seeds, control, control_seeds, reference, str(get("REFERENCE_NOTE", "")),
                 {v: compare.get(v, control) for v in variants}, tuple(rows))


def parse_shard(text: str | None) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    if not text:
        return 0, 1
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise ConfigError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/2")
    return int(m[1]), int(m[2])
