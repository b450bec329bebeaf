"""Dataset preparation, download from a hub-like mirror of a prepared tree, and the `data` command."""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pgolf_jax.data import commands, hub, layout, prepare
from pgolf_jax.data.shards import (
    ShardError,
    list_shards,
    load_shard,
    read_num_tokens,
    write_shard,
)
from pgolf_jax.data.tokenizer import load_tokenizer

N_DOCS, N_VAL, SHARD = 200, 20, 150_000
SP_VARIANT = "sp400"
OVERRIDES = {"max_sentence_length": 1 << 15}  # Brown docs are longer than SentencePiece's default limit


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, shared_texts, write_jsonl):
    texts = shared_texts("brown", N_DOCS)
    base = tmp_path_factory.mktemp("prep")
    docs = write_jsonl(base / "docs_selected.jsonl", texts)
    root = base / "out"
    manifest = prepare.prepare_from_docs(docs, root, variants=(SP_VARIANT, "byte260"), num_val_docs=N_VAL,
                                         shard_size=SHARD, trainer_overrides=OVERRIDES)
    return root, manifest, texts


def test_manifest_has_reference_keys(prepared):
    root, manifest, _ = prepared
    assert json.loads((root / "manifest.json").read_text()) == manifest
    assert set(manifest) == {"version", "num_docs", "num_val_docs", "shuffle_seed", "shard_size", "append_eos",
                             "docs_jsonl", "docs_meta", "tokenizer_specs", "tokenizers", "datasets"}
    assert manifest["version"] == "10B" and manifest["num_docs"] == N_DOCS and manifest["num_val_docs"] == N_VAL
    assert manifest["shard_size"] == SHARD and manifest["append_eos"] is False
    assert [d["name"] for d in manifest["datasets"]] == ["fineweb10B_sp400", "fineweb10B_byte260"]
    sp_tok, byte_tok = manifest["tokenizers"]
    assert sp_tok["model_path"] == "tokenizers/fineweb_400_bpe.model"
    assert sp_tok["vocab_path"] == "tokenizers/fineweb_400_bpe.vocab"
    assert sp_tok["recommended_bigram_vocab_size"] == 512 * 5 and sp_tok["kind"] == "sentencepiece_bpe"
    assert byte_tok["path"] == "tokenizers/fineweb_pure_byte_260.json" and byte_tok["pad_id"] == 0
    assert byte_tok["recommended_bigram_vocab_size"] == 384 * 5
    for ds in manifest["datasets"]:
        assert ds["path"] == f"datasets/{ds['name']}"
        assert ds["train_glob"] == f"datasets/{ds['name']}/fineweb_train_*.bin"
        assert (ds["bos_id"], ds["eos_id"]) == (1, 2)
        assert set(ds["stats"]) == {"docs_total", "docs_val", "docs_train", "files_total", "files_val",
                                    "files_train", "tokens_total", "tokens_val", "tokens_train"}


@pytest.mark.parametrize("variant", [SP_VARIANT, "byte260"])
def test_shards_match_stats_and_docs(prepared, variant):
    root, manifest, texts = prepared
    ds = next(d for d in manifest["datasets"] if d["name"] == f"fineweb10B_{variant}")
    tok_entry = next(t for t in manifest["tokenizers"] if t["name"] == ds["tokenizer_name"])
    tok = load_tokenizer(root / tok_entry.get("model_path", tok_entry.get("path")))
    st = ds["stats"]
    assert (st["docs_total"], st["docs_val"], st["docs_train"]) == (N_DOCS, N_VAL, N_DOCS - N_VAL)
    splits = {}
    for split in ("val", "train"):
        files = list_shards(str(root / ds["path"] / f"fineweb_{split}_*.bin"))
        assert [f.name for f in files] == [f"fineweb_{split}_{i:06d}.bin" for i in range(len(files))]
        sizes = [read_num_tokens(f) for f in files]
        assert len(files) == st[f"files_{split}"] and sum(sizes) == st[f"tokens_{split}"]
        assert all(n == SHARD for n in sizes[:-1]) and 0 < sizes[-1] <= SHARD  # the split change flushes
        splits[split] = np.concatenate([load_shard(f) for f in files])
    assert st["files_total"] == st["files_val"] + st["files_train"] and st["files_train"] > 1
    assert st["tokens_total"] == st["tokens_val"] + st["tokens_train"]
    # Every doc is [BOS] + encode(text), no EOS, in order; the first N_VAL docs are val.
    for split, docs in (("val", texts[:N_VAL]), ("train", texts[N_VAL:])):
        expected = np.concatenate([[1] + list(tok.encode(t)) for t in docs]).astype(np.uint16)
        assert np.array_equal(splits[split], expected)
        starts = np.flatnonzero(splits[split] == 1)
        assert len(starts) == len(docs) and starts[0] == 0
    assert (root / "datasets").iterdir() and not [p for p in (root / "datasets").iterdir() if p.name.startswith(".")]


