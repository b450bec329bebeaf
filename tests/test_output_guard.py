"""Output paths of `plot`, `export` and `submit`: none writes into a run directory or over a file it did
not make (unless --force, and never into a run), each refusal is one line naming the flag and the path
with nothing changed; plus `plot` on bad metrics, `eval` on a file that is no torch state dict and
`submit --vs` on a value that is no val_bpb. Every refusal comes before any JAX work, in-process."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from pgolf_jax.cli import main
from pgolf_jax.plots import curves_figure, png_series, read_events

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.py")
RUN_FILES = ["log.txt", "final_model.npz", "final_model.int8.zstd", "config.json"]


@pytest.fixture(scope="module")
def good(sample_data, tmp_path_factory) -> Path:
    """One finished tiny run (3 steps), shared by the module: no case may change it."""
    out = tmp_path_factory.mktemp("runs")
    data = [f"{k}={v}" for k, v in sample_data["overrides"].items()]
    assert main(["--config", TINY, *data, f"train.out_dir={out}", "train.run_id=good", "train.iterations=3",
                 "train.progress=false"]) == 0
    assert all((out / "good" / f).is_file() for f in RUN_FILES)
    return out / "good"


@pytest.fixture
def foreign(tmp_path) -> dict[str, Path]:
    """Existing files outside any run that no command made: a text file, a PNG without our chunk, a
    folder (named like a PNG, so plot's .png rule does not answer first)."""
    from PIL import Image

    (tmp_path / "notes.txt").write_text("mine\n")
    Image.new("RGB", (4, 4)).save(tmp_path / "photo.png")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "folder.png" / "keep.txt").write_text("keep\n")
    return {"text": tmp_path / "notes.txt", "png": tmp_path / "photo.png", "dir": tmp_path / "folder.png"}


# ------------------------------------------------------------------------------------------------- export

@pytest.mark.parametrize("flag", ["--torch", "--reference-ptz"])
@pytest.mark.parametrize("name", RUN_FILES)
def test_export_never_writes_into_a_run(good, refused, tmp_path, flag, name):
    force = ["--force"] if name == "final_model.npz" else []  # --force does not open a run
    refused(["export", good, flag, good / name, *force], 1,
            rf"^error: OutputRefused: {flag} \S+/{re.escape(name)}: inside run directory \S+good, ", [good, tmp_path])


@pytest.mark.parametrize("kind", ["text", "png"])
def test_export_refuses_an_existing_file_without_force(good, refused, foreign, tmp_path, kind):
    refused(["export", good, "--torch", tmp_path / "new.pt", "--reference-ptz", foreign[kind]], 1,
            rf"^error: OutputRefused: --reference-ptz \S+: exists and was not written by this command; pass --force",
            [good, tmp_path])
    assert not (tmp_path / "new.pt").exists()  # both paths are checked before either is written


def test_export_refuses_a_directory_and_one_path_for_both(good, refused, foreign, tmp_path):
    refused(["export", good, "--torch", foreign["dir"], "--force"], 1,
            r"^error: OutputRefused: --torch \S+folder\.png: is a directory; name a file$", [good, tmp_path])
    refused(["export", good, "--torch", tmp_path / "m", "--reference-ptz", tmp_path / "m"], 2,
            r"^error: config: --torch and --reference-ptz both name \S+/m: give two paths$", [good, tmp_path])


