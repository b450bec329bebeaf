"""Typed, frozen run configuration: the sections, presets and `section.field=value` overrides.

Field names are the reference's hyperparameter names (train_gpt.py env vars) in lower case and
every default is the reference's, so the bare `Config()` is the 9L x 512 sp1024 baseline. A variant
with options (registry.Variant) keeps them in its own options class, set as
`section.variant.field` (e.g. model.mla.latent_dim) and only while the variant is selected; a
section reads them as attributes (`cfg.model.mla.latent_dim`). Presets in configs/ hold only
overrides. Each section is defined by the stage that reads it (<stage>/options.py, JAX-free):
validating imports no JAX.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import os
import types
from dataclasses import dataclass, field
from pathlib import Path

from pgolf_jax import registry
from pgolf_jax.data.options import DataConfig
from pgolf_jax.errors import ConfigError
from pgolf_jax.evaluation.options import EvalConfig
from pgolf_jax.fsio import read_json
from pgolf_jax.model.options import ModelConfig, layer_mixers
from pgolf_jax.optim.options import OptimConfig
from pgolf_jax.options import SEED_RANGE, check_options, coerce, field_types
from pgolf_jax.quant.options import QuantConfig
from pgolf_jax.train.options import TrainConfig

__all__ = ["ConfigError", "Config", "SEED_RANGE", "DataConfig", "ModelConfig", "OptimConfig", "TrainConfig",
           "EvalConfig", "QuantConfig", "layer_mixers"]

# Names routed to the scalar optimizer group (and kept fp32 by the reference int8 export) whatever
# their shape: the baseline's list plus the record stacks' skip gates (#1493) and smear gates (03-22).
CONTROL_TENSOR_NAME_PATTERNS = (
    "attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes",
    "q_gain", "skip_weight", "skip_weights", "skip_gates", "smear",
)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)

    def __post_init__(self):
        validate(self)


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))
SECTION_CLASSES = {f.name: f.default_factory for f in dataclasses.fields(Config)}



def registry_choices(key: str) -> list[str]:
    """The values a registry-backed field accepts."""
    return [""] * (key in registry.OPTIONAL_FIELDS) + list(registry.FIELDS[key])


def validate(cfg: Config) -> None:
    """Field ranges, registry keys, each selected variant's options and the checks that span
    sections: all before any data is read or any file written."""
    for key in registry.FIELDS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if key in registry.LIST_FIELDS:
            if key == "model.mixers":
                layer_mixers(cfg.model)
            bad = [n for n in registry.names(key, value) if n not in registry.FIELDS[key]]
            if bad:
                raise ConfigError(f"{key}={value!r}: {bad[0]!r} is not registered; "
                                  f"choose from {', '.join(registry.FIELDS[key])}")
        elif value not in registry_choices(key):
            raise ConfigError(f"{key}={value!r} is not registered; choose from {', '.join(registry_choices(key))}")
    for name in SECTIONS:
        sec = getattr(cfg, name)
        sec.check(cfg)
        chosen = sec.selected()
        for variant, _ in sec.options:
            if variant not in chosen:
                raise ConfigError(f"{name}.{variant}.* is set but no {name} field selects {variant}")
        for variant in sorted(chosen & set(registry.option_names(name))):
            check_options(f"{name}.{variant}", getattr(sec, variant), cfg)


# ---------------------------------------------------------------------------------------------
# Overrides

def renames() -> dict:
    """Old key -> its new keys (registry.TOOLING; {} in a packed file)."""
    return registry.resolve(registry.TOOLING, "renames") if "renames" in registry.TOOLING else {}


def _unknown(key: str) -> ConfigError:
    moved = registry.resolve(registry.TOOLING, "renamed")(key) if "renamed" in registry.TOOLING else ""
    if moved:
        return ConfigError(moved)
    hint = difflib.get_close_matches(key, all_keys(), n=1)
    return ConfigError(f"unknown config key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def _parse(items) -> dict:
    if isinstance(items, dict):
        return items
    parsed = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.field=value")
        key, value = item.split("=", 1)
        parsed[key.strip()] = value
    return parsed


def override(cfg: Config, items: dict | list[str] | tuple[str, ...], lenient: bool = False) -> Config:
    """Apply overrides (a dict, or CLI strings): `section.field=value`, or `section.variant.field=value`
    for a variant's options. A variant's options may be set only where the result selects it;
    options inherited from the config being overridden are dropped with their variant (lenient:
    set ones too, for old run directories whose config.json lists every variant's fields)."""
    fields = {s: {} for s in SECTIONS}
    opts = {s: dict(getattr(cfg, s).options) for s in SECTIONS}
    mentioned = set()
    for key, value in _parse(items).items():
        parts = key.split(".")
        if len(parts) not in (2, 3) or parts[0] not in SECTIONS:
            raise _unknown(key)
        section, name = parts[0], parts[1]
        if len(parts) == 2:
            types_ = field_types(SECTION_CLASSES[section])
            if name not in types_ or name == "options":
                raise _unknown(key)
            fields[section][name] = coerce(key, value, types_[name])
            continue
        path = registry.options_path(section, name)
        cls = registry.load(path) if path else None
        if cls is None or parts[2] not in field_types(cls):
            raise _unknown(key)
        current = opts[section].get(name) or cls()  # (the result may select it; cfg need not)
        opts[section][name] = dataclasses.replace(current, **{parts[2]: coerce(key, value, field_types(cls)[parts[2]])})
        mentioned.add((section, name))
    sections = {}
    for s in SECTIONS:
        sec = dataclasses.replace(getattr(cfg, s), **fields[s])
        chosen = sec.selected()
        for name in [n for n in opts[s] if n not in chosen]:
            if (s, name) in mentioned and not lenient:
                raise ConfigError(f"{s}.{name}.* is set but {s}.{_axis_of(s, name)} does not select {name}: "
                                  f"select it, or drop these options")
            del opts[s][name]
        # Only options that differ from their defaults are kept: equal configs compare equal.
        kept = {n: o for n, o in opts[s].items() if o != type(o)()}
        sections[s] = dataclasses.replace(sec, options=tuple(sorted(kept.items())))
    return Config(**sections)


def applies(cfg: Config, key: str) -> bool:
    """False for a variant option (`section.variant.field`) whose variant cfg does not select."""
    parts = key.split(".")
    return len(parts) != 3 or parts[1] in getattr(cfg, parts[0]).selected()


def _axis_of(section: str, name: str) -> str:
    """The field whose registry holds `name` (for messages)."""
    return next(k.split(".")[1] for k, reg in registry.FIELDS.items() if k.startswith(section + ".") and name in reg)


def all_keys() -> list[str]:
    """Every settable key, variants' options included."""
    keys = [f"{s}.{f}" for s in SECTIONS for f in field_types(SECTION_CLASSES[s]) if f != "options"]
    for s in SECTIONS:
        for name, path in registry.option_names(s).items():
            keys += [f"{s}.{name}.{f}" for f in field_types(registry.load(path))]
    return keys


# ---------------------------------------------------------------------------------------------
# Presets

def load(path: str | Path, overrides: list[str] | dict | None = None) -> Config:
    """Build a Config from a preset file (its BASE chain, then OVERRIDES) plus CLI overrides."""
    cfg = _load_preset(Path(path), seen=())
    return override(cfg, overrides) if overrides else cfg


def _load_preset(path: Path, seen: tuple) -> Config:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"config BASE cycle through {path}")
    module = _exec_preset(path)
    overrides = getattr(module, "OVERRIDES", None)
    if not isinstance(overrides, dict):
        raise ConfigError(f"{path}: a preset must define OVERRIDES = {{'section.field': value, ...}}")
    if not all(isinstance(k, str) for k in overrides):
        bad = next(k for k in overrides if not isinstance(k, str))
        raise ConfigError(f"{path}: OVERRIDES key {bad!r} is not a 'section.field' string")
    base = getattr(module, "BASE", None)
    if base is not None and not (isinstance(base, (str, os.PathLike)) and str(base)):
        raise ConfigError(f"{path}: BASE = {base!r} must be the path of another preset file (a string), "
                          "relative to this one")
    cfg = _load_preset(path.parent / base, seen + (path.resolve(),)) if base else Config()
    try:
        return override(cfg, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _exec_preset(path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"pgolf_preset_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a preset is user code: report which file broke
        raise ConfigError(f"{path}: failed to load preset: {type(exc).__name__}: {exc}") from exc
    return module


def to_dict(cfg: Config) -> dict:
    """Sections as dicts; each selected variant's options as a nested dict under its name."""
    out = {}
    for s in SECTIONS:
        sec = getattr(cfg, s)
        out[s] = {f.name: getattr(sec, f.name) for f in dataclasses.fields(sec) if f.name != "options"}
        for name in sorted(sec.selected() & set(registry.option_names(s))):
            out[s][name] = dataclasses.asdict(getattr(sec, name))
    return out


def _flatten(d: dict) -> dict:
    """{"section.field": value, "section.variant.field": value} of a to_dict-shaped dict."""
    flat = {}
    for s, sec in (d or {}).items():
        if not isinstance(sec, dict):
            raise ConfigError(f"section {s!r} is not an object")
        for k, v in sec.items():
            flat.update({f"{s}.{k}.{kk}": vv for kk, vv in v.items()} if isinstance(v, dict) else {f"{s}.{k}": v})
    return flat


def flat_dict(cfg: Config) -> dict:
    return _flatten(to_dict(cfg))


# What a packed train_gpt.py's command line may set: where and as which process it runs, its seed and
# its name, never what it trains. Its config was validated when it was packed; with only these keys
# open, the file needs none of the validation code (packing/select.py cuts it), and a record's
# file reruns the record.
PLACE_KEYS = ("train.seed", "train.run_id", "train.out_dir", "train.progress", "data.data_path",
              "data.tokenizer_path", "train.distributed", "train.coordinator_address", "train.num_processes",
              "train.process_id")


def packed_line() -> str:
    """What a packed train_gpt.py's command line refuses with: it takes only PLACE_KEYS."""
    return f"this train_gpt.py trains the config packed in it and takes only {', '.join(PLACE_KEYS)}"


def place_override(cfg: Config, items) -> Config:
    """override() for a packed train_gpt.py: PLACE_KEYS only, each checked as validate() checks it."""
    changes = _parse(items)
    for key in changes:
        if key not in PLACE_KEYS:
            raise ConfigError(f"{key}: {packed_line()} (for another {key}: python run.py pack --config PRESET "
                              f"{key}=...)")
    out = override(cfg, changes)
    out.train.check_place()
    return out


def from_dict(d: dict, renames: dict | None = None) -> Config:
    """Inverse of to_dict; renames (old key -> new keys) loads a config.json written before keys
    moved; unknown keys are errors. Only the result is checked: a packed train_gpt.py registers
    only the entries its config selects, which need not include the defaults'."""
    flat = _flatten(d)
    for old in [k for k in flat if k in (renames or {})]:
        value = flat.pop(old)
        for new in renames[old]:
            flat.setdefault(new, value)
    defaults = object.__new__(Config)  # the default sections, not validated on their own
    for f in dataclasses.fields(Config):
        object.__setattr__(defaults, f.name, f.default_factory())
    return override(defaults, flat, lenient=True)


def to_json(cfg: Config) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=False)


def load_run_config(run_dir) -> Config:
    """A run directory's config.json as a Config; every error names the file."""
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory {run_dir} not found")
    data = read_json(path, f"is {run_dir} a run directory?")
    try:
        if not isinstance(data, dict):
            raise ConfigError("expected a JSON object of config sections")
        return from_dict(data, renames())
    except (ConfigError, AttributeError, TypeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
