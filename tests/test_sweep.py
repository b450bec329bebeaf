"""Sweeps: sweep files and their errors, --shard partitions, resume skips finished rows, a vmapped
group equals separate runs, the tables and the pictures; a tiny sweep end to end through run.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pgolf_jax.config import ConfigError
from pgolf_jax.plots import outlier_cap, pareto_front, plot_curves, plot_scatter, png_series, run_styles, spread_labels
from pgolf_jax.sweep.report import one_sided_p
from pgolf_jax.sweep.spec import load_sweep, parse_shard

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.py"


def _sweep(tmp_path: Path, body: str, name: str = "s.py") -> Path:
    path = tmp_path / name
    path.write_text(f'"""A test sweep."""\nBASE = {str(TINY)!r}\n' + body)
    return path


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.py")), ids=lambda p: p.stem)
def test_committed_sweep_files_load(path):
    """Every sweep file in sweeps/ parses and every row's config validates (what --dry-run checks)."""
    sweep = load_sweep(path)
    assert sweep.rows and sweep.control in sweep.variants
    assert not set(sweep.reference) - set(sweep.variants)


@pytest.mark.parametrize("body,error", [
    ("VARIANTS = {'a': {'model.num_layerz': 3}}", r"variant 'a': unknown config key 'model\.num_layerz'"),
    ("VARIANTS = {'a': 'nope.py'}", r"variant 'a': config file not found: .*nope\.py"),
    ("VARIANTS = {'a': {}, 'a': {'optim.matrix_lr': 0.1}}", r"VARIANTS names 'a' more than once"),
    ("OVERRIDES = {'train.iterations': 5}\nVARIANTS = {'a': {'train.iterations': 9}}",
     r"variant 'a' changes train\.iterations, which OVERRIDES sets"),
    ("VARIANTS = {'a': {'model.attention': 'nope'}}", r"model\.attention='nope' is not registered"),
    ("VARIANTS = {'a': {}}\nSEEDS = [1, 1]", r"SEEDS lists a seed twice"),
    ("VARIANTS = {'a': {}}\nCONTROL = 'b'", r"CONTROL='b' is not one of the VARIANTS"),
    ("VARIANTS = {'bad name': {}}", r"variant name 'bad name'"),
    ("VARIANTS = {}", r"VARIANTS must be a non-empty dict"),
    ("VARIANTS = {'a': {'train.seed': 3}}", r"seeds come from SEEDS"),
    ("VARIANTS = {'a': {}}\nSEEDS = [2**64]", r"SEEDS: seed 18446744073709551616 is out of range"),
    ("VARIANTS = {'a': {}}\nREFERENCE = {'a': '1.3'}", r"REFERENCE\['a'\] = '1\.3': expected a finite positive"),
])
def test_bad_sweep_files_fail_before_any_run(tmp_path, body, error):
    with pytest.raises(ConfigError, match=error):
        load_sweep(_sweep(tmp_path, body))


def test_bad_sweep_file_through_run_py_is_one_line(tmp_path):
    path = _sweep(tmp_path, "VARIANTS = {'a': {}, 'a': {}}")
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "sweep", str(path), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "more than once" in proc.stderr
    assert not (tmp_path / "o").exists()
    # Grouping and running every row alone at once: one line, nothing written.
    path = _sweep(tmp_path, "VARIANTS = {'a': {}}", name="ok.py")
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "sweep", str(path), "--out", str(tmp_path / "o"),
                           "--no-vmap", "--group-mode", "vmap"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "pick one" in proc.stderr
    assert not (tmp_path / "o").exists()
    # --report-only on a folder that is no sweep: one line, its results.md untouched.
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "results.md").write_text("mine")
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "sweep", str(path), "--out", str(tmp_path / "o"),
                           "--report-only"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no rows/ folder" in proc.stderr
    assert (tmp_path / "o" / "results.md").read_text() == "mine"


def test_rows_seeds_control_and_shards(tmp_path):
    sw = load_sweep(_sweep(tmp_path, "OVERRIDES = {'train.iterations': 5}\n"
                                     f"VARIANTS = {{'a': {{}}, 'b': {{'optim.matrix_lr': 0.1}}, 'c': {str(TINY)!r}}}\n"
                                     "SEEDS = [1, 2]\nCONTROL_SEEDS = [1, 2, 3]"))
    assert [r.run_id for r in sw.rows] == ["a-s1", "a-s2", "a-s3", "b-s1", "b-s2", "c-s1", "c-s2"]
    assert all(r.cfg.train.iterations == 5 for r in sw.rows) and sw.rows[3].cfg.optim.matrix_lr == 0.1
    assert [r.cfg.train.seed for r in sw.rows[:3]] == [1, 2, 3]
    for n in (1, 2, 3, 7):
        parts = [[r.index for r in sw.shard(i, n)] for i in range(n)]
        assert sorted(sum(parts, [])) == list(range(len(sw.rows)))  # every row exactly once
    assert parse_shard("1/3") == (1, 3)
    with pytest.raises(ConfigError, match="expected I/N"):
        parse_shard("3/3")


