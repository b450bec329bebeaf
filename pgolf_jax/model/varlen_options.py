"""What model.doc_mask (VarLen, model/varlen.py) checks in a config. JAX-free, like model/options.py,
and reached through registry.VARLEN like the masking itself, so a packed file whose run does not mask
documents holds neither."""

from __future__ import annotations

from pgolf_jax.errors import ConfigError


def check_doc_mask(m, kinds: tuple[str, ...]) -> None:
    """model.doc_mask masks attention only: refuse the parts that mix tokens across a BOS on their own
    (S4D-Lin scans, BigramHash, SmearGate without the BOS fix, pause slots; families other than gpt).
    m: the model section; kinds: the mixer of every physical layer (options.layer_mixers)."""
    for bad, what in [(m.family != "gpt", f"model.family={m.family!r}"),
                      ("s4d_lin" in kinds, f"model.mixers={m.mixers!r}"),
                      (m.bigram_vocab_size, f"model.bigram_vocab_size={m.bigram_vocab_size}"),
                      (m.smear_gate == "v1", "model.smear_gate='v1'"),
                      (m.smear_gate == "v2" and not m.smear_gate_bos_fix, "model.smear_gate_bos_fix=false"),
                      (m.pause_tokens, f"model.pause_tokens={m.pause_tokens}")]:
        if bad:
            raise ConfigError(f"model.doc_mask=true does not combine with {what}: "
                              "it would mix tokens across documents")
    if not m.doc_mask:
        raise ConfigError(f"model.doc_split_len={m.doc_split_len} needs model.doc_mask=true")
