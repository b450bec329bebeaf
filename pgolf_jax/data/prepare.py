"""Datasets in the challenge layout from a docs_selected.jsonl: tokenizers, shards and manifest;
checks of a prepared dataset; and the `run.py data ...` command.

The published shards are downloaded by pgolf_jax.hub, the embedded sample corpora built by
pgolf_jax.samples (both import this module, never the reverse at import time).

Layout (as the reference's data/ directory):
  <root>/manifest.json
  <root>/tokenizers/fineweb_<V>_bpe.{model,vocab} | fineweb_pure_byte_260.json
  <root>/datasets/fineweb10B_<variant>/fineweb_{val,train}_NNNNNN.bin
The manifest is always written last, so its presence means the files it lists are complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from pgolf_jax.data.shards import (
    CHECKSUM_KEY,
    file_checksum,
    open_shard,
    read_num_tokens,
    recorded_checksum,
    write_shard,
)
from pgolf_jax.data.tokenizer import (
    PureByteTokenizer,
    load_tokenizer,
    train_sentencepiece,
)
from pgolf_jax.fsio import read_json, write_json
from pgolf_jax.provenance import code_version
from pgolf_jax.runlog import Progress

NUM_VAL_DOCS = 50_000
SHARD_SIZE = 10**8
APPEND_EOS = False
DEFAULT_NAME = "fineweb10B"
ENCODE_BATCH_DOCS = 1024
SIDECAR_SUFFIX = ".source_manifest.json"
PROGRESS_EVERY = 3.0  # seconds between progress lines of the data commands off a terminal


# ----------------------------------------------------------------------------------------------
# docs_selected.jsonl


def iter_docs(path: Path, limit: int | None = None):
    """Texts of a docs jsonl in order; a bad line raises naming the file and line number."""
    # Bytes split on \n (as count_docs counts documents), decoded line by line so that a bad byte is
    # reported with its line, not as a bare codec error.
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if limit is not None and lineno > limit:
                return
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                                 f"{exc.start + 1})") from None
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


def dataset_dir_for_variant(variant: str) -> str:
    parse_variant(variant)
    return f"{DEFAULT_NAME}_{variant}"


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
        progress = Progress(f"prepare: {variant} tokenizer", n, every=PROGRESS_EVERY, unit="docs")

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
    progress = Progress(label, docs_total, every=PROGRESS_EVERY, unit="docs")

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


SMALL_DOCS_BYTES = 1 << 30  # docs files up to this size are identified by their sha256


def docs_fingerprint(docs_jsonl: Path, sidecar: dict | None) -> dict:
    """What identifies the docs a dataset was built from: the sidecar's sha256 (the challenge's
    export has one), else the sha256 of a small file, else (path, size, mtime) of a big one."""
    st = docs_jsonl.stat()
    sha = sidecar.get("docs_sha256") if sidecar else None
    if not sha and st.st_size <= SMALL_DOCS_BYTES:
        h = hashlib.sha256()
        with open(docs_jsonl, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
        sha = h.hexdigest()
    return {"docs_jsonl": str(docs_jsonl), "docs_bytes": st.st_size, "docs_mtime_ns": st.st_mtime_ns,
            "docs_sha256": sha}


def source_differences(old: dict | None, new: dict) -> list[str]:
    """How the recorded build settings of a dataset differ from a new prepare's ([] = the same)."""
    if not old:
        return ["it has no build record (downloaded, or prepared by an older version)"]
    diffs = []
    if old.get("docs_sha256") and new.get("docs_sha256"):
        if old["docs_sha256"] != new["docs_sha256"]:
            diffs.append(f"docs sha256 {old['docs_sha256'][:12]}... vs {new['docs_sha256'][:12]}...")
    elif any(old.get(k) != new.get(k) for k in ("docs_jsonl", "docs_bytes", "docs_mtime_ns")):
        diffs.append(f"docs {old.get('docs_jsonl')} ({old.get('docs_bytes')} bytes) vs {new['docs_jsonl']} "
                     f"({new['docs_bytes']} bytes, or a newer mtime)")
    for k in ("num_docs", "num_val_docs", "shard_size", "tokenizer_train_docs", "trainer_overrides", "append_eos"):
        if old.get(k) != new.get(k):
            diffs.append(f"{k} {old.get(k)!r} vs {new.get(k)!r}")
    return diffs