def test_one_sided_p_and_pareto_front():
    assert one_sided_p([1.0, 1.01, 0.99], [2.0, 2.01, 1.99]) < 1e-4  # clearly lower
    assert one_sided_p([2.0, 2.01, 1.99], [1.0, 1.01, 0.99]) > 0.99
    assert 0.3 < one_sided_p([1.000], [0.99, 1.01, 1.00]) < 0.7  # inside the control's spread
    assert one_sided_p([1.0], [1.2]) is None  # no spread to test against
    assert one_sided_p([1.0], [1.2], noise=0.01, noise_n=3) < 0.01  # single values against the seed noise
    assert one_sided_p([1.19], [1.2], noise=0.01, noise_n=3) > 0.1
    assert pareto_front([(1, 5), (2, 3), (3, 4), (4, 1), (5, 1)]) == [0, 1, 3]


def test_labels_spread_apart_near_their_points_and_inside_the_axes():
    # Twelve labels on one spot, two far apart elsewhere: none may overlap, the lone ones stay put.
    anchors = [(100.0, 200.0)] * 12 + [(400.0, 50.0), (100.0, 20.0)]
    widths = [60.0] * 14
    ys = spread_labels(anchors, widths, 8.0, lo=0.0, hi=300.0)
    boxes = [(a[0], y) for a, y in zip(anchors, ys)]
    for i in range(len(boxes)):
        for j in range(i):
            (xi, yi), (xj, yj) = boxes[i], boxes[j]
            overlap_x = xi < xj + widths[j] and xj < xi + widths[i]
            assert not (overlap_x and abs(yi - yj) < 8.0 - 1e-9), (i, j)
    assert ys[12] == 50.0 and ys[13] == 20.0
    assert abs(np.mean(ys[:12]) - 200.0) < 1e-9  # the crowded block is centred on its anchors
    assert all(0.0 <= y <= 300.0 - 8.0 for y in ys)
    # Near an edge a block moves inside, and a block clamped there must not land on its neighbour.
    assert max(spread_labels([(0.0, 295.0)] * 5, [10.0] * 5, 8.0, 0.0, 300.0)) <= 292.0
    for pair in ([(0.0, 285.0), (0.0, 294.0)], [(0.0, -5.0), (0.0, 4.0)]):
        a, b = sorted(spread_labels(pair, [10.0, 10.0], 8.0, 0.0, 300.0))
        assert 0.0 <= a and b - a >= 8.0 - 1e-9 and b <= 292.0, (pair, a, b)
    # A column taller than the axes stacks up from the bottom; a NaN anchor is left alone.
    tall = spread_labels([(0.0, 50.0)] * 10, [10.0] * 10, 8.0, 0.0, 40.0)
    assert sorted(tall) == [8.0 * k for k in range(10)]
    ys = spread_labels([(0.0, 10.0), (0.0, float("nan")), (0.0, 12.0), (0.0, 5.0)], [10.0] * 4, 8.0)
    assert np.isnan(ys[1]) and sorted(np.diff(sorted([ys[0], ys[2], ys[3]]))) == [8.0, 8.0]


def test_scatter_pins_far_outliers_and_runs_get_distinct_styles(tmp_path):
    y = [2.5, 2.6, 2.55, 2.7, 2.52, 2.8, 2.58, 2.61, 13.3]
    cap = outlier_cap(y)
    assert cap is not None and 2.8 < cap < 13.3
    assert outlier_cap(y[:-1]) is None and outlier_cap([1.0, 9.0]) is None  # no outlier / too few to say
    assert outlier_cap([2.5] * 7 + [2.51]) is None  # tied quartiles: a small rise is not "off scale"
    names = [f"v{i}" for i in range(len(y))]
    out = plot_scatter(names, [1e6 + 1e3 * i for i in range(len(y))], y, tmp_path / "p.png", "bytes", "t", front=True)
    assert png_series(out) == names  # the series are the row names, not the decorated labels
    assert len(set(run_styles(40))) == 40


def test_curves_png_holds_one_line_per_run(tmp_path):
    runs = []
    for i in range(3):
        d = tmp_path / f"r{i}"
        d.mkdir()
        d.joinpath("metrics.jsonl").write_text("".join(
            json.dumps({"event": "train", "step": s, "train_loss": 5 - 0.1 * s - i, "train_time_ms": 10 * s}) + "\n"
            for s in range(1, 20)) + json.dumps({"event": "val", "step": 19, "val_bpb": 2.0 + i,
                                                 "train_time_ms": 190}) + "\n" + "{truncated")
        runs.append(d)
    out = plot_curves(runs, tmp_path / "c.png")
    from PIL import Image

    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 400
        colors = np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)
        assert len(colors) > 10  # drawn on, not blank
    assert png_series(out) == ["r0", "r1", "r2"]


