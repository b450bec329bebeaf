"""GPTQ, scales, LQER, QAT and the low-bit artifact."""

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgolf_jax import config as C
from pgolf_jax.model.gpt import build_model
from pgolf_jax.quant import artifact
from pgolf_jax.quant.export import dequantize, name_rules, quantize_int8, quantize_mixed
from pgolf_jax.quant.gptq import gptq_quantize, hessian_error, lqer_correct, lqer_delta
from pgolf_jax.quant.grid import qmax, round_to_nearest, row_scales, tensor_group
from pgolf_jax.quant.qat import fake_quant_tensor, fake_quantize

TINY = str(Path(__file__).resolve().parent.parent / "configs" / "tiny.py")


def correlated(rows=48, cols=96, n=400, seed=0):
    """A weight matrix and the Hessian of correlated inputs (as real activations are)."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(rows, cols)).astype(np.float32) * 0.05
    mix = rng.normal(size=(cols, cols)) / np.sqrt(cols) + np.eye(cols)
    X = rng.normal(size=(n, cols)) @ mix * rng.uniform(0.2, 3.0, size=cols)
    return W, X.T @ X


@pytest.mark.parametrize("bits", range(2, 9))
def test_gptq_beats_round_to_nearest_at_every_width(bits):
    W, H = correlated(seed=bits)
    s = row_scales(W, bits, "sdclip", 12.85 if bits < 8 else 20.0, 99.99984)
    sf = s.astype(np.float32)[:, None]
    e_rtn = hessian_error(W, round_to_nearest(W, s, bits) * sf, H)
    q = gptq_quantize(W, H, s, bits)
    assert q.dtype == np.int8 and np.abs(q).max() <= qmax(bits)
    assert hessian_error(W, q * sf, H) < e_rtn


def test_gptq_with_uncorrelated_inputs_is_round_to_nearest():
    """With a diagonal H no error has anywhere to go: GPTQ reduces to rounding."""
    W, _ = correlated()
    s = row_scales(W, 6, "sdclip", 12.85, 0)
    H = np.diag(np.random.default_rng(1).uniform(0.5, 2.0, W.shape[1]))
    np.testing.assert_array_equal(gptq_quantize(W, H, s, 6), round_to_nearest(W, s, 6))


def test_gptq_dead_columns_and_orders():
    W, H = correlated()
    H[:, 5] = H[5, :] = 0.0
    s = row_scales(W, 6, "sdclip", 12.85, 0)
    for act_order in (True, False):
        q = gptq_quantize(W, H, s, 6, act_order=act_order, block_size=32)
        assert np.all(q[:, 5] == 0)  # a column no input ever reaches is zeroed
    with pytest.raises(ValueError, match="does not match"):
        gptq_quantize(W, H[:10, :10], s, 6)


def test_scale_methods():
    W, _ = correlated(seed=3)
    s = row_scales(W, 6, "sdclip", 12.85, 0).astype(np.float32)
    np.testing.assert_allclose(s, (12.85 * W.std(axis=1, ddof=1) / 31).astype(np.float16), rtol=1e-3)
    p = row_scales(W, 8, "percentile", 0, 99.99984).astype(np.float32)
    assert np.all(p >= np.float16(1 / 127))  # the baseline's floor
    best = row_scales(W, 6, "search", 0, 0)
    errs = [np.mean((round_to_nearest(W, c, 6) * c.astype(np.float32)[:, None] - W) ** 2)
            for c in (row_scales(W, 6, "percentile", 0, 100 * qq) for qq in (0.999, 0.9995, 0.9999, 0.99999, 1.0))]
    got = np.mean((round_to_nearest(W, best, 6) * best.astype(np.float32)[:, None] - W) ** 2)
    assert got == pytest.approx(min(errs))


def test_tensor_groups():
    assert tensor_group("tok_emb.weight") == "embed"
    assert tensor_group("blocks.3.attn.c_k.weight") == "attn"
    assert tensor_group("blocks.0.mlp.proj.weight") == "mlp"
    assert tensor_group("bigram.proj.weight") == "other"


def named_model(seed=0):
    rng = np.random.default_rng(seed)
    return {"tok_emb.weight": (rng.normal(size=(512, 160)) * 0.02).astype(np.float32),
            "blocks.0.attn.c_q.weight": rng.normal(size=(160, 160)).astype(np.float32) * 0.05,
            "blocks.0.mlp.fc.weight": rng.normal(size=(640, 160)).astype(np.float32) * 0.05,
            "blocks.0.attn_scale": np.ones(160, np.float32)}


def test_gptq_takes_lookup_tables_round_to_nearest():
    """Gathered tables (untied tok_emb, BigramHash) have no Hessian: RTN; a linear without one is an error."""
    rng = np.random.default_rng(1)
    named = named_model() | {"bigram.embed.weight": rng.normal(size=(64, 32)).astype(np.float32),
                             "lm_head.weight": rng.normal(size=(512, 160)).astype(np.float32)}
    H = {k: np.eye(v.shape[1]) for k, v in named.items() if ".attn." in k or ".mlp." in k or "head" in k}
    q = C.QuantConfig(scheme="gptq", keep_float_max_numel=1000)
    obj, _ = quantize_mixed(named, name_rules(named), q, H)
    assert {k: obj["qmeta"][k]["method"] for k in obj["qmeta"]} == {
        "tok_emb.weight": "rtn", "bigram.embed.weight": "rtn", "blocks.0.attn.c_q.weight": "gptq",
        "blocks.0.mlp.fc.weight": "gptq", "lm_head.weight": "gptq"}
    with pytest.raises(ValueError, match="blocks.0.mlp.fc.weight"):
        quantize_mixed(named, name_rules(named), q, {k: v for k, v in H.items() if "mlp" not in k})
    with pytest.raises(ValueError, match="tok_emb.weight"):  # tied: the head's Hessian is required
        tied = named_model()
        quantize_mixed(tied, name_rules(tied), q, H)


def test_gptq_run_with_bigram_untied_head_and_shuffled_loader(sample_data, tmp_path, capsys):
    """Lookup tables take RTN; calibration reads the training run's (shuffled) loader."""
    from pgolf_jax.cli import main
    over = [f"{k}={v}" for k, v in sample_data["overrides"].items()]
    assert main(["--config", TINY, *over, f"train.out_dir={tmp_path}", "train.run_id=b", "train.iterations=2",
                 "model.bigram_vocab_size=128", "model.tie_embeddings=false", "quant.scheme=gptq", "data.loader=shuffled",
                 "quant.keep_float_max_numel=1000", "quant.gptq.calibration_batches=1"]) == 0
    log = (tmp_path / "b" / "log.txt").read_text()
    assert "final_roundtrip val_loss:" in log and "(no wall-clock cap: no budget to count it against)" in log
    # `eval --run` finds the GPTQ artifact the run wrote and reproduces its score.
    score = json.loads((tmp_path / "b" / "submission.json").read_text())["val_bpb"]
    assert main(["eval", "--run", str(tmp_path / "b")]) == 0
    got = float(re.search(r"eval_exact val_loss:\S+ val_bpb:(\S+)", capsys.readouterr().out).group(1))
    assert got == pytest.approx(score, abs=1e-8)


