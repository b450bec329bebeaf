"""Device mesh and shardings: the only place that knows about devices. Data parallel over a 1-D
'data' axis; parameters and optimizer state are replicated (the model is small enough to fit
anywhere after all), and jit inserts the gradient all-reduce."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices=None) -> Mesh:
    # An Auto-axis mesh (not jax.make_mesh's Explicit default) so gathers on sharded ids propagate.
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, leading: int = 0) -> NamedSharding:
    """Shard the sequence-batch axis (after `leading` unsharded axes, e.g. micro-steps)."""
    return NamedSharding(mesh, P(*([None] * leading), "data"))


def num_data_devices(mesh: Mesh) -> int:
    return mesh.shape["data"]
