"""data.loader=doc_packed: the VarLen records' document-packing loader (#1530 onward), the reader
that model.doc_mask's training pairs with. Shards in sorted order, wrapping around; in each shard
the stream starts at its first BOS; a step takes the next num_spans * (local + 1) tokens from the
cursor, cut into spans as TokenLoader cuts them, and when the rest of a shard cannot hold a whole
step it moves to the next shard (the tail is skipped, as in the records). Documents then run in
stream order with their BOS; attention segments come from those BOS in the model (model.doc_mask).
The records attend within one flat span per rank; here each span is rows of seq_len like the other
loaders' batches, so a document that crosses a row boundary is also cut there."""

from __future__ import annotations

import numpy as np

from pgolf_jax.data.shards import ShardError, list_shards, open_shard, read_num_tokens, span_tokens

BOS_ID = 1  # <s> in the challenge's tokenizers (data/tokenizer.py; model/embeddings.py: the same id)


class DocPackingLoader:
    """(x, y) batches of shape (num_spans, local // seq_len, seq_len), like TokenLoader's."""

    def __init__(self, pattern: str, num_spans: int, seq_len: int, seed: int = 0, vocab_size: int = 0):
        if int(num_spans) < 1:
            raise ValueError(f"DocPackingLoader: num_spans must be >= 1, got {num_spans}")
        self.pattern, self.num_spans, self.vocab_size = str(pattern), int(num_spans), int(vocab_size)
        self.files = list_shards(self.pattern)
        self.sizes = [read_num_tokens(f) for f in self.files]
        self._open(0)

    def _open(self, idx: int, cursor: int | None = None) -> None:
        """Make shard idx current, the cursor at its first BOS (0 if it has none) unless given."""
        self.file_idx = idx
        self.tokens = open_shard(self.files[idx], self.vocab_size)
        bos = np.flatnonzero(np.asarray(self.tokens) == BOS_ID)
        self.cursor = (int(bos[0]) if bos.size else 0) if cursor is None else int(cursor)

    def next_batch(self, global_tokens: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        local = span_tokens(global_tokens, self.num_spans, seq_len)
        step = self.num_spans * (local + 1)
        for _ in range(len(self.files) + 1):
            if self.cursor + step <= self.sizes[self.file_idx]:
                break
            self._open((self.file_idx + 1) % len(self.files))
        else:
            raise ShardError(f"no shard matching {self.pattern} holds one step of {step} tokens from its first BOS")
        chunk = np.asarray(self.tokens[self.cursor:self.cursor + step], np.int32).reshape(self.num_spans, local + 1)
        self.cursor += step
        shape = (self.num_spans, local // seq_len, seq_len)
        return np.ascontiguousarray(chunk[:, :-1]).reshape(shape), np.ascontiguousarray(chunk[:, 1:]).reshape(shape)

    def state(self) -> dict:
        return {"loader": "doc_packed", "file_index": self.file_idx, "cursor": self.cursor,
                "file": self.files[self.file_idx].name}

    def restore(self, state: dict) -> None:
        if state.get("loader") != "doc_packed":
            raise ValueError("the checkpoint's data position is from another data.loader, not doc_packed")
        idx = int(state["file_index"])
        if not 0 <= idx < len(self.files) or state.get("file") != self.files[idx].name:
            raise ValueError(f"the checkpoint's doc_packed state points at {state.get('file')}, "
                             f"not a shard of {self.pattern}")
        self._open(idx, state["cursor"])


def doc_packed_loader(pattern: str, num_spans: int, seq_len: int, seed: int, vocab_size: int) -> DocPackingLoader:
    """data.loader=doc_packed (no seed: the order is the files')."""
    return DocPackingLoader(pattern, num_spans, seq_len, seed, vocab_size)
