#!/usr/bin/env python3
"""Rewrite old flat config keys (model.mla_latent, eval.lora_rank, ...) to their variant options
(model.mla.latent_dim, eval.lora_ttt.rank, ...) in preset, sweep and shell files, in place.

    python scripts/migrate_config_keys.py configs/my_preset.py sweeps/my_sweep.py

A key that several variants share (model.linear_rank: lowrank or rlma) goes to the variant the
file names as a quoted value, else the first. Prints each change; --check only reports (exit 1
when something would change)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pgolf_jax.renames import RENAMES  # noqa: E402

_KEY = re.compile(r"(?<![\w.])(model|eval|quant|train)\.([a-z0-9_]+)(?![\w.])")


def _target(old: str, text: str) -> str:
    targets = RENAMES[old]
    for new in targets:
        variant = new.split(".")[1]
        if re.search(rf"[\"'=,]{re.escape(variant)}\b", text):
            return new
    return targets[0]


def migrate(text: str) -> tuple[str, list[tuple[str, str]]]:
    changes = []

    def sub(match):
        old = match.group(0)
        if old not in RENAMES:
            return old
        new = _target(old, text)
        changes.append((old, new))
        return new

    return _KEY.sub(sub, text), changes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="report only; exit 1 if a file would change")
    args = parser.parse_args(argv)
    texts = {}
    for path in args.files:  # every file read before any is written: a bad one changes nothing
        try:
            texts[path] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"error: migrate_config_keys: {path}: {getattr(exc, 'strerror', None) or exc}; nothing changed",
                  file=sys.stderr)
            return 2
    changed = False
    for path, text in texts.items():
        new, changes = migrate(text)
        for old, key in changes:
            print(f"{path}: {old} -> {key}")
        if new != text:
            changed = True
            if not args.check:
                tmp = path.with_name(path.name + ".migrating")
                tmp.write_text(new, encoding="utf-8")
                tmp.replace(path)
    return 1 if (changed and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
