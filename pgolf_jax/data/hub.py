"""Manifest-driven download of the published challenge shards (as the reference's
cached_challenge_fineweb.py), through huggingface_hub (retries, resumable downloads, HF_TOKEN,
HF_ENDPOINT mirrors, HF_HUB_OFFLINE and its cache), or from a local directory laid out like the
hub repo (tests, air-gapped copies)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

from pgolf_jax.data.layout import dataset_dir_for_variant, dataset_problem, is_caseops, read_manifest
from pgolf_jax.data.prepare import PROGRESS_EVERY
from pgolf_jax.data.shards import (
    CHECKSUM_KEY,
    ShardError,
    file_checksum,
    read_num_tokens,
)
from pgolf_jax.data.sidecars import sidecar_for
from pgolf_jax.fsio import atomic_output, read_json, write_error, write_json
from pgolf_jax.runlog import Progress

DEFAULT_REPO_ID = "willdepueoai/parameter-golf"
LARGE_VOCAB_REPO_ID = "kevclark/parameter-golf"  # hosts sp4096 and sp8192
LARGE_VOCAB_VARIANTS = ("sp4096", "sp8192")
CASEOPS_REPO_ID = "romeerp/parameter-golf-caseops-v1"  # the records' CaseOps set (#1729), byte sidecars included
REMOTE_ROOT = "datasets"


class _Source:
    """Where hub files come from: the Hugging Face hub (or the HF_ENDPOINT mirror), or a local directory."""

    def __init__(self, repo_id: str, source: str | os.PathLike | None, revision: str | None = None,
                 endpoint: str | None = None):
        self.repo_id, self.revision, self.endpoint, self.local = repo_id, revision, endpoint, None
        if source is not None:
            if str(source).startswith(("http://", "https://")):
                raise ValueError(f"--source {source}: for a hub mirror set HF_ENDPOINT={source} instead "
                                 "(--source takes a local directory laid out like the repo)")
            self.local = Path(source).expanduser()
            if not self.local.is_dir():
                raise FileNotFoundError(f"download source directory not found: {self.local}")
        self.where = str(self.local) if self.local is not None else repo_id

    def fetch(self, remote: str, dest: Path) -> None:
        """Place the file `remote` of the repo at dest, atomically (a reader never sees half of it)."""
        if self.local is not None:
            src = self.local / remote
            if not src.is_file():
                raise FileNotFoundError(f"{src} not found in download source {self.local}")
            with open(src, "rb") as fin, atomic_output(dest) as fout:
                shutil.copyfileobj(fin, fout, 1 << 22)
            return
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import disable_progress_bars

        if not sys.stderr.isatty():
            disable_progress_bars()  # our own progress line counts files; tqdm floods logs
        try:
            cached = hf_hub_download(self.repo_id, remote, repo_type="dataset", revision=self.revision,
                                     endpoint=self.endpoint)
        except Exception as exc:  # HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, ...
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise RuntimeError(f"cannot download {remote} from {self.repo_id}: {type(exc).__name__}: {first}") from None
        _place(Path(cached), dest)


def _place(cached: Path, dest: Path) -> None:
    """Hard-link the hub cache's blob into the layout (no second copy on disk), else copy; either
    way through a temp name and one rename."""
    blob = cached.resolve()
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.link")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        try:
            os.link(blob, tmp)
        except OSError:  # another filesystem, or links not allowed
            with open(blob, "rb") as fin, atomic_output(dest) as fout:
                shutil.copyfileobj(fin, fout, 1 << 22)
            return
        os.replace(tmp, dest)
    except OSError as exc:
        raise write_error(dest, exc) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


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
             remote_root: str = REMOTE_ROOT, source=None, revision: str | None = None, force: bool = False,
             endpoint: str | None = None) -> Path:
    """Fetch the published val shards, the first train_shards train shards and the tokenizer.

    Manifest-driven like the reference's cached_challenge_fineweb.py; repo_id=None picks
    kevclark/parameter-golf for sp4096/sp8192 and willdepueoai/parameter-golf otherwise. source is
    None (the hub, or `endpoint`; HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE apply) or a local directory laid out
    like the repo. Shards already present and valid are kept (a re-run resumes). The local
    manifest keeps every dataset it listed and records the checksum of each downloaded file; a
    dataset of this variant that was prepared locally is replaced only with force=True."""
    ds_name = dataset_dir_for_variant(variant)
    if int(train_shards) < 0:
        raise ValueError(f"train_shards must be >= 0, got {train_shards}")
    if repo_id is None:
        repo_id = (CASEOPS_REPO_ID if is_caseops(variant) else
                   LARGE_VOCAB_REPO_ID if variant in LARGE_VOCAB_VARIANTS else DEFAULT_REPO_ID)
    root = Path(output_root).expanduser().resolve()
    src = _Source(repo_id, source, revision, endpoint)
    prefix = f"{remote_root}/" if remote_root else ""
    local = read_manifest(root) if root.is_dir() else None
    _, ds_old, _ = dataset_problem(root, local, variant)
    mine = {"hub_repo_id": repo_id, "remote_root": remote_root} if source is None else {"local_mirror": str(src.local)}
    if ds_old is not None and (ds_old.get("source") or {}).get("docs_jsonl") and not force:
        raise FileExistsError(f"{ds_name} in {root} was prepared locally from {ds_old['source']['docs_jsonl']}; "
                              "downloading would replace its shards: pass --force, or another --out")

    # The remote manifest says what the dataset holds; it is read from a temp copy and merged below.
    manifest_remote = f"{prefix}manifest.json"
    staged = root / f".manifest.{os.getpid()}.download"
    try:
        src.fetch(manifest_remote, staged)
        remote = read_json(staged, f"{manifest_remote} of {src.where}")
    finally:
        staged.unlink(missing_ok=True)
    datasets = remote.get("datasets", []) if isinstance(remote, dict) else []
    entry = next((d for d in datasets if isinstance(d, dict) and d.get("name") == ds_name), None)
    if entry is None:
        have = sorted(str(d.get("name")) for d in datasets if isinstance(d, dict))
        raise ValueError(f"dataset {ds_name} not in {manifest_remote} of {src.where} (it has {have})")
    stats = entry.get("stats") or {}
    try:
        files_val, files_train = int(stats["files_val"]), int(stats["files_train"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{manifest_remote} of {src.where}: dataset {ds_name} lacks "
                         "stats.files_val/files_train") from None
    if int(train_shards) > files_train:
        raise ValueError(f"{variant} only has {files_train} training shards on {src.where}, requested {train_shards}")
    tok_entry = next((t for t in remote.get("tokenizers", []) if t.get("name") == entry.get("tokenizer_name")), None)
    if tok_entry is None:
        raise ValueError(f"tokenizer {entry.get('tokenizer_name')!r} of {ds_name} not in {manifest_remote} "
                         f"of {src.where}")
    artifacts = [str(tok_entry[k]) for k in ("model_path", "vocab_path", "path") if tok_entry.get(k)]
    if not artifacts:
        raise ValueError(f"tokenizer entry {tok_entry.get('name')!r} in {manifest_remote} lists no files")

    shard_names = [f"fineweb_val_{i:06d}.bin" for i in range(files_val)]
    if entry.get("val_bytes_glob") or is_caseops(variant):  # bpb of a CaseOps set needs its byte sidecars
        shard_names += [sidecar_for(Path(name)).name for name in shard_names]
    shard_names += [f"fineweb_train_{i:06d}.bin" for i in range(int(train_shards))]
    progress = Progress(f"download: {ds_name}", len(shard_names), every=PROGRESS_EVERY, unit="shards")
    checksums = dict((ds_old or {}).get(CHECKSUM_KEY) or {})
    for i, fname in enumerate(shard_names):
        remote_path = f"{prefix}datasets/{ds_name}/{fname}"
        dest = _local_path(remote_path, remote_root, root)
        if dest.exists():
            if _valid_shard(dest) and (fname not in checksums or checksums[fname] == file_checksum(dest)):
                checksums.setdefault(fname, file_checksum(dest))
                continue
            print(f"download: {dest} is not a valid shard, fetching it again", file=sys.stderr)
        src.fetch(remote_path, dest)
        try:
            read_num_tokens(dest)
        except ShardError as exc:
            dest.unlink(missing_ok=True)
            raise ShardError(f"downloaded from {src.where}: {exc}") from None
        checksums[fname] = file_checksum(dest)
        progress.update(i + 1)
    for art in artifacts:
        dest = _local_path(f"{prefix}{art}", remote_root, root)
        if not dest.is_file():
            src.fetch(f"{prefix}{art}", dest)
    progress.finish(len(shard_names))

    # Local manifest = the remote one, with this dataset's provenance and checksums, every dataset
    # the local manifest already described kept as it was, and its datasets the remote lacks added.
    merged = dict(remote)
    mine_entry = dict(entry, source=mine, **{CHECKSUM_KEY: checksums})
    local_ds = {d.get("name"): d for d in (local or {}).get("datasets", []) if isinstance(d, dict)}
    merged["datasets"] = [mine_entry if d is entry else local_ds.pop(d.get("name"), d) for d in datasets]
    merged["datasets"] += list(local_ds.values())
    tok_names = {t.get("name") for t in merged.get("tokenizers", [])}
    for t in (local or {}).get("tokenizers", []):
        if t.get("name") not in tok_names:
            merged["tokenizers"] = [*merged.get("tokenizers", []), t]
            tok_names.add(t.get("name"))
    write_json(root / "manifest.json", merged)
    return _local_path(f"{prefix}datasets/{ds_name}", remote_root, root)
