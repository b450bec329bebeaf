"""Building blocks shared by every architecture: norms, rotary, softcap, linears, activations.

Shape legend (used across the package): B batch, T positions, N = B*T flattened positions,
D model width, H query heads, G kv heads, K head dim, F MLP hidden, V vocab, L layers, R low rank.

Weights are stored in PyTorch's (out_features, in_features) layout so that parameter names,
per-row quantization, GPTQ columns and Muon's rows/cols all mean what they mean in the
reference; the matmul contracts the last axis, which XLA handles without a transpose copy.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax import registry
from pgolf_jax.model.params import param


def rms_norm(x: jax.Array) -> jax.Array:
    """Weightless RMSNorm; eps = machine epsilon of the input dtype, as F.rms_norm(eps=None)."""
    x32 = x.astype(jnp.float32)
    eps = jnp.finfo(x.dtype).eps
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


def softcap(logits: jax.Array, cap: float) -> jax.Array:
    return cap * jnp.tanh(logits / cap)


def rotary_tables(seq_len: int, rope_dims: int, base: float, dtype, train_seq_len: int = 0):
    """cos/sin of shape (T, rope_dims/2), computed in fp32 then cast (as the reference).

    Beyond train_seq_len (when set) the base is NTK-rescaled: base * (T/train)^(rd/(rd-2))."""
    if train_seq_len and seq_len > train_seq_len:
        base = base * (seq_len / train_seq_len) ** (rope_dims / (rope_dims - 2))
    inv_freq = 1.0 / (base ** (jnp.arange(0, rope_dims, 2, dtype=jnp.float32) / rope_dims))
    freqs_TK = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.cos(freqs_TK).astype(dtype), jnp.sin(freqs_TK).astype(dtype)


def apply_rotary(x_BTHK: jax.Array, cos_TK: jax.Array, sin_TK: jax.Array) -> jax.Array:
    """Rotate-half on the first 2*cos.shape[-1] dims; the rest pass through (partial RoPE)."""
    half = cos_TK.shape[-1]
    cos, sin = cos_TK[None, :, None, :], sin_TK[None, :, None, :]
    x1, x2, rest = x_BTHK[..., :half], x_BTHK[..., half:2 * half], x_BTHK[..., 2 * half:]
    return jnp.concatenate([x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos, rest], axis=-1)


# ---------------------------------------------------------------------------------------------
# Linear weight parameterizations (registry.LINEAR). Every projection in a block is built through
# block_linear, so a new parameterization (low-rank, shared basis, generated, random-basis
# adapters) is one registry entry: a module (in_f, out_f, *, init, quant, cfg, rngs) -> y = f(x).

def _orthogonal(key, out_f: int, in_f: int) -> jax.Array:
    """torch.nn.init.orthogonal_ (gain 1): a Haar-random orthogonal matrix from a Gaussian's QR.

    Under vmap (the layer-stacked init) it runs as a sequential map: several batched QRs in one
    XLA:CPU computation were measured to deadlock its thread pool (jax 0.10.2), one-at-a-time do not."""

    @jax.custom_batching.sequential_vmap
    def sample(k):
        return jax.nn.initializers.orthogonal()(k, (out_f, in_f), jnp.float32)

    return sample(key)


def svd_factors(key, out_f: int, in_f: int, r: int, std: float):
    """(U (out, r), s (r,), Vt (r, in)): the leading r singular triplets of an N(0, std^2) matrix,
    the SVD init of the factorized parameterizations (sequential under vmap, like _orthogonal)."""

    @jax.custom_batching.sequential_vmap
    def top(k):
        u, s, vt = jnp.linalg.svd(std * jax.random.normal(k, (out_f, in_f), jnp.float32), full_matrices=True)
        return u[:, :r], s[:r], vt[:r]

    return top(key)


def _init_weight(kind: str, key, out_f: int, in_f: int) -> jax.Array:
    if kind == "zeros":
        return jnp.zeros((out_f, in_f), jnp.float32)
    if kind == "uniform":  # torch.nn.Linear default: kaiming_uniform(a=sqrt 5) = U(+-1/sqrt(in))
        bound = 1.0 / math.sqrt(in_f)
        return jax.random.uniform(key, (out_f, in_f), jnp.float32, -bound, bound)
    if kind == "orthogonal":
        return _orthogonal(key, out_f, in_f)
    raise ValueError(f"unknown linear init {kind!r}")


def linear_init(cfg, in_f: int, out_f: int) -> str:
    """The init of a non-zero-init projection: torch's default, or orthogonal (gain 1) for
    matrices with both dims >= 64 when model.ortho_init is on (the records' rule)."""
    return "orthogonal" if cfg.ortho_init and min(in_f, out_f) >= 64 else "uniform"


def block_linear(cfg, in_f: int, out_f: int, *, site: str, init: str, rngs: nnx.Rngs):
    """A block projection through the model.linear registry (model.mlp_linear for the MLP when
    set); `site` (attn | mlp) is its quantization group (and picks a low-rank parameterization's
    rank). A weight source that makes the block weights itself (model.weight_source) brings its own
    linear."""
    source = registry.resolve(registry.WEIGHT_SOURCES, cfg.weight_source)
    kind = (cfg.mlp_linear or cfg.linear) if site == "mlp" else cfg.linear
    cls = source.linear or registry.resolve(registry.LINEAR, kind)
    return cls(in_f, out_f, init=init, quant=site, cfg=cfg, rngs=rngs)


class StoredWeights:
    """model.weight_source=params: the block linears hold their weights as parameters (nothing to
    make; model/generators holds the sources that generate them)."""

    linear = None  # model.linear's parameterization

    @staticmethod
    def create(gpt, cfg, rngs) -> None:
        pass

    @staticmethod
    def generate(gpt, rng) -> dict:
        return {}


# ---------------------------------------------------------------------------------------------
# The per-call structure: what one forward pass hands its blocks and their linears. The model makes
# it once per pass (GPT._context), the block runner narrows it to each block application (`at`),
# and nothing of it outlives the call: no module-level state is read or written while tracing.

class LinearHook:
    """Eval-time adapters attached to a pass (Pass.hook) instead of being threaded through every
    block: `linear` sees each dense block linear's output y with its input x, by the weight's block
    path ("attn.c_q.weight"), `output` a hook site's output y with that site's input x: "attn" / "mlp"
    (a block's sublayer outputs before their branch scales, x the sublayer's normalized input) and
    "head" (the logits before the soft-cap, x the final hidden states; slot None). Identity here."""

    def linear(self, name: str, x, y, slot):
        return y

    def output(self, site: str, x, y, slot):
        return y


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=("rope", "segments", "generated", "layer", "slot", "hook"),
                   meta_fields=("shape_BT", "window", "capture"))