def test_export_of_a_run_with_corrupt_weights_is_one_line(good, refused, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(good, run)
    (run / "final_model.npz").write_bytes((good / "final_model.npz").read_bytes()[:1000])
    refused(["export", run, "--torch", tmp_path / "m.pt"], 1,
            r"^error: ValueError: \S+copy/final_model\.npz: not a readable weights file", [good, tmp_path])


def test_export_force_replaces_an_unrelated_file(good, foreign, tmp_path):
    torch = pytest.importorskip("torch")
    target = foreign["text"]
    assert main(["export", str(good), "--torch", str(target), "--force"]) == 0
    assert set(torch.load(target, weights_only=True)) >= {"tok_emb.weight"}


# --------------------------------------------------------------------------------------------------- plot

@pytest.mark.parametrize("name", RUN_FILES + ["curves.png", "new.png"])
def test_plot_never_writes_into_a_run(good, refused, tmp_path, name):
    """Into a run: its log (refused by the .png rule), its weights, artifact and config, even its own
    curves.png (a plot wrote it, but the run owns it) and a new PNG; --force changes nothing."""
    why = r"name a \.png file" if not name.endswith(".png") else r"inside run directory \S+good, "
    code = 2 if not name.endswith(".png") else 1
    refused(["plot", good, "--out", good / name, "--force"], code, rf"^error: .*--out \S+/{re.escape(name)}: {why}",
            [good, tmp_path])


def test_plot_refuses_a_foreign_file_a_folder_and_a_non_png_name(good, refused, foreign, tmp_path):
    watch = [good, tmp_path]
    refused(["plot", good, "--out", foreign["png"]], 1,
            r"^error: OutputRefused: --out \S+photo\.png: exists and was not written by this command; pass --force",
            watch)
    refused(["plot", good, "--out", foreign["dir"], "--force"], 1, r"--out \S+folder\.png: is a directory", watch)
    refused(["plot", good, "--out", foreign["text"], "--force"], 2, r"^error: config: --out \S+notes\.txt: name a "
            r"\.png file$", watch)


def test_plot_replaces_its_own_png_and_a_foreign_one_with_force(good, foreign, tmp_path):
    out = tmp_path / "curves.png"
    for _ in range(2):  # the second run replaces the PNG the first wrote
        assert main(["plot", str(good), "--out", str(out)]) == 0
        assert png_series(out) == ["good"]
    assert main(["plot", str(good), "--out", str(foreign["png"]), "--force"]) == 0
    assert png_series(foreign["png"]) == ["good"]


def _metrics(tmp_path: Path, good: Path, name: str, edit) -> Path:
    """A copy of the run's metrics.jsonl (alone in a folder) with `edit(lines) -> text` applied."""
    d = tmp_path / name
    d.mkdir()
    lines = (good / "metrics.jsonl").read_text().splitlines()
    (d / "metrics.jsonl").write_text(edit(lines))
    return d


def _retype(lines, n, key, value):
    ev = json.loads(lines[n - 1])
    if value is KeyError:
        del ev[key]
    else:
        ev[key] = value
    lines[n - 1] = json.dumps(ev)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("key,value,got", [("train_loss", "6.9", r'"6\.9" is not a finite number'),
                                           ("step", KeyError, "missing"), ("train_time_ms", None, "null is not a")])
def test_plot_names_file_line_and_field_of_a_wrong_typed_event(good, refused, tmp_path, key, value, got):
    d = _metrics(tmp_path, good, "typed", lambda lines: _retype(lines, 2, key, value))
    refused(["plot", d, "--out", tmp_path / "c.png"], 1,
            rf"^error: ValueError: \S+typed/metrics\.jsonl: line 2: train event field '{key}': {got}", [tmp_path])


def test_plot_refuses_a_run_without_train_events(good, refused, tmp_path):
    empty = _metrics(tmp_path, good, "empty", lambda lines: "")
    refused(["plot", good, empty, "--out", tmp_path / "c.png"], 1,
            r"^error: ValueError: \S+empty/metrics\.jsonl: no train events to plot", [good, tmp_path])
    val_only = _metrics(tmp_path, good, "valonly", lambda lines: "\n".join(ln for ln in lines if '"train"' not in ln))
    refused(["plot", val_only, "--out", tmp_path / "c.png"], 1, r"valonly/metrics\.jsonl: no train events", [tmp_path])


def test_plot_refuses_a_corrupt_middle_line_but_skips_a_half_last_line(good, refused, tmp_path):
    mid = _metrics(tmp_path, good, "mid", lambda lines: "\n".join(lines[:1] + ['{"event": "tr'] + lines[1:]) + "\n")
    refused(["plot", mid, "--out", tmp_path / "c.png"], 1,
            r"^error: ValueError: \S+mid/metrics\.jsonl: line 2 is not JSON", [tmp_path])
    # A run killed mid-write: its last line lacks its newline, and is skipped; the rest plots.
    half = _metrics(tmp_path, good, "half", lambda lines: "\n".join(lines) + '\n{"event": "train", "st')
    assert main(["plot", str(half), "--out", str(tmp_path / "c.png")]) == 0
    assert png_series(tmp_path / "c.png") == ["half"]
    assert read_events(half)["train"] == read_events(good)["train"]
    # A line of valid JSON that is no event is corruption too.
    odd = _metrics(tmp_path, good, "odd", lambda lines: "\n".join(lines[:2] + ["[1, 2]"] + lines[2:]) + "\n")
    refused(["plot", odd, "--out", tmp_path / "d.png"], 1,
            r"odd/metrics\.jsonl: line 3 is not an event \(a JSON object with a string \"event\"\)$", [tmp_path])


def test_a_single_val_point_is_a_labelled_marker(good, tmp_path):
    """The tiny run validates once (at its end): each val panel shows the point with its value."""
    one = read_events(good)
    assert len(one["val"]) == 1
    bpb = one["val"][0]["val_bpb"]
    two = {**one, "val": [{**one["val"][0], "step": 1, "val_bpb": bpb + 0.5}, one["val"][0]]}
    fig, drawn = curves_figure([("one", one), ("two", two)])
    labels = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert drawn == ["one", "two"] and labels == [f"val_bpb {bpb:.4f}"] * 2  # the two-point run is a line
    fig, drawn = curves_figure([("one", {"train": one["train"]})])
    assert len(fig.axes) == 2 and drawn == ["one"]  # no val at all: no val panels


# ------------------------------------------------------------------------------------------------- submit

def _submit(good, out, *extra, name="guard"):
    return ["submit", good, "--name", name, "--author", "a", "--github-id", "b", "--out", out, *extra]


@pytest.mark.parametrize("vs", ["-1", "nan", "inf", "0", "1e999"])
def test_submit_vs_must_be_a_finite_positive_number(good, refused, tmp_path, vs):
    refused(_submit(good, tmp_path / "records", "--vs", vs), 2,
            rf"^error: config: --vs {re.escape(vs)}: not a val_bpb \(a finite number above 0\)$", [good, tmp_path])


@pytest.mark.parametrize("content,why", [('{"val_bpb": NaN}', r"val_bpb nan in it is not a finite number"),
                                         ('{"val_bpb": -2}', r"val_bpb -2 in it is not"),
                                         ('{"val_bpb": true}', r"val_bpb True in it is not"),
                                         ('{"name": "x"}', r"val_bpb None in it is not"),
                                         ("not json", r"neither a val_bpb number nor a readable submission\.json")])
def test_submit_vs_file_must_hold_a_finite_positive_val_bpb(good, refused, tmp_path, content, why):
    vs = tmp_path / "best.json"
    vs.write_text(content)
    refused(_submit(good, tmp_path / "records", "--vs", vs), 2, rf"^error: config: --vs \S+best\.json: {why}",
            [good, tmp_path])
    refused(_submit(good, tmp_path / "records", "--vs", tmp_path / "missing.json"), 2,
            r"^error: config: --vs \S+missing\.json: neither a val_bpb number nor a readable submission\.json "
            r"\(\S+ not found\)$", [good, tmp_path])


@pytest.mark.parametrize("name", RUN_FILES)
def test_submit_out_onto_a_run_file(good, refused, tmp_path, name):
    refused(_submit(good, good / name, "--force"), 1,
            rf"^error: OutputRefused: --out \S+/{re.escape(name)}: is a file, not a records folder$", [good, tmp_path])


@pytest.mark.parametrize("where", [".", "sub"])
def test_submit_never_writes_into_a_run(good, refused, tmp_path, where):
    refused(_submit(good, good / where, "--force"), 1,
            r"^error: OutputRefused: --out \S+: inside run directory \S+good, ", [good, tmp_path])


def test_submit_out_onto_a_foreign_file_or_folder(good, refused, foreign, tmp_path):
    refused(_submit(good, foreign["text"], "--force"), 1, r"--out \S+notes\.txt: is a file, not a records folder",
            [good, tmp_path])
    refused(_submit(good, foreign["dir"]), 1, r"^error: OutputRefused: --out \S+folder\.png: exists and is not a "
            r"records folder \(no track_10min_16mb or track_non_record_16mb in it\); pass --force", [good, tmp_path])
    assert main([str(a) for a in _submit(good, foreign["dir"], "--force")]) == 0
    made = list((foreign["dir"] / "track_10min_16mb").iterdir())
    assert len(made) == 1 and (made[0] / "submission.json").is_file()
    assert (foreign["dir"] / "keep.txt").read_text() == "keep\n"
    # Now a records folder: another submission adds to it without --force; the same one is refused.
    assert main([str(a) for a in _submit(good, foreign["dir"], name="guard 2")]) == 0
    refused(_submit(good, foreign["dir"]), 1, r"^error: FileExistsError: \S+_guard exists already; pick another "
            r"--name or --out", [good, tmp_path])


# --------------------------------------------------------------------------------------------------- eval

def test_eval_torch_state_dict_of_a_foreign_file_is_one_line_and_runs_nothing(refused, tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # would create the marker if unpickled unsafely

    torch.save({"tok_emb.weight": Payload()}, tmp_path / "evil.pt")
    (tmp_path / "text.pt").write_text("hello\n")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    torch.save({"a": {"b": torch.zeros(2)}}, tmp_path / "nested.pt")
    for name, why in [("evil", r"its pickle asks for more than tensors and plain containers, which is never loaded"),
                      ("text", r"no torch\.save file: \w+"), ("list", r"it holds a list, not a dict"),
                      ("nested", r"entry 'a' is a dict, not a tensor")]:
        line = refused(["eval", "--torch-state-dict", tmp_path / f"{name}.pt", "--config", TINY], 1,
                       rf"^error: ValueError: \S+{name}\.pt: not a readable torch state dict \({why}\)$", [tmp_path])
        assert "weights_only" not in line and len(line.replace(str(tmp_path), "")) < 160
    assert not marker.exists()


def test_eval_writes_nothing(good, sample_data, tmp_path, monkeypatch, capsys):
    """eval has no output path: scoring a run changes no file in it or in the working folder."""
    from conftest import tree_sums

    monkeypatch.chdir(tmp_path)
    before = tree_sums(good, tmp_path)
    assert main(["eval", "--run", str(good)]) == 0
    assert "eval_exact val_loss:" in capsys.readouterr().out
    assert tree_sums(good, tmp_path) == before

