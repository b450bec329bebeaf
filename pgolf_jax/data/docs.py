"""Reading a docs_selected.jsonl (the challenge's document export): its texts in order, its
document count, the optional sidecar beside it, and what identifies the docs a dataset was built
from."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

SIDECAR_SUFFIX = ".source_manifest.json"


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