def _npz(path: Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_tiny_sweep_end_to_end_vmapped_equals_separate_runs_and_resumes(tmp_path, capfd, monkeypatch):
    """2 variants x 2 seeds of the tiny preset through run.py, trained as one group (a loop over one
    compiled step on CPU, and as one vmapped program); the same rows run one by one give the same weights; a rerun skips every finished row. With an EMA
    (whose fp32 copy of fp32 params must not share their buffers: the step donates both)."""
    path = _sweep(tmp_path, "OVERRIDES = {'train.iterations': 5, 'optim.muon_dtype': 'float32', "
                            "'train.ema_decay': 0.9}\n"
                            "VARIANTS = {'base': {}, 'hot': {'optim.matrix_lr': 0.08, 'optim.scalar_lr': 0.02, "
                            "'model.logit_softcap': 20.0, 'model.qk_gain_init': 2.0}}\nSEEDS = [1, 2]\n"
                            "REFERENCE = {'base': 1.31, 'hot': 1.30}\n")

    from pgolf_jax.cli import main

    def here(*argv):
        """run.py's entry point in this process (no interpreter start; compiles shared): (code, stdout, stderr)."""
        monkeypatch.chdir(ROOT)
        capfd.readouterr()
        code = main([str(a) for a in argv])
        return (code, *capfd.readouterr())

    def sweep(*extra):
        code, got, err = here("sweep", path, *extra)
        assert code == 0, got[-2000:] + err[-3000:]
        return got + err

    out = tmp_path / "out"
    # The first sweep as a user runs it: run.py in its own process; the others through its entry point here.
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "sweep", str(path), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "training 4 rows as one compiled group (loop)" in log and "the group failed" not in log
    rows = {p.stem: json.loads(p.read_text()) for p in (out / "rows").glob("*.json")}
    assert sorted(rows) == ["base-s1", "base-s2", "hot-s1", "hot-s2"] and all(r["status"] == "ok" for r in rows.values())
    for name in ("results.csv", "results.md", "pareto.png", "time.png", "curves.png"):
        assert (out / name).is_file(), name
    md = (out / "results.md").read_text()
    assert re.search(r"\| `hot` \| 2 \| [\d,]+ \| [\d,]+ \| 5 \| [\d.]+ \(loop x4\) \|", md) and "agreement" in md
    assert png_series(out / "curves.png") == ["base-s1", "base-s2", "hot-s1", "hot-s2"]
    assert sorted(png_series(out / "pareto.png")) == ["base", "hot"]
    # Every run draws its own curves; `run.py plot` overlays runs; a folder that is no run is one line.
    assert png_series(out / "runs" / "hot-s2" / "curves.png") == ["hot-s2"]
    assert here("plot", out / "runs" / "base-s1", out / "runs" / "hot-s1", "--out", tmp_path / "overlay.png")[0] == 0
    assert png_series(tmp_path / "overlay.png") == ["base-s1", "hot-s1"]
    code, _, err = here("plot", tmp_path, "--out", tmp_path / "bad.png")
    assert code != 0 and "metrics.jsonl not found" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "bad.png").exists()
    # Resume: every row is done, nothing runs.
    assert "to_run:0" in sweep("--out", str(out))
    # The same rows, each its own process: the same weights (fp32 Newton-Schulz; with bf16 a rounding
    # flip here and there makes it approximate).
    sep = tmp_path / "sep"
    sweep("--out", str(sep), "--no-vmap", "--shard", "1/2")  # rows 1 and 3: base-s2, hot-s2
    # On CPU the group ran as a loop over one compiled step (auto); the vmapped program must agree too.
    vm = tmp_path / "vm"
    vm_log = sweep("--out", str(vm), "--group-mode", "vmap", "--shard", "1/2")
    assert "training 2 rows as one compiled group (vmap)" in vm_log and "the group failed" not in vm_log
    assert "mode:loop" in (out / "runs" / "base-s2" / "log.txt").read_text()
    assert "mode:vmap" in (vm / "runs" / "base-s2" / "log.txt").read_text()
    assert "(vmap x2)" in (vm / "results.md").read_text()
    for run in ("base-s2", "hot-s2"):
        b = _npz(sep / "runs" / run / "final_model.npz")
        for grouped in (out, vm):
            a = _npz(grouped / "runs" / run / "final_model.npz")
            assert a.keys() == b.keys()
            for k in a:
                np.testing.assert_allclose(a[k], b[k], atol=5e-5, rtol=1e-4, err_msg=f"{grouped.name} {run} {k}")
            got = json.loads((grouped / "rows" / f"{run}.json").read_text())["val_bpb"]
            assert abs(got - json.loads((sep / "rows" / f"{run}.json").read_text())["val_bpb"]) < 1e-4
    assert not (sep / "rows" / "base-s1.json").exists()  # the other shard's rows


