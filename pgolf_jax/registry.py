"""Every variation point of the stack, as a plain dict: config value -> "module:attribute" of its
implementation. A new variant is one entry here, its module and its test (tests parametrize over
these dicts). Entries are imported on first use, so validating a config imports nothing heavy,
and a run imports (and its artifact counts the code of) only the variants it selects."""

from __future__ import annotations

import importlib

_MODEL = "pgolf_jax.model"

# model.family: builds the parameters and returns logits, auxiliary losses and loss weights.
FAMILIES = {
    "gpt": f"{_MODEL}.gpt:GPT",
    "surge_m": f"{_MODEL}.families.surge:SurgeM",  # a GPT whose SURGE layer a meta-network corrects
    "mps": f"{_MODEL}.families.mps:MPS",
    "hopfield": f"{_MODEL}.families.hopfield:Hopfield",
    "agents": f"{_MODEL}.families.agents:Agents",
}
# Families that are not GPTs: no blocks, so the GPT's block variants, LoRA TTT and GPTQ calibration
# do not apply to them (config validation refuses those).
NON_GPT_FAMILIES = ("mps", "hopfield", "agents")
# model.weight_source: where a GPT's block linears get their weights (stored, or generated each
# forward pass from the source's own parameters).
WEIGHT_SOURCES = {
    "params": f"{_MODEL}.layers:StoredWeights",
    "basis": f"{_MODEL}.generators.basis:Basis",
    "hypernet": f"{_MODEL}.generators.hypernet:HyperNet",
    "siren": f"{_MODEL}.generators.siren:Siren",
    "nca": f"{_MODEL}.generators.nca:NCA",
    "seed": f"{_MODEL}.generators.seed:Seed",
}
# model.topology: how the blocks are connected (skips, recurrence, halting).
TOPOLOGIES = {
    "unet": f"{_MODEL}.topology:UNet",
    "plain": f"{_MODEL}.topology:Plain",
    "act": f"{_MODEL}.act:ACT",
    "denseformer": f"{_MODEL}.denseformer:DenseFormer",
    "ut_shared": f"{_MODEL}.ut:UTShared",
}
# model.block_schedule: the physical layer order the stacked blocks are walked in.
BLOCK_SCHEDULES = {
    "unet": f"{_MODEL}.topology:unet_layers",
    "repeat_in_place": f"{_MODEL}.topology:repeat_in_place_layers",
}
# model.attention: the attention module of a block.
ATTENTION = {"gqa": f"{_MODEL}.attention:GQA", "mla": f"{_MODEL}.mla:MLA"}
# model.linear (and model.mlp_linear): how a block linear's weight is stored and materialized.
LINEAR = {
    "dense": f"{_MODEL}.layers:DenseLinear",
    "lowrank": f"{_MODEL}.lowrank:LowRankLinear",
    "monarch": f"{_MODEL}.monarch:MonarchLinear",
    "rlma": f"{_MODEL}.rlma:RLMALinear",
}
# model.mixers: the block of a layer by its token mixer (each mixer's layers are stacked apart).
MIXERS = {"attn": f"{_MODEL}.gpt:Block", "s4d_lin": f"{_MODEL}.ssm:SSMBlock"}
# model.attention_impl: the causal attention kernel ("auto" picks one per backend and dtype).
ATTENTION_IMPLS = {
    "xla": f"{_MODEL}.attention:xla_attention",
    "flash": f"{_MODEL}.attention:flash_attention",
    "cudnn": f"{_MODEL}.attention:cudnn_attention",
    "fused_cpu": f"{_MODEL}.attention:fused_cpu_attention",
}
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
OBJECTIVES = {"ce": "pgolf_jax.train.objectives:CrossEntropy", "distill": "pgolf_jax.train.objectives:Distill"}

# config field -> registry (what config validation checks).
FIELDS = {
    "model.family": FAMILIES, "model.topology": TOPOLOGIES, "model.block_schedule": BLOCK_SCHEDULES,
    "model.attention": ATTENTION, "model.linear": LINEAR, "model.activation": ACTIVATIONS,
    "model.weight_source": WEIGHT_SOURCES,
    "optim.orthogonalizer": ORTHOGONALIZERS, "train.objective": OBJECTIVES,
}


def resolve(registry: dict[str, str], key: str):
    """The implementation registered under key (imported now if it was not yet)."""
    try:
        target = registry[key]
    except KeyError:
        raise KeyError(f"{key!r} is not registered; choose from {', '.join(registry)}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
