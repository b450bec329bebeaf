"""Every variation point of the stack, as a plain dict: config value -> "module:attribute" of its
implementation, or a Variant that also names its options class (a frozen dataclass in a JAX-free
module, set as `<section>.<name>.<field>`, e.g. model.mla.latent_dim). A new variant is one entry
here and its module; the seam tests parametrize over these dicts. Entries are imported on first
use, so validating a config imports nothing heavy, and a run imports (and its artifact counts the
code of) only the variants it selects."""

from __future__ import annotations

import importlib
from typing import NamedTuple


class Variant(NamedTuple):
    impl: str  # "module:attribute" of the implementation
    options: str  # "module:Class" of its options (JAX-free)


class Feature(NamedTuple):
    switches: tuple[str, ...]  # what turns it on: "section.field" (truthy), "section.field=value" or "...!=value"
    code: tuple[str, ...]  # "module:name" or "module:Class.method" of the code only a run with it on reaches


_MODEL = "pgolf_jax.model"
_MOPT = "pgolf_jax.model.options"

# model.family: builds the parameters and returns logits, auxiliary losses and loss weights.
FAMILIES = {
    "gpt": f"{_MODEL}.gpt:GPT",
    # a GPT whose SURGE layer a meta-network corrects
    "surge_m": Variant(f"{_MODEL}.families.surge:SurgeM", "pgolf_jax.model.family_options:SurgeM"),
    "mps": Variant(f"{_MODEL}.families.mps:MPS", "pgolf_jax.model.family_options:MPS"),
    "hopfield": Variant(f"{_MODEL}.families.hopfield:Hopfield", "pgolf_jax.model.family_options:Hopfield"),
    "agents": Variant(f"{_MODEL}.families.agents:Agents", "pgolf_jax.model.family_options:Agents"),
}
# Families that are not GPTs: no blocks, so the GPT's block variants, LoRA TTT and GPTQ calibration
# do not apply to them (config validation refuses those).
NON_GPT_FAMILIES = ("mps", "hopfield", "agents")
# model.weight_source: where a GPT's block linears get their weights (stored, or generated each
# forward pass from the source's own parameters).
WEIGHT_SOURCES = {
    "params": f"{_MODEL}.layers:StoredWeights",
    "basis": Variant(f"{_MODEL}.generators.basis:Basis", f"{_MOPT}:Basis"),
    "hypernet": Variant(f"{_MODEL}.generators.hypernet:HyperNet", f"{_MOPT}:HyperNet"),
    "siren": Variant(f"{_MODEL}.generators.siren:Siren", f"{_MOPT}:Siren"),
    "nca": Variant(f"{_MODEL}.generators.nca:NCA", f"{_MOPT}:NCA"),
    "seed": Variant(f"{_MODEL}.generators.seed:Seed", f"{_MOPT}:Seed"),
}
# model.topology: how the blocks are connected (skips, recurrence, halting).
TOPOLOGIES = {
    "unet": f"{_MODEL}.topology:UNet",
    "plain": f"{_MODEL}.topology:Plain",
    "act": Variant(f"{_MODEL}.act:ACT", f"{_MOPT}:ACT"),
    "denseformer": f"{_MODEL}.denseformer:DenseFormer",
    "ut_shared": Variant(f"{_MODEL}.ut:UTShared", f"{_MOPT}:UTShared"),
}
# model.block_schedule: the physical layer order the stacked blocks are walked in.
BLOCK_SCHEDULES = {
    "unet": f"{_MODEL}.topology:unet_layers",
    "repeat_in_place": f"{_MODEL}.topology:repeat_in_place_layers",
}
# model.parallel_residual: the residual stream's lanes (one, or #1530's attention and MLP lanes).
PARALLEL_RESIDUALS = {
    "one_lane": f"{_MODEL}.lanes:OneLane",
    "two_lane": Variant(f"{_MODEL}.lanes:TwoLane", f"{_MOPT}:TwoLane"),
}
# model.attention: the attention module of a block.
ATTENTION = {"gqa": f"{_MODEL}.attention:GQA", "mla": Variant(f"{_MODEL}.mla:MLA", f"{_MOPT}:MLA")}
# model.attn_gate: a per-head gate on the attention output ("" = none). Its own field, not options
# of model.attention: it composes with every attention entry and kernel (it sits after the kernel
# and XSA, before the projection), and one field makes the records' "at most one gate" structural.
ATTN_GATES = {
    "output_gate": Variant(f"{_MODEL}.gates:OutputGate", f"{_MODEL}.gate_options:OutputGate"),  # #1667
    "gated_attn": Variant(f"{_MODEL}.gates:GatedAttn", f"{_MODEL}.gate_options:GatedAttn"),  # #1736
    "sparse_gate": Variant(f"{_MODEL}.gates:SparseGate", f"{_MODEL}.gate_options:SparseGate"),  # #1787, #1855
}
# model.linear (and model.mlp_linear): how a block linear's weight is stored and materialized.
LINEAR = {
    "dense": f"{_MODEL}.layers:DenseLinear",
    "lowrank": Variant(f"{_MODEL}.lowrank:LowRankLinear", f"{_MOPT}:LowRank"),
    "monarch": Variant(f"{_MODEL}.monarch:MonarchLinear", f"{_MOPT}:Monarch"),
    "rlma": Variant(f"{_MODEL}.rlma:RLMALinear", f"{_MOPT}:RLMA"),
}
# model.mixers: the block of a layer by its token mixer (each mixer's layers are stacked apart).
MIXERS = {"attn": f"{_MODEL}.gpt:Block", "s4d_lin": Variant(f"{_MODEL}.ssm:SSMBlock", f"{_MOPT}:S4DLin")}
# model.attention_impl: the causal attention kernel ("auto" picks one per backend and dtype).
ATTENTION_IMPLS = {
    "xla": f"{_MODEL}.attention:xla_attention",
    "flash": f"{_MODEL}.attention:flash_attention",
    "cudnn": f"{_MODEL}.attention:cudnn_attention",
    "fused_cpu": f"{_MODEL}.fused_cpu:fused_cpu_attention",
}
# model.doc_mask (VarLen, #1530): document segments and the attention over them; a packed file keeps
# these only when the run masks documents (packing/select.py).
VARLEN = {"segments": f"{_MODEL}.varlen:segment_ids", "attention": f"{_MODEL}.varlen:segmented_attention",
          "check": f"{_MODEL}.varlen_options:check_doc_mask"}
