"""CaseOps (issue 25 item 1): the bijective case transform, the val byte sidecars a CaseOps prepare
writes, bpb counted from sidecars, and token-shard globs that never pick one up."""

import json
import random
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from pgolf_jax.data import caseops, layout, prepare
from pgolf_jax.data.caseops import ALLCAPS, CAPNEXT, ESC, TITLE
from pgolf_jax.data.shards import ShardError, list_shards, load_shard, load_val_tokens, write_shard
from pgolf_jax.data.sidecars import load_val_bytes, sidecar_for

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.py"


@pytest.mark.parametrize("text,want", [
    ("The NASA Launch", f"{TITLE}the {ALLCAPS}nasa {TITLE}launch"),
    ("iPhone OpenAI", f"i{CAPNEXT}phone {TITLE}open{CAPNEXT}a{CAPNEXT}i"),
    ("A b I.", f"{TITLE}a b {TITLE}i."),
    ("ÉCOLE x" + TITLE, f"É{ALLCAPS}cole x{ESC}{TITLE}"),
    ("McDONALD", f"{TITLE}mc{CAPNEXT}d{CAPNEXT}o{CAPNEXT}n{CAPNEXT}a{CAPNEXT}l{CAPNEXT}d"),
])
def test_encode_examples(text, want):
    assert caseops.encode(text) == want
    assert caseops.decode(want) == text


def test_round_trip_on_the_shared_corpora(shared_docs):
    found = [p for p in (shared_docs("brown"), shared_docs("nlp-corpus")) if p is not None]
    if not found:
        pytest.skip("shared corpora not available")
    for path in found:
        with open(path, encoding="utf-8") as f:
            for line in f:
                text = json.loads(line)["text"]
                assert caseops.decode(caseops.encode(text)) == text


def test_round_trip_on_generated_unicode():
    rng = random.Random(0)
    # Letters of both cases, the operators, their private-use neighbours (BMP and plane 15),
    # non-ASCII letters, astral characters, whitespace and punctuation.
    alphabet = list("aZbYzA \n\t.-'") + list(caseops.OPERATORS) + ["\ue000", "\ue005", "\uf8ff", "\U000f0001",
                                                                    "é", "É", "ß", "ǅ", "\U0001f600", "\x00"]
    for _ in range(3000):
        n = rng.randint(0, 24)
        text = "".join(rng.choice(alphabet) if rng.random() < 0.8 else chr(rng.randint(1, 0x10FFFF) & ~0x800)
                       for _ in range(n)).encode("utf-8", "replace").decode("utf-8")
        enc = caseops.encode(text)
        assert caseops.decode(enc) == text
        assert not any("A" <= c <= "Z" for c in enc)
        # Split anywhere, the pieces' original bytes add up to the text's.
        cuts = sorted(rng.sample(range(len(enc) + 1), min(3, len(enc) + 1)))
        pieces = [enc[a:b] for a, b in zip([0, *cuts], [*cuts, len(enc)])]
        assert sum(caseops.original_byte_counts(pieces)) == len(text.encode("utf-8"))


@pytest.mark.parametrize("bad", [TITLE, f"a{TITLE}b", f"{CAPNEXT}a", f"{TITLE}1", ESC, "A", f"{ALLCAPS}{ESC}{TITLE}"])
def test_decode_refuses_streams_no_text_encodes_to(bad):
    with pytest.raises(caseops.CaseOpsError):
        caseops.decode(bad)


def test_globs_skip_byte_sidecars(tmp_path):
    for name in ("fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin", "fineweb_val_000001.bin"):
        write_shard(tmp_path / name, np.arange(5))
    assert [p.name for p in list_shards(str(tmp_path / "fineweb_val_*.bin"))] == ["fineweb_val_000000.bin",
                                                                                 "fineweb_val_000001.bin"]
    assert sidecar_for(tmp_path / "fineweb_val_000001.bin").name == "fineweb_val_bytes_000001.bin"
    with pytest.raises(FileNotFoundError, match="fineweb_val_bytes_000001.bin not found"):
        load_val_bytes(str(tmp_path / "fineweb_val_*.bin"), 10)
    write_shard(tmp_path / "fineweb_val_bytes_000001.bin", np.arange(4))
    with pytest.raises(ShardError, match="fineweb_val_bytes_000001.bin: 4 byte counts for the 5 tokens"):
        load_val_bytes(str(tmp_path / "fineweb_val_*.bin"), 10)
    with pytest.raises(ValueError, match="fineweb_val_bytes_000001.bin: 4 byte counts for the 5 tokens"):
        layout.verify_dataset(tmp_path, structure_only=True)
    write_shard(tmp_path / "fineweb_val_bytes_000001.bin", np.arange(5))
    assert load_val_bytes(str(tmp_path / "fineweb_val_*.bin"), 8).tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    (tmp_path / "fineweb_val_bytes_000000.bin").unlink()
    (tmp_path / "fineweb_val_bytes_000001.bin").unlink()
    assert load_val_bytes(str(tmp_path / "fineweb_val_*.bin"), 10) is None  # no sidecars: the byte tables count


