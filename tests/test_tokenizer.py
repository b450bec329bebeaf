"""Tokenizers and the val_bpb byte tables, checked against byte counts rebuilt from the pieces."""

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from pgolf_jax.data.tokenizer import (
    SP_TRAINER_SETTINGS,
    ByteLuts,
    PureByteTokenizer,
    build_luts,
    load_tokenizer,
    token_bytes,
    train_sentencepiece,
)

VOCAB = 400


def shared_docs(name: str) -> Path | None:
    """The shared sample corpus if present (never built from npm inside the fast tests)."""
    roots = [os.environ.get("PGOLF_SHARED_DATA"), Path(__file__).resolve().parents[2] / "shared" / "data"]
    for r in roots:
        if r and (Path(r) / name / "docs_selected.jsonl").is_file():
            return Path(r) / name / "docs_selected.jsonl"
    return None


def brown_texts(n: int) -> list[str]:
    path = shared_docs("brown")
    if path is None:
        pytest.skip("shared brown corpus not available")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in itertools.islice(f, n)]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    texts = brown_texts(300)
    prefix = tmp_path_factory.mktemp("tok") / "fineweb_400_bpe"
    # Brown docs exceed SentencePiece's 4192-byte default line limit.
    model = train_sentencepiece(texts, VOCAB, prefix, overrides={"max_sentence_length": 1 << 15})
    return model, texts


def test_trainer_settings_match_the_challenge():
    assert SP_TRAINER_SETTINGS == {
        "model_type": "bpe", "character_coverage": 0.999, "byte_fallback": True, "split_digits": True,
        "normalization_rule_name": "nmt_nfkc", "add_dummy_prefix": False, "pad_id": 0, "bos_id": 1, "eos_id": 2,
        "unk_id": 3, "hard_vocab_limit": False}


def test_sentencepiece_training_layout(sp_model):
    model, texts = sp_model
    assert model.name == "fineweb_400_bpe.model" and model.with_suffix(".vocab").is_file()
    assert sorted(p.name for p in model.parent.iterdir()) == ["fineweb_400_bpe.model", "fineweb_400_bpe.vocab"]
    tok = load_tokenizer(model)
    assert tok.vocab_size == VOCAB and tok.bos_id == 1 and tok.eos_id == 2 and tok.pad_id == 0 and tok.unk_id == 3
    sp = tok.sp
    assert [sp.id_to_piece(i) for i in (4, 5, 259)] == ["<0x00>", "<0x01>", "<0xFF>"]
    # add_dummy_prefix=False: a document's first word carries no '▁'.
    assert not sp.id_to_piece(tok.encode("The jury said")[0]).startswith("\u2581")
    assert tok.encode_batch(texts[:3]) == [tok.encode(t) for t in texts[:3]]
    assert tok.decode(tok.encode("The jury said so.")) == "The jury said so."


def test_training_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="max_sentence_length=4192"):
        train_sentencepiece(["word " * 2000] * 20, VOCAB, tmp_path / "long")
    with pytest.raises(ValueError, match="no non-empty training text"):
        train_sentencepiece(["", " \x00 "], VOCAB, tmp_path / "empty")
    assert list(tmp_path.iterdir()) == []


def _normalized_len(sp, text: str) -> int:
    return len(sp.normalize(text).replace("\u2581", " ").encode("utf-8"))


def _pieces_len(sp, ids: list[int]) -> int:
    """Bytes the pieces spell out, with a first '▁' dropped (it follows BOS): a brute-force count."""
    out = b""
    for i in ids:
        piece = sp.id_to_piece(i)
        out += bytes([int(piece[3:5], 16)]) if sp.is_byte(i) else piece.replace("\u2581", " ").encode("utf-8")
    return len(out) - (1 if out.startswith(b" ") else 0)


def test_sentencepiece_luts_count_normalized_bytes(sp_model):
    model, texts = sp_model
    tok = load_tokenizer(model)
    luts = build_luts(model, VOCAB)
    assert isinstance(luts, ByteLuts) and len(luts) == VOCAB
    assert luts.base_bytes.dtype == np.int16 and luts.has_leading_space.dtype == np.bool_
    assert luts.is_boundary[[0, 1, 2, 3]].all() and not luts.is_boundary[4:].any()
    assert (luts.base_bytes[4:260] == 1).all() and not luts.has_leading_space[4:260].any()
    extra = ["  Leading space, ﬁne “quotes” — 12345 日本語 🙂 tail  ", "x", "\u2581literal marker"]
    stream = []
    expected = 0
    for text in texts[:40] + extra:
        ids = tok.encode(text)
        assert _pieces_len(tok.sp, ids) == _normalized_len(tok.sp, text)
        expected += _normalized_len(tok.sp, text)
        stream += [tok.bos_id] + ids
    stream = np.array(stream)
    got = token_bytes(luts, stream[:-1], stream[1:])
    assert got.dtype == np.int32 and int(got.sum()) == expected