# eval.ngram_order > 0: eval-time n-gram mixing (#1227) on top of each final mode; a packed file keeps it
# only when its run mixes (packing/select.py; its command line cannot turn mixing on: config.PLACE_KEYS).
NGRAM_MIX = {"mix": "pgolf_jax.evaluation.ngram:final_mix"}
# train.checkpoint_every(_seconds): a plain run's checkpoints and --resume; a packed file keeps these only
# when its run checkpoints (packing/select.py), the package always has them (SIGTERM checkpoints too).
CHECKPOINTS = {"checkpointer": "pgolf_jax.train.checkpoint:Checkpointer", "resume": "pgolf_jax.train.resume:prepare"}
# Code behind a plain switch rather than a registry of its own: a packed file whose run leaves a feature off
# holds `name = None` for each of its definitions (packing/shake.py); its command line cannot turn one on
# (config.PLACE_KEYS).
FEATURES = {
    "qat": Feature(("quant.qat",), ("pgolf_jax.quant.qat:fake_quantize",)),
    # quant.scale_method percentile or search (GPTQ-lite) rather than SDClip
    "clipped_scales": Feature(("quant.scale_method!=sdclip",), ("pgolf_jax.quant.grid:_clipped_scales",)),
    "lqer": Feature(("quant.lqer_rank",), ("pgolf_jax.quant.gptq:lqer_correct", "pgolf_jax.quant.gptq:lqer_delta",
                                           "pgolf_jax.quant.export:_add_lqer")),
    "gate_int8": Feature(("quant.gate_int8",), ("pgolf_jax.quant.export:_store_gate",)),
    "bigram_hash": Feature(("model.bigram_vocab_size",), (f"{_MODEL}.embeddings:BigramHash",)),
    "smear_gate_v1": Feature(("model.smear_gate=v1",), (f"{_MODEL}.embeddings:SmearGateV1",)),
    "smear_gate_v2": Feature(("model.smear_gate=v2",), (f"{_MODEL}.embeddings:SmearGateV2",)),
    "pause_tokens": Feature(("model.pause_tokens",), (f"{_MODEL}.pause:insert", f"{_MODEL}.pause:real_positions")),
    # what only LoRA TTT asks of a model: logits at chosen positions, the virtual layer slots
    "lora_model": Feature(("eval.final_modes~lora_ttt",),
                          (f"{_MODEL}.gpt:GPT.logits_at", f"{_MODEL}.gpt:Model.num_slots")),
    # the block position a linear reads (RLMA's per-layer factors)
    "block_position": Feature(("model.linear=rlma", "model.mlp_linear=rlma"), (f"{_MODEL}.layers:Pass.position",)),
    # train.param_sharding=fsdp: parameters and optimizer state split over the data devices
    "fsdp": Feature(("train.param_sharding=fsdp",), ("pgolf_jax.dist:fsdp_sharding",)),
    # what the three above add to the GPT's embedding (made, and applied in order)
    "embed_extras": Feature(("model.bigram_vocab_size", "model.smear_gate", "model.pause_tokens"),
                            (f"{_MODEL}.gpt:GPT._make_extras", f"{_MODEL}.gpt:GPT._embed_extras")),
    "scheduled_wd": Feature(("optim.wd_schedule!=constant",), ("pgolf_jax.optim.optimizers:add_scheduled_decay",
                                                                "pgolf_jax.optim.schedule:wd_multiplier")),
    # each artifact format's reader: the run's own scheme writes one (int8_per_row the int8 format, the others the
    # mixed one); a distillation teacher may come in either
    "int8_format": Feature(("quant.scheme=int8_per_row", "train.objective=distill"),
                           ("pgolf_jax.quant.export:dequantize_int8",)),
    "mixed_format": Feature(("quant.scheme!=int8_per_row", "train.objective=distill"),
                            ("pgolf_jax.quant.export:dequantize_mixed",)),
    # the final evals beyond the round trip (pipeline.export_and_roundtrip's condition)
    "final_evals": Feature(("eval.final_modes!=plain", "eval.ngram_order", "eval.ngram_tilt", "eval.eval_seq_len"),
                           ("pgolf_jax.pipeline:final_evals",)),
    "gram_newton_schulz": Feature(("optim.gram_ns_min_aspect", "optim.orthogonalizer=gram_newton_schulz"),
                                  ("pgolf_jax.optim.orthogonalize:gram_newton_schulz",)),
    "ns_aol": Feature(("optim.ns_aol",), ("pgolf_jax.optim.orthogonalize:_aol",)),
    "xsa": Feature(("model.xsa_last_n",), (f"{_MODEL}.attention:exclusive_self_attention",)),
    # a plain run's checkpoints (packing/select.py packs registry.CHECKPOINTS on these switches): the loop's save,
    # the logs' offsets it records and --resume cuts back to, the loaders' positions
    "checkpoints": Feature(("train.checkpoint_every", "train.checkpoint_every_seconds"), (
        "pgolf_jax.train.loop:_Loop.checkpoint", "pgolf_jax.train.loop:_Loop.checkpoint_if_due",
        "pgolf_jax.train.loop:_Loop.restore", "pgolf_jax.train.loop:_Signals", "pgolf_jax.runlog:RunLog.offsets",
        "pgolf_jax.runlog:RunLog.truncate",
        *(f"pgolf_jax.data.{c}.{m}" for c in (
            "shards:TokenStream", "shards:TokenLoader", "shards:ShuffledSequenceLoader", "doc_packing:DocPackingLoader")
            for m in ("state", "restore")))),
    # orthogonal init of the block linears, and of BigramHash's projection
    "ortho_init": Feature(("model.ortho_init", "model.bigram_vocab_size"), (f"{_MODEL}.layers:_orthogonal",)),
    # the linears' recorded inputs: GPTQ's calibration, and SURGE's forward
    "captured_inputs": Feature(("quant.scheme=gptq", "model.family=surge_m"), tuple(f"{_MODEL}.{t}" for t in (
        "layers:captured_inputs", "gpt:GPT.input_hessians", "gpt:Model.input_hessians", "topology:BlockRunner.capture",
        "topology:BlockRunner.calibrate"))),
    # the optimizer's clips, and every TTT's (a final mode other than plain)
    "grad_clip": Feature(("optim.grad_clip_norm", "optim.adamw_clip", "eval.final_modes!=plain"),
                         ("pgolf_jax.optim.optimizers:clip_by_global_norm",)),
    # min-max grids (affine, NF): a per-row offset and step, codes on the grid's levels
    "minmax_grid": Feature(("quant.grid!=symmetric",), tuple(f"pgolf_jax.quant.{t}" for t in (
        "grid:minmax_params", "grid:encode", "grid:decode", "export:_codec"))),
    # a sliding window (trained or eval's) or document segments without cuDNN's own masks
    "windowed_attention": Feature(("model.attention_window", "eval.attention_window", "model.doc_mask"),
                                  (f"{_MODEL}.attention:windowed_attention",)),
    # another run's config.json read back (a --resume, a distillation teacher): the one line for a key it does not
    # know. A packed file's own config and its command line (config.PLACE_KEYS) never reach it.
    "run_configs": Feature(("train.checkpoint_every", "train.checkpoint_every_seconds", "train.objective=distill"),
                           ("pgolf_jax.config:_unknown",)),
    # per-token NLL, entropy and log p(hint) of the scoring passes: what n-gram mixing and the tilt read
    "token_scores": Feature(("eval.ngram_order", "eval.ngram_tilt"), (
        "pgolf_jax.evaluation.evaluate:TokenScores", "pgolf_jax.evaluation.evaluate:_token_outputs")),
}
# The package's conveniences around the config that a run does not need: the old key names (renames.py: old
# run directories load, a typed old key gets its new spelling). A packed file keeps none: its config and
# its command line are of its own code's keys (packing/select.py).
TOOLING = {"renames": "pgolf_jax.renames:RENAMES", "renamed": "pgolf_jax.renames:renamed",
           "source_files": "pgolf_jax.provenance:package_files"}
