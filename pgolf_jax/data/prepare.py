"""Datasets in the challenge layout (data/layout.py) from a docs_selected.jsonl (data/docs.py):
each variant's tokenizer trained (or written), the docs encoded into val/train shards, and both
renamed into the root with the manifest written last.

Everything is built in a staging directory inside the root, so a failure leaves the root as it
was. The published shards are downloaded by data/hub.py, the embedded sample corpora built by
data/samples.py (both import this module, never the reverse at import time).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from pgolf_jax.data.docs import count_docs, docs_fingerprint, iter_docs, load_sidecar, sidecar_path
from pgolf_jax.data.layout import (
    CASEOPS_SUFFIX,
    DEFAULT_NAME,
    dataset_problem,
    is_caseops,
    parse_variant,
    read_manifest,
    relativize,
    source_differences,
    tokenizer_file,
    variant_stem,
)
from pgolf_jax.data.shards import CHECKSUM_KEY, file_checksum, write_shard
from pgolf_jax.data.sidecars import sidecar_for
from pgolf_jax.data.tokenizer import (
    PureByteTokenizer,
    load_tokenizer,
    train_sentencepiece,
)
from pgolf_jax.fsio import write_json
from pgolf_jax.provenance import code_version
from pgolf_jax.runlog import Progress

NUM_VAL_DOCS = 50_000
SHARD_SIZE = 10**8
APPEND_EOS = False
ENCODE_BATCH_DOCS = 1024
PROGRESS_EVERY = 3.0  # seconds between progress lines of the data commands off a terminal


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
        transform = (lambda text: text)
        if is_caseops(variant):  # the records' CaseOps tokenizer spec: its names, the operators reserved
            from pgolf_jax.data import caseops

            transform = caseops.encode
            spec = {"name": f"sp_bpe_{vocab}{CASEOPS_SUFFIX}", "dataset_suffix": f"sp{vocab}{CASEOPS_SUFFIX}",
                    "vocab_size": vocab, "text_transform": caseops.NAME, "reserve_text_transform_controls": True}
            trainer_overrides = _with_operators(trainer_overrides, caseops.OPERATORS)
        if tokenizer_train_docs is not None:
            spec["tokenizer_train_docs"] = int(tokenizer_train_docs)
        if trainer_overrides:
            spec["trainer_overrides"] = dict(trainer_overrides)
        n = min(docs_total, tokenizer_train_docs) if tokenizer_train_docs else docs_total
        progress = Progress(f"prepare: {variant} tokenizer", n, every=PROGRESS_EVERY, unit="docs")

        def texts():
            for i, text in enumerate(iter_docs(docs_jsonl, limit=tokenizer_train_docs), 1):
                progress.update(i)
                yield transform(text)

        model = train_sentencepiece(texts(), vocab, tokenizer_file(tokenizers_dir.parent, variant).with_suffix(""),
                                    trainer_overrides)
        progress.finish(n)
        tok = load_tokenizer(model)
        files = {"model_path": str(model), "vocab_path": str(model.with_suffix(".vocab"))}
        if is_caseops(variant):
            tok = caseops.CaseOpsTokenizer(model)
            files["text_transform"] = caseops.NAME
        name, kind_name = spec["name"], "sentencepiece_bpe"
    entry = {"name": name, "kind": kind_name, "vocab_size": tok.vocab_size, "bos_id": tok.bos_id,
             "eos_id": tok.eos_id, "recommended_bigram_vocab_size": bigram_vocab(tok.vocab_size),
             "source_spec": spec, **files}
    return tok, entry, spec


def _with_operators(overrides: dict | None, operators) -> dict:
    """Trainer overrides with the transform's operators appended to user_defined_symbols (as the
    records' exporter merges them: given symbols first, each operator once)."""
    out = dict(overrides or {})
    given = out.get("user_defined_symbols") or []
    given = [x for x in given.split(",") if x] if isinstance(given, str) else [str(x) for x in given]
    out["user_defined_symbols"] = given + [op for op in operators if op not in given]
    return out


