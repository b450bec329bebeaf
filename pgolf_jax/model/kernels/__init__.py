"""Native CPU kernels, compiled on first use with the machine's C++ compiler and loaded as XLA FFI
targets. Nothing here is required: when no compiler is found or the build fails, `load()` says
why and callers keep their pure-JAX path."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax

SOURCE = Path(__file__).with_name("causal_attention_cpu.cc")
TARGETS = {"pgolf_causal_attention_fwd": "PgolfCausalAttentionFwd",
           "pgolf_causal_attention_bwd": "PgolfCausalAttentionBwd"}
# -march=native: the library is built on, and cached for, the machine that runs it (the cache key
# holds the CPU's feature flags), so it may use AVX-512 where present and AVX2 elsewhere.
FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w"]


def cache_dir() -> Path:
    root = os.environ.get("PGOLF_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pgolf_jax", "kernels")
    return Path(root)


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


def source_text() -> str:
    """The kernel's C++: the file beside this module, or (in a packed train_gpt.py) the copy its
    importer holds."""
    try:
        return SOURCE.read_text()
    except FileNotFoundError:
        return __loader__.get_data(str(SOURCE)).decode()


def build() -> Path:
    """Compile the kernel library (or find it in the cache); raises RuntimeError with the reason."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    include = jax.ffi.include_dir()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    text = source_text()
    key = hashlib.sha256("\n".join([text, " ".join(FLAGS), cxx, *version, include,
                                    jax.__version__, _cpu_signature()]).encode()).hexdigest()[:16]
    out = cache_dir() / f"causal_attention_cpu-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    src = SOURCE
    if not src.is_file():  # packed: compile a copy of the embedded source
        src = out.with_suffix(".cc")
        src.write_text(text)
    cmd = [cxx, *FLAGS, f"-I{include}", str(src), "-o", tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} failed:\n{proc.stderr[-2000:]}")
        os.replace(tmp, out)  # atomic: a concurrent process sees the whole library or none
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


_LIB: list = []  # keeps the loaded library alive for the handlers XLA holds


@functools.cache
def load() -> str | None:
    """Build and register the FFI targets once; None when ready, else why they are unavailable."""
    if os.environ.get("PGOLF_NO_NATIVE_KERNELS"):
        return "disabled by PGOLF_NO_NATIVE_KERNELS"
    try:
        lib = ctypes.cdll.LoadLibrary(str(build()))
        for name, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    except (RuntimeError, OSError, subprocess.SubprocessError, AttributeError) as err:
        return str(err)
    _LIB.append(lib)
    return None


def loaded() -> bool:
    """Whether this process built and registered the kernels (so a run ships their source)."""
    return bool(_LIB)


def available() -> bool:
    return load() is None


def require() -> None:
    """Raise a clear error when the native kernels were asked for but cannot be used here."""
    why = load()
    if why is not None:
        raise RuntimeError(f"model.attention_impl=fused_cpu: the native CPU kernel is unavailable: {why}")

