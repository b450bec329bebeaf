"""The quant section (quant.*) and the options of the schemes that have any
(`quant.<scheme>.<field>`). JAX-free."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from pgolf_jax.errors import ConfigError
from pgolf_jax.options import Section


@dataclass(frozen=True)
class QuantConfig(Section):
    # int8_per_row: the reference baseline's export; gptq: Hessian-aware GPTQ with per-group widths
    # and clips (the records; quant.gptq.*); rtn: the same scales, rounded to nearest (no Hessian).
    scheme: str = "int8_per_row"
    clip_percentile: float = 99.99984  # int8_per_row, and scale_method="percentile"
    keep_float_max_numel: int = 65_536  # smaller float tensors pass through (fp16)
    # Per tensor group (attention / MLP / token embedding / other 2-D) width and SDClip k.
    attn_bits: int = 6
    mlp_bits: int = 6
    embed_bits: int = 8
    other_bits: int = 8
    attn_clip_sigmas: float = 12.85
    mlp_clip_sigmas: float = 12.85
    embed_clip_sigmas: float = 20.0
    other_clip_sigmas: float = 20.0
    scale_method: str = "sdclip"  # sdclip (k std(row) / qmax) | percentile | search (GPTQ-lite)
    # The low-bit grid of every quantized row (export, GPTQ and QAT alike; registry.GRIDS):
    # symmetric (the scale_method's scale, codes -qmax..qmax), affine (#1227: min-max over 2^bits
    # levels) or nf (#1227's NormalFloat: standard-normal quantiles at (i + 0.5) / 2^bits, min-max).
    grid: str = "symmetric"
    lqer_rank: int = 0  # low-rank correction of the quantization error (0 = off)
    lqer_top_k: int = 3  # on the tensors with the largest error
    lqer_asym: bool = True  # factors as int2 (one scale) x int4 (per-64 scales), else int4 per row
    qat: bool = False  # straight-through fake quantization in training, with the export's rule
    qat_lr_threshold: float = 1.0  # QAT is on while the lr multiplier <= this (1 = from the start)
    # QuantGate (#1736): the attention gates' weights (quant rule "gate") as int8 rows, scale =
    # max|row| / 127 in fp16, instead of passing through (fp16; fp32 in the int8_per_row format).
    gate_int8: bool = False
    byte_shuffle: bool = True  # group bytes by significance in multi-byte tensors before compressing
    # registry.COMPRESSORS: zstd (ours, quant.zstd.level) | zlib (the reference's) | brotli | pergroup (#1855)
    compressor: str = "zstd"
    # Which code size counts toward the cap: packed (the run's train_gpt.py: its imported modules
    # minified, lzma, base85, as the records ship theirs), raw (those .py files as they are) or
    # compressed (them zstd-22 as one stream).
    code_bytes: str = "packed"
    max_artifact_bytes: int = 16_000_000
    allow_oversize: bool = False
    options: tuple = ()
    SECTION = "quant"
    RANGES = {"clip_percentile": "(0, 100]", "keep_float_max_numel": ">= 0", "attn_clip_sigmas": "> 0",
              "mlp_clip_sigmas": "> 0", "embed_clip_sigmas": "> 0", "other_clip_sigmas": "> 0",
              "lqer_rank": ">= 0", "lqer_top_k": ">= 1", "qat_lr_threshold": "[0, 1]",
              "max_artifact_bytes": ">= 1"}
    CHOICES = {"scale_method": ("sdclip", "percentile", "search"), "code_bytes": ("packed", "raw", "compressed")}

    def check(self, cfg) -> None:
        super().check(cfg)
        q = self
        for key in ("attn_bits", "mlp_bits", "embed_bits", "other_bits"):
            if not 2 <= getattr(q, key) <= 8:
                raise ConfigError(f"quant.{key}={getattr(q, key)} must be in 2..8 (values are stored as int8)")
        if q.grid != "symmetric" and q.scheme == "int8_per_row":
            raise ConfigError(f"quant.grid={q.grid} is a low-bit export grid: use quant.scheme rtn or gptq "
                              "(int8_per_row is the reference's own format)")
        if q.gate_int8 and not cfg.model.attn_gate:
            raise ConfigError("quant.gate_int8 stores the attention gates as int8 rows; "
                              "model.attn_gate='' selects none")
        if q.qat and q.scheme != "int8_per_row" and q.scale_method == "search" and q.grid == "symmetric":
            raise ConfigError("quant.qat follows the export scales: use quant.scale_method sdclip or percentile")


@dataclass(frozen=True)
class Zstd:
    """compressor=zstd: its level (zlib always uses 9 and brotli 11, as the references do)."""
    level: int = 22
    RANGES = {"level": "[1, 22]"}


LRZIP_MISSING = "quant.compressor=pergroup needs the lrzip binary (ZPAQ): apt-get install -y lrzip"


@dataclass(frozen=True)
class Pergroup:
    """compressor=pergroup (#1855, quant/groupzip.py): the int8 codes of each role (tok_emb, c_k, c_q,
    c_v, proj, fc, mlp.proj) across layers through `lrzip -z -L level` (ZPAQ), the rest brotli-11 at
    a 2^lgwin window; reorder: rows of tok_emb, c_q and fc in greedy L1 nearest-neighbour order (the
    permutation stored); transpose: each matrix stored column by column. Needs the lrzip binary."""
    level: int = 9
    lgwin: int = 24
    reorder: bool = True
    transpose: bool = True
    RANGES = {"level": "[1, 9]", "lgwin": "[10, 24]"}

    def check(self, cfg) -> None:
        # Checked with the config: a run must not train for minutes, then fail to pack.
        if shutil.which("lrzip") is None:
            raise ConfigError(LRZIP_MISSING)


@dataclass(frozen=True)
class GPTQ:
    """Hessian-aware GPTQ (the records): calibration on calibration_batches batches of
    train.train_batch_tokens (GPTQ_CALIBRATION_BATCHES), columns in blocks of block_size, damping
    damp x mean(diag H), columns in descending diag(H) order when act_order."""
    calibration_batches: int = 64
    block_size: int = 128
    damp: float = 0.01
    act_order: bool = True
    RANGES = {"calibration_batches": ">= 1", "block_size": ">= 1", "damp": ">= 0"}
