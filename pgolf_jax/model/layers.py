"""Building blocks shared by every architecture: norms, rotary, softcap, linears, activations.

Shape legend (used across the package): B batch, T positions, N = B*T flattened positions,
D model width, H query heads, G kv heads, K head dim, F MLP hidden, V vocab, L layers, R low rank.

Weights are stored in PyTorch's (out_features, in_features) layout so that parameter names,
per-row quantization, GPTQ columns and Muon's rows/cols all mean what they mean in the
reference; the matmul contracts the last axis, which XLA handles without a transpose copy.
"""

from __future__ import annotations

import contextlib
import math

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


# Where a block runs: its physical layer and virtual slot (traced ints under scan), set by the block
# runner around every block application, for linears whose weights depend on the pass they are
# used in (RLMA's random base, regenerated per iteration of a shared block).
_POSITION: list = []


@contextlib.contextmanager
def block_position(layer, slot):
    _POSITION.append((layer, slot))
    try:
        yield
    finally:
        _POSITION.pop()


def current_position():
    """(physical layer, virtual slot) of the block being applied."""
    if not _POSITION:
        raise RuntimeError("this linear needs the block position: it runs only inside a block runner's block")
    return _POSITION[-1]


# Input taps for GPTQ calibration: inside `with capture_linear_inputs() as taps:` every linear that
# has a tap name records, under the name of each weight it calibrates, the input that weight
# multiplies (at trace time) into `taps`.
_TAPS: list[dict] = []


@contextlib.contextmanager
def capture_linear_inputs():
    taps: dict = {}
    _TAPS.append(taps)
    try:
        yield taps
    finally:
        _TAPS.pop()


def record_input(linear, weight: str, x: jax.Array) -> None:
    """Record x as the input of `linear`'s parameter `weight` when calibrating."""
    if _TAPS and linear.tap is not None:
        _TAPS[-1][f"{linear.tap}.{weight}"] = x


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

    def __call__(self, x: jax.Array) -> jax.Array:
        record_input(self, "weight", x)
        return jnp.einsum("...i,oi->...o", x, self.weight[...].astype(x.dtype))


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
