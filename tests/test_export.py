"""The GPU path, proven without a GPU: the bf16 train step with cuDNN flash attention lowers for
the cuda platform through jax.export."""

import jax
import jax.numpy as jnp
import pytest
from jax import export

from pgolf_jax import config as C
from pgolf_jax.model.gpt import build_model
from pgolf_jax.optim.optimizers import labels_from_specs, make_optimizer
from pgolf_jax.train.step import TrainState, make_train_step

CUDNN_CALLS = ("__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward")


@pytest.fixture
def fake_cudnn_version(monkeypatch):
    """cuDNN's lowering asks the local CUDA plugin for its version; with no GPU here, answer 9.10
    (the cuDNN that jax[cuda12]==0.10.2 installs is 9.28, newer still)."""
    import jax._src.cudnn.fused_attention_stablehlo as fa
    monkeypatch.setattr(fa, "check_cudnn_version", lambda: 91000)


def test_bf16_cudnn_train_step_lowers_for_cuda(fake_cudnn_version):
    cfg = C.override(C.Config(), {"model.num_layers": 2, "model.model_dim": 128, "model.num_heads": 2,
                                  "model.num_kv_heads": 1, "model.vocab_size": 256,
                                  "model.attention_impl": "cudnn", "model.compute_dtype": "bfloat16",
                                  "model.embed_dtype": "bfloat16"})
    model = build_model(cfg.model)
    tx = make_optimizer(cfg, jnp.bfloat16, labels_from_specs(model.param_specs()))

    def init(key):
        params = model.init(key)
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

    state = jax.eval_shape(init, jax.random.key(0))
    batch = jax.ShapeDtypeStruct((2, 4, 256), jnp.int32)
    exported = export.export(
        jax.jit(make_train_step(model, tx)), platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call(c) for c in CUDNN_CALLS],
    )(state, batch, batch, jax.ShapeDtypeStruct((), jnp.float32))
    text = exported.mlir_module()
    assert exported.platforms == ("cuda",)
    for call in CUDNN_CALLS:
        assert call in text
    assert "bf16" in text


def test_cudnn_path_refuses_cpu():
    q = jnp.zeros((1, 8, 2, 16), jnp.bfloat16)
    from pgolf_jax.model.attention import causal_attention
    with pytest.raises(RuntimeError):
        causal_attention(q, q[:, :, :1], q[:, :, :1], impl="cudnn")
