"""The options of the attention gates (registry.ATTN_GATES, model.attn_gate), set as
`model.<gate>.<field>`. JAX-free, like model/options.py, which holds every other model variant's
options; these live apart only because that module is at the layout's 400-line cap."""

from __future__ import annotations

from dataclasses import dataclass

from pgolf_jax.errors import ConfigError
from pgolf_jax.model.options import layer_mixers


class _AttnGate:
    """What every model.attn_gate entry checks: there is attention to gate, and n has `width` channels."""

    def check(self, cfg):
        m = cfg.model
        if "attn" not in layer_mixers(m):
            raise ConfigError(f"model.attn_gate={m.attn_gate} gates attention; model.mixers={m.mixers!r} leaves "
                              "no attention layer")
        width = getattr(self, "width", 0)
        if width > m.model_dim:
            raise ConfigError(f"model.{m.attn_gate}.width={width} exceeds model.model_dim={m.model_dim}")


@dataclass(frozen=True)
class OutputGate(_AttnGate):
    """attn_gate=output_gate (#1667): y_h <- 2 sigmoid(W_h . n[:width]) y_h, W zero-init (identity)."""
    width: int = 12
    RANGES = {"width": ">= 1"}


@dataclass(frozen=True)
class GatedAttn(_AttnGate):
    """attn_gate=gated_attn (#1736, Qwen's gated attention): y_h <- sigmoid(W_h . n) y_h, W (heads,
    model_dim) ~ N(0, init_std^2); #1736 ran 0.005."""
    init_std: float = 0.005
    RANGES = {"init_std": ">= 0"}


@dataclass(frozen=True)
class SparseGate(_AttnGate):
    """attn_gate=sparse_gate (#1787): y_h <- sigmoid(scale W_h . n[:width]) y_h, W zero-init (0.5 at
    init); #1787 ran scale 1.0, #1855 0.5."""
    width: int = 12
    scale: float = 1.0
    RANGES = {"width": ">= 1", "scale": "> 0"}
