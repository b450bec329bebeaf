"""What every parameter is, declared where it is created: its optimizer group and its quantization
rule travel as nnx.Param metadata, so the optimizer and the exporters read them instead of
guessing from names and shapes. Also the parameter naming every stage shares: dotted paths, and
the prefix of the layer-stacked block parameters (flattened per layer they are the reference's
`blocks.{i}.` names)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
from flax import nnx

STACKED_PREFIX = "blocks."  # parameters under this prefix carry a leading layer axis
# ... and so do those of the further block segments `blocks_<mixer>.` of heterogeneous stacks.
STACKED_SEGMENT = "blocks_"


def is_stacked(name: str) -> bool:
    """Whether a dotted parameter name lies in a layer-stacked block segment."""
    return name.startswith(STACKED_PREFIX) or name.startswith(STACKED_SEGMENT)


def layer_names(name: str, n: int) -> list[str]:
    """The per-layer names of a stacked parameter: `<segment>.<i>.<rest>` for i < n."""
    segment, _, rest = name.partition(".")
    return [f"{segment}.{i}.{rest}" for i in range(n)]

# Optimizer groups (optim.optimizers): the token table(s), an untied head, matrices on Muon,
# everything else on the scalar Adam group, and `adamw` (AdamW with its own lr / decay / clip) for
# what a model declares so (#1589's meta-networks, weight generators and non-GPT families).
GROUPS = ("embed", "head", "matrix", "scalar", "adamw")
# Quantization rules: a low-bit group (its width and clip are quant.<rule>_bits / _clip_sigmas),
# `lookup` (a table no activation multiplies: round-to-nearest on the embed grid), `control`
# (kept fp32 by the reference int8 export), `other`, or `gate` (an attention gate's weight: a
# control tensor, or int8 rows with quant.gate_int8, #1736's QuantGate).
QUANT_RULES = ("attn", "mlp", "embed", "lookup", "other", "control", "gate")


@dataclass(frozen=True)
class ParamSpec:
    group: str
    quant: str
    # Factor matrices (low-rank U/V, MLA's projections) are quantized however small they are:
    # passing them through as fp16 would be a silent 2-4x on exactly the bytes they save.
    always_quantize: bool = False
    # False where no single input Hessian describes the rows (Monarch's block factors: each block
    # of rows multiplies its own slice of the input): GPTQ rounds it to nearest and says so.
    hessian: bool = True


def param(value, *, group: str, quant: str, always_quantize: bool = False, hessian: bool = True) -> nnx.Param:
    """An nnx.Param that says what it is (see ParamSpec)."""
    if group not in GROUPS or quant not in QUANT_RULES:
        raise ValueError(f"param: group {group!r} must be one of {GROUPS}, quant {quant!r} one of {QUANT_RULES}")
    return nnx.Param(value, group=group, quant=quant, always_quantize=always_quantize, hessian=hessian)


def path_name(path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def specs(state: nnx.State) -> dict:
    """The ParamSpec of every parameter of a module's state, as a pure dict shaped like its params."""
    def spec(path, v):
        meta = v.get_metadata() if hasattr(v, "get_metadata") else {}
        if "group" not in meta:
            raise ValueError(f"parameter {path_name(path)} was created without a group/quant rule: use params.param")
        return ParamSpec(meta["group"], meta["quant"], bool(meta.get("always_quantize", False)),
                         bool(meta.get("hessian", True)))

    tree = jax.tree_util.tree_map_with_path(spec, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree


def flat_specs(spec_tree: dict, params) -> dict[str, ParamSpec]:
    """{reference name: ParamSpec}, stacked block parameters expanded per layer (as
    quant.interop.flatten_params names the arrays)."""
    out = {}
    leaves = jax.tree_util.tree_leaves_with_path(params)
    spec_of = dict(jax.tree_util.tree_leaves_with_path(spec_tree, is_leaf=lambda x: isinstance(x, ParamSpec)))
    for path, leaf in leaves:
        name, sp = path_name(path), spec_of[path]
        if is_stacked(name):
            out.update(dict.fromkeys(layer_names(name, leaf.shape[0]), sp))
        else:
            out[name] = sp
    return out
