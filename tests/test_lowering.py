"""Every architecture's train step and eval step lower for the cuda platform (jax.export, no GPU
needed): bf16 compute, cuDNN flash attention where a model attends. What a GPU session runs is
then at least known to compile to StableHLO for it (scripts/gpu_check.sh runs it for real)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax import export

from pgolf_jax import config as C
from pgolf_jax import registry
from pgolf_jax.model.gpt import build_model
from pgolf_jax.optim.optimizers import labels_from_specs, make_optimizer
from pgolf_jax.train.step import TrainState, initial_rng, make_train_step

CUDNN_CALLS = ("__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward")
TINY = {"model.num_layers": 2, "model.model_dim": 64, "model.num_heads": 2, "model.num_kv_heads": 1,
        "model.vocab_size": 128, "model.compute_dtype": "bfloat16", "model.attention_impl": "cudnn"}
# One case per registry entry (and per seed preset's distinctive piece), at tiny shapes; the attention
# gates ride on cases that have XSA, MLA and a mixed stack.
CASES = {
    "baseline": {},
    "record_stack": {"model.rope_dims": 16, "model.ln_scale": True, "model.xsa_last_n": 2,
                     "model.skip_gates_enabled": True, "model.parallel_residual_start": 1, "model.num_loops": 1,
                     "model.loop_start": 0, "model.loop_end": 1, "model.activation": "leaky_relu2",
                     "optim.orthogonalizer": "gram_newton_schulz", "optim.gram_ns_min_aspect": 1.5,
                     "model.attn_gate": "output_gate"},
    "mla": {"model.attention": "mla", "model.mla.latent_dim": 16, "model.attn_gate": "gated_attn"},
    "lowrank": {"model.linear": "lowrank", "model.lowrank.rank": 8},
    "pause": {"model.pause_tokens": 2, "model.pause_interval": 16},
    "act": {"model.topology": "act", "model.num_layers": 1, "model.act.max_steps": 3},
    "plain_repeat_in_place": {"model.topology": "plain", "model.block_schedule": "repeat_in_place",
                              "model.num_loops": 1, "model.loop_start": 1, "model.loop_end": 1},
    "ssm_hybrid": {"model.mixers": "s4d_lin*1", "model.s4d_lin.kernel": 16, "model.attn_gate": "sparse_gate",
                   "model.sparse_gate.scale": 0.5},
    "denseformer": {"model.topology": "denseformer"},
    "monarch_geglu": {"model.mlp_linear": "monarch", "model.monarch.blocks": 4, "model.activation": "geglu"},
    "ut_rlma": {"model.topology": "ut_shared", "model.num_layers": 3, "model.ut_shared.iterations": 2,
                "model.linear": "rlma", "model.rlma.rank": 8},
    "adamw_qat_affine": {"optim.matrix_optimizer": "adamw", "quant.qat": True, "quant.grid": "affine",
                         "quant.scheme": "rtn"},
    "basis": {"model.weight_source": "basis", "model.basis.rank": 8},
    "hypernet": {"model.weight_source": "hypernet", "model.hypernet.rank": 4, "model.hypernet.embed_dim": 8,
                 "model.hypernet.hidden": 16, "optim.adamw_all": True},
    "siren": {"model.weight_source": "siren", "model.siren.hidden": 16, "model.siren.layers": 2},
    "nca": {"model.weight_source": "nca", "model.nca.steps": 3, "model.nca.hidden": 16},
    "seed": {"model.weight_source": "seed", "model.seed.dim": 16, "model.seed.chunk": 4096},
    "mps": {"model.family": "mps", "model.mps.bond_dim": 8, "model.mps.pos_dim": 8, "model.mps.max_len": 64,
            "train.train_seq_len": 64, "train.train_batch_tokens": 4096},
    "hopfield": {"model.family": "hopfield", "model.hopfield.refine_steps": 2},
    "agents": {"model.family": "agents", "model.agents.msg_dim": 8, "model.agents.local_ctx": 4,
               "model.agents.decoder_hidden": 16, "model.agents.loss_stride": 8},
    "two_lane_taper": {"model.parallel_residual": "two_lane", "model.parallel_residual_start": 1,
                       "model.num_loops": 1, "model.loop_start": 0, "model.loop_end": 0,
                       "optim.wd_schedule": "taper", "optim.muon_wd": 0.04},
    "surge_m": {"model.family": "surge_m", "model.num_layers": 3, "model.surge_m.layer": 1, "model.surge_m.chunk": 16,
                "model.surge_m.d_err": 8, "model.surge_m.d_state": 8, "model.surge_m.uv_init_std": 0.01},
    "ce_chunked": {"train.objective": "ce_chunked", "train.ce_chunked.vocab_chunk": 32},
    # VarLen (#1530): cuDNN's packed-sequence layout (Hopper or later: the fixture below says H100)
    "doc_mask": {"model.doc_mask": True, "model.xsa_last_n": 1},
}


@pytest.fixture(autouse=True)
def fake_cudnn_version(monkeypatch):
    """cuDNN's lowering asks the local CUDA plugin for its version; with no GPU here, answer 9.10."""
    import jax._src.cudnn.fused_attention_stablehlo as fa
    monkeypatch.setattr(fa, "check_cudnn_version", lambda: 91000)
    monkeypatch.setattr(fa, "check_compute_capability", lambda capability: capability <= "9.0")  # an H100