@pytest.fixture(scope="module")
def caseops_sample(tmp_path_factory, shared_texts, write_jsonl):
    """An sp1024_caseops dataset of 300 nlp-corpus docs (150 val), tokenizer trained on them."""
    texts = shared_texts("nlp-corpus", 300)
    base = tmp_path_factory.mktemp("caseops")
    docs = write_jsonl(base / "docs_selected.jsonl", texts)
    manifest = prepare.prepare_from_docs(docs, base / "root", variants=("sp1024_caseops",), num_val_docs=150,
                                         shard_size=30_000, verbose=False)
    return base / "root", manifest, texts


def test_caseops_prepare_layout_and_tokenizer(caseops_sample):
    root, manifest, texts = caseops_sample
    ds = manifest["datasets"][0]
    name = "fineweb10B_sp1024_lossless_caps_caseops_v1_reserved"
    assert ds["name"] == name and ds["text_transform"] == caseops.NAME and ds["stats"]["docs_val"] == 150
    assert ds["val_bytes_glob"] == f"datasets/{name}/fineweb_val_bytes_*.bin"
    d = root / "datasets" / name
    assert sorted(p.name for p in d.glob("*_bytes_*")) == [f"fineweb_val_bytes_{i:06d}.bin"
                                                          for i in range(ds["stats"]["files_val"])]
    assert set(ds["checksums"]) == {p.name for p in d.glob("*.bin")}  # sidecars checked like shards
    assert layout.verify_dataset(d, 1024)["files_val_bytes"] == ds["stats"]["files_val"]
    tok = caseops.CaseOpsTokenizer(root / manifest["tokenizers"][0]["model_path"])
    assert [tok.sp.piece_to_id(op) for op in caseops.OPERATORS] == [4, 5, 6, 7]  # user-defined, after <unk>
    assert tok.decode(tok.encode("The NASA iPhone")) == "The NASA iPhone"


def test_sidecar_bytes_of_each_val_doc_sum_to_its_utf8_bytes(caseops_sample):
    root, manifest, texts = caseops_sample
    ds = manifest["datasets"][0]
    pattern = str(root / ds["val_glob"])
    tokens = np.concatenate([load_shard(f) for f in list_shards(pattern)])
    nbytes = load_val_bytes(pattern, len(tokens))
    starts = np.flatnonzero(tokens == 1)  # BOS opens every document and stands for no bytes
    assert len(starts) == 150 and (nbytes[starts] == 0).all()
    sums = np.add.reduceat(nbytes, starts)
    unchanged = [i for i in range(150) if unicodedata.normalize("NFKC", texts[i]) == texts[i]]
    assert len(unchanged) > 100
    for i in unchanged:
        assert sums[i] == len(texts[i].encode("utf-8")), i
    # Operators stand for no bytes.
    ops = np.isin(tokens, [4, 5, 6, 7])
    assert ops.any() and (nbytes[ops] == 0).all()


def test_sidecar_bpb_equals_table_bpb_on_plain_sp1024(sample_data, tmp_path):
    """Sidecars holding each token's piece bytes (the byte tables' count) give today's bpb exactly,
    through the run's own evaluator factory."""
    import jax

    from pgolf_jax import config as C
    from pgolf_jax import dist
    from pgolf_jax.data.tokenizer import build_luts, token_bytes
    from pgolf_jax.model.gpt import build_model
    from pgolf_jax.pipeline import make_evaluator_factory

    data = tmp_path / "datasets" / "fineweb10B_sp1024"
    shutil.copytree(sample_data["root"] / "datasets" / "fineweb10B_sp1024", data)
    over = {**sample_data["overrides"], "data.data_path": str(data), "eval.val_tokens_limit": 8192,
            "model.num_layers": 1, "model.model_dim": 32, "model.num_heads": 2, "model.num_kv_heads": 1}
    cfg = C.load(TINY, over)
    model = build_model(cfg.model)
    params = jax.jit(model.init)(jax.random.key(0))
    mesh = dist.make_mesh()

    compiled = {}

    def result(mode, run=True):
        c = C.load(TINY, {**over, "data.val_byte_sidecar": mode})
        lines = []
        ev = make_evaluator_factory(c, data, Path(c.data.tokenizer_path), lines.append)(model, mesh)
        ev._fns = compiled  # one compiled scorer for both (the same model and shapes): a fast test
        return ev(params) if run else None, lines

    today, lines = result("auto")
    assert "val_bpb:byte_sidecar:enabled" not in lines
    luts = build_luts(cfg.data.tokenizer_path, cfg.model.vocab_size)
    files = list_shards(str(data / cfg.data.val_files))
    stream = np.concatenate([load_shard(f) for f in files]).astype(np.int64)
    piece = np.r_[0, token_bytes(luts, stream[:-1], stream[1:])]
    for f, part in zip(files, np.split(piece, np.cumsum([len(load_shard(f)) for f in files])[:-1])):
        write_shard(sidecar_for(f), part)
    assert len(list_shards(str(data / cfg.data.val_files))) == len(files)  # the glob still finds shards only
    side, lines = result("auto")
    assert "val_bpb:byte_sidecar:enabled" in lines
    assert (side.val_bpb, side.val_bytes, side.val_loss) == (today.val_bpb, today.val_bytes, today.val_loss)
    assert result("off", run=False)[1] == [line for line in lines if "byte_sidecar" not in line]
    tokens = load_val_tokens(str(data / cfg.data.val_files), cfg.train.train_seq_len, 8192)
    assert (load_val_bytes(str(data / cfg.data.val_files), len(tokens)) == piece[:len(tokens)]).all()


