"""Pictures of runs, as PNG (matplotlib, Agg): the loss curves of one or many runs (over steps and
over training time) and a sweep's val_bpb against artifact bytes (Pareto front marked) and against
training time. Every PNG carries a text chunk `pgolf:series` listing what it draws, one name per
curve or point, so a test (or a script) can check a picture without reading pixels."""

from __future__ import annotations

import json
from pathlib import Path

from pgolf_jax.fsio import atomic_output

SERIES_KEY = "pgolf:series"


def read_events(run_dir: Path) -> dict[str, list[dict]]:
    """metrics.jsonl of a run, grouped by event name (train, val, final_roundtrip, ...); a line that
    is not JSON (a run killed mid-write) is skipped."""
    out: dict[str, list[dict]] = {}
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a run directory?")
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(ev, dict) and "event" in ev:
            out.setdefault(ev["event"], []).append(ev)
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a CPU box or in CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, series: list[str]) -> Path:
    with atomic_output(path) as f:
        fig.savefig(f, format="png", dpi=110, metadata={SERIES_KEY: json.dumps(series)})
    _pyplot().close(fig)
    return path


def png_series(path: Path) -> list[str]:
    """The names a PNG written here says it draws (its `pgolf:series` text chunk)."""
    from PIL import Image

    with Image.open(path) as im:
        return json.loads(im.text[SERIES_KEY])


def plot_curves(run_dirs: list[Path], out: Path, labels: list[str] | None = None, title: str = "") -> Path:
    """Train loss and val_bpb of every run, over steps (left) and over training time (right): one
    line per run in each panel (val panels only when some run logged periodic validation)."""
    plt = _pyplot()
    labels = labels or [Path(d).name for d in run_dirs]
    runs = [(label, read_events(d)) for label, d in zip(labels, run_dirs)]
    has_val = any(ev.get("val") for _, ev in runs)
    fig, axes = plt.subplots(2 if has_val else 1, 2, figsize=(11, 7.5 if has_val else 4), squeeze=False)
    drawn = []
    for label, ev in runs:
        train = ev.get("train", [])
        if not train:
            continue
        drawn.append(label)
        steps = [e["step"] for e in train]
        secs = [e["train_time_ms"] / 1000 for e in train]
        loss = [e["train_loss"] for e in train]
        (line,) = axes[0][0].plot(steps, loss, label=label, lw=1.2)
        axes[0][1].plot(secs, loss, color=line.get_color(), lw=1.2)
        if has_val and ev.get("val"):
            val = ev["val"]
            axes[1][0].plot([e["step"] for e in val], [e["val_bpb"] for e in val], "o-", color=line.get_color(), ms=3)
            axes[1][1].plot([e["train_time_ms"] / 1000 for e in val], [e["val_bpb"] for e in val], "o-",
                            color=line.get_color(), ms=3)
    for row, what in enumerate(["train loss (nats)"] + (["val_bpb"] if has_val else [])):
        axes[row][0].set(xlabel="step", ylabel=what)
        axes[row][1].set(xlabel="training time (s)", ylabel=what)
        for ax in axes[row]:
            ax.grid(alpha=0.3)
    if drawn:
        axes[0][0].legend(fontsize=7, loc="upper right")
    fig.suptitle(title or ", ".join(drawn[:4]) + (" ..." if len(drawn) > 4 else ""), fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(out), drawn)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both x and y (lower is better), by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def plot_scatter(names: list[str], x: list[float], y: list[float], out: Path, xlabel: str, title: str,
                 front: bool = False) -> Path:
    """One labelled point per name; with front, the Pareto front (lower x and lower y) as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.scatter(x, y, s=22, zorder=3)
    for n, a, b in zip(names, x, y):
        ax.annotate(n, (a, b), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if front and names:
        idx = pareto_front(list(zip(x, y)))
        ax.plot([x[i] for i in idx], [y[i] for i in idx], "r--", lw=1, zorder=2, label="Pareto front")
        ax.legend(fontsize=8)
    ax.set(xlabel=xlabel, ylabel="round-trip val_bpb", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(out), list(names))