# data.tokenizer_path: its file's suffix picks the tokenizer (a packed file keeps the one its run reads).
TOKENIZERS = {".model": "pgolf_jax.data.tokenizer:SentencePieceTokenizer",
              ".json": "pgolf_jax.data.tokenizer:read_pure_byte"}
# model.activation: the MLP nonlinearity.
ACTIVATIONS = {
    "relu2": f"{_MODEL}.layers:relu2",
    "leaky_relu2": f"{_MODEL}.layers:leaky_relu2",
    "geglu": f"{_MODEL}.layers:geglu",  # gated: the MLP gets a third matrix
}
# optim.orthogonalizer: Muon's orthogonalization.
ORTHOGONALIZERS = {
    "newton_schulz": "pgolf_jax.optim.orthogonalize:newton_schulz",
    "gram_newton_schulz": "pgolf_jax.optim.orthogonalize:gram_newton_schulz",
}
# train.objective: the training loss built from the model's outputs.
OBJECTIVES = {
    "ce": "pgolf_jax.train.objectives:CrossEntropy",
    "distill": Variant("pgolf_jax.train.objectives:Distill", "pgolf_jax.train.options:Distill"),
    # The same loss as ce without the (B, T, V) logits. An entry rather than an option of ce: ce
    # keeps no options, so every existing config (and its config.json) stays as it is.
    "ce_chunked": Variant("pgolf_jax.train.objectives:ChunkedCrossEntropy", "pgolf_jax.train.options:CEChunked"),
}
# eval.final_modes: the evaluations of the round-tripped artifact, in order (the last one is the score).
EVAL_MODES = {
    "plain": "pgolf_jax.evaluation.modes:plain",
    "sliding": "pgolf_jax.evaluation.modes:sliding",
    "ttt": Variant("pgolf_jax.evaluation.ttt_modes:full_ttt", "pgolf_jax.evaluation.options:TTT"),
    "lora_ttt": Variant("pgolf_jax.evaluation.ttt_modes:lora_ttt", "pgolf_jax.evaluation.options:LoRATTT"),
}
# eval.ngram_tilt: an eval-time n-gram tilt of each final mode's distribution ("" = none).
NGRAM_TILTS = {
    "token_tilt": Variant("pgolf_jax.evaluation.tilt:TokenTilt", "pgolf_jax.evaluation.options:TokenTilt"),
}
# quant.scheme: how the trained weights become the artifact's integers.
QUANT_SCHEMES = {
    "int8_per_row": "pgolf_jax.quant.schemes:Int8PerRow",
    "gptq": Variant("pgolf_jax.quant.schemes:GPTQ", "pgolf_jax.quant.options:GPTQ"),
    "rtn": "pgolf_jax.quant.schemes:RTN",
}

