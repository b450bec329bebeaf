"""Tokenizers of the challenge (SentencePiece BPE and pure bytes) and the bits-per-byte byte tables.

val_bpb divides the summed NLL by the number of UTF-8 bytes the scored tokens stand for, so every
tokenizer needs a per-id byte count. The rule is the reference's build_sentencepiece_luts: a
piece's UTF-8 length without its leading '▁', plus one byte for that '▁' unless the previous token
is a boundary (BOS/control), since a document's first space is not part of its text.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from pgolf_jax.fsio import atomic_output

# The SentencePiece trainer arguments of the challenge's data/download_hf_docs_and_tokenize.py.
SP_TRAINER_SETTINGS: dict = {
    "model_type": "bpe",
    "character_coverage": 0.999,
    "byte_fallback": True,
    "split_digits": True,
    "normalization_rule_name": "nmt_nfkc",
    "add_dummy_prefix": False,
    "pad_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "unk_id": 3,
    "hard_vocab_limit": False,
}
# SentencePiece silently drops training lines longer than this many bytes (its default).
SP_DEFAULT_MAX_SENTENCE_LENGTH = 4192
SPACE_PIECE = "\u2581"  # '▁', SentencePiece's whitespace marker


def clean_training_text(text: str) -> str:
    """The reference's tokenizer-training text: NUL -> space, then strip."""
    return text.replace("\x00", " ").strip()


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_prefix: str | os.PathLike,
                        overrides: dict | None = None) -> Path:
    """Train a BPE model with the challenge settings; writes <prefix>.model and .vocab, returns the .model."""
    import sentencepiece as spm

    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    kwargs = dict(SP_TRAINER_SETTINGS, vocab_size=int(vocab_size))
    kwargs.update(overrides or {})
    max_len = int(kwargs.get("max_sentence_length", SP_DEFAULT_MAX_SENTENCE_LENGTH))
    counts = {"used": 0, "too_long": 0}
    # An error of the docs reader, or a ^C / SIGTERM that lands while SentencePiece pulls the next doc,
    # raised as itself (SentencePiece wraps whatever the iterator raises as INTERNAL).
    failed = []

    def sentences():
        try:
            for text in texts:
                text = clean_training_text(text)
                if not text:
                    continue
                counts["used"] += 1
                if len(text.encode("utf-8")) > max_len:
                    counts["too_long"] += 1
                yield text
        except BaseException as exc:
            failed.append(exc)
            raise

    # Train under a temporary prefix and rename, so a crash never leaves a half-written model behind.
    tmp = prefix.with_name(f".{prefix.name}.tmp{os.getpid()}")
    kwargs.setdefault("minloglevel", 1)  # only warnings; progress is printed by the caller
    try:
        try:
            spm.SentencePieceTrainer.train(sentence_iterator=sentences(), model_prefix=str(tmp), **kwargs)
        except RuntimeError as exc:
            if failed:
                raise failed[0] from None
            short = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", str(exc))
            if short:
                raise ValueError(
                    f"vocab_size={vocab_size} is too small for {prefix}.model: the training text needs "
                    f"{short.group(2)} pieces for its characters alone (character_coverage="
                    f"{kwargs['character_coverage']}); use a larger vocab or a lower character_coverage") from None
            if counts["used"] and counts["too_long"] == counts["used"]:
                raise ValueError(
                    f"all {counts['used']} training docs for {prefix}.model are longer than SentencePiece's "
                    f"max_sentence_length={max_len} bytes and were skipped; pass overrides="
                    f"{{'max_sentence_length': N}} with N above the longest doc") from exc
            if not counts["used"]:
                raise ValueError(f"no non-empty training text for {prefix}.model") from exc
            # SentencePiece's text: "INTERNAL: src/file.cc(line) [check] message"; keep the message.
            msg = re.sub(r"^\w+: (\S+\(\d+\) )?(\[.*?\] )?", "", str(exc).strip()).splitlines()[0]
            raise ValueError(f"SentencePiece training of {prefix}.model (vocab_size={vocab_size}) "
                             f"failed: {msg}") from None
        if counts["too_long"]:
            print(f"train_sentencepiece: {counts['too_long']}/{counts['used']} docs longer than "
                  f"max_sentence_length={max_len} bytes were skipped by SentencePiece", file=sys.stderr)
        model, vocab = prefix.with_name(prefix.name + ".model"), prefix.with_name(prefix.name + ".vocab")
        os.replace(tmp.with_name(tmp.name + ".vocab"), vocab)
        os.replace(tmp.with_name(tmp.name + ".model"), model)
    finally:
        for suffix in (".model", ".vocab"):
            tmp.with_name(tmp.name + suffix).unlink(missing_ok=True)
    return model