@pytest.mark.parametrize("lqer", [0, 4])
@pytest.mark.parametrize("shuffle", [True, False])
def test_mixed_export_round_trip(lqer, shuffle, tmp_path):
    q = C.QuantConfig(scheme="rtn", attn_bits=5, mlp_bits=6, embed_bits=7, keep_float_max_numel=1000,
                      lqer_rank=lqer, lqer_top_k=2)
    named = named_model()
    obj, report = quantize_mixed(named, name_rules(named), q)
    assert {r["bits"] for r in report["tensors"].values()} == {5, 6, 7}
    assert np.abs(obj["quantized"]["blocks.0.attn.c_q.weight"]).max() <= qmax(5)
    assert obj["passthrough"]["blocks.0.attn_scale"].dtype == np.float16
    path = tmp_path / "m.zstd"
    artifact.write(path, artifact.pack(obj, "zstd", 22, shuffle))
    back = dequantize(artifact.read(path))
    direct = dequantize(obj)
    for k in named:
        np.testing.assert_array_equal(back[k], direct[k])
    if lqer:
        assert len(obj["lqer"]) == 8 and sum(v.get("lqer_rank", 0) > 0 for v in obj["qmeta"].values()) == 2


def test_lqer_reduces_the_error():
    W, _ = correlated(rows=128, cols=192, seed=5)
    s = row_scales(W, 4, "sdclip", 12.85, 0)
    deq = round_to_nearest(W, s, 4) * s.astype(np.float32)[:, None]
    for asym in (True, False):
        f = lqer_correct("w", W - deq, 8, asym)
        if asym:
            assert f["w/A"].min() >= -2 and f["w/A"].max() <= 1 and f["w/sA"].size == 1
            assert f["w/B"].min() >= -8 and f["w/B"].max() <= 7 and f["w/sB"].size == f["w/B"].size // 64
        assert np.linalg.norm(W - deq - lqer_delta("w", f)) < np.linalg.norm(W - deq)


