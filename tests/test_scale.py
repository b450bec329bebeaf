"""Scale-out and reliability: 8 devices, 2 processes, kill/resume, signals and bad input."""

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pgolf_jax.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.py")


def run_py(*args, env_extra=None, **kw):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), PGOLF_TRACEBACK="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def overrides(sample_data, out, *extra):
    return ["--config", TINY, *[f"{k}={v}" for k, v in sample_data["overrides"].items()], f"train.out_dir={out}",
            "train.progress=false", *extra]


def weights(run_dir):
    with np.load(run_dir / "final_model.npz") as z:
        return {k: z[k] for k in z.files}


def test_sharded_step_equals_single_device():
    """8 fake CPU devices, data parallel (replicated and FSDP) vs one device: same step."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "multidevice_check.py")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("max_rel_diff") == 2
    print(f"multidevice_check {time.perf_counter() - t:.1f}s\n{proc.stdout}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_agree_with_one(sample_data, tmp_path):
    """jax.distributed on loopback: 2 processes x 2 CPU devices (FSDP) train, quantize (GPTQ) and
    evaluate (sliding, TTT, LoRA TTT) like 1 process x 4 (replicated)."""
    common = ["train.iterations=4", "train.warmup_steps=0", "optim.muon_dtype=float32", "quant.scheme=gptq",
              "quant.gptq.calibration_batches=2", "eval.final_modes=plain,sliding,ttt,lora_ttt", "eval.eval_stride=32",
              "eval.lora_ttt.batch_docs=4"]
    four = {"XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"}
    two = {"XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"}
    t = time.perf_counter()
    single = run_py(*overrides(sample_data, tmp_path / "single", "train.run_id=r", *common), env_extra=four)
    port = free_port()
    procs = [run_py(*overrides(sample_data, tmp_path / "multi", "train.run_id=r", *common, "train.distributed=true",
                                f"train.coordinator_address=127.0.0.1:{port}", "train.num_processes=2",
                                f"train.process_id={i}", "train.param_sharding=fsdp"), env_extra=two) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in [single, *procs]]
    elapsed = time.perf_counter() - t
    for p, out in zip([single, *procs], outs):
        assert p.returncode == 0, out[-3000:]
    a, b = tmp_path / "single" / "r", tmp_path / "multi" / "r"
    assert "devices:4" in (a / "log.txt").read_text() and "devices:4" in (b / "log.txt").read_text()
    wa, wb = weights(a), weights(b)
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=1e-3, atol=3e-5)  # FSDP reduction order
    sa, sb = (json.loads((d / "submission.json").read_text()) for d in (a, b))
    assert sb["processes"] == 2 and sa["processes"] == 1
    assert sb["val_bpb"] == pytest.approx(sa["val_bpb"], rel=1e-4)
    for mode in ("plain", "sliding", "ttt", "lora_ttt"):
        assert sb["final_modes"][mode]["val_bpb"] == pytest.approx(sa["final_modes"][mode]["val_bpb"], rel=1e-4)
    print(f"two-process vs one-process runs: {elapsed:.1f}s wall")


def test_gpu_eval_step_lowers_for_cuda(monkeypatch):
    import jax
    import jax._src.cudnn.fused_attention_stablehlo as fa
    import jax.numpy as jnp
    from jax import export

    from pgolf_jax import config as C
    from pgolf_jax.model.gpt import build_model
    monkeypatch.setattr(fa, "check_cudnn_version", lambda: 91000)
    cfg = C.ModelConfig(vocab_size=256, num_layers=2, model_dim=128, num_heads=2, num_kv_heads=1,
                        attention_impl="cudnn", compute_dtype="bfloat16", embed_dtype="bfloat16")
    model = build_model(cfg)
    params = jax.eval_shape(model.init, jax.random.key(0))
    x = jax.ShapeDtypeStruct((4, 256), jnp.int32)
    exp = export.export(jax.jit(lambda p, a, b: model.token_nll(p, a, b).sum(-1)), platforms=["cuda"],
                        disabled_checks=[export.DisabledSafetyCheck.custom_call("__cudnn$fmhaSoftmax")])(params, x, x)
    assert "__cudnn$fmhaSoftmax" in exp.mlir_module() and "Backward" not in exp.mlir_module()


# (sequential: slow. The checkpoint / resume path is the loaders' same; the sequential loader's own state and
# restore are tests/test_shards.py's; -m slow runs both)
@pytest.mark.parametrize("loader", [pytest.param("sequential", marks=pytest.mark.slow), "shuffled"])
def test_kill_and_resume_is_bit_identical(loader, sample_data, tmp_path):
    """SIGKILL a run at a random step; --resume from its last checkpoint ends bit-identical."""
    common = ["train.iterations=16", "train.checkpoint_every=4", "train.train_log_every=1", f"data.loader={loader}"]
    full = run_py(*overrides(sample_data, tmp_path, "train.run_id=full", *common))
    out = full.communicate(timeout=600)[0]
    assert full.returncode == 0, out[-2000:]
    kill_at = random.Random().randint(7, 14)  # past the first checkpoint, before the end
    victim = run_py(*overrides(sample_data, tmp_path, "train.run_id=killed", *common))
    seen = ""
    for line in victim.stdout:
        seen += line
        m = re.match(r"step:(\d+)/16 train_loss", line)
        if m and int(m.group(1)) >= kill_at:
            victim.send_signal(signal.SIGKILL)
            break
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, seen[-2000:]
    assert not (tmp_path / "killed" / "final_model.npz").exists()
    resumed = run_py(*overrides(sample_data, tmp_path, "train.run_id=ignored", *common), "--resume",
                     str(tmp_path / "killed"))
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out[-2000:]
    step = int(re.search(r"resume:step (\d+)", out).group(1))
    assert step % 4 == 0 and step <= kill_at
    wa, wb = weights(tmp_path / "full"), weights(tmp_path / "killed")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert np.array_equal(wa[k], wb[k]), k  # bit-identical
    sa, sb = (json.loads((tmp_path / r / "submission.json").read_text()) for r in ("full", "killed"))
    assert sa["val_bpb"] == sb["val_bpb"]
    # The logs were cut back to the checkpoint: every step appears once, as in the uninterrupted run.
    for run in ("full", "killed"):
        log = (tmp_path / run / "log.txt").read_text()
        assert [int(m) for m in re.findall(r"^step:(\d+)/16 train_loss", log, re.M)] == list(range(1, 17)), run
        events = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert [e["step"] for e in events if e["event"] == "train"] == list(range(1, 17)), run
    print(f"{loader} loader: killed at step >= {kill_at}, resumed from checkpoint {step}: final weights bit-identical")


def test_sigterm_checkpoints_and_exits(sample_data, tmp_path):
    proc = run_py(*overrides(sample_data, tmp_path, "train.run_id=t", "train.iterations=100000",
                             "train.train_log_every=1"))
    for line in proc.stdout:
        if line.startswith("step:3/"):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, rest[-2000:]
    assert re.search(r"interrupted by signal 15 at step \d+; checkpoint saved", rest)
    assert any((tmp_path / "t" / "checkpoints").iterdir())
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["train"]["iterations"] == 100000


def test_resume_rejects_a_different_config(sample_data, tmp_path, capsys):
    assert main(overrides(sample_data, tmp_path, "train.run_id=a", "train.iterations=2",
                          "train.checkpoint_every=1")) == 0
    capsys.readouterr()
    code = main(overrides(sample_data, tmp_path, "train.iterations=3") + ["--resume", str(tmp_path / "a")])
    assert code == 2
    assert "train.iterations: run has 2, command line gives 3" in capsys.readouterr().err


def test_nan_stops_and_keeps_the_last_good_checkpoint(sample_data, tmp_path, capsys):
    code = main(overrides(sample_data, tmp_path, "train.run_id=n", "train.iterations=50", "train.checkpoint_every=2",
                          "optim.tied_embed_lr=1e18"))  # embeddings overflow float32 after a few steps
    err = capsys.readouterr().err
    assert code == 1
    m = re.search(r"(train_loss is (?:nan|inf) at|weights are not finite after) step (\d+); stopping; "
                  r"the last good checkpoint is step (\d+)", err)
    assert m, err
    bad, good = int(m.group(2)), int(m.group(3))
    assert good < bad and (tmp_path / "n" / "checkpoints" / str(good)).is_dir()