def test_rows_differing_only_after_training_share_one_training():
    from pgolf_jax import config as C
    from pgolf_jax.train.group import group_key, training_key

    base = C.load(TINY)
    clip = C.override(base, {"quant.attn_clip_sigmas": 10.0, "eval.ngram_order": 4, "train.run_id": "x"})
    lr = C.override(base, {"optim.matrix_lr": 0.08})
    qat = C.override(base, {"quant.qat": True})
    assert training_key(clip) == training_key(base) and group_key(clip) == group_key(base)
    assert training_key(lr) != training_key(base) and group_key(lr) == group_key(base)  # vmapped, not shared
    assert group_key(C.override(qat, {"quant.attn_clip_sigmas": 10.0})) != group_key(qat)  # QAT reads the grid
    assert group_key(C.override(base, {"eval.val_loss_every": 3})) != group_key(base)  # read while training
    assert group_key(C.override(base, {"train.max_wallclock_seconds": 60.0})) is None  # a time budget runs alone


def test_a_group_passes_only_the_fields_its_members_vary_as_traced_arguments():
    """hyper keeps no state: a member's traced values are an argument (train/group.py traced_values)
    holding the TRACED fields the members set differently, read by the optimizer (and the objective
    and model); a plain run passes None and gets the config's own numbers."""
    import jax
    import jax.numpy as jnp

    from pgolf_jax import config as C
    from pgolf_jax import hyper
    from pgolf_jax.model.gpt import build_model
    from pgolf_jax.train.group import traced_values
    from pgolf_jax.train.members import optimizer

    base = C.load(TINY)
    hot = C.override(base, {"optim.matrix_lr": 2 * base.optim.matrix_lr, "model.logit_softcap": 20.0, "train.seed": 7})
    a, b = traced_values([base, hot])
    assert sorted(a) == sorted(b) == ["model.logit_softcap", "optim.matrix_lr"]
    assert not [k for k, v in vars(hyper).items() if isinstance(v, (list, dict, set)) and not k.startswith("__")]
    model = build_model(base.model)
    params = model.init(jax.random.key(0))
    grads = jax.tree.map(jnp.ones_like, params)

    def updates(traced):
        tx = optimizer(base, model, traced)
        return jax.tree.leaves(tx.update(grads, tx.init(params), params)[0])

    ratios = {round(float(jnp.max(jnp.abs(t)) / jnp.max(jnp.abs(p))), 5)
              for p, t in zip(updates(None), updates(b)) if float(jnp.max(jnp.abs(p))) > 0}
    assert ratios == {1.0, 2.0}  # the matrices step with the member's lr, the other groups as configured


def test_killed_row_resumes_only_from_a_finished_checkpoint(tmp_path, monkeypatch):
    """A sweep killed mid-save leaves only orbax's `<step>.orbax-checkpoint-tmp-*` folder: the row
    starts over (its run dir set aside) instead of failing on a resume with nothing to restore."""
    from pgolf_jax.sweep import rows as rows_lib
    from pgolf_jax.sweep.spec import load_sweep
    from pgolf_jax.train.checkpoint import CHECKSUMS, has_checkpoint

    row = load_sweep(_sweep(tmp_path, "VARIANTS = {'a': {}}\n")).rows[0]
    out = tmp_path / "out"
    ckpt = out / "runs" / row.run_id / "checkpoints"
    (ckpt / "164.orbax-checkpoint-tmp-1733370000").mkdir(parents=True)
    assert not has_checkpoint(ckpt)
    cmds = []

    def child(cmd, log, on_training=None):  # the row's process: fails at once, its log empty
        cmds.append(cmd)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        return 3

    monkeypatch.setattr(rows_lib, "run_child", child)
    assert rows_lib.run_row(row, out, print)["status"] == "failed"
    assert "--resume" not in cmds[0] and not (out / "runs" / row.run_id).exists()
    assert len(list((out / "runs" / ".incomplete").iterdir())) == 1  # kept, out of the way
    (ckpt / "150").mkdir(parents=True)
    assert not has_checkpoint(ckpt)  # renamed into place, but killed before its checksum record
    rows_lib.run_row(row, out, print)
    assert "--resume" not in cmds[1] and len(list((out / "runs" / ".incomplete").iterdir())) == 2
    (ckpt / "150").mkdir(parents=True)
    (ckpt / "150" / CHECKSUMS).write_text("{}")
    assert has_checkpoint(ckpt)
    rows_lib.run_row(row, out, print)
    assert cmds[2][-3:] == ["--resume", str(out / "runs" / row.run_id), "--allow-code-change"]