@dataclasses.dataclass(frozen=True)
class Pass:
    """shape_BT: (B, T) of the flat (B*T, D) residual stream; rope: the rotary (cos, sin) tables;
    window: the sliding attention window (0: full causal); segments: model.doc_mask's (B, T)
    segment ids or None; generated: a weight source's block
    weights {"attn.c_q.weight": (L, ...)}; layer / slot: the physical layer and virtual slot of the
    block being applied (traced ints under scan; RLMA's random base depends on them); hook: a
    LinearHook or None; capture: linears sow their inputs (GPTQ calibration, `captured_inputs`)."""
    shape_BT: tuple | None = None
    rope: tuple | None = None
    window: int = 0
    segments: Any = None
    generated: dict = dataclasses.field(default_factory=dict)
    layer: Any = None
    slot: Any = None
    hook: Any = None
    capture: bool = False

    def at(self, layer, slot) -> Pass:
        """This pass inside the block at (physical layer, virtual slot)."""
        return dataclasses.replace(self, layer=layer, slot=slot)

    def position(self):
        """(physical layer, virtual slot) of the block being applied."""
        if self.layer is None:
            raise RuntimeError("this linear needs the block position: it runs only inside a block runner's block")
        return self.layer, self.slot

    def linear(self, linear, name: str, x, y):
        """`linear`'s output y = x W^T (W its weight `name`) as this pass sees it (the hook's, if any)."""
        if self.hook is None or linear.tap is None:
            return y
        return self.hook.linear(f"{linear.tap}.{name}", x, y, self.slot)

    def output(self, site: str, x, y):
        return y if self.hook is None else self.hook.output(site, x, y, self.slot)

    def record(self, linear, weight: str, x) -> None:
        """Sow x as the input of `linear`'s parameter `weight` when calibrating (collected by
        `captured_inputs`; a later call in the same capture replaces it)."""
        if self.capture and linear.tap is not None:
            linear.sow(nnx.Intermediate, weight, x, reduce_fn=_latest, init_fn=_nothing)


def _latest(_, new):
    return new


def _nothing():
    return None


# A linear called outside any block (a head, an embedding projection, a test): no position, no hook.
OUTSIDE = Pass()


def captured_inputs(fn, *args):
    """(fn(*args), {"<module path>.<weight>": input}) with what the linears under fn's module sowed;
    fn is a module or its bound method, called with a Pass whose `capture` is set. The paths are the
    linears' tap names (name_taps) relative to that module."""
    out, sown = nnx.capture(fn, nnx.Intermediate)(*args)
    return out, {".".join(str(p) for p in path): v.get_value() for path, v in nnx.to_flat_state(sown)}


def name_taps(module: nnx.Module, prefix: str = "") -> None:
    """Give every linear under `module` its dotted path as tap name (e.g. 'attn.c_q')."""
    for path, sub in nnx.iter_modules(module):
        if hasattr(sub, "tap"):
            sub.tap = ".".join([prefix] * bool(prefix) + [str(p) for p in path])


class DenseLinear(nnx.Module):
    """y = x W^T with an fp32 master weight cast to the compute dtype at matmul time."""

    def __init__(self, in_f: int, out_f: int, *, init: str = "uniform", rngs: nnx.Rngs, group: str = "matrix",
                 quant: str = "other", always_quantize: bool = False, cfg=None):
        key = rngs.params() if init != "zeros" else None
        self.weight = param(_init_weight(init, key, out_f, in_f), group=group, quant=quant,
                            always_quantize=always_quantize)
        self.tap = None

    def __call__(self, x: jax.Array, ctx: Pass = OUTSIDE) -> jax.Array:
        ctx.record(self, "weight", x)
        return ctx.linear(self, "weight", x, jnp.einsum("...i,oi->...o", x, self.weight[...].astype(x.dtype)))


# ---------------------------------------------------------------------------------------------
# MLP activations (registry.ACTIVATIONS), applied between the up and down projections.

def relu2(x):
    return jnp.square(jax.nn.relu(x))


def leaky_relu2(x):
    """LeakyReLU(0.5) squared, the records' MLP activation (spec 4.6)."""
    return jnp.square(jax.nn.leaky_relu(x, negative_slope=0.5))


def geglu(x):
    """GELU (exact, as torch's F.gelu) of the gate: with `gated`, the MLP computes
    down(gelu(x W_g) * (x W_u)) with a third matrix W_g (#1227, spec 5.3)."""
    return jax.nn.gelu(x, approximate=False)


geglu.gated = True
