"""Device mesh and shardings: the only place that knows about devices. Data parallel over a 1-D
'data' axis; parameters and optimizer state are replicated (the model is small enough to fit
anywhere after all), and jit inserts the gradient all-reduce."""

from __future__ import annotations

import ctypes
import os
import sys

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


# The share of each GPU's memory jax's allocator takes when XLA_PYTHON_CLIENT_MEM_FRACTION is unset (jax's own
# default is 0.75). A run owns its GPUs, and the frontier presets' looped train step peaks near 60 GiB, the
# 1-GPU LoRA TTT step near 69 GiB (run.py compile), over 0.75 x 79 GiB; 0.9 leaves ~8 GB outside the pool
# for the CUDA context, cuDNN and NCCL. Read by the backend when it starts, so set before any device use.
DEVICE_MEM_FRACTION = 0.9


def claim_device_memory() -> None:
    """The allocator's share of each GPU: the environment's XLA_PYTHON_CLIENT_MEM_FRACTION, else 0.9."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", str(DEVICE_MEM_FRACTION))


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


def keep_freed_host_memory() -> bool:
    """Stop glibc from handing freed memory back to the kernel (Linux only, host side).

    XLA:CPU frees its large temporaries after every step and glibc unmaps them, so the next step
    page-faults them in again: 150k faults and 0.3 s of kernel time per baseline train step
    measured on the 2-core CPU. One arena, no mmap for big blocks and no trimming keep them.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): nothing to tune
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -2, -3, -8
    ok = [libc.mallopt(M_ARENA_MAX, 1), libc.mallopt(M_MMAP_THRESHOLD, 1 << 30),
          libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1), libc.mallopt(M_TOP_PAD, 1 << 28)]
    return all(ok)


def initialize(t) -> bool:
    """Join a multi-process run (train.distributed) before any JAX computation. Unset fields are
    auto-detected by jax.distributed (SLURM, Open MPI, TPU, or JAX_COORDINATOR_ADDRESS & co.).
    On CPU the processes exchange collectives over gloo (loopback in the tests)."""
    if not t.distributed:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {"coordinator_address": t.coordinator_address or None,
              "num_processes": t.num_processes or None,
              "process_id": t.process_id if t.process_id >= 0 else None}
    jax.distributed.initialize(**{k: v for k, v in kwargs.items() if v is not None})
    return True


def is_main() -> bool:
    """Process 0 logs and writes files; every process runs the same computation."""
    return jax.process_index() == 0


def global_array(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A host array (identical on every process) as a global array: each process materializes
    only the shards its own devices hold."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def global_tree(tree, sharding: NamedSharding):
    return jax.tree.map(lambda a: global_array(a, sharding), tree)


def replicate(tree, mesh: Mesh):
    """Every leaf fully replicated over the mesh (after FSDP training, say): then every process
    can read it on the host and pass it to any jitted function on the mesh."""
    return jax.jit(lambda t: t, out_shardings=replicated(mesh))(tree)


def leaf_sharding(shape: tuple, mesh: Mesh, mode: str) -> NamedSharding:
    """'replicated', or 'fsdp' (fsdp_sharding)."""
    n = num_data_devices(mesh)
    return fsdp_sharding(shape, mesh, n) if mode == "fsdp" and n > 1 else replicated(mesh)


def fsdp_sharding(shape: tuple, mesh: Mesh, n: int) -> NamedSharding:
    """Split the largest axis the n data devices divide (the model is small, so this only pays when
    optimizer state crowds device memory); replicated when none does."""
    axes = [i for i, d in enumerate(shape) if d % n == 0 and d >= n]
    if not axes:
        return replicated(mesh)
    return NamedSharding(mesh, P(*([None] * max(axes, key=lambda i: shape[i])), "data"))


def state_shardings(abstract_state, mesh: Mesh, mode: str):
    return jax.tree.map(lambda a: leaf_sharding(a.shape, mesh, mode), abstract_state)


def any_process(*flags: bool) -> tuple[bool, ...]:
    """Host-side OR of boolean flags over all processes (stop signals, the wall-clock cap), so
    every process takes the same branch; free with a single process."""
    if jax.process_count() == 1:
        return tuple(bool(f) for f in flags)
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray(flags, np.int32))
    return tuple(bool(v) for v in np.asarray(gathered).reshape(-1, len(flags)).max(axis=0))
