"""A run's directory: a fresh run id, taking a new run directory (one run per directory, runs never
nested), and the config a --resume continues with (the run's own, unchanged)."""

from __future__ import annotations

import dataclasses
import datetime
import os
import secrets
from pathlib import Path

from pgolf_jax import config as config_lib
from pgolf_jax.config import Config
from pgolf_jax.errors import OutputRefused
from pgolf_jax.fsio import run_dir_holding, write_json


def new_run_id() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def resume_config(cfg: Config, run_dir: Path) -> Config:
    """The run's saved config; the command line must not change it (a resume continues exactly)."""
    saved = config_lib.load_run_config(run_dir)
    ignore = {"train.run_id", "train.out_dir", "train.process_id"}
    now, then = config_lib.flat_dict(cfg), config_lib.flat_dict(saved)
    diff = [f"{k}: run has {then.get(k)!r}, command line gives {now.get(k)!r}"
            for k in sorted(set(now) | set(then)) if k not in ignore and now.get(k) != then.get(k)]
    if diff:
        raise config_lib.ConfigError(f"--resume {run_dir}: the config differs from the run's: " + "; ".join(diff))
    return dataclasses.replace(saved, train=dataclasses.replace(saved.train, process_id=cfg.train.process_id))


def claim_run_dir(run_dir: Path, cfg: Config) -> None:
    """Create the run directory and take it in one atomic step (config.json created exclusively),
    so two runs can never share one; an empty directory left by nothing may be reused. Never inside
    another run's directory (its files are that run's evidence)."""
    inside = run_dir_holding(run_dir.parent)
    if inside is not None:
        raise OutputRefused(f"train.out_dir={cfg.train.out_dir}: inside run directory {inside}; "
                            "write runs elsewhere (runs never nest)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        os.close(os.open(run_dir / "config.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        raise FileExistsError(f"run directory {run_dir} already holds a run; pick another train.run_id "
                              "(or continue it with --resume)") from None
    try:
        write_json(run_dir / "config.json", config_lib.to_dict(cfg))
    except BaseException:
        (run_dir / "config.json").unlink(missing_ok=True)
        raise
