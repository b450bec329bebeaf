"""What made a result, so that a result is reused only when it was made from the same inputs: the
code version (a digest of the package's sources, or of the packed train_gpt.py a run executes) and
the data key (a digest of the dataset's shard checksums as its manifest records them). A run writes
both to provenance.json when it starts; `--resume` compares them before it touches the run. No JAX."""

from __future__ import annotations

import functools
import hashlib
import sys
from pathlib import Path

from pgolf_jax import registry
from pgolf_jax.fsio import read_json, write_json

FILE = "provenance.json"


@functools.cache
def code_version() -> str:
    """A digest of every source file of the package (and run.py beside it), or of the packed file
    this process runs from: any edit to the code changes it, nothing else does. Runs log it as
    `pgolf_jax source:<hash>`."""
    packed = getattr(sys.modules.get("pgolf_jax"), "__packed__", None)
    if packed:
        return hashlib.sha256(Path(packed).read_bytes()).hexdigest()[:16]
    h = hashlib.sha256()
    for f in registry.resolve(registry.TOOLING, "source_files")():  # (the package's own: a packed file has none)
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def package_files(root: Path | None = None) -> list[Path]:
    """Every source file of the package (with the native kernel's C++) and run.py beside it."""
    root = Path(root) if root else Path(__file__).resolve().parents[1]
    files = sorted(f for f in (root / "pgolf_jax").rglob("*")
                   if f.suffix in (".py", ".cc") and "__pycache__" not in f.parts)
    if (root / "run.py").is_file():
        files.append(root / "run.py")
    return files


def data_key(data_path, patterns: tuple[str, ...]) -> dict:
    """The dataset's identity: a digest over its shards' names and recorded checksums (the manifest's
    crc32s; a shard no manifest records is keyed by its size, and the key says so)."""
    from pgolf_jax.data.shards import recorded_checksum

    d = Path(data_path)
    files = sorted({p for pat in patterns for p in d.glob(pat)})
    h, unrecorded = hashlib.sha256(), 0
    for f in files:
        want = recorded_checksum(f)[0]
        unrecorded += want is None
        h.update(f"{f.name}:{want or f'size:{f.stat().st_size}'}\n".encode())
    return {"dataset": d.name, "shards": len(files), "digest": h.hexdigest()[:16],
            "keyed_by": "checksums" if not unrecorded else f"sizes for {unrecorded} shard(s) with no manifest record"}


def of_run(cfg) -> dict:
    return {"code_version": code_version(),
            "data": data_key(cfg.data.data_path, (cfg.data.train_files, cfg.data.val_files))}


def record(run_dir: Path, cfg) -> None:
    write_json(Path(run_dir) / FILE, of_run(cfg))


def check_resume(run_dir: Path, cfg, allow_code_change: bool) -> None:
    """Refuse (ConfigError, one line) to continue a run with other data, or other code unless allowed."""
    from pgolf_jax.config import ConfigError

    path = Path(run_dir) / FILE
    saved = read_json(path, "the run's provenance") if path.is_file() else None
    if not isinstance(saved, dict):
        if not allow_code_change:
            raise ConfigError(f"--resume {run_dir}: no {FILE} records the code and data it was made with; "
                              "pass --allow-code-change to continue it anyway")
        return
    if Path(cfg.data.data_path).is_dir():
        now = data_key(cfg.data.data_path, (cfg.data.train_files, cfg.data.val_files))
        if saved.get("data", {}).get("digest") != now["digest"]:
            raise ConfigError(f"--resume {run_dir}: the dataset {cfg.data.data_path} differs from the one the run "
                              f"trained on (shard digest {now['digest']} vs {saved.get('data', {}).get('digest')}); "
                              "start a new run instead")
    if saved.get("code_version") != code_version() and not allow_code_change:
        raise ConfigError(f"--resume {run_dir}: the code changed since the run started ({saved.get('code_version')} "
                          f"-> {code_version()}); pass --allow-code-change to continue it with this code")
