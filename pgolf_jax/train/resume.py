"""--resume of a plain run: the run's own config (the command line may not change it), its provenance
checked, the newest intact checkpoint picked and the logs cut back to it. Reached through
registry.CHECKPOINTS with checkpoint.py, so a packed file holds both only when its run checkpoints."""

from __future__ import annotations

from pathlib import Path

from pgolf_jax import provenance
from pgolf_jax.errors import AlreadyFinished
from pgolf_jax.runlog import RunLog
from pgolf_jax.train.checkpoint import Checkpointer, Restore
from pgolf_jax.train.run_dir import resume_config


def prepare(cfg, run_dir: Path, allow_code_change: bool, main: bool) -> tuple[object, Restore]:
    """(the config the run continues with, the checkpoint it continues from)."""
    cfg = resume_config(cfg, run_dir)
    if (run_dir / "submission.json").is_file():
        raise AlreadyFinished(f"{run_dir} finished already (its submission.json is written); nothing to resume")
    provenance.check_resume(run_dir, cfg, allow_code_change)  # before the logs are cut back
    # Pick the checkpoint now (the newest intact one), before any data or compile work, and cut the
    # logs back to it: the steps after it are run again and must appear once.
    ckpt = Checkpointer(run_dir / "checkpoints", cfg.train.checkpoint_keep)
    try:
        restore = ckpt.select()
    finally:
        ckpt.close()
    if main:
        RunLog.truncate(run_dir, restore.meta.get("log_offsets"))
    return cfg, restore
