"""Pictures of runs, as PNG (matplotlib, Agg): the loss curves of one or many runs (over steps and
over training time) and a sweep's val_bpb against artifact bytes (Pareto front marked) and against
training time. Every PNG carries a text chunk `pgolf:series` listing what it draws, one name per
curve or point, so a test (or a script) can check a picture without reading pixels."""

from __future__ import annotations

import json
import math
from pathlib import Path

from pgolf_jax.fsio import atomic_output

SERIES_KEY = "pgolf:series"


# The fields `run.py plot` and the sweep rows read from each event, all finite numbers.
_FIELDS = {"train": ("step", "train_loss", "train_time_ms"), "val": ("step", "val_bpb", "train_time_ms")}


def read_events(run_dir: Path) -> dict[str, list[dict]]:
    """metrics.jsonl of a run, grouped by event name (train, val, final_roundtrip, ...). A bad line
    is a ValueError naming the file, the line number and the field."""
    out: dict[str, list[dict]] = {}
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a run directory?")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    lines = text.split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            # Each event is one write of a whole line, so a run killed mid-write can leave only its
            # last line half-written (no newline after it): skipped. A bad line anywhere else is
            # corruption, and a picture or sweep row drawn around it would be silently wrong.
            if n == len(lines):
                continue
            raise ValueError(f"{path}: line {n} is not JSON (a corrupt metrics file)") from None
        _check_event(ev, path, n)
        out.setdefault(ev["event"], []).append(ev)
    return out


def _check_event(ev, path: Path, n: int) -> None:
    """One metrics.jsonl line: an object with a string `event`; train/val events with numeric fields."""
    if not isinstance(ev, dict) or not isinstance(ev.get("event"), str):
        raise ValueError(f"{path}: line {n} is not an event (a JSON object with a string \"event\")")
    for key in _FIELDS.get(ev["event"], ()):
        v = ev.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            got = "missing" if key not in ev else f"{json.dumps(v)[:40]} is not a finite number"
            raise ValueError(f"{path}: line {n}: {ev['event']} event field {key!r}: {got}")


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


def is_own_png(path: Path) -> bool:
    """Whether `path` is a PNG written here (it carries the `pgolf:series` chunk), which a later plot
    may replace; anything else (a log, weights, a PNG from elsewhere) is not."""
    try:
        return isinstance(png_series(path), list)
    except Exception:  # noqa: BLE001  not an image, not a PNG, no chunk, a bad chunk: not ours
        return False


_DASHES = ["-", "--", ":", "-."]