@pytest.mark.parametrize("name", list(CASES))
def test_train_and_eval_steps_lower_for_cuda(name):
    cfg = C.override(C.Config(), {**TINY, **CASES[name]})
    model = build_model(cfg.model)
    tx = make_optimizer(cfg, jnp.bfloat16, labels_from_specs(model.param_specs()))
    qat = cfg.quant if cfg.quant.qat else None

    def init(key):
        params = model.init(key)
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), None, initial_rng(0))

    state = jax.eval_shape(init, jax.random.key(0))
    batch = jax.ShapeDtypeStruct((1, 2, 64), jnp.int32)
    disabled = [export.DisabledSafetyCheck.custom_call(c) for c in CUDNN_CALLS]
    step = make_train_step(model, tx, registry.resolve(registry.OBJECTIVES, cfg.train.objective)(cfg), qat=qat)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    mul = scalar if cfg.optim.wd_schedule == "constant" else (scalar, scalar)  # (lr, WD): train/step.rates
    train = export.export(jax.jit(step), platforms=["cuda"], disabled_checks=disabled)(
        state, batch, batch, mul, scalar)
    assert train.platforms == ("cuda",)
    if cfg.model.family != "mps":  # the tensor-network LM runs in fp32 (it does not read compute_dtype)
        assert "bf16" in train.mlir_module()
    ids = jax.ShapeDtypeStruct((2, 64), jnp.int32)
    ev = export.export(jax.jit(lambda p, a, b: model.token_nll(p, a, b).sum(-1)), platforms=["cuda"],
                       disabled_checks=disabled)(state.params, ids, ids)
    assert ev.platforms == ("cuda",)
    if cfg.model.doc_mask:  # segments take the flash kernel on cuda (model/varlen.py), never cuDNN
        assert "__cudnn$fmha" not in ev.mlir_module() and "__cudnn$fmha" not in train.mlir_module()


def test_records_phase_sgd_step_lowers_for_cuda():
    """The records' phased global SGD step (eval.lora_ttt.phase_style=records: document-bounded rows,
    weights and a second target at position 0) lowers for cuda like the train step."""
    from pgolf_jax.evaluation import phases, ttt

    cfg = C.override(C.Config(), TINY)
    model = build_model(cfg.model)
    params = jax.eval_shape(model.init, jax.random.key(0))
    buf = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32), params)
    ids, vec = jax.ShapeDtypeStruct((4, 64), jnp.int32), jax.ShapeDtypeStruct((4,), jnp.int32)
    w, w0 = jax.ShapeDtypeStruct((4, 64), jnp.float32), jax.ShapeDtypeStruct((4,), jnp.float32)
    step = ttt.make_sgd_step(model, 0.9, 1.0, loss_fn=phases.rows_loss(model))
    disabled = [export.DisabledSafetyCheck.custom_call(c) for c in CUDNN_CALLS]
    out = export.export(step, platforms=["cuda"], disabled_checks=disabled)(
        params, buf, ids, ids, jax.ShapeDtypeStruct((), jnp.float32), w, vec, w0)
    assert out.platforms == ("cuda",) and "bf16" in out.mlir_module()