def read_manifest(root: Path) -> dict | None:
    """root/manifest.json, or None when there is none; an unreadable one is an error naming it."""
    path = root / "manifest.json"
    if not path.exists():
        return None
    manifest = read_json(path, "the dataset root's manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("datasets", []), list):
        raise ValueError(f"{path}: not a dataset manifest (expected an object with a 'datasets' list)")
    return manifest


def dataset_problem(root: Path, manifest: dict | None, variant: str) -> tuple[dict | None, dict | None, str | None]:
    """(tokenizer entry, dataset entry, what is wrong) for a variant in root; the entries are None
    when the manifest does not list it, and the problem None when every listed file is intact."""
    ds_name = dataset_dir_for_variant(variant)
    ds = next((d for d in (manifest or {}).get("datasets", []) if isinstance(d, dict) and d.get("name") == ds_name), None)
    on_disk = [p for p in (root / "datasets" / ds_name, tokenizer_file(root, variant)) if p.exists()]
    if ds is None:
        return None, None, (f"{on_disk[0]} exists but {root / 'manifest.json'} does not list {ds_name}"
                            if on_disk else None)
    tok = next((t for t in manifest.get("tokenizers", []) if t.get("name") == ds.get("tokenizer_name")), None)
    try:
        if tok is None:
            raise ValueError(f"tokenizer {ds.get('tokenizer_name')!r} is not listed")
        for k in ("model_path", "vocab_path", "path"):
            if tok.get(k) and not (root / tok[k]).is_file():
                raise ValueError(f"{root / tok[k]} is missing")
        st = ds["stats"]
        for split in ("val", "train"):
            got = sum(read_num_tokens(root / ds["path"] / f"fineweb_{split}_{i:06d}.bin")
                      for i in range(st[f"files_{split}"]))
            if got != st[f"tokens_{split}"]:
                raise ValueError(f"its {split} shards hold {got} tokens, the manifest says {st[f'tokens_{split}']}")
    except (OSError, KeyError, TypeError, ValueError) as exc:
        return tok, ds, f"{ds_name} in {root} is damaged: {exc}"
    return tok, ds, None


@contextlib.contextmanager
def root_lock(root: Path):
    """An exclusive lock on the root directory itself (POSIX flock), so concurrent prepares of
    one root run one after another; no lock file is left in the root."""
    try:
        import fcntl
    except ImportError:  # no advisory locks here; a race only wastes work, the swap stays atomic
        yield
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _swap_in(moves: list[tuple[Path, Path]], trash: Path, manifest_path: Path, manifest: dict) -> None:
    """Rename each built (new, final) into place, moving what was there into trash, then write the
    manifest; on any failure every rename is undone, so the root is as it was."""
    done, made = [], []  # (final, what was there moved to trash or None, new); parents created
    try:
        for new, final in moves:
            if not final.parent.exists():
                final.parent.mkdir(parents=True)
                made.append(final.parent)
            old = None
            if final.exists():
                old = trash / f"{len(done)}_{final.name}"
                os.replace(final, old)
            done.append((final, old, new))
            os.replace(new, final)
        write_json(manifest_path, manifest)
    except BaseException:
        for final, old, new in reversed(done):
            with contextlib.suppress(OSError):
                if final.exists():
                    os.replace(final, new)
                if old is not None:
                    os.replace(old, final)
        for parent in reversed(made):
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise


def prepare_from_docs(docs_jsonl, output_root, variants=("sp1024",), num_val_docs: int | None = None,
                      shard_size: int = SHARD_SIZE, tokenizer_train_docs: int | None = None,
                      name: str = DEFAULT_NAME, trainer_overrides: dict | None = None, force: bool = False,
                      verbose: bool = True) -> dict:
    """Tokenizers, shards and manifest.json for each variant from a docs jsonl; returns the manifest.

    Everything is built in a staging directory inside output_root and renamed into place only when
    all variants are complete, with the manifest written last: a failure leaves the root as it was.
    The manifest keeps every other variant it lists. A variant already built from the same docs
    and settings is left as it is; one built from other docs or settings (or files the manifest
    does not describe) is replaced only with force=True. num_val_docs=None takes the sidecar's
    docs_val, else 50,000."""
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
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"output root {root} exists and is not a directory")

    sidecar = load_sidecar(docs_jsonl)
    docs_total = sidecar["num_docs"] if sidecar and sidecar.get("num_docs") is not None else count_docs(docs_jsonl)
    if num_val_docs is None:
        num_val_docs = sidecar["docs_val"] if sidecar and sidecar.get("docs_val") is not None else NUM_VAL_DOCS
    num_val_docs = int(num_val_docs)
    if not 0 <= num_val_docs <= docs_total:
        raise ValueError(f"num_val_docs={num_val_docs} but {docs_jsonl} has {docs_total} docs")
    source = {**docs_fingerprint(docs_jsonl, sidecar), "num_docs": docs_total, "num_val_docs": num_val_docs,
              "shard_size": int(shard_size), "tokenizer_train_docs": tokenizer_train_docs,
              "trainer_overrides": dict(trainer_overrides) if trainer_overrides else None, "append_eos": APPEND_EOS}

    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        with root_lock(root):
            return _prepare_locked(docs_jsonl, root, variants, sidecar, source, name, force, verbose)
    except BaseException:
        if created:  # a failed first prepare leaves no empty root behind
            with contextlib.suppress(OSError):
                root.rmdir()
        raise


