"""Training checkpoints with orbax: the whole TrainState (params, optimizer state, EMA, step)
plus the loop's position (data stream, elapsed training time, schedule flags) as JSON.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
crash mid-write leaves the previous checkpoints intact; only the newest `keep` are kept."""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: Path, keep: int = 3):
        self.directory = Path(directory).resolve()
        self._mgr = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep),
                                          item_names=("state", "meta"))

    def save(self, step: int, state, meta: dict) -> None:
        """Blocking save (the next train step donates `state`'s buffers)."""
        try:
            self._mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)))
            self._mgr.wait_until_finished()
        except OSError as exc:
            raise OSError(exc.errno, f"checkpoint save to {self.directory} failed at step {step}: "
                                     f"{exc.strerror or exc}") from exc

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def restore(self, state_like, step: int | None = None):
        """(state, meta) of checkpoint `step` (default the latest) shaped and sharded like state_like."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state_like)
        out = self._mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                              meta=ocp.args.JsonRestore()))
        return out.state, out.meta

    def close(self) -> None:
        self._mgr.close()
