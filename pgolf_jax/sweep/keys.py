"""What made a sweep row, so that a result, a finished run or a checkpoint is reused only for the
same inputs: the row's resolved config (BASE chain, OVERRIDES, variant and seed; without the fields
that only say where the run is written), the dataset's checksums (its manifest's shard crc32s, and
the tokenizer file's sha256) and, beside them, the code version (pipeline.source_hash, the hash
every run logs). keys/<run_id>.json holds it from the moment a row starts (so a killed row's run
directory and checkpoint are keyed too) and rows/<run_id>.json repeats it with the result."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pgolf_jax import config as config_lib
from pgolf_jax.fsio import read_json, write_json

# Where a run is written and how it reports progress: not what it computes.
LOCATION = ("train.out_dir", "train.run_id", "train.progress")


def config_key(cfg) -> dict:
    """{'section.field': value} of everything that decides the row's result, as JSON has it."""
    flat = {f"{s}.{k}": v for s, sec in config_lib.to_dict(cfg).items() for k, v in sec.items()
            if f"{s}.{k}" not in LOCATION}
    return json.loads(json.dumps(flat))


def data_key(cfg) -> dict:
    """The dataset's shard checksums as its manifest records them (None without a manifest entry:
    then only the config's paths key the data) and the tokenizer file's sha256."""
    data, tok = Path(cfg.data.data_path), Path(cfg.data.tokenizer_path)
    manifest, shards = data.parent.parent / "manifest.json", None
    if manifest.is_file():
        m = read_json(manifest, "the dataset's manifest")
        entries = m.get("datasets", []) if isinstance(m, dict) else []
        entry = next((d for d in entries if isinstance(d, dict) and d.get("name") == data.name), None)
        shards = (entry or {}).get("checksums") or None
    return {"shards": shards, "tokenizer": hashlib.sha256(tok.read_bytes()).hexdigest() if tok.is_file() else None}


def code_version() -> str:
    from pgolf_jax.pipeline import source_hash

    return source_hash()


def made_from(cfg, code: str) -> dict:
    return {"config": config_key(cfg), "data": data_key(cfg), "code": code}


def key_path(out: Path, run_id: str) -> Path:
    return out / "keys" / f"{run_id}.json"


def write_key(out: Path, run_id: str, key: dict) -> None:
    write_json(key_path(out, run_id), key)


def recorded(out: Path, run_id: str) -> dict | None:
    """The inputs recorded for a row: its result's, else those written when it started; None when
    neither records any (a folder from before rows were keyed)."""
    row = out / "rows" / f"{run_id}.json"
    if row.is_file():
        done = read_json(row, "a sweep row")
        return done.get("made_from") if isinstance(done, dict) and isinstance(done.get("made_from"), dict) else None
    path = key_path(out, run_id)
    if path.is_file():
        key = read_json(path, "a sweep row's inputs")
        return key if isinstance(key, dict) else None
    return None


def _short(v) -> str:
    text = json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."


def input_difference(old: dict, new: dict) -> str | None:
    """The first config field or data file that differs, as 'key: X there, Y now'; None if equal."""
    oc, nc = old.get("config") or {}, new["config"]
    for k in [*nc, *(k for k in oc if k not in nc)]:
        if k not in oc or k not in nc or oc[k] != nc[k]:
            there = _short(oc[k]) if k in oc else "absent"
            return f"{k}: {there} there, {_short(nc[k]) if k in nc else 'absent'} now"
    od, nd = old.get("data") or {}, new["data"]
    if od.get("tokenizer") != nd["tokenizer"]:
        return f"tokenizer sha256: {str(od.get('tokenizer'))[:12]} there, {str(nd['tokenizer'])[:12]} now"
    os_, ns = od.get("shards") or {}, nd["shards"] or {}
    for name in sorted({*os_, *ns}):
        if os_.get(name) != ns.get(name):
            return f"data shard {name}: {os_.get(name) or 'absent'} there, {ns.get(name) or 'absent'} now"
    if (od.get("shards") is None) != (nd["shards"] is None):
        return f"data checksums: {'none' if od.get('shards') is None else 'recorded'} there, " \
               f"{'none' if nd['shards'] is None else 'recorded'} now"
    return None