def test_sidecar_is_honoured(tmp_path, write_jsonl):
    docs = write_jsonl(tmp_path / "docs_selected.jsonl", [f"doc {i} text" for i in range(30)])
    sidecar = {"num_docs": 30, "docs_val": 7, "docs_sha256": "abc", "shuffle_seed": 1337}
    (tmp_path / "docs_selected.source_manifest.json").write_text(json.dumps(sidecar))
    manifest = prepare.prepare_from_docs(docs, tmp_path / "out", variants=("byte260",), shard_size=50)
    assert manifest["num_val_docs"] == 7 and manifest["shuffle_seed"] == 1337
    assert manifest["docs_meta"]["source_sidecar"] == sidecar and manifest["docs_meta"]["docs_sha256"] == "abc"
    assert manifest["datasets"][0]["stats"]["docs_val"] == 7
    # An explicit count wins over the sidecar.
    assert prepare.prepare_from_docs(docs, tmp_path / "o2", variants=("byte260",), num_val_docs=3)["num_val_docs"] == 3
    (tmp_path / "docs_selected.source_manifest.json").write_text(json.dumps({"num_docs": 31}))
    with pytest.raises(ValueError, match=r"source_manifest\.json says 31 docs.*has 30"):
        prepare.prepare_from_docs(docs, tmp_path / "o3", variants=("byte260",), num_val_docs=3)


