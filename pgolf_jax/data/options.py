"""The data section's options (data.*). JAX-free."""

from __future__ import annotations

from dataclasses import dataclass

from pgolf_jax.errors import ConfigError
from pgolf_jax.options import SEED_RANGE, Section


# The embedded sample corpora (data/samples.py SAMPLES holds their specs; a test keeps the two equal):
# only the names here, so checking data.source needs none of the code that builds them.
SAMPLE_NAMES = ("brown", "nlp-corpus")


@dataclass(frozen=True)
class DataConfig(Section):
    data_path: str = "./data/datasets/fineweb10B_sp1024"
    tokenizer_path: str = "./data/tokenizers/fineweb_1024_bpe.model"
    train_files: str = "fineweb_train_*.bin"  # glob inside data_path
    val_files: str = "fineweb_val_*.bin"
    # Where data_path comes from when it is missing: "" (must exist), "sample:<name>" (an embedded
    # sample corpus, prepared on first use) or a docs_selected.jsonl to tokenize.
    source: str = ""
    num_val_docs: int = 50_000  # only used when preparing from `source`
    tokenizer_train_docs: int = 0  # 0 = all docs
    # sequential: the baseline's one contiguous stream; shuffled: the SP8192 records' shuffled
    # windows (also what GPTQ calibration reads). loader_seed, like the records' rank seed, is
    # independent of train.seed.
    loader: str = "sequential"
    loader_seed: int = 0
    # bpb's byte count: "auto" takes the val shards' byte sidecars (fineweb_val_bytes_*.bin, as the
    # CaseOps variants ship them) when they are there, else the tokenizer's byte tables; "off" always
    # the tables; "on" the sidecars or an error.
    val_byte_sidecar: str = "auto"
    options: tuple = ()
    SECTION = "data"
    RANGES = {"num_val_docs": ">= 1", "tokenizer_train_docs": ">= 0", "loader_seed": SEED_RANGE}
    CHOICES = {"val_byte_sidecar": ("auto", "off", "on")}

    def check(self, cfg) -> None:
        super().check(cfg)
        if self.source.startswith("sample:"):
            names = SAMPLE_NAMES
            if self.source[len("sample:"):] not in names:
                raise ConfigError(f"data.source={self.source!r}: unknown sample corpus; choose from "
                                  + ", ".join(f"sample:{n}" for n in names))
        for key in ("data_path", "tokenizer_path", "train_files", "val_files"):
            if not getattr(self, key).strip():
                raise ConfigError(f"data.{key} must not be empty")
