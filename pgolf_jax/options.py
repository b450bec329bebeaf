"""What every variant's options class shares: range rules, value coercion and the check a config
runs on the options of each variant it selects. Imports neither JAX nor NumPy.

An options class is a small frozen dataclass beside its variant (registered in pgolf_jax/registry.py
with the implementation), e.g. `model.mla.latent_dim`: its defaults, a `RANGES` table (field ->
rule) and, where a value depends on other sections, a `check(self, cfg)` that raises ConfigError.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import typing

from pgolf_jax import registry
from pgolf_jax.errors import ConfigError

# Seeds are unsigned 32-bit: the range numpy's legacy seeding and every framework accept, and far
# below the 2**63 where a seed stops fitting the int64 JAX converts it to.
SEED_RANGE = "[0, 4294967295]"


def in_range(value, rule: str) -> bool:
    """Rules: "> a", ">= a" or an interval "[a, b]" / "(a, b)" / mixed brackets."""
    if rule.startswith(">="):
        return value >= float(rule[2:])
    if rule.startswith(">"):
        return value > float(rule[1:])
    lo, hi = (float(x) for x in rule[1:-1].split(","))
    return (lo <= value if rule[0] == "[" else lo < value) and (value <= hi if rule[-1] == "]" else value < hi)


def check_range(key: str, value, rule: str, hint: str = "") -> None:
    if not in_range(value, rule):
        raise ConfigError(f"{key}={value} must be {'in ' if rule[0] in '[(' else ''}{rule}{hint}")


def check_choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def check_registered(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not registered; choose from {', '.join(map(str, allowed))}")


def field_types(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def coerce(key: str, raw, typ):
    """Parse a CLI string (or check a Python value) against a field's type."""
    if isinstance(raw, str) and typ is not str:
        text = raw.strip()
        if typ is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{key}: expected a boolean (true/false/1/0), got {raw!r}")
        try:
            raw = ast.literal_eval(text.replace("_", "") if typ in (int, float) else text)
        except (ValueError, SyntaxError):
            raise ConfigError(f"{key}: expected {typ.__name__}, got {raw!r}") from None
    if typ is float and isinstance(raw, int) and not isinstance(raw, bool):
        raw = float(raw)
    if typ is float and isinstance(raw, float) and not math.isfinite(raw):
        raise ConfigError(f"{key}: expected a finite number, got {raw!r}")
    if not isinstance(raw, typ) or (typ is int and isinstance(raw, bool)):
        raise ConfigError(f"{key}: expected {typ.__name__}, got {raw!r} ({type(raw).__name__})")
    return raw


def check_options(prefix: str, opts, cfg) -> None:
    """The ranges of a variant's options, then its own cross-checks against the whole config."""
    for name, rule in getattr(opts, "RANGES", {}).items():
        check_range(f"{prefix}.{name}", getattr(opts, name), rule)
    for name, allowed in getattr(opts, "CHOICES", {}).items():
        check_choice(f"{prefix}.{name}", getattr(opts, name), allowed)
    if hasattr(opts, "check"):
        opts.check(cfg)


class Section:
    """A config section: its fields, plus the options of the variants it selects, read as
    attributes (defaults unless set). `options` holds the set ones as sorted (name, options)."""

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        for key, opts in object.__getattribute__(self, "options"):
            if key == name:
                return opts
        path = registry.options_path(self.SECTION, name)
        if path is None:
            raise AttributeError(f"{type(self).__name__} has no field or variant options {name!r}")
        return registry.load(path)()

    def selected(self) -> set[str]:
        """The registry entries this section's fields select."""
        return {n for key, reg in registry.FIELDS.items() if key.startswith(self.SECTION + ".")
                for n in registry.names(key, getattr(self, key.split(".")[1]))}

    def replace(self, **changes):
        """dataclasses.replace, where a variant's name takes a dict of its options (tests, code)."""
        opts, plain = dict(self.options), {}
        for key, value in changes.items():
            path = registry.options_path(self.SECTION, key)
            if path and isinstance(value, dict):
                opts[key] = dataclasses.replace(opts.get(key) or registry.load(path)(), **value)
            else:
                plain[key] = value
        return dataclasses.replace(self, **plain, options=tuple(sorted(opts.items())))

    def check(self, cfg) -> None:
        for name, rule in self.RANGES.items():
            check_range(f"{self.SECTION}.{name}", getattr(self, name), rule)
        for name, allowed in getattr(self, "CHOICES", {}).items():
            check_choice(f"{self.SECTION}.{name}", getattr(self, name), allowed)