@dataclass(frozen=True)
class PureByteTokenizer:
    """The byte260 tokenizer: pad/bos/eos/unk = 0..3, UTF-8 byte b -> id b + 4."""

    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    unk_id: int = 3
    byte_offset: int = 4
    byte_count: int = 256

    @property
    def vocab_size(self) -> int:
        return self.byte_offset + self.byte_count

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of the text's UTF-8 bytes as int32."""
        data = np.frombuffer(text.encode("utf-8", errors="replace"), dtype=np.uint8)
        return data.astype(np.int32) + self.byte_offset

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode_array(t) for t in texts]

    def decode(self, ids) -> str:
        lo, hi = self.byte_offset, self.byte_offset + self.byte_count
        return bytes(int(i) - lo for i in ids if lo <= int(i) < hi).decode("utf-8", errors="replace")

    def fill_luts(self, base: np.ndarray, space: np.ndarray, boundary: np.ndarray) -> None:
        """build_luts' tables: every byte id is one byte; no leading spaces; the specials are boundaries."""
        ids = np.arange(self.byte_offset, self.byte_offset + self.byte_count)
        base[ids], boundary[ids] = 1, False

    def save_json(self, path: str | os.PathLike) -> Path:
        """Write the reference's JSON description (tokenizer_type pure_byte), atomically."""
        path = Path(path)
        payload = {"tokenizer_type": "pure_byte", "config": asdict(self), "vocab_size": self.vocab_size}
        with atomic_output(path, "w") as f:
            f.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> "PureByteTokenizer":
        path = Path(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(payload, dict) or payload.get("tokenizer_type") != "pure_byte":
            got = payload.get("tokenizer_type") if isinstance(payload, dict) else type(payload).__name__
            raise ValueError(f"{path}: tokenizer_type must be 'pure_byte', got {got!r}")
        config = payload.get("config", {})
        fields = set(cls.__dataclass_fields__)
        unknown = set(config) - fields if isinstance(config, dict) else {"<not an object>"}
        if unknown:
            raise ValueError(f"{path}: unknown pure_byte config fields {sorted(unknown)}")
        tok = cls(**{k: int(v) for k, v in config.items()})
        if "vocab_size" in payload and int(payload["vocab_size"]) != tok.vocab_size:
            raise ValueError(f"{path}: vocab_size {payload['vocab_size']} disagrees with config ({tok.vocab_size})")
        return tok


class SentencePieceTokenizer:
    """A SentencePiece model behind the same small interface as PureByteTokenizer."""

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        import sentencepiece as spm

        self.path = Path(path)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"{self.path}: not a readable SentencePiece model ({exc})") from exc
        self.num_threads = num_threads or os.cpu_count() or 1
        self.vocab_size = int(self.sp.vocab_size())
        self.pad_id, self.bos_id = int(self.sp.pad_id()), int(self.sp.bos_id())
        self.eos_id, self.unk_id = int(self.sp.eos_id()), int(self.sp.unk_id())

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(list(texts), out_type=int, num_threads=self.num_threads)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])

    def fill_luts(self, base: np.ndarray, space: np.ndarray, boundary: np.ndarray) -> None:
        """build_luts' tables: each piece's UTF-8 bytes without its leading '▁' (counted apart)."""
        sp = self.sp
        # Later records assert this (issue #897): the byte rule needs '▁' to be a piece of its own.
        if sp.piece_to_id(SPACE_PIECE) == sp.unk_id():
            raise ValueError(f"{self.path}: the model has no standalone '{SPACE_PIECE}' piece (it maps to <unk>), "
                             "so leading-space bytes cannot be counted")
        for i in range(self.vocab_size):
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                continue
            boundary[i] = False
            if sp.is_byte(i):
                base[i] = 1
                continue
            piece = sp.id_to_piece(i)
            if piece.startswith(SPACE_PIECE):
                space[i] = True
                piece = piece[1:]
            base[i] = len(piece.encode("utf-8"))


def load_tokenizer(path: str | os.PathLike):
    """A tokenizer from its file, by suffix (registry.TOKENIZERS: .model SentencePiece, .json pure byte)."""
    from pgolf_jax import registry

    path = Path(path)
    if path.suffix not in registry.TOKENIZERS:
        raise ValueError(f"{path}: unknown tokenizer file type {path.suffix!r} (expected "
                         f"{' or '.join(registry.TOKENIZERS)})")
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer not found: {path}")
    return registry.resolve(registry.TOKENIZERS, path.suffix)(path)


def read_pure_byte(path: str | os.PathLike) -> PureByteTokenizer:
    return PureByteTokenizer.load_json(path)


@dataclass(frozen=True, eq=False)
class ByteLuts:
    """Per-id byte tables for val_bpb (read-only numpy arrays of equal length)."""

    base_bytes: np.ndarray  # int16: UTF-8 bytes of the piece without a leading '▁'
    has_leading_space: np.ndarray  # bool: the piece starts with '▁'
    is_boundary: np.ndarray  # bool: control/unknown/unused ids; a '▁' right after one is free

    def __len__(self) -> int:
        return len(self.base_bytes)


def _frozen_luts(base, space, boundary) -> ByteLuts:
    for a in (base, space, boundary):
        a.setflags(write=False)
    return ByteLuts(base, space, boundary)


def build_luts(tokenizer_path: str | os.PathLike, vocab_size: int) -> ByteLuts:
    """The byte tables of a tokenizer file, sized max(tokenizer vocab, vocab_size)."""
    path = Path(tokenizer_path)
    tok = load_tokenizer(path)
    if tok.vocab_size != vocab_size:
        raise ValueError(f"{path}: tokenizer vocab_size={tok.vocab_size} does not match model vocab_size={vocab_size}")
    size = max(tok.vocab_size, vocab_size)
    base = np.zeros(size, dtype=np.int16)
    space = np.zeros(size, dtype=np.bool_)
    boundary = np.ones(size, dtype=np.bool_)
    tok.fill_luts(base, space, boundary)
    return _frozen_luts(base, space, boundary)


def token_bytes(luts: ByteLuts, prev_ids, tgt_ids) -> np.ndarray:
    """Bytes each target stands for (int32, same shape as tgt_ids), given the token before it."""
    prev = np.asarray(prev_ids)
    tgt = np.asarray(tgt_ids)
    extra = luts.has_leading_space[tgt] & ~luts.is_boundary[prev]
    return luts.base_bytes[tgt].astype(np.int32) + extra
