"""SURGE-M v2 (#1589 addendum, spec 4.10 v2): a GPT whose SURGE layer's output projection W_O is
rewritten per chunk by a meta-network, computed without forming the rewritten matrices.

1. Base pass: the GPT over the whole sequence with W_0 everywhere; keep the SURGE layer's input
   h_lower (detached), its attention output before W_O, and the base logits.
2. Errors e_t = onehot(x_t) - softmax(base logits_{t-1}) (detached, zeros before the first
   position), compressed Linear(V -> d_err) + LayerNorm.
3. minGRU over [h_lower; e]: [z; h~] = sigmoid(W x + b), s_t = (1 - z) s_{t-1} + z h~, a linear
   recurrence solved by lax.associative_scan.
4. At each chunk's last token: u, v (Linear, init N(0, uv_std^2)), update gate g (bias -4.6) and
   forget gate a (bias +2.3), both sigmoid.
5. WY correction (wy_correction): chunk c's output z_c = pre_wo_c W_0^T becomes z_c M_c^T with
   M_{c+1} = I + a_c^2 (M_c - I) + M_c g_c u_c v_c^T, held as M_c = I + W Y^T (columns W_k = M_k u_k,
   Y_k = g_k v_k, all scaled by a_c after each chunk: old terms decay by a^2, as the PR), so the
   correction is (z_c Y) W^T, O(C D) per token.
6. single: logits = softcap(base logits + head(norm(corr))); two_pass: x = x_after_SURGE + s_a corr,
   the later layers run again (without U-Net skips, as the PR) and give the logits.

The meta-network is on the adamw group (lr_meta = optim.adamw_lr, wd 0.01, its own clip); the
base is the GPT's groups. With uv_std 0, u = v = 0 and the correction is bilinear in (u, v), so
the u/v heads' gradients are exactly zero forever (the "chicken-and-egg" trap; tested).
Refused at config time: looping, pause tokens, weight sources, LoRA TTT (config._validate_pr1589).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from pgolf_jax.model.affine import Affine, torch_uniform
from pgolf_jax.model.families import layer_norm
from pgolf_jax.model.flops import analytic_flops_per_token, block_matrix_params
from pgolf_jax.model.gpt import GPT
from pgolf_jax.model.layers import rms_norm, softcap
from pgolf_jax.model.params import param
from pgolf_jax.model.topology import BlockRunner


class MetaNet(nnx.Module):
    def __init__(self, cfg, key):
        D, V, E, S = cfg.model_dim, cfg.vocab_size, cfg.surge_m.d_err, cfg.surge_m.d_state
        k_err, k_gru, k_u, k_v = jax.random.split(key, 4)
        self.err_proj = Affine(torch_uniform(k_err, (E, V), V))
        self.err_norm_w = param(jnp.ones((E,), jnp.float32), group="adamw", quant="control")
        self.err_norm_b = param(jnp.zeros((E,), jnp.float32), group="adamw", quant="control")
        self.gru = Affine.torch_default(k_gru, D + E, 2 * S)
        std = cfg.surge_m.uv_init_std
        self.u_head = Affine(std * jax.random.normal(k_u, (D, S)), jnp.zeros((D,)))
        self.v_head = Affine(std * jax.random.normal(k_v, (D, S)), jnp.zeros((D,)))
        self.g_head = Affine(jnp.zeros((1, S)), jnp.full((1,), cfg.surge_m.gate_bias))
        self.a_head = Affine(jnp.zeros((1, S)), jnp.full((1,), cfg.surge_m.forget_bias))


def min_gru(x_BTI, gru: Affine):
    """s (B, T, S): s_t = (1 - z_t) s_{t-1} + z_t h~_t from s_{-1} = 0, by associative scan."""
    z, h = jnp.split(jax.nn.sigmoid(gru(x_BTI)), 2, axis=-1)

    def compose(first, second):  # h -> a2 (a1 h + b1) + b2
        return first[0] * second[0], second[0] * first[1] + second[1]

    return jax.lax.associative_scan(compose, (1.0 - z, z * h), axis=1)[1]


def wy_correction(z_BTD, u_BCD, v_BCD, g_BC1, a_BC1, chunk: int):
    """(B, T, D): z_c (M_c - I)^T for every chunk c (spec 4.10's WY form, M_c never formed)."""
    B, T, D = z_BTD.shape
    C = u_BCD.shape[1]
    z_CBKD = jnp.pad(z_BTD, ((0, 0), (0, C * chunk - T), (0, 0))).reshape(B, C, chunk, D).transpose(1, 0, 2, 3)

    def step(carry, xs):
        W_BDC, Y_BDC = carry
        c, z, u, v, g, a = xs
        corr = jnp.einsum("bkc,bec->bke", jnp.einsum("bkd,bdc->bkc", z, Y_BDC), W_BDC)
        Mu = u + jnp.einsum("bdc,bc->bd", W_BDC, jnp.einsum("bdc,bd->bc", Y_BDC, u))
        W_BDC = (a[:, :, None] * W_BDC).at[:, :, c].set(Mu)
        Y_BDC = (a[:, :, None] * Y_BDC).at[:, :, c].set(g * v)
        return (W_BDC, Y_BDC), corr

    zeros = jnp.zeros((B, D, C), z_BTD.dtype)
    tr = lambda t: jnp.swapaxes(t, 0, 1)  # noqa: E731
    _, corr_CBKD = jax.lax.scan(step, (zeros, zeros), (jnp.arange(C), z_CBKD, tr(u_BCD), tr(v_BCD), tr(g_BC1),
                                                       tr(a_BC1)))
    return corr_CBKD.transpose(1, 0, 2, 3).reshape(B, C * chunk, D)[:, :T]


class SurgeM(GPT):
    """registry.FAMILIES["surge_m"]: the GPT plus `meta` (model.surge_* fields)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.meta = MetaNet(cfg, rngs.params())

    def base_pass(self, ids_BT):
        """(base logits before the cap (B, T, V) fp32, h_lower, pre-W_O output, the SURGE block's
        output (the last three (B*T, D)), the block runner)."""
        cfg = self.cfg
        B, T = ids_BT.shape
        x = x0 = self.embed(ids_BT).reshape(B * T, cfg.model_dim)
        run = BlockRunner(self, x0, self._context(T, B))
        n_enc = cfg.num_layers // 2 if cfg.topology == "unet" else 0
        skips = []
        for layer in range(cfg.num_layers):  # the plain order with the U-Net's skips, unrolled
            if n_enc and layer >= n_enc and skips:
                x = x + self.skip_weights[...][layer - n_enc].astype(x.dtype) * skips.pop()
            if layer == cfg.surge_m.layer:
                h_lower = jax.lax.stop_gradient(x)
                x, taps = run.capture(x, run.layer(layer, layer), layer)
                pre_wo, x_surge = taps["attn.proj.weight"], x
            else:
                x = run.block(x, run.layer(layer, layer), layer)
            if layer < n_enc:
                skips.append(x)
        logits = self.head(rms_norm(x).reshape(B, T, -1)).astype(jnp.float32)
        return logits, h_lower, pre_wo, x_surge, run

    def correction(self, ids_BT, base_BTV, h_lower, pre_wo):
        """The SURGE correction (B, T, D) to the SURGE layer's attention output."""
        cfg, m = self.cfg, self.meta
        B, T, V = base_BTV.shape
        prev = jnp.pad(softcap(base_BTV, cfg.logit_softcap)[:, :-1], ((0, 0), (1, 0), (0, 0)))
        err = jax.nn.one_hot(ids_BT, V, dtype=jnp.float32) - jax.nn.softmax(jax.lax.stop_gradient(prev), axis=-1)
        e = layer_norm(m.err_proj(err), m.err_norm_w[...], m.err_norm_b[...])
        s_BTS = min_gru(jnp.concatenate([h_lower.reshape(B, T, -1).astype(jnp.float32), e], axis=-1), m.gru)
        chunk = cfg.surge_m.chunk
        C = -(-T // chunk)
        s_BCS = s_BTS[:, jnp.minimum(jnp.arange(C) * chunk + chunk - 1, T - 1)]
        W0 = jax.lax.stop_gradient(self.blocks.attn.proj.weight[...][cfg.surge_m.layer])
        z_BTD = pre_wo.reshape(B, T, -1).astype(jnp.float32) @ W0.T
        return wy_correction(z_BTD, m.u_head(s_BCS), m.v_head(s_BCS), jax.nn.sigmoid(m.g_head(s_BCS)),
                             jax.nn.sigmoid(m.a_head(s_BCS)), chunk)

    def forward(self, ids_BT, looped: bool = True, hook=None, rng=None):
        if hook is not None:
            raise ValueError("model.family=surge_m takes no test-time adapters")
        cfg = self.cfg
        B, T = ids_BT.shape
        base, h_lower, pre_wo, x_surge, run = self.base_pass(ids_BT)
        corr_BTD = self.correction(ids_BT, base, h_lower, pre_wo)
        if cfg.surge_m.mode == "single":
            logits = base + self.head(rms_norm(corr_BTD.astype(x_surge.dtype))).astype(jnp.float32)
        else:
            s = cfg.surge_m.layer
            x = x_surge + self.blocks.attn_scale[...][s].astype(x_surge.dtype) * corr_BTD.reshape(B * T, -1).astype(
                x_surge.dtype)
            x, _ = run.scan(lambda h, xs: (run.block(h, xs[0], xs[1]), None), x, s + 1, tuple(range(s + 1,
                                                                                                  cfg.num_layers)))
            logits = self.head(rms_norm(x).reshape(B, T, -1)).astype(jnp.float32)
        return softcap(logits, cfg.logit_softcap), {}

    @staticmethod
    def aux_weights(cfg) -> dict[str, float]:
        return {}

    @staticmethod
    def flops_per_token(cfg, seq_len: int, looped: bool = True) -> dict[str, float]:
        """The GPT's, plus the meta-network, the WY correction and the second pass (two_pass: the
        layers after the SURGE layer again; single: the head once more)."""
        gpt = dataclasses.replace(cfg, family="gpt")
        out = dict(analytic_flops_per_token(gpt, seq_len, looped))
        D, V, E, S = cfg.model_dim, cfg.vocab_size, cfg.surge_m.d_err, cfg.surge_m.d_state
        again = cfg.num_layers - cfg.surge_m.layer - 1 if cfg.surge_m.mode == "two_pass" else 0
        extra = V * E + (D + E) * 2 * S + 2 * D * (-(-seq_len // cfg.surge_m.chunk)) + D * D \
            + (again * block_matrix_params(gpt) if again else V * D)
        out["matmul"] += 6.0 * extra
        out["n_matmul_params"] += float(extra)
        scale = (cfg.num_layers + again) / cfg.num_layers
        out["attn_causal"] *= scale
        out["attn_full"] *= scale
        return out
