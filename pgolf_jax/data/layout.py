"""The challenge's dataset layout: variant names and where a variant's tokenizer and shards live
under a root, the root's manifest.json, and checks of what a root or a dataset folder holds.

Layout (as the reference's data/ directory):
  <root>/manifest.json
  <root>/tokenizers/fineweb_<V>_bpe.{model,vocab} | fineweb_pure_byte_260.json
  <root>/datasets/fineweb10B_<variant>/fineweb_{val,train}_NNNNNN.bin
  (CaseOps variants also fineweb_val_bytes_NNNNNN.bin: the original bytes of each val token)
The manifest is always written last, so its presence means the files it lists are complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

from pgolf_jax.data.shards import open_shard, read_num_tokens, recorded_checksum
from pgolf_jax.data.sidecars import SIDECAR_TAG
from pgolf_jax.fsio import read_json

DEFAULT_NAME = "fineweb10B"


# A CaseOps variant (sp<V>_caseops, or the records' long spelling): SentencePiece trained on the
# text after the data/caseops.py transform, its files named as the records' published set names them.
CASEOPS_SUFFIX = "_lossless_caps_caseops_v1_reserved"


def parse_variant(variant: str) -> tuple[str, int]:
    """'sp<V>' (or a CaseOps 'sp<V>_caseops') -> ('sp', V); 'byte260' -> ('byte', 260)."""
    if variant == "byte260":
        return "byte", 260
    m = re.fullmatch(rf"sp(\d+)(_caseops|{CASEOPS_SUFFIX})?", variant)
    if not m or not 0 < int(m.group(1)) <= 2**16:
        raise ValueError(f"unsupported variant {variant!r}: expected sp<VOCAB_SIZE> (e.g. sp1024), "
                         "sp<VOCAB_SIZE>_caseops or byte260")
    return "sp", int(m.group(1))


def is_caseops(variant: str) -> bool:
    """Whether a (valid) variant tokenizes the CaseOps-transformed text."""
    parse_variant(variant)
    return variant.endswith(("_caseops", CASEOPS_SUFFIX))


def variant_stem(variant: str) -> str:
    """The variant as its files spell it: sp<V>, byte260 or sp<V> + CASEOPS_SUFFIX."""
    kind, vocab = parse_variant(variant)
    return f"sp{vocab}{CASEOPS_SUFFIX}" if is_caseops(variant) else variant


def tokenizer_file(output_root: Path, variant: str) -> Path:
    kind, vocab = parse_variant(variant)
    suffix = CASEOPS_SUFFIX if is_caseops(variant) else ""
    name = f"fineweb_{vocab}_bpe{suffix}.model" if kind == "sp" else "fineweb_pure_byte_260.json"
    return Path(output_root) / "tokenizers" / name


def dataset_dir_for_variant(variant: str) -> str:
    return f"{DEFAULT_NAME}_{variant_stem(variant)}"


def relativize(value, root: Path):
    """Absolute paths under root become root-relative POSIX strings (as the reference manifest)."""
    if isinstance(value, dict):
        return {k: relativize(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [relativize(v, root) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        with contextlib.suppress(ValueError):
            return Path(value).relative_to(root).as_posix()
    return value


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
    ds = next((d for d in (manifest or {}).get("datasets", []) if isinstance(d, dict) and d.get("name") == ds_name),
              None)
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


def _verify_sidecars(d: Path, files_val: int) -> int:
    """Check the val byte sidecars of a dataset dir, if it has any: one per val shard, each as long
    as its shard (and its recorded checksum); returns how many there are."""
    sidecars = sorted(d.glob(f"fineweb_val{SIDECAR_TAG}*.bin"))
    if not sidecars:
        return 0
    expected = [f"fineweb_val{SIDECAR_TAG}{i:06d}.bin" for i in range(files_val)]
    if [f.name for f in sidecars] != expected:
        raise ValueError(f"{d}: {len(sidecars)} val byte sidecars for {files_val} val shards "
                         f"(expected {expected[:2]}...)")
    for f in sidecars:
        shard = f.with_name(f.name.replace(SIDECAR_TAG, "_"))
        if len(open_shard(f)) != read_num_tokens(shard):
            raise ValueError(f"{f}: {read_num_tokens(f)} byte counts for the {read_num_tokens(shard)} tokens "
                             f"of {shard.name}")
    return len(sidecars)


def verify_dataset(dataset_dir, vocab_size: int = 0, structure_only: bool = False) -> dict:
    """Validate every shard of a dataset dir (header, recorded checksum, and token ids < vocab_size
    if given); returns counts. A shard no manifest records a checksum for cannot have its contents
    checked: that is an error unless `structure_only` asks for headers and token ids alone."""
    d = Path(dataset_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {d}")
    counts = {}
    for split in ("val", "train"):
        files = sorted(f for f in d.glob(f"fineweb_{split}_*.bin") if SIDECAR_TAG not in f.name)
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
    counts["files_val_bytes"] = _verify_sidecars(d, counts["files_val"])
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
