"""What made a sweep row, so that a result, a finished run or a checkpoint is reused only for the
same inputs: the row's resolved config (BASE chain, OVERRIDES, variant and seed; without the fields
that only say where the run is written), the data (provenance.data_key: a digest of the shards'
manifest checksums; and the tokenizer file's sha256, which the byte counts of val_bpb come from)
and, beside them, the code version (provenance.code_version, the hash every run logs).
keys/<run_id>.json holds it from the moment a row starts (so a killed row's run directory and
checkpoint are keyed too) and rows/<run_id>.json repeats it with the result."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pgolf_jax import config as config_lib
from pgolf_jax import provenance
from pgolf_jax.fsio import read_json, write_json

# Where a run is written and how it reports progress: not what it computes.
LOCATION = ("train.out_dir", "train.run_id", "train.progress")


def config_key(cfg) -> dict:
    """{'section.field': value} of everything that decides the row's result, as JSON has it."""
    flat = {k: v for k, v in config_lib.flat_dict(cfg).items() if k not in LOCATION}
    return json.loads(json.dumps(flat))


def data_key(cfg) -> dict:
    """The shards' digest (their manifest checksums, or sizes where none is recorded, as the key says)
    and the tokenizer file's sha256."""
    d = cfg.data
    tok = Path(d.tokenizer_path)
    return {**provenance.data_key(d.data_path, (d.train_files, d.val_files)),
            "tokenizer": hashlib.sha256(tok.read_bytes()).hexdigest() if tok.is_file() else None}


def code_version() -> str:
    return provenance.code_version()


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
    if od.get("digest") != nd["digest"]:
        return (f"data {nd.get('dataset')}: shard digest {od.get('digest')} there ({od.get('shards')} shards), "
                f"{nd['digest']} now ({nd.get('shards')} shards)")
    if od.get("tokenizer") != nd["tokenizer"]:
        return f"tokenizer sha256: {str(od.get('tokenizer'))[:12]} there, {str(nd['tokenizer'])[:12]} now"
    return None