# train.lr_schedule: the lr multiplier's decay (the warm-up ramp goes on top of either).
SCHEDULES = {
    "warmdown": "pgolf_jax.optim.schedule:warmdown_multiplier",
    "cosine": "pgolf_jax.optim.schedule:cosine_multiplier",
}
# optim.ns_coefficients: the Newton-Schulz (a, b, c) table of each step (optim/coefficients.py).
NS_COEFFICIENTS = {
    "ns5": "pgolf_jax.optim.coefficients:NS5",
    "polar_express_paper": "pgolf_jax.optim.coefficients:POLAR_EXPRESS_PAPER",
    "polar_express_modded": "pgolf_jax.optim.coefficients:POLAR_EXPRESS_MODDED",
    "you": "pgolf_jax.optim.coefficients:YOU",
}
# optim.wd_schedule: the multiplier of the matrix group's weight decay (optim.muon_wd) over training.
WD_SCHEDULES = {
    "constant": "pgolf_jax.optim.schedule:constant_wd",
    "taper": Variant("pgolf_jax.optim.schedule:taper_wd", "pgolf_jax.optim.options:Taper"),
}
# data.loader: the order training reads the train shards in.
LOADERS = {
    "sequential": "pgolf_jax.data.shards:sequential_loader",
    "shuffled": "pgolf_jax.data.shards:ShuffledSequenceLoader",
    # #1530's document-packing loader: spans from each shard's first BOS, for model.doc_mask
    "doc_packed": "pgolf_jax.data.doc_packing:doc_packed_loader",
}

