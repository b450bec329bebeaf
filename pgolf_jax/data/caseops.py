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
# What encode rewrites: a literal operator, and a letter run from its first capital to the run's
# end (a pattern that starts on a capital keeps the regex scan fast; lowercase runs are skipped).
_OPERATOR = re.compile("[\ue001-\ue004]")
_FROM_CAPITAL = re.compile("[A-Z][A-Za-z]*")
# What decode rewrites: an escape, an ALLCAPS word, a TITLE or CAPNEXT letter.
_OPERATION = re.compile("\ue004(.)|\ue002([a-z]+)|[\ue001\ue003]([a-z])", re.DOTALL)


class CaseOpsError(ValueError):
    """An encoded stream that no text encodes to (a misplaced or dangling operator)."""


def _capnext(letters: str) -> str:
    """Lowercase ASCII letters with CAPNEXT before each capital."""
    return letters if letters.islower() else "".join(CAPNEXT + c.lower() if c < "a" else c for c in letters)


def _encode_cased(m: re.Match) -> str:
    word, at = m.group(), m.start()
    if at and ("a" <= m.string[at - 1] <= "z"):  # inside a run that starts lowercase: inner capitals only
        return _capnext(word)
    if len(word) >= 2 and word.isupper():
        return ALLCAPS + word.lower()
    return TITLE + word[0].lower() + _capnext(word[1:])


def encode(text: str) -> str:
    """The CaseOps form of text (a lowercase letter stream plus operators)."""
    return _FROM_CAPITAL.sub(_encode_cased, _OPERATOR.sub(lambda m: ESC + m.group(), text))


def _undo(m: re.Match) -> str:
    escaped, allcaps, capital = m.groups()
    return escaped if escaped is not None else (allcaps or capital).upper()


def decode(encoded: str) -> str:
    """The text `encoded` came from; CaseOpsError when no text encodes to it (checked by encoding
    the result again: the transform is one-to-one, so only its own output comes back unchanged)."""
    text = _OPERATION.sub(_undo, encoded)
    again = encode(text)
    if again != encoded:
        at = next((i for i, (a, b) in enumerate(zip(again, encoded)) if a != b), min(len(again), len(encoded)))
        raise CaseOpsError(f"no text encodes to this stream: misplaced operator or capital near character {at} "
                           f"({encoded[max(0, at - 8):at + 8]!r})")
    return text


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