def _prepare_locked(docs_jsonl: Path, root: Path, variants: list[str], sidecar: dict | None, source: dict,
                    name: str, force: bool, verbose: bool) -> dict:
    for stale in root.glob(".prepare-*"):  # staging left by a killed prepare (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    old = read_manifest(root)
    old_tokens = {t.get("name"): t for t in (old or {}).get("tokenizers", []) if isinstance(t, dict)}
    build = []
    for variant in variants:  # decide everything before building anything
        tok, ds, problem = dataset_problem(root, old, variant)
        diffs = source_differences(ds.get("source"), _relativize(source, root)) if ds else []
        if ds is not None and problem is None and not diffs:
            if verbose:
                print(f"prepare: {ds['name']} in {root} is up to date (same docs and settings)", file=sys.stderr)
            continue
        if (problem or diffs) and not force:
            why = problem or f"{ds['name']} in {root} was built differently: {'; '.join(diffs)}"
            raise FileExistsError(f"{why}; to replace it run `run.py data prepare ... --force` (nothing was changed)")
        build.append(variant)
    if not build:
        return old

    n_docs, n_val, shard = source["num_docs"], source["num_val_docs"], source["shard_size"]
    docs_meta = {"remote_repo_id": None, "remote_root": None, "num_docs": n_docs,
                 "docs_sha256": sidecar.get("docs_sha256") if sidecar else None,
                 "source_manifest": str(sidecar_path(docs_jsonl)) if sidecar else None}
    if sidecar:
        docs_meta["source_sidecar"] = sidecar
    manifest = {"version": name[len("fineweb"):] if name.startswith("fineweb") and len(name) > 7 else name,
                "num_docs": n_docs, "num_val_docs": n_val,
                "shuffle_seed": sidecar.get("shuffle_seed") if sidecar else None,
                "shard_size": shard, "append_eos": APPEND_EOS, "docs_jsonl": str(docs_jsonl),
                "docs_meta": docs_meta, "tokenizer_specs": [], "tokenizers": [], "datasets": []}
    rebuilt = {f"{name}_{v}" for v in build}
    for ds in (old or {}).get("datasets", []):  # every other variant the manifest had stays listed
        if isinstance(ds, dict) and ds.get("name") not in rebuilt:
            tok = old_tokens.get(ds.get("tokenizer_name"))
            if tok is not None and tok not in manifest["tokenizers"]:
                manifest["tokenizers"].append(tok)
                manifest["tokenizer_specs"].append(tok.get("source_spec"))
            manifest["datasets"].append(ds)

    staging = Path(tempfile.mkdtemp(prefix=".prepare-", dir=root))
    try:
        return _build_and_swap(docs_jsonl, root, staging, build, manifest, source, sidecar, name)
    except ValueError as exc:  # name the place a file was being built for, not the staging copy
        raise ValueError(str(exc).replace(str(staging), str(root))) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build_and_swap(docs_jsonl: Path, root: Path, staging: Path, build: list[str], manifest: dict, source: dict,
                    sidecar: dict | None, name: str) -> dict:
    """Build every variant of `build` in staging, then swap them and the manifest into root."""
    n_docs, n_val, shard = source["num_docs"], source["num_val_docs"], source["shard_size"]
    manifest_path = root / "manifest.json"
    moves = []
    for variant in build:
        ds_name = f"{name}_{variant}"
        tok, tok_entry, spec = _build_tokenizer(variant, docs_jsonl, n_docs, staging / "tokenizers",
                                                source["tokenizer_train_docs"], source["trainer_overrides"])
        for key in ("model_path", "vocab_path", "path"):  # staged now; the manifest names the final place
            if key in tok_entry:
                built = Path(tok_entry[key])
                moves.append((built, root / "tokenizers" / built.name))
                tok_entry[key] = str(root / "tokenizers" / built.name)
        staged_ds = staging / "datasets" / ds_name
        stats = export_shards(docs_jsonl, tok, staged_ds, num_val_docs=n_val, shard_size=shard,
                              docs_total=n_docs, label=f"prepare: {ds_name}")
        if stats["docs_total"] != n_docs:
            src = sidecar_path(docs_jsonl) if sidecar and sidecar.get("num_docs") is not None else docs_jsonl
            raise ValueError(f"{src} says {n_docs} docs but {docs_jsonl} has {stats['docs_total']}")
        final_dir = root / "datasets" / ds_name
        moves.append((staged_ds, final_dir))
        manifest["tokenizer_specs"].append(spec)
        manifest["tokenizers"].append(tok_entry)
        manifest["datasets"].append({
            "name": ds_name, "tokenizer_name": tok_entry["name"], "tokenizer_kind": tok_entry["kind"],
            "path": str(final_dir), "train_glob": str(final_dir / "fineweb_train_*.bin"),
            "val_glob": str(final_dir / "fineweb_val_*.bin"), "vocab_size": tok_entry["vocab_size"],
            "bos_id": tok_entry["bos_id"], "eos_id": tok_entry["eos_id"],
            "recommended_bigram_vocab_size": tok_entry["recommended_bigram_vocab_size"], "stats": stats,
            "source": source, CHECKSUM_KEY: {f.name: file_checksum(f) for f in sorted(staged_ds.glob("*.bin"))},
            # Beside the key, not in it: the shards are checked by their checksums, and a code change
            # that does not touch tokenization must not force a rebuild of a 10B-token dataset.
            "prepared_with": code_version()})
        print(f"prepare: {ds_name}: {stats['files_val']} val + {stats['files_train']} train shards, "
              f"{stats['tokens_val']} val + {stats['tokens_train']} train tokens", file=sys.stderr, flush=True)
    # Tokenizers of replaced variants that no kept dataset uses are dropped from the listing.
    used = {d["tokenizer_name"] for d in manifest["datasets"]}
    keep = [i for i, t in enumerate(manifest["tokenizers"]) if t.get("name") in used]
    manifest["tokenizers"] = [manifest["tokenizers"][i] for i in keep]
    manifest["tokenizer_specs"] = [manifest["tokenizer_specs"][i] for i in keep]
    manifest = _relativize(manifest, root)
    trash = staging / "replaced"
    trash.mkdir()
    _swap_in(moves, trash, manifest_path, manifest)
    return manifest