@pytest.mark.parametrize("method", ["sdclip", "percentile", "int8_per_row"])
def test_fake_quant_equals_the_export(method):
    """QAT trains against exactly the weights the export ships."""
    W, _ = correlated(rows=256, cols=320, seed=6)
    if method == "int8_per_row":
        obj, _ = quantize_int8({"m": W}, name_rules({"m": W}))
        want = dequantize(obj)["m"]
        got = fake_quant_tensor(jnp.asarray(W), 8, "int8_per_row", 99.99984)
    else:
        q = C.QuantConfig(scheme="rtn", scale_method=method, other_bits=5, other_clip_sigmas=10.0,
                          clip_percentile=99.9, keep_float_max_numel=1000)
        want = dequantize(quantize_mixed({"m": W}, name_rules({"m": W}), q)[0])["m"]
        got = fake_quant_tensor(jnp.asarray(W), 5, method, 10.0 if method == "sdclip" else 99.9)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_fake_quantize_is_straight_through():
    cfg = C.override(C.Config(), {"model.num_layers": 2, "model.model_dim": 64, "model.num_heads": 2,
                                  "model.num_kv_heads": 1, "model.vocab_size": 64, "quant.scheme": "rtn",
                                  "quant.keep_float_max_numel": 1000})
    model = build_model(cfg.model)
    params, sp = jax.jit(model.init)(jax.random.key(0)), model.param_specs()
    fq = fake_quantize(params, cfg.quant, 1.0, sp)
    w, wq = params["blocks"]["mlp"]["fc"]["weight"], fq["blocks"]["mlp"]["fc"]["weight"]
    assert not np.allclose(w, wq) and np.allclose(w, wq, atol=0.02)  # within half an int6 step
    np.testing.assert_array_equal(fake_quantize(params, cfg.quant, 0.0, sp)["blocks"]["mlp"]["fc"]["weight"], w)
    np.testing.assert_array_equal(fq["skip_weights"], params["skip_weights"])  # small: passthrough
    c = jax.random.normal(jax.random.key(1), w.shape)
    g = jax.grad(lambda p: jnp.sum(fake_quantize(p, cfg.quant, 1.0, sp)["blocks"]["mlp"]["fc"]["weight"] * c))(params)
    np.testing.assert_allclose(g["blocks"]["mlp"]["fc"]["weight"], c, rtol=1e-6)


def test_input_hessians_cover_every_quantized_linear():
    cfg = C.ModelConfig(vocab_size=64, num_layers=3, model_dim=32, num_heads=2, num_kv_heads=1, num_loops=1,
                        loop_start=1, loop_end=1, attention_impl="xla")
    model = build_model(cfg)
    params = jax.jit(model.init)(jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (2, 8), 0, 64)
    H = jax.jit(model.input_hessians)(params, ids)
    assert set(H) == {f"blocks.{n}.weight" for n in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc",
                                                    "mlp.proj")} | {"tok_emb.weight"}
    assert H["blocks.mlp.proj.weight"].shape == (3, 64, 64)
    np.testing.assert_array_equal(H["blocks.attn.c_q.weight"], H["blocks.attn.c_k.weight"])  # one input
    h = model.hidden(params, ids).reshape(-1, 32)
    np.testing.assert_allclose(H["tok_emb.weight"], h.T @ h, rtol=1e-4, atol=1e-4)
    # The looped layer 1 runs twice, so its statistics accumulate two passes.
    plain = jax.jit(lambda p, i: model.input_hessians(p, i, looped=False))(params, ids)
    assert np.trace(H["blocks.attn.c_q.weight"][1]) > 1.5 * np.trace(plain["blocks.attn.c_q.weight"][1])


def test_quantize_verb_requantizes_a_run(sample_data, tmp_path, capsys):
    from pgolf_jax.cli import main
    over = [f"{k}={v}" for k, v in sample_data["overrides"].items()]
    assert main(["--config", TINY, *over, f"train.out_dir={tmp_path}", "train.run_id=r", "train.iterations=3"]) == 0
    capsys.readouterr()
    run = tmp_path / "r"
    assert main(["quantize", "--run", str(run), "quant.scheme=gptq", "quant.keep_float_max_numel=1000",
                 "quant.gptq.calibration_batches=2", "quant.embed_bits=6", "quant.lqer_rank=2"]) == 0
    out = capsys.readouterr().out
    (qdir,) = run.glob("quantize-*")
    summary = json.loads((qdir / "summary.json").read_text())
    assert (qdir / "final_model.gptq.zstd").stat().st_size == summary["bytes_model"]
    assert summary["calibration_seconds"] > 0 and "embed" in summary["bytes_by_group"]
    assert re.search(r"final_roundtrip val_loss:[\d.]+ val_bpb:[\d.]+", out) and "pre_quant val_loss:" in out
    assert main(["quantize", "--run", str(run), "model.num_layers=3"]) == 2
    assert main(["quantize", "--run", str(tmp_path / "nope")]) == 1


def test_qat_training_switches_on_late(sample_data, tmp_path):
    from pgolf_jax.cli import main
    over = [f"{k}={v}" for k, v in sample_data["overrides"].items()]
    assert main(["--config", TINY, *over, f"train.out_dir={tmp_path}", "train.run_id=q", "train.iterations=8",
                 "train.warmdown_iters=6", "quant.qat=true", "quant.qat_lr_threshold=0.5",
                 "quant.keep_float_max_numel=1000"]) == 0
    log = (tmp_path / "q" / "log.txt").read_text()
    assert "qat:enabled step:5 lr_mul:0.500" in log
