"""The compile target: the CUDA PJRT plugin, an H100's GpuTargetConfigProto, compile-only devices,
the memory budget a run gets, and tracing the run's 'auto' choices as on a GPU. JAX_PLATFORMS=cpu
must be set before jax is imported (command.run does it): with the plugin installed, jax would
otherwise try the GPU backend and log a cuDNN traceback."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import re
import sys
from pathlib import Path

from pgolf_jax.errors import UsageError

PLUGINS = ("jax-cuda13-plugin", "jax-cuda13-pjrt")
# One H100 target config per set of fields the plugins parse, by the installed jax's (major, minor): the 0.11
# plugin dropped GpuTargetConfigProto.dnn_version_info (a reserved name: text with it parses, the cuDNN version is
# lost) and parses fields the 0.10 plugin refuses; the 0.12 plugin adds two the spec does not set (headers say more).
TARGETS = {(0, 10): "h100_sxm.txtpb", (0, 11): "h100_sxm_jax011.txtpb"}


def default_target(jax_version: str | None = None) -> Path:
    """The shipped config for this jax: the newest entry at or below its (major, minor)."""
    version = jax_version or importlib.metadata.version("jax")
    key = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    return Path(__file__).with_name(TARGETS[max((k for k in TARGETS if k <= key), default=min(TARGETS))])


DEFAULT_TARGET = default_target()
H100_PEAK_FLOPS = 989e12  # dense bf16 tensor-core peak of an H100 SXM
H100_PEAK_BYTES = 3.35e12  # HBM3 bandwidth, bytes/s


class PluginMissing(UsageError):
    """The CUDA PJRT plugin at the installed jax's version is not importable; the message is the fix
    (a UsageError: cli prints it as one line, exit 2, like a command line that cannot run)."""


def pip_command() -> str:
    """The exact install line for the plugin matching the installed jax, into its own venv."""
    version = importlib.metadata.version("jax")
    pkgs = " ".join(f"'{p}=={version}'" for p in PLUGINS)
    return f"python3 -m venv .venv-compile && .venv-compile/bin/pip install -e . {pkgs}"


def check_plugin() -> None:
    """Raise PluginMissing (one line with the pip command) unless both plugin packages are
    installed at exactly the jax version (jax refuses a plugin of another version)."""
    jax_version = importlib.metadata.version("jax")
    for pkg in PLUGINS:
        try:
            found = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            found = None
        if found != jax_version:
            what = f"{pkg} is not installed" if found is None else f"{pkg} is {found}, jax is {jax_version}"
            raise PluginMissing(f"run.py compile needs XLA's CUDA compiler ({what}); install it beside, not "
                                f"into, this venv: {pip_command()}")
    if importlib.util.find_spec("jax_plugins.xla_cuda13") is None:
        raise PluginMissing(f"run.py compile: the jax_plugins.xla_cuda13 module is missing: {pip_command()}")


def require_cpu_platform() -> None:
    """Set JAX_PLATFORMS=cpu before jax loads; refuse another value (the compile needs no device,
    and a GPU backend start logs a cuDNN traceback on a machine without one)."""
    value = os.environ.get("JAX_PLATFORMS")
    if value is None:
        os.environ["JAX_PLATFORMS"] = "cpu"
    elif value != "cpu":
        raise ValueError(f"JAX_PLATFORMS={value}: run.py compile runs on the CPU; unset it or set JAX_PLATFORMS=cpu")
    if "jax" in sys.modules:
        import jax

        if jax.default_backend() != "cpu":
            raise ValueError(f"jax is already running on {jax.default_backend()}: run.py compile needs "
                             "JAX_PLATFORMS=cpu set before jax is imported")


def read_target(path: str | Path | None) -> tuple[str, int]:
    """(text of the GpuTargetConfigProto, device memory in bytes)."""
    path = Path(path) if path else DEFAULT_TARGET
    if not path.is_file():
        raise FileNotFoundError(f"--target-config {path}: no such file")
    text = path.read_text()
    m = re.search(r"device_memory_size:\s*(\d+)", text)
    if not m:
        raise ValueError(f"--target-config {path}: no gpu_device_info.device_memory_size")
    return text, int(m.group(1))


def dnn_version(text: str) -> tuple[int, ...]:
    """The cuDNN version a config claims: gpu_device_info.dnn_version "9.23.0" (jax >= 0.11), else the
    dnn_version_info message the 0.10 plugin reads."""
    m = re.search(r'dnn_version:\s*"(\d+)\.(\d+)\.?(\d*)"', text)
    if m:
        return tuple(int(g or 0) for g in m.groups())
    return version_of(text, "dnn_version_info")


def version_of(text: str, field: str) -> tuple[int, ...]:
    """major, minor, patch of a version message in the target config (dnn_version_info, ...)."""
    m = re.search(field + r"\s*\{([^}]*)\}", text)
    body = m.group(1) if m else ""
    return tuple(int(v.group(1)) if (v := re.search(rf"{k}:\s*(\d+)", body)) else 0
                 for k in ("major", "minor", "patch"))


def memory_fraction() -> tuple[float, str]:
    """The share of device memory jax's allocator may use, and where it comes from."""
    raw = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")
    if raw is None:
        from pgolf_jax.dist import DEVICE_MEM_FRACTION  # (imports jax: the compile command has set the platform)

        return DEVICE_MEM_FRACTION, f"XLA_PYTHON_CLIENT_MEM_FRACTION unset: run.py's {DEVICE_MEM_FRACTION} (dist.py)"
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise ValueError(f"XLA_PYTHON_CLIENT_MEM_FRACTION={raw}: not a number in (0, 1]")
    return value, f"XLA_PYTHON_CLIENT_MEM_FRACTION={raw} from the environment"


_TOPOLOGIES: dict = {}


def devices(n: int, target_text: str) -> list:
    """n compile-only H100s on one host (one process, as an 8xH100 node runs)."""
    key = (n, target_text)
    if key not in _TOPOLOGIES:
        from jax.experimental import topologies

        _TOPOLOGIES[key] = topologies.get_topology_desc(platform="cuda", target_config=target_text,
                                                        topology=f"1x1x{n}").devices
    return list(_TOPOLOGIES[key])


@contextlib.contextmanager
def traced_for_gpu(target_text: str):
    """Trace as the run traces on the GPU: the model's 'auto' dtype and attention choices ask
    jax.default_backend(), which says 'cpu' here, so it answers 'gpu' meanwhile (jax's own code
    calls its xla_bridge, not this name); cuDNN attention's lowering asks the local cuDNN and
    GPU for versions, answered from the target config (the cuDNN graph itself is only built when
    the executable loads on a GPU, so its support for a shape is not checked here)."""
    import jax
    import jax._src.cudnn.fused_attention_stablehlo as fa

    dnn = dnn_version(target_text)
    cc = version_of(target_text, "cuda_compute_capability")[:2]
    saved = (jax.default_backend, fa.check_cudnn_version, fa.check_compute_capability,
             fa.is_cuda_compute_capability_equal)
    parse = lambda c: tuple(int(x) for x in c.split("."))  # noqa: E731
    jax.default_backend = lambda: "gpu"
    fa.check_cudnn_version = lambda: dnn[0] * 10000 + dnn[1] * 100 + dnn[2]
    fa.check_compute_capability = lambda c: cc >= parse(c)
    fa.is_cuda_compute_capability_equal = lambda c: cc == parse(c)
    try:
        yield
    finally:
        (jax.default_backend, fa.check_cudnn_version, fa.check_compute_capability,
         fa.is_cuda_compute_capability_equal) = saved