# ----------------------------------------------------------------------------------------------
# checks and the `data` command


def verify_dataset(dataset_dir, vocab_size: int = 0, structure_only: bool = False) -> dict:
    """Validate every shard of a dataset dir (header, recorded checksum, and token ids < vocab_size
    if given); returns counts. A shard no manifest records a checksum for cannot have its contents
    checked: that is an error unless `structure_only` asks for headers and token ids alone."""
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
        for f in files:  # header, the manifest's checksum when it records one, ids < vocab_size
            tokens += len(open_shard(f, vocab_size))
        counts[f"files_{split}"], counts[f"tokens_{split}"] = len(files), tokens
    if counts["files_val"] + counts["files_train"] == 0:
        raise FileNotFoundError(f"no fineweb_{{val,train}}_*.bin shards in {d}")
    unrecorded = [f for f in sorted(d.glob("fineweb_*_*.bin")) if recorded_checksum(f)[0] is None]
    if unrecorded and not structure_only:
        manifest = d.parent.parent / "manifest.json"
        why = "does not exist" if not manifest.is_file() else f"records no checksum for {d.name}'s shards"
        raise ValueError(f"{d}: {len(unrecorded)} shard(s) ({unrecorded[0].name}, ...) have no recorded checksum "
                         f"({manifest} {why}), so their contents cannot be checked; pass --structure-only to "
                         "check headers and token ids alone")
    counts["unchecked_contents"] = len(unrecorded)
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