def test_val_byte_sidecar_on_without_sidecars_is_one_line(sample_data):
    from pgolf_jax import config as C
    from pgolf_jax.pipeline import make_evaluator_factory

    cfg = C.load(TINY, {**sample_data["overrides"], "data.val_byte_sidecar": "on"})
    with pytest.raises(FileNotFoundError, match=r"data.val_byte_sidecar='on' but the val shards .* no byte sidecars"):
        make_evaluator_factory(cfg, Path(cfg.data.data_path), Path(cfg.data.tokenizer_path), lambda *a: None)


def _records_hub(caseops_sample, repo: Path) -> Path:
    """A hub repo laid out like romeerp/parameter-golf-caseops-v1 (datasets/manifest.json,
    datasets/datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved/, datasets/tokenizers/),
    made from the sp1024 CaseOps sample renamed to the published sp8192 names, its manifest
    without the keys only our prepare writes."""
    root = caseops_sample[0]
    shutil.copytree(root, repo / "datasets", ignore=shutil.ignore_patterns("manifest.json"))
    for old in [*(repo / "datasets" / "datasets").iterdir(), *(repo / "datasets" / "tokenizers").iterdir()]:
        old.rename(old.with_name(old.name.replace("1024", "8192")))
    manifest = json.loads((root / "manifest.json").read_text())
    for ds in manifest["datasets"]:
        for key in ("checksums", "source", "prepared_with"):
            ds.pop(key)
    text = json.dumps(manifest).replace("sp1024", "sp8192").replace("fineweb_1024_bpe", "fineweb_8192_bpe")
    (repo / "datasets" / "manifest.json").write_text(text.replace("sp_bpe_1024", "sp_bpe_8192"))
    return repo


def test_download_of_the_records_caseops_layout(caseops_sample, tmp_path, fake_hub):
    from pgolf_jax.data import hub

    url = fake_hub(_records_hub(caseops_sample, tmp_path / "repo"))
    out = tmp_path / "data"
    name = "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
    ds_dir = hub.download("sp8192_caseops", 1, out, endpoint=url)
    assert ds_dir == out / "datasets" / name
    src = tmp_path / "repo" / "datasets" / "datasets" / name
    n_val = caseops_sample[1]["datasets"][0]["stats"]["files_val"]
    sides = [f"fineweb_val_bytes_{i:06d}.bin" for i in range(n_val)]
    assert sorted(p.name for p in ds_dir.glob("*_bytes_*")) == sides
    for f in sides + ["fineweb_train_000000.bin"]:
        assert (ds_dir / f).read_bytes() == (src / f).read_bytes()
    assert (out / "tokenizers" / "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model").is_file()
    entry = json.loads((out / "manifest.json").read_text())["datasets"][0]
    assert entry["source"]["hub_repo_id"] == "romeerp/parameter-golf-caseops-v1"
    assert set(sides) <= set(entry["checksums"])  # sidecars checked against the manifest like shards
    assert layout.verify_dataset(ds_dir)["files_val_bytes"] == n_val
    pattern = str(ds_dir / "fineweb_val_*.bin")
    tokens = load_val_tokens(pattern, 64)
    assert load_val_bytes(pattern, len(tokens)).sum() > 0
    # The records' long spelling is the same dataset; a repo missing a sidecar is one clear error.
    (src / sides[-1]).unlink()
    shutil.rmtree(ds_dir)
    with pytest.raises(RuntimeError, match=rf"cannot download datasets/datasets/{name}/{sides[-1]} from "
                                           r"romeerp/parameter-golf-caseops-v1: \w+: 404"):
        hub.download("sp8192_lossless_caps_caseops_v1_reserved", 0, out, endpoint=url)