def test_bad_inputs_name_file_and_value(tmp_path, write_jsonl):
    docs = write_jsonl(tmp_path / "docs.jsonl", ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"num_val_docs=5 but .*docs\.jsonl has 3 docs"):
        prepare.prepare_from_docs(docs, tmp_path / "out", variants=("byte260",), num_val_docs=5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: not a JSON object"):
        prepare.prepare_from_docs(bad, tmp_path / "out", variants=("byte260",), num_val_docs=1)
    bad.write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: field 'text' must be a string \(got missing\)"):
        prepare.prepare_from_docs(bad, tmp_path / "out", variants=("byte260",), num_val_docs=1)
    bad.write_text('{"text": 5}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: field 'text' must be a string \(got int\)"):
        prepare.prepare_from_docs(bad, tmp_path / "out", variants=("byte260",), num_val_docs=1)
    with pytest.raises(ValueError, match="unsupported variant 'bpe1024'"):
        prepare.prepare_from_docs(docs, tmp_path / "out", variants=("bpe1024",), num_val_docs=1)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_other_variants_are_kept_in_manifest(tmp_path, write_jsonl):
    docs = write_jsonl(tmp_path / "docs.jsonl", [f"text number {i}" for i in range(12)])
    root = tmp_path / "out"
    prepare.prepare_from_docs(docs, root, variants=("byte260",), num_val_docs=2, shard_size=40)
    m = prepare.prepare_from_docs(docs, root, variants=("sp300",), num_val_docs=2, shard_size=40)
    assert [d["name"] for d in m["datasets"]] == ["fineweb10B_byte260", "fineweb10B_sp300"]
    before = _tree(root)
    # The same docs and settings: left as they are.
    assert prepare.prepare_from_docs(docs, root, variants=("byte260",), num_val_docs=2, shard_size=40) == m
    assert _tree(root) == before
    # Another split of a variant that exists is refused, and changes nothing ...
    with pytest.raises(FileExistsError, match=r"fineweb10B_byte260 .* built differently: num_val_docs 2 vs 3.*--force"):
        prepare.prepare_from_docs(docs, root, variants=("byte260",), num_val_docs=3, shard_size=40)
    assert _tree(root) == before
    # ... unless forced: it is replaced, and the other variant stays listed.
    m = prepare.prepare_from_docs(docs, root, variants=("byte260",), num_val_docs=3, shard_size=40, force=True)
    assert [(d["name"], d["source"]["num_val_docs"]) for d in m["datasets"]] == [("fineweb10B_sp300", 2),
                                                                              ("fineweb10B_byte260", 3)]
    assert {t["name"] for t in m["tokenizers"]} == {"sp_bpe_300", "pure_byte_260"}
    assert _tree(root)["tokenizers/fineweb_300_bpe.model"] == before["tokenizers/fineweb_300_bpe.model"]
    assert not list(root.glob(".prepare-*"))


def _tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_failed_prepare_leaves_the_root_byte_identical(tmp_path, write_jsonl):
    """A malformed line, a vocab too small for the text's characters, or a split larger than the
    docs: the error names the culprit and the existing tokenizer, shards and manifest stay."""
    docs = write_jsonl(tmp_path / "docs.jsonl", [f"text number {i}" for i in range(12)])
    root = tmp_path / "out"
    prepare.prepare_from_docs(docs, root, variants=("sp300", "byte260"), num_val_docs=2, shard_size=40)
    before = _tree(root)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(ValueError, match=r"^.*bad\.jsonl:2: not a JSON object"):
        prepare.prepare_from_docs(bad, root, variants=("sp300",), num_val_docs=1, force=True)
    cjk = write_jsonl(tmp_path / "cjk.jsonl", ["".join(chr(0x4E00 + i) for i in range(k, k + 400)) for k in range(3)])
    with pytest.raises(ValueError, match=r"vocab_size=300 is too small .* needs \d+ pieces for its characters"):
        prepare.prepare_from_docs(cjk, root, variants=("sp300",), num_val_docs=1, force=True)
    with pytest.raises(ValueError, match=r"num_val_docs=50 but .*docs\.jsonl has 12 docs"):
        prepare.prepare_from_docs(docs, root, variants=("sp300",), num_val_docs=50, force=True)
    assert _tree(root) == before and not list(root.glob(".prepare-*"))
    # A failed first prepare leaves no root at all.
    with pytest.raises(ValueError):
        prepare.prepare_from_docs(bad, tmp_path / "fresh", variants=("byte260",), num_val_docs=1)
    assert not (tmp_path / "fresh").exists()


def test_shard_checksums_are_recorded_and_checked(tmp_path, write_jsonl):
    from pgolf_jax.data.shards import open_shard

    docs = write_jsonl(tmp_path / "docs.jsonl", [f"text number {i}" for i in range(12)])
    m = prepare.prepare_from_docs(docs, tmp_path / "out", variants=("byte260",), num_val_docs=2, shard_size=40)
    ds = tmp_path / "out" / "datasets" / "fineweb10B_byte260"
    sums = m["datasets"][0]["checksums"]
    assert sorted(sums) == sorted(p.name for p in ds.glob("*.bin")) and all(v.startswith("crc32:") for v in sums.values())
    shard = ds / "fineweb_train_000000.bin"
    assert len(open_shard(shard, 260)) > 0
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0x01  # one flipped bit in the last token: a valid header, a plausible id
    shard.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match=r"fineweb_train_000000\.bin: checksum crc32:\w+ differs from crc32:\w+ "
                                         r"recorded in .*manifest\.json"):
        open_shard(shard, 260)
    with pytest.raises(ShardError, match="checksum"):
        layout.verify_dataset(ds)


def _hub_from(prepared, tmp_path) -> Path:
    """A local directory laid out like the Hugging Face dataset repo (<repo>/datasets/...)."""
    root, _, _ = prepared
    mirror = tmp_path / "hub"
    shutil.copytree(root, mirror / "datasets")
    return mirror


def _without_provenance(manifest: dict) -> dict:
    return {**manifest, "datasets": [{k: v for k, v in d.items() if k not in ("source", "checksums")}
                                     for d in manifest["datasets"]]}


def test_download_from_local_mirror(prepared, tmp_path):
    root, manifest, _ = prepared
    mirror = _hub_from(prepared, tmp_path)
    out = tmp_path / "data"
    st = next(d for d in manifest["datasets"] if d["name"] == "fineweb10B_byte260")["stats"]
    ds_dir = hub.download("byte260", 2, out, source=str(mirror))
    assert ds_dir == out / "datasets" / "fineweb10B_byte260"
    names = sorted(p.name for p in ds_dir.iterdir())
    assert names == sorted([f"fineweb_val_{i:06d}.bin" for i in range(st["files_val"])]
                           + ["fineweb_train_000000.bin", "fineweb_train_000001.bin"])
    for name in names:
        assert (ds_dir / name).read_bytes() == (root / "datasets" / "fineweb10B_byte260" / name).read_bytes()
    assert (out / "tokenizers" / "fineweb_pure_byte_260.json").is_file()
    local = json.loads((out / "manifest.json").read_text())
    assert _without_provenance(local) == _without_provenance(manifest)
    got = next(d for d in local["datasets"] if d["name"] == "fineweb10B_byte260")
    assert sorted(got["checksums"]) == names and got["source"] == {"local_mirror": str(mirror)}
    # A damaged local shard is fetched again; intact ones are left alone.
    (ds_dir / "fineweb_train_000001.bin").write_bytes(b"junk")
    hub.download("byte260", 2, out, source=str(mirror))
    assert read_num_tokens(ds_dir / "fineweb_train_000001.bin") > 0
    with pytest.raises(ValueError, match=rf"byte260 only has {st['files_train']} training shards.*requested 999"):
        hub.download("byte260", 999, out, source=str(mirror))
    with pytest.raises(ValueError, match="dataset fineweb10B_sp1024 not in"):
        hub.download("sp1024", 1, out, source=str(mirror))


def test_download_keeps_local_datasets_and_refuses_to_overwrite_prepared_ones(prepared, tmp_path, write_jsonl):
    mirror = _hub_from(prepared, tmp_path)
    out = tmp_path / "data"
    docs = write_jsonl(tmp_path / "docs.jsonl", [f"text number {i}" for i in range(12)])
    prepare.prepare_from_docs(docs, out, variants=("sp300", "byte260"), num_val_docs=2, shard_size=40)
    before = _tree(out)
    with pytest.raises(FileExistsError, match=r"fineweb10B_byte260 .* prepared locally from .*docs\.jsonl.*--force"):
        hub.download("byte260", 1, out, source=str(mirror))
    assert _tree(out) == before
    hub.download(SP_VARIANT, 1, out, source=str(mirror))  # another variant: added beside them
    names = [d["name"] for d in json.loads((out / "manifest.json").read_text())["datasets"]]
    assert {"fineweb10B_sp300", "fineweb10B_byte260", "fineweb10B_sp400"} <= set(names)
    local = next(d for d in json.loads((out / "manifest.json").read_text())["datasets"] if d["name"] == "fineweb10B_sp300")
    assert local["source"]["num_val_docs"] == 2  # the prepared entry is kept as it was


def test_download_rejects_corrupt_remote_shard(prepared, tmp_path):
    mirror = _hub_from(prepared, tmp_path)
    (mirror / "datasets" / "datasets" / "fineweb10B_sp400" / "fineweb_val_000000.bin").write_bytes(b"\0" * 2000)
    with pytest.raises(ShardError, match=r"fineweb_val_000000\.bin"):
        hub.download(SP_VARIANT, 0, tmp_path / "data", source=str(mirror))
    assert not (tmp_path / "data" / "datasets" / "fineweb10B_sp400" / "fineweb_val_000000.bin").exists()


def test_download_through_huggingface_hub(prepared, tmp_path, fake_hub, monkeypatch):
    """The hub source is huggingface_hub itself, against a local endpoint: files land in its cache
    and are linked into the layout; a missing file is one line; offline mode serves the cache."""
    from huggingface_hub import constants

    repo = tmp_path / "repo"
    url = fake_hub(repo)
    with pytest.raises(RuntimeError, match=r"cannot download datasets/manifest\.json from willdepueoai/parameter-golf: "
                                           r"\w+: 404"):
        hub.download("byte260", 1, tmp_path / "data", endpoint=url)
    shutil.copytree(prepared[0], repo / "datasets")
    ds_dir = hub.download(SP_VARIANT, 1, tmp_path / "data", endpoint=url)
    shard = ds_dir / "fineweb_train_000000.bin"
    assert shard.read_bytes() == (prepared[0] / "datasets" / "fineweb10B_sp400" / shard.name).read_bytes()
    assert (tmp_path / "data" / "tokenizers" / "fineweb_400_bpe.vocab").is_file()
    blobs = list((tmp_path / "hf_cache").rglob("blobs/*"))
    assert blobs and shard.stat().st_ino in {b.stat().st_ino for b in blobs}  # linked, not a second copy
    entry = next(d for d in json.loads((tmp_path / "data" / "manifest.json").read_text())["datasets"]
                 if d["name"] == "fineweb10B_sp400")
    assert entry["source"] == {"hub_repo_id": "willdepueoai/parameter-golf", "remote_root": "datasets"}
    shard.unlink()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no network: the cache answers
    hub.download(SP_VARIANT, 1, tmp_path / "data", endpoint=url)
    assert shard.is_file()


def test_download_picks_repo_per_variant(tmp_path, monkeypatch):
    seen = []

    def fake_fetch(self, remote, dest):
        seen.append((self.repo_id, remote))
        raise RuntimeError("offline")

    monkeypatch.setattr(hub._Source, "fetch", fake_fetch)
    for variant in ("sp8192", "sp1024"):
        with pytest.raises(RuntimeError):
            hub.download(variant, 1, tmp_path)
    assert seen == [("kevclark/parameter-golf", "datasets/manifest.json"),
                    ("willdepueoai/parameter-golf", "datasets/manifest.json")]
    with pytest.raises(ValueError, match="set HF_ENDPOINT=http://mirror instead"):
        hub.download("sp1024", 1, tmp_path, source="http://mirror")


def _run_cli(argv) -> int:
    parser = argparse.ArgumentParser()
    commands.add_data_args(parser)
    return commands.data_command(parser.parse_args(argv))


def test_data_command(prepared, tmp_path, capsys, write_jsonl):
    root, manifest, _ = prepared
    ds = root / "datasets" / "fineweb10B_byte260"
    assert _run_cli(["verify", str(ds), "--vocab-size", "260"]) == 0
    st = manifest["datasets"][1]["stats"]
    assert f"val {st['files_val']} files {st['tokens_val']} tokens" in capsys.readouterr().out
    assert _run_cli(["verify", str(root / "datasets" / "fineweb10B_sp400"), "--vocab-size", "300"]) == 1
    assert "token id" in capsys.readouterr().err
    mirror = _hub_from(prepared, tmp_path)
    out = tmp_path / "data"
    assert _run_cli(["download", "--variant", "byte260", "--train-shards", "1", "--out", str(out),
                     "--source", str(mirror)]) == 0
    assert _run_cli(["verify", str(out / "datasets" / "fineweb10B_byte260")]) == 0
    docs = write_jsonl(tmp_path / "d.jsonl", ["one", "two", "three"])
    assert _run_cli(["prepare", "--docs", str(docs), "--out", str(tmp_path / "p"), "--variants", "byte260",
                     "--num-val-docs", "1", "--shard-size", "5"]) == 0
    # 4 val tokens, then 4 + 6 train tokens in shards of 5: one val and two train shards.
    assert len(list((tmp_path / "p" / "datasets" / "fineweb10B_byte260").glob("*.bin"))) == 3
    capsys.readouterr()
    assert _run_cli(["prepare", "--docs", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.jsonl" in err
    write_shard(tmp_path / "v" / "fineweb_val_000001.bin", [1, 2])
    assert _run_cli(["verify", str(tmp_path / "v")]) == 1
    assert "not numbered" in capsys.readouterr().err