def run_styles(n: int) -> list[tuple[str, str]]:
    """A (colour, line style) pair per run, all distinct for up to 40 runs: matplotlib's ten-colour
    cycle alone repeats from the eleventh run, and a sweep table has 20-30."""
    return [(f"C{i % 10}", _DASHES[(i // 10) % len(_DASHES)]) for i in range(n)]


def plot_curves(run_dirs: list[Path], out: Path, labels: list[str] | None = None, title: str = "",
                require_train: bool = False) -> Path:
    """Train loss and val_bpb of every run, over steps (left) and over training time (right): one
    line per run in each panel (val panels only when some run logged validation; a run with a single
    val point gets a marker with its value beside it, not a lone dot on an unlabelled axis). A run
    without train events is left out, or with require_train is a ValueError naming its metrics."""
    runs = [(label, read_events(d), d) for label, d in zip(labels or [Path(d).name for d in run_dirs], run_dirs)]
    if require_train:
        for _, ev, d in runs:
            if not ev.get("train"):
                raise ValueError(f"{Path(d) / 'metrics.jsonl'}: no train events to plot (the run logged no step)")
    fig, drawn = curves_figure([(label, ev) for label, ev, _ in runs], title)
    return _save(fig, Path(out), drawn)


def curves_figure(runs: list[tuple[str, dict]], title: str = ""):
    """(figure, names of the runs drawn) for plot_curves, from (label, read_events()) pairs."""
    plt = _pyplot()
    has_val = any(ev.get("val") for _, ev in runs)
    runs = [(label, ev) for label, ev in runs if ev.get("train")]
    # Past a handful of runs the legend goes beside the panels, where it covers no curve.
    side = len(runs) > 6
    height = 7.5 if has_val else 4
    ncol = math.ceil(len(runs) / max(8, int(height * 72 / 11) - 3))  # ~11 points a legend row
    # Val panels share the train panels' step and time axes: a val point sits under the steps it follows.
    fig, axes = plt.subplots(2 if has_val else 1, 2, figsize=(11 + 3 * ncol * side, height), squeeze=False,
                             sharex="col")
    drawn = []
    for (label, ev), (color, dash) in zip(runs, run_styles(len(runs))):
        train = ev["train"]
        drawn.append(label)
        style = dict(color=color, ls=dash, lw=1.2)
        axes[0][0].plot([e["step"] for e in train], [e["train_loss"] for e in train], label=label, **style)
        axes[0][1].plot([e["train_time_ms"] / 1000 for e in train], [e["train_loss"] for e in train], **style)
        if has_val and ev.get("val"):
            _val_panels(axes[1], ev["val"], style)
    for row, what in enumerate(["train loss (nats)"] + (["val_bpb"] if has_val else [])):
        last = row == len(axes) - 1  # shared x axes: the bottom row carries the ticks and labels
        axes[row][0].set(xlabel="step" if last else "", ylabel=what)
        axes[row][1].set(xlabel="training time (s)" if last else "", ylabel=what)
        for ax in axes[row]:
            ax.grid(alpha=0.3)
    fig.suptitle(title or ", ".join(drawn[:4]) + (" ..." if len(drawn) > 4 else ""), fontsize=10)
    if drawn and side:
        edge = 11 / (11 + 3 * ncol)
        fig.tight_layout(rect=(0, 0, edge, 1))
        fig.legend(*axes[0][0].get_legend_handles_labels(), fontsize=7, loc="center left", ncol=ncol,
                   bbox_to_anchor=(edge, 0.5), frameon=False)
    else:
        if drawn:
            axes[0][0].legend(fontsize=7, loc="upper right")
        fig.tight_layout()
    return fig, drawn


def _val_panels(axes, val: list[dict], style: dict) -> None:
    """One run's val_bpb over steps and time; a single point (a run that validated only at its end)
    is a larger marker with its value printed beside it, since an auto-ranged axis around one point
    says nothing by itself."""
    bpb = [e["val_bpb"] for e in val]
    for ax, x in zip(axes, ([e["step"] for e in val], [e["train_time_ms"] / 1000 for e in val])):
        ax.plot(x, bpb, marker="o", ms=3 if len(val) > 1 else 6, **style)
        if len(val) == 1:
            # Left of the point: a run validated at its last step, which is the right edge.
            ax.annotate(f"val_bpb {bpb[0]:.4f}", (x[0], bpb[0]), xytext=(-6, 5), textcoords="offset points",
                        ha="right", fontsize=8, color=style["color"])


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both x and y (lower is better), by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def spread_labels(anchors: list[tuple[float, float]], widths: list[float], height: float,
                  lo: float = float("-inf"), hi: float = float("inf")) -> list[float]:
    """Label heights (same units as the anchors) with no two label boxes [x, x + width] x
    [y, y + height] overlapping, each as near its anchor's y as that allows: labels whose x ranges
    chain together form a column, sorted by anchor y, and runs that would collide are merged into
    blocks centred on their anchors (the least-squares placement), then kept inside [lo, hi] (a
    column taller than that stacks up from lo). A non-finite anchor keeps its value, unplaced."""
    finite = [i for i, (a, b) in enumerate(anchors) if math.isfinite(a) and math.isfinite(b)]
    # Columns: connected runs of overlapping x ranges.
    order = sorted(finite, key=lambda i: anchors[i][0])
    columns, right = [], float("-inf")
    for i in order:
        if not columns or anchors[i][0] >= right:
            columns.append([])
            right = float("-inf")
        columns[-1].append(i)
        right = max(right, anchors[i][0] + widths[i])
    ys = [a[1] for a in anchors]
    for col in columns:
        col.sort(key=lambda i: (anchors[i][1], anchors[i][0]))
        blocks: list[tuple[float, list[int]]] = []  # (bottom y, members bottom to top)
        for i in col:
            blocks.append((anchors[i][1], [i]))
            while len(blocks) > 1 and blocks[-2][0] + height * len(blocks[-2][1]) > blocks[-1][0]:
                (_, m1), (_, m2) = blocks[-2], blocks.pop()
                members = m1 + m2
                bottom = sum(anchors[j][1] - height * k for k, j in enumerate(members)) / len(members)
                blocks[-1] = (bottom, members)
        # Clamp by rank in the column, not block by block: a block pushed off an edge then slides
        # into its neighbour's room instead of onto it (the bounds step by one height per rank, so
        # the gaps stay at least one height).
        stacked = [(j, bottom + height * k) for bottom, members in blocks for k, j in enumerate(members)]
        for g, (j, y) in enumerate(stacked):
            ys[j] = max(lo + height * g, min(y, hi - height * (len(stacked) - g)))
    return ys


def outlier_cap(y: list[float]) -> float | None:
    """The y above which a scatter shows points pinned to its top edge, or None: far-off failures
    (a variant at 13 bpb beside a cluster at 2.5-3.5) would otherwise squash the points being
    compared into a line. Only high values are capped: a low val_bpb is the interesting end."""
    if len(y) < 8:
        return None
    q1, q3 = sorted(y)[len(y) // 4], sorted(y)[(3 * len(y)) // 4]
    cap = q3 + 3 * max(q3 - q1, 1e-2 * abs(q3), 1e-9)  # a floor: tied quartiles would pin any rise
    return cap if max(y) > cap else None


def plot_scatter(names: list[str], x: list[float], y: list[float], out: Path, xlabel: str, title: str,
                 front: bool = False) -> Path:
    """One labelled point per name; with front, the Pareto front (lower x and lower y) as a line.
    Labels of points that crowd together are spread out, each tied to its point by a thin line;
    far-off high points sit on the top edge as triangles, their value in the label."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    cap = outlier_cap(list(y))
    names = list(names)
    idx = pareto_front(list(zip(x, y))) if front and names else []  # on the true values, before any pinning
    off = [cap is not None and v > cap for v in y]
    labels = [f"{n} ({v:.2f}, off scale)" if o else n for n, v, o in zip(names, y, off)]
    y = [cap if o else v for v, o in zip(y, off)]
    ax.scatter([a for a, o in zip(x, off) if not o], [b for b, o in zip(y, off) if not o], s=22, zorder=3)
    if any(off):
        ax.scatter([a for a, o in zip(x, off) if o], [cap] * sum(off), s=30, marker="^", color="C3", zorder=3)
    if idx:
        ax.plot([x[i] for i in idx], [y[i] for i in idx], "r--", lw=1, zorder=2, label="Pareto front")
        ax.legend(fontsize=8)
    ax.set(xlabel=xlabel, ylabel="round-trip val_bpb", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if names:
        # Label boxes in points (1/72 in), from the final layout, so the stacking survives any dpi.
        size = 7.0
        to_pt = 72.0 / fig.dpi
        from matplotlib.font_manager import FontProperties

        renderer, font = fig.canvas.get_renderer(), FontProperties(size=size)
        widths = [renderer.get_text_width_height_descent(n, font, ismath=False)[0] * to_pt for n in labels]
        (left, lo), (right, hi) = ax.transAxes.transform([(0, 0), (1, 1)]) * to_pt
        pts = ax.transData.transform(list(zip(x, y))) * to_pt
        # A label that would cross the right edge goes on its point's left instead.
        flip = [px + 9 + w > right and px - 9 - w >= left for (px, _), w in zip(pts, widths)]
        anchors = [(px - 9 - w if f else px + 3, py - size / 2) for (px, py), w, f in zip(pts, widths, flip)]
        # +6: a moved label is drawn 6 points further out than an unmoved one; its box covers both.
        placed = spread_labels(anchors, [w + 6 for w in widths], size + 1.5, lo, hi)
        for n, a, b, (_, want), got, f in zip(labels, x, y, anchors, placed, flip):
            moved = abs(got - want) > 0.5
            dx = 3 + 6 * moved
            ax.annotate(n, (a, b), fontsize=size, xytext=(-dx if f else dx, got - want - size / 2),
                        textcoords="offset points", va="bottom", ha="right" if f else "left",
                        arrowprops=dict(arrowstyle="-", lw=0.4, color="0.6", shrinkA=0, shrinkB=2) if moved else None)
    return _save(fig, Path(out), names)


def plot_command(argv: list[str]) -> int:
    """`run.py plot RUN_DIR ...`: the loss curves of runs overlaid in one PNG."""
    from pgolf_jax.config import ConfigError
    from pgolf_jax.errors import arg_parser
    from pgolf_jax.fsio import check_output

    parser = arg_parser()
    p = parser(prog="run.py plot", description="Overlay the loss curves of runs in one PNG.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="curves.png", help="the PNG to write, outside any run (default curves.png); "
                                                       "an existing file is replaced only if a plot wrote it")
    p.add_argument("--force", action="store_true", help="replace an existing --out file this command did not write")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() != ".png":  # a typo'd --out must not land on a log or weights file
        raise ConfigError(f"--out {out}: name a .png file")
    check_output(out, "--out", force=args.force, ours=is_own_png)
    path = plot_curves([Path(r) for r in args.runs], out, require_train=True)
    print(f"plot:{path} runs:{len(args.runs)}")
    return 0
