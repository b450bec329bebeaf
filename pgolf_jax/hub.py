"""Manifest-driven download of the published challenge shards (as the reference's
cached_challenge_fineweb.py) from the Hugging Face hub, another http(s) mirror or a local directory."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from pgolf_jax.prepare import PROGRESS_EVERY, dataset_dir_for_variant
from pgolf_jax.runlog import Progress
from pgolf_jax.shards import ShardError, atomic_output, read_num_tokens

DEFAULT_REPO_ID = "willdepueoai/parameter-golf"
LARGE_VOCAB_REPO_ID = "kevclark/parameter-golf"  # hosts sp4096 and sp8192
LARGE_VOCAB_VARIANTS = ("sp4096", "sp8192")
REMOTE_ROOT = "datasets"


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
            progress = (Progress(f"download: {dest.name}", total, every=PROGRESS_EVERY, unit="MB", scale=1e6)
                        if total > (1 << 24) else None)
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
    progress = Progress(f"download: {ds_name}", len(shard_names), every=PROGRESS_EVERY, unit="shards")
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
