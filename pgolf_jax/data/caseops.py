"""CaseOps: the records' bijective case transform of text before tokenization (#1729 onward;
`lossless_caps_caseops_v1`).

Over each maximal run of ASCII letters: a lowercase run stays as it is; a run of two or more
capitals becomes ALLCAPS + the run lowercased; a run whose first letter alone is a capital
becomes TITLE + the run lowercased; any other run is lowercased with TITLE in front when its
first letter is a capital and CAPNEXT before every later capital. A literal operator character
in the text is escaped as ESC + itself. Everything else (non-ASCII letters too) passes through.
So the tokenizer sees one lowercase spelling per word plus a few operator symbols, and the
original text is recovered exactly by `decode`.

bpb stays in bytes of the original text: `original_byte_counts` says how many original UTF-8
bytes each piece of an encoded stream stands for (operators and ESC: 0; every other character
its own UTF-8 length, ASCII case mapping keeping it at one byte), which is what the val byte
sidecars hold per token. The transform itself needs neither numpy nor JAX.
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np

from pgolf_jax.data.tokenizer import SentencePieceTokenizer

NAME = "lossless_caps_caseops_v1"  # the records' text_transform name (manifest field)
TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
OPERATORS = (TITLE, ALLCAPS, CAPNEXT, ESC)  # SentencePiece user_defined_symbols, in this order
_WORD_OR_OPERATOR = re.compile("[A-Za-z]+|[\ue001-\ue004]")


class CaseOpsError(ValueError):
    """An encoded stream that no text encodes to (a misplaced or dangling operator)."""


def _encode_word(word: str) -> str:
    low = word.lower()
    if word == low:
        return word
    if len(word) >= 2 and word.isupper():
        return ALLCAPS + low
    head = TITLE if word[0].isupper() else ""
    if word[1:] == low[1:]:
        return head + low
    return head + low[0] + "".join(CAPNEXT + c.lower() if c.isupper() else c for c in word[1:])


def encode(text: str) -> str:
    """The CaseOps form of text (a lowercase letter stream plus operators)."""
    return _WORD_OR_OPERATOR.sub(lambda m: ESC + m.group() if m.group() in OPERATORS else _encode_word(m.group()),
                                 text)


def decode(encoded: str) -> str:
    """The text `encoded` came from; CaseOpsError when no text encodes to it."""
    out = []
    mode = ""  # "" | TITLE | ALLCAPS: a word mode waiting for the next word's first letter
    capnext = escaped = in_word = allcaps = False
    for ch in encoded:
        if escaped:
            out.append(ch)
            escaped = in_word = allcaps = False
        elif ch == ESC:
            if mode or capnext:
                raise CaseOpsError("an escape where a capitalisation operator wants a letter")
            escaped = True
        elif ch in (TITLE, ALLCAPS):
            if mode or capnext or in_word:
                raise CaseOpsError(f"operator U+{ord(ch):04X} not at the start of a word")
            mode = ch
        elif ch == CAPNEXT:
            if mode or capnext or not in_word:
                raise CaseOpsError("CAPNEXT not inside a word")
            capnext = True
        elif "a" <= ch <= "z":
            if not in_word:
                allcaps, in_word = mode == ALLCAPS, True
                out.append(ch.upper() if mode else ch)
            else:
                out.append(ch.upper() if allcaps or capnext else ch)
            mode, capnext = "", False
        elif "A" <= ch <= "Z":
            raise CaseOpsError(f"a capital letter {ch!r} in an encoded stream")
        else:
            if mode or capnext:
                raise CaseOpsError(f"a capitalisation operator followed by {ch!r}, not a letter")
            out.append(ch)
            in_word = allcaps = False
    if mode or capnext or escaped:
        raise CaseOpsError("the stream ends on an operator")
    return "".join(out)


def original_byte_counts(pieces: Iterable[str]) -> list[int]:
    """Original UTF-8 bytes each consecutive piece of an encoded stream stands for (the records'
    `surface_piece_original_byte_counts` for this transform): operators count 0, an escaped
    operator its 3 bytes, everything else its own UTF-8 length. An escape may end one piece and
    its character start the next."""
    counts, escaped = [], False
    for piece in pieces:
        n = 0
        for ch in piece:
            if escaped:
                n, escaped = n + len(ch.encode("utf-8")), False
            elif ch == ESC:
                escaped = True
            elif ch not in OPERATORS:
                n += 1 if ch < "\x80" else len(ch.encode("utf-8"))
        counts.append(n)
    if escaped:
        raise CaseOpsError("the stream ends on an escape")
    return counts


class CaseOpsTokenizer(SentencePieceTokenizer):
    """A SentencePiece model trained on CaseOps text: it encodes the transformed text, decodes back
    to the original, and gives each val token the original UTF-8 bytes it stands for. Only the data
    commands use it (a run reads the sidecars), so a packed train_gpt.py never holds this module."""

    text_transform = NAME

    def encode(self, text: str) -> list[int]:
        return super().encode(encode(text))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return super().encode_batch([encode(t) for t in texts])

    def decode(self, ids) -> str:
        return decode(super().decode(ids))

    def encode_with_byte_counts(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, original bytes per id) of each text, counted as the records' exporter does: over
        the pieces' surfaces (the span of the transformed text each piece covers; SentencePiece puts
        a byte-fallback character on its last byte piece, and drops a document's leading and
        trailing whitespace from every surface)."""
        protos = self.sp.encode([encode(t) for t in texts], out_type="proto", num_threads=self.num_threads)
        return [(np.fromiter((p.id for p in pr.pieces), np.int64, len(pr.pieces)),
                 np.asarray(original_byte_counts(p.surface for p in pr.pieces), np.int64)) for pr in protos]
