"""Dataset preparation, download from a hub-like mirror of a prepared tree, and the `data` command."""

import argparse
import functools
import http.server
import itertools
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from pgolf_jax import hub, prepare
from pgolf_jax.shards import ShardError, list_shards, load_shard, read_num_tokens, write_shard
from pgolf_jax.tokenizer import load_tokenizer

N_DOCS, N_VAL, SHARD = 200, 20, 150_000
SP_VARIANT = "sp400"
OVERRIDES = {"max_sentence_length": 1 << 15}  # Brown docs are longer than SentencePiece's default limit


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, shared_docs, write_jsonl):
    path = shared_docs("brown")
    if path is None:
        pytest.skip("shared brown corpus not available")
    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in itertools.islice(f, N_DOCS)]
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
    m = prepare.prepare_from_docs(docs, root, variants=("byte260",), num_val_docs=3, shard_size=40)
    assert [d["name"] for d in m["datasets"]] == ["fineweb10B_byte260"]  # a different split drops the rest


def _hub_from(prepared, tmp_path) -> Path:
    """A local directory laid out like the Hugging Face dataset repo (<repo>/datasets/...)."""
    root, _, _ = prepared
    mirror = tmp_path / "hub"
    shutil.copytree(root, mirror / "datasets")
    return mirror


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
    assert json.loads((out / "manifest.json").read_text()) == manifest
    # A damaged local shard is fetched again; intact ones are left alone.
    (ds_dir / "fineweb_train_000001.bin").write_bytes(b"junk")
    hub.download("byte260", 2, out, source=str(mirror))
    assert read_num_tokens(ds_dir / "fineweb_train_000001.bin") > 0
    with pytest.raises(ValueError, match=rf"byte260 only has {st['files_train']} training shards.*requested 999"):
        hub.download("byte260", 999, out, source=str(mirror))
    with pytest.raises(ValueError, match="dataset fineweb10B_sp1024 not in"):
        hub.download("sp1024", 1, out, source=str(mirror))


def test_download_rejects_corrupt_remote_shard(prepared, tmp_path):
    mirror = _hub_from(prepared, tmp_path)
    (mirror / "datasets" / "datasets" / "fineweb10B_sp400" / "fineweb_val_000000.bin").write_bytes(b"\0" * 2000)
    with pytest.raises(ShardError, match=r"fineweb_val_000000\.bin"):
        hub.download(SP_VARIANT, 0, tmp_path / "data", source=str(mirror))
    assert not (tmp_path / "data" / "datasets" / "fineweb10B_sp400" / "fineweb_val_000000.bin").exists()


@pytest.fixture
def http_base(tmp_path):
    """Serve tmp_path/www over HTTP on localhost."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_over_http(prepared, tmp_path, http_base):
    www, url = http_base
    with pytest.raises(RuntimeError, match=rf"HTTP 404 .* for {url}/datasets/manifest\.json"):
        hub.download("byte260", 1, tmp_path / "data", source=url)
    shutil.copytree(prepared[0], www / "datasets")
    ds_dir = hub.download(SP_VARIANT, 1, tmp_path / "data", source=url + "/")
    assert read_num_tokens(ds_dir / "fineweb_train_000000.bin") > 0
    assert (tmp_path / "data" / "tokenizers" / "fineweb_400_bpe.vocab").is_file()


def test_download_picks_repo_per_variant(tmp_path, monkeypatch):
    seen = []

    def fake_fetch(self, remote, dest):
        seen.append(self.base + remote)
        raise RuntimeError("offline")

    monkeypatch.setattr(hub._Source, "fetch", fake_fetch)
    for variant in ("sp8192", "sp1024"):
        with pytest.raises(RuntimeError):
            hub.download(variant, 1, tmp_path)
    assert seen == ["https://huggingface.co/datasets/kevclark/parameter-golf/resolve/main/datasets/manifest.json",
                    "https://huggingface.co/datasets/willdepueoai/parameter-golf/resolve/main/datasets/manifest.json"]


def _run_cli(argv) -> int:
    parser = argparse.ArgumentParser()
    prepare.add_data_args(parser)
    return prepare.data_command(parser.parse_args(argv))


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