def test_sentencepiece_luts_per_piece_rule(sp_model):
    model, _ = sp_model
    sp = load_tokenizer(model).sp
    luts = build_luts(model, VOCAB)
    for i in range(260, VOCAB):
        piece = sp.id_to_piece(i)
        lead = piece.startswith("\u2581")
        assert luts.has_leading_space[i] == lead
        assert luts.base_bytes[i] == len(piece[lead:].encode("utf-8"))
    # A '▁'-piece costs a byte after a normal token but nothing after BOS.
    space = sp.piece_to_id("\u2581")
    assert token_bytes(luts, [1, 300], [space, space]).tolist() == [0, 1]


def test_token_bytes_keeps_shape(sp_model):
    luts = build_luts(sp_model[0], VOCAB)
    prev = np.array([[1, 300, 301], [5, 6, 7]])
    assert token_bytes(luts, prev, prev[:, ::-1]).shape == (2, 3)


def test_vocab_mismatch_names_file_and_sizes(sp_model, tmp_path):
    with pytest.raises(ValueError, match=r"fineweb_400_bpe\.model.*vocab_size=400.*vocab_size=1024"):
        build_luts(sp_model[0], 1024)
    path = PureByteTokenizer().save_json(tmp_path / "b.json")
    with pytest.raises(ValueError, match=r"b\.json.*260.*256"):
        build_luts(path, 256)


def test_missing_space_piece_is_an_error(tmp_path):
    texts = [f"abcdefgh{i}" * 20 for i in range(300)]  # no whitespace, so no '▁' piece is learned
    model = train_sentencepiece(texts, 300, tmp_path / "nospace")
    with pytest.raises(ValueError, match=r"nospace\.model.*'\u2581'"):
        build_luts(model, load_tokenizer(model).vocab_size)  # hard_vocab_limit=False may stop short of 300


def test_pure_byte_tokenizer_and_luts(tmp_path):
    tok = PureByteTokenizer()
    path = tok.save_json(tmp_path / "fineweb_pure_byte_260.json")
    payload = json.loads(path.read_text())
    assert payload == {"tokenizer_type": "pure_byte", "vocab_size": 260,
                       "config": {"pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3, "byte_offset": 4,
                                  "byte_count": 256}}
    loaded = load_tokenizer(path)
    assert loaded == tok and loaded.vocab_size == 260
    text = "héllo wörld — 世界 🙂\n"
    ids = loaded.encode(text)
    assert ids == [b + 4 for b in text.encode("utf-8")] and loaded.decode(ids) == text
    assert [a.tolist() for a in loaded.encode_batch([text, ""])] == [ids, []]
    luts = build_luts(path, 260)
    assert len(luts) == 260 and not luts.has_leading_space.any()
    assert luts.is_boundary[:4].all() and (luts.base_bytes[:4] == 0).all() and (luts.base_bytes[4:] == 1).all()
    texts = [text, "plain ascii", " leading space"]
    stream = np.array(sum(([1] + loaded.encode(t) for t in texts), []))
    assert int(token_bytes(luts, stream[:-1], stream[1:]).sum()) == sum(len(t.encode()) for t in texts)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match=r"tok\.txt.*\.txt"):
        load_tokenizer(tmp_path / "tok.txt")
    with pytest.raises(FileNotFoundError, match=r"gone\.model"):
        load_tokenizer(tmp_path / "gone.model")
    bad = tmp_path / "bad.json"
    bad.write_text('{"tokenizer_type": "wordpiece"}')
    with pytest.raises(ValueError, match=r"bad\.json.*wordpiece"):
        load_tokenizer(bad)
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"junk\.model"):
        load_tokenizer(junk)


def test_an_interrupt_while_sentencepiece_reads_a_doc_is_raised_as_itself(tmp_path):
    """^C / SIGTERM landing in the docs iterator SentencePiece pulls from: SentencePiece wraps what the iterator
    raises as INTERNAL; the interrupt must come out as itself (the caller's exit 128+signal, its cleanup), not as
    'training failed'. Nothing is left under the model's name."""
    from pgolf_jax.data.tokenizer import train_sentencepiece
    from pgolf_jax.errors import Terminated

    def docs():
        yield from brown_texts(50)
        raise Terminated(15)

    with pytest.raises(Terminated):
        train_sentencepiece(docs(), 300, tmp_path / "tok")
    assert not list(tmp_path.glob("tok*"))