# quant.grid: the grid of every low-bit row (export, GPTQ and QAT alike).
GRIDS = {
    "symmetric": "pgolf_jax.quant.grid:Symmetric",
    "affine": "pgolf_jax.quant.grid:Affine",
    "nf": "pgolf_jax.quant.grid:NF",
}
# quant.compressor: the artifact payload's codec (its id goes in the artifact header).
COMPRESSORS = {
    "zstd": Variant("pgolf_jax.quant.codecs:Zstd", "pgolf_jax.quant.options:Zstd"),
    "zlib": "pgolf_jax.quant.codecs:Zlib",
    "brotli": "pgolf_jax.quant.codecs:Brotli",
    # #1855: lrzip (ZPAQ) per role group of int8 codes, brotli for the rest (needs the lrzip binary)
    "pergroup": Variant("pgolf_jax.quant.groupzip:Pergroup", "pgolf_jax.quant.options:Pergroup"),
}

# config field -> registry (what config validation checks, and what selects a variant's options).
FIELDS = {
    "model.family": FAMILIES, "model.topology": TOPOLOGIES, "model.block_schedule": BLOCK_SCHEDULES,
    "model.parallel_residual": PARALLEL_RESIDUALS,
    "model.attention": ATTENTION, "model.linear": LINEAR, "model.mlp_linear": LINEAR, "model.mixers": MIXERS,
    "model.activation": ACTIVATIONS, "model.weight_source": WEIGHT_SOURCES,
    "optim.orthogonalizer": ORTHOGONALIZERS, "train.objective": OBJECTIVES,
    "eval.final_modes": EVAL_MODES, "quant.scheme": QUANT_SCHEMES, "train.lr_schedule": SCHEDULES,
    "optim.wd_schedule": WD_SCHEDULES, "optim.ns_coefficients": NS_COEFFICIENTS,
    "data.loader": LOADERS, "quant.compressor": COMPRESSORS,
    "quant.grid": GRIDS, "model.attn_gate": ATTN_GATES, "eval.ngram_tilt": NGRAM_TILTS,
}
# Fields that name several entries: comma-separated, each optionally `name*count`; "" = none.
LIST_FIELDS = ("model.mixers", "eval.final_modes")
# "" selects nothing (the default applies)
OPTIONAL_FIELDS = ("model.mlp_linear", "model.mixers", "model.attn_gate", "eval.ngram_tilt")


