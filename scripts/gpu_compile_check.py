"""On a GPU machine (scripts/gpu_check.sh): the same train program compiled on the real GPU and
deviceless (run.py compile's way) with their memory_analysis() side by side, the GPU's true XLA
target config beside the one shipped for deviceless compiles, and a 3-step profiler trace.

    python3 scripts/gpu_compile_check.py OUT_DIR [PRESET ...]   (default: configs/baseline_sp1024.py)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from pgolf_jax import config as config_lib
from pgolf_jax import dist
from pgolf_jax.hardware import programs, target

FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
          "peak_memory_in_bytes")


def memory(compiled) -> dict:
    m = compiled.memory_analysis()
    return {f: int(getattr(m, f, 0) or 0) for f in FIELDS}


def real_target_config(out: Path) -> str | None:
    """xla_client.get_topology_for_devices(jax.devices()).target_config, written beside the shipped one."""
    from jax._src.lib import xla_client

    try:
        tc = xla_client.get_topology_for_devices(jax.devices()).target_config
    except Exception as exc:  # noqa: BLE001 - an older or newer jaxlib without it: say so, go on
        print(f"real target config: unavailable ({type(exc).__name__}: {exc})")
        return None
    text = tc.decode() if isinstance(tc, bytes) else str(tc)
    (out / "target_config_real.txtpb").write_text(text)
    (out / "target_config_shipped.txtpb").write_text(target.DEFAULT_TARGET.read_text())
    print(f"real target config: {out / 'target_config_real.txtpb'} ({len(text)} chars)")
    return text


def compare(cfg, name: str, real_text: str | None) -> dict:
    """The preset's 1-GPU train step: compiled for the GPU here, then deviceless against each config."""
    mesh = dist.make_mesh(jax.devices()[:1])
    prog = programs.train_programs(cfg, mesh)[0][0]
    t0 = time.perf_counter()
    on_gpu = prog.fn.lower(*prog.args).compile()
    result = {"preset": name, "program": prog.name, "on_gpu": memory(on_gpu),
              "on_gpu_compile_s": round(time.perf_counter() - t0, 2)}
    texts = {"shipped": target.DEFAULT_TARGET.read_text()} | ({"real": real_text} if real_text else {})
    for label, text in texts.items():
        try:
            devless = dist.make_mesh(target.devices(1, text))
            p = programs.train_programs(cfg, devless)[0][0]
            t0 = time.perf_counter()
            result[f"deviceless_{label}"] = memory(p.fn.lower(*p.args).compile())
            result[f"deviceless_{label}_compile_s"] = round(time.perf_counter() - t0, 2)
        except Exception as exc:  # noqa: BLE001 - e.g. a plugin that parses other target-config fields
            result[f"deviceless_{label}"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    return result


def trace(cfg, out: Path, steps: int = 3) -> None:
    """A profiler trace of `steps` train steps after one untraced (compiling) step."""
    from pgolf_jax.train.loop import build

    mesh = dist.make_mesh(jax.devices()[:1])
    prog = programs.train_programs(cfg, mesh)[0][0]
    _, _, state = build(cfg, mesh)
    xs = prog.args[1]
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.integers(0, cfg.model.vocab_size, xs.shape, dtype=np.int32), xs.sharding)
    state, m = prog.fn(state, x, x, 1.0, 0.0, None)
    jax.block_until_ready(m)
    with jax.profiler.trace(str(out / "trace")):
        t0 = time.perf_counter()
        for _ in range(steps):
            state, m = prog.fn(state, x, x, 1.0, 0.0, None)
        jax.block_until_ready(m)
    print(f"trace: {steps} steps in {time.perf_counter() - t0:.3f} s -> {out / 'trace'}")


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    presets = argv[1:] or ["configs/baseline_sp1024.py"]
    print(f"jax {jax.__version__} devices {jax.devices()}")
    real = real_target_config(out)
    results = []
    for path in presets:
        cfg = config_lib.load(path)
        results.append(compare(cfg, Path(path).stem, real))
        print(json.dumps(results[-1], indent=1))
    (out / "compile_vs_device.json").write_text(json.dumps(results, indent=1))
    trace(config_lib.load(presets[0]), out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
