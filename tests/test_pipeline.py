"""The main job and the verbs, end to end through cli.main on the tiny preset."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pgolf_jax import config as C
from pgolf_jax.cli import main

TINY = str(Path(__file__).resolve().parent.parent / "configs" / "tiny.py")


def args(sample_data, out, *extra):
    return ["--config", TINY, *[f"{k}={v}" for k, v in sample_data["overrides"].items()], f"train.out_dir={out}", *extra]


@pytest.fixture(scope="module")
def finished_run(sample_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(args(sample_data, out, "train.run_id=r1", "eval.val_loss_every=10")) == 0
    return out / "r1"


def test_main_job_writes_a_complete_run(finished_run):
    files = {p.name for p in finished_run.iterdir()}
    assert {"log.txt", "metrics.jsonl", "config.json", "final_model.npz", "final_model.int8.zstd", "submission.json"} <= files
    log = (finished_run / "log.txt").read_text()
    assert log.startswith("{")  # the resolved config comes first
    for key in ("model_params:123464", "step:20/20 train_loss:", "step:10/20 val_loss:", "val_bpb:", "train_time:",
                "step_avg:", "Serialized model int8+zstd:", "Total submission size int8+zstd:"):
        assert key in log, key
    sub = json.loads((finished_run / "submission.json").read_text())
    m = re.search(r"final_roundtrip_exact val_loss:([\d.]+) val_bpb:([\d.]+)", log)
    assert float(m.group(2)) == pytest.approx(sub["val_bpb"], abs=1e-8)
    assert sub["bytes_total"] == sub["bytes_model"] + sub["bytes_code"]
    assert sub["bytes_model"] == (finished_run / "final_model.int8.zstd").stat().st_size
    assert sub["steps"] == 20 and sub["val_bpb"] < 4.0
    events = [json.loads(line)["event"] for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert events.count("val") == 3 and events.count("train") == 20 and events[-1] == "final_roundtrip"
    cfg = C.from_dict(json.loads((finished_run / "config.json").read_text()))
    assert cfg.train.run_id == "r1" and cfg.model.num_layers == 2


def test_eval_of_a_run_dir_reproduces_the_score(finished_run, capsys):
    assert main(["eval", "--run", str(finished_run)]) == 0
    out = capsys.readouterr().out
    sub = json.loads((finished_run / "submission.json").read_text())
    got = float(re.search(r"eval_exact val_loss:[\d.]+ val_bpb:([\d.]+)", out).group(1))
    assert got == pytest.approx(sub["val_bpb"], abs=1e-8)


def test_eval_of_imported_torch_state_dict_matches_prequant(finished_run, sample_data, capsys):
    """Our float weights written as a reference-style state dict and imported: the pre-quant score."""
    torch = pytest.importorskip("torch")
    weights = np.load(finished_run / "final_model.npz")
    sd = {k: torch.from_numpy(weights[k]) for k in weights.files}
    torch.save(sd, finished_run / "final_model.pt")
    assert main(["eval", "--torch-state-dict", str(finished_run / "final_model.pt"), "--config", TINY,
                 *[f"{k}={v}" for k, v in sample_data["overrides"].items()]]) == 0
    got = float(re.search(r"eval_exact val_loss:[\d.]+ val_bpb:([\d.]+)", capsys.readouterr().out).group(1))
    sub = json.loads((finished_run / "submission.json").read_text())
    assert got == pytest.approx(sub["pre_quant_val_bpb"], abs=1e-6)


def test_zlib_reference_codec(sample_data, tmp_path):
    assert main(args(sample_data, tmp_path, "train.run_id=z", "train.iterations=2", "quant.compressor=zlib")) == 0
    assert (tmp_path / "z" / "final_model.int8.zlib").is_file()


def test_oversize_artifact_is_an_error(sample_data, tmp_path, capsys):
    code = main(args(sample_data, tmp_path, "train.run_id=big", "train.iterations=1", "quant.max_artifact_bytes=1000"))
    assert code == 3
    assert "over the 1,000-byte cap" in capsys.readouterr().err
    assert main(args(sample_data, tmp_path, "train.run_id=big2", "train.iterations=1", "quant.max_artifact_bytes=1000",
                     "quant.allow_oversize=true")) == 0


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    code = main(["--config", TINY, f"data.data_path={tmp_path}/nowhere", "data.source=", f"train.out_dir={tmp_path}"])
    assert code == 1
    assert "nowhere not found" in capsys.readouterr().err


def test_existing_run_dir_is_not_overwritten(finished_run, sample_data, capsys):
    code = main(args(sample_data, finished_run.parent, "train.run_id=r1"))
    assert code == 1 and "already holds a run" in capsys.readouterr().err


def test_corrupt_shard_names_the_file(sample_data, tmp_path, capsys):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(sample_data["overrides"]["data.data_path"], data)
    bad = sorted(data.glob("fineweb_train_*.bin"))[1]
    bad.write_bytes(bad.read_bytes()[:-10])
    over = dict(sample_data["overrides"], **{"data.data_path": str(data)})
    code = main(["--config", TINY, *[f"{k}={v}" for k, v in over.items()], f"train.out_dir={tmp_path}/runs"])
    assert code == 1
    err = capsys.readouterr().err
    assert bad.name in err and "truncated" in err


def test_bench_prints_the_numbers_and_the_gram_ns_saving(capsys):
    """The numbers, and with --parts and Gram-NS on, plain NS timed beside it with the FLOP saving (issue 3
    evidence): one bench run, one train-step compile."""
    assert main(["bench", "--config", TINY, "--batch", "2", "--seq", "64", "--steps", "1", "--warmup", "1",
                 "--parts", "optim.gram_ns_min_aspect=1.5"]) == 0
    out = capsys.readouterr().out
    for key in ("compile_time:", "step_time:", "tokens_per_s:", "peak_memory:", "flops_per_token_analytic:",
                "flops_per_token_xla:", "gemm_peak:", "mfu:"):
        assert key in out, key
    line = next(l for l in out.splitlines() if l.startswith("gram_ns:"))
    gram, plain = (float(v.rstrip("G")) for v in re.findall(r"([\d.]+G)", line)[:2])
    assert gram < plain, line


def test_bench_times_attention_per_implementation(capsys):
    assert main(["bench", "--config", TINY, "--batch", "1", "--seq", "64", "--steps", "1", "--warmup", "1",
                 "--no-xla-flops", "--attention", "xla,flash"]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("attention impl:")]
    assert [l.split()[1] for l in lines] == ["impl:xla", "impl:flash"]
    assert all(float(re.search(r"fwd_bwd:([\d.]+)ms", l).group(1)) > 0 for l in lines)
    assert main(["bench", "--config", TINY, "--steps", "1", "--no-xla-flops", "--attention", "nope"]) == 2
    assert "unknown implementation" in capsys.readouterr().err