def names(key: str, value: str) -> list[str]:
    """The registry keys a field's value selects, in order (list fields: `a,b*2` -> [a, b])."""
    if key not in LIST_FIELDS:
        return [value] if value else []
    return [item.partition("*")[0].strip() for item in value.split(",") if item.strip()]


def options_path(section: str, name: str) -> str | None:
    """The options class of the entry `name` of a registry of `section` (None: it has none)."""
    for key, reg in FIELDS.items():
        entry = reg.get(name) if key.startswith(section + ".") else None
        if isinstance(entry, Variant):
            return entry.options
    return None


def option_names(section: str) -> dict[str, str]:
    """Every entry of the section's registries that has options: name -> options class path."""
    found = {}
    for key, reg in FIELDS.items():
        if key.startswith(section + "."):
            found.update({name: e.options for name, e in reg.items() if isinstance(e, Variant)})
    return found


def feature_on(cfg, name: str) -> str:
    """The first switch of FEATURES[name] that cfg turns on, as `key=value` ("" when none is): `key` (set),
    `key=v`, `key!=v`, or `key~v` (v among the entries a list field names)."""
    for switch in FEATURES[name].switches:
        key, op, want = next((switch.partition(o) for o in ("!=", "~", "=") if o in switch), (switch, "", ""))
        section, _, field = key.partition(".")
        value = getattr(getattr(cfg, section), field)
        if {"": bool(value), "=": str(value) == want, "!=": str(value) != want,
                "~": op == "~" and want in names(key, str(value))}[op]:
            return f"{key}={value}"
    return ""


def module_of(registry: dict, key: str) -> str:
    """The module of the implementation registered under key."""
    target = registry[key]
    return (target.impl if isinstance(target, Variant) else target).partition(":")[0]


def load(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def resolve(registry: dict[str, str], key: str):
    """The implementation registered under key (imported now if it was not yet)."""
    try:
        target = registry[key]
    except KeyError:
        raise KeyError(f"{key!r} is not registered; choose from {', '.join(registry)}") from None
    return load(target.impl if isinstance(target, Variant) else target)