def export_shards(docs_jsonl: Path, tok, output_dir: Path, *, num_val_docs: int, shard_size: int,
                  docs_total: int, label: str) -> dict:
    """Tokenize every doc as [BOS] + ids into val/train shards of shard_size tokens; returns stats.
    A tokenizer with encode_with_byte_counts (CaseOps) also gets each val shard's byte sidecar:
    the original UTF-8 bytes of every token, 0 for BOS."""
    output_dir.mkdir(parents=True, exist_ok=True)
    vocab = int(tok.vocab_size)
    if vocab > 2**16:
        raise ValueError(f"{label}: vocab_size={vocab} does not fit uint16 shards")
    stats = dict.fromkeys(("docs_total", "docs_val", "docs_train", "files_total", "files_val", "files_train",
                           "tokens_total", "tokens_val", "tokens_train"), 0)
    buf = np.empty(shard_size, dtype=np.uint16)
    sides = np.zeros(shard_size, dtype=np.uint16) if hasattr(tok, "encode_with_byte_counts") else None
    fill, split = 0, "val"
    progress = Progress(label, docs_total, every=PROGRESS_EVERY, unit="docs")

    def flush():
        nonlocal fill
        if fill:
            shard = output_dir / f"fineweb_{split}_{stats[f'files_{split}']:06d}.bin"
            write_shard(shard, buf[:fill])
            if sides is not None and split == "val":
                write_shard(sidecar_for(shard), sides[:fill])
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
        n_val = min(len(texts), max(0, num_val_docs - stats["docs_total"])) if sides is not None else 0
        encoded = tok.encode_with_byte_counts(texts[:n_val]) if n_val else []
        encoded += [(ids, None) for ids in tok.encode_batch(texts[n_val:])]
        for ids, counts in encoded:
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
            nbytes = None
            if counts is not None:
                nbytes = np.zeros(toks.size, dtype=np.uint16)  # BOS (and EOS) stand for no bytes
                nbytes[1:1 + ids.size] = counts
            stats["docs_total"] += 1
            stats[f"docs_{split}"] += 1
            stats["tokens_total"] += toks.size
            stats[f"tokens_{split}"] += toks.size
            pos = 0
            while pos < toks.size:
                k = min(shard_size - fill, toks.size - pos)
                buf[fill:fill + k] = toks[pos:pos + k]
                if nbytes is not None:
                    sides[fill:fill + k] = nbytes[pos:pos + k]
                fill += k
                pos += k
                if fill == shard_size:
                    flush()
        progress.update(stats["docs_total"])
    flush()
    progress.finish(stats["docs_total"])
    return stats


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
    if len({variant_stem(v) for v in variants}) != len(variants):  # sp1024_caseops = its long spelling
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
        diffs = source_differences(ds.get("source"), relativize(source, root)) if ds else []
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
    rebuilt = {f"{name}_{variant_stem(v)}" for v in build}
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
        ds_name = f"{name}_{variant_stem(variant)}"
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
            **({"val_bytes_glob": str(final_dir / "fineweb_val_bytes_*.bin"), "text_transform": tok.text_transform}
               if hasattr(tok, "encode_with_byte_counts") else {}),
            "source": source, CHECKSUM_KEY: {f.name: file_checksum(f) for f in sorted(staged_ds.glob("*.bin"))},
            # Beside the key, not in it: the shards are checked by their checksums, and a code change
            # that does not touch tokenization must not force a rebuild of a 10B-token dataset.
            "prepared_with": code_version()})
        side = " with byte sidecars" if hasattr(tok, "encode_with_byte_counts") else ""
        print(f"prepare: {ds_name}: {stats['files_val']} val + {stats['files_train']} train shards, "
              f"{stats['tokens_val']} val + {stats['tokens_train']} train tokens; val = the first "
              f"{stats['docs_val']} docs{side}", file=sys.stderr, flush=True)
    # Tokenizers of replaced variants that no kept dataset uses are dropped from the listing.
    used = {d["tokenizer_name"] for d in manifest["datasets"]}
    keep = [i for i, t in enumerate(manifest["tokenizers"]) if t.get("name") in used]
    manifest["tokenizers"] = [manifest["tokenizers"][i] for i in keep]
    manifest["tokenizer_specs"] = [manifest["tokenizer_specs"][i] for i in keep]
    manifest = relativize(manifest, root)
    trash = staging / "replaced"
    trash.mkdir()
    _swap_in(moves, trash, manifest_path, manifest)
    return manifest
