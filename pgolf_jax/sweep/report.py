"""A sweep's tables and pictures, rebuilt from whatever rows/*.json exist (every shard's).

results.csv: one line per run. results.md: one line per variant: mean round-trip val_bpb over its
seeds, the delta to the control, the seed noise (the control's sd over CONTROL_SEEDS) and whether
the delta clears it (a one-sided t-test, p < 0.01 like the challenge's record rule), beside the
seed's own number and the sign comparison; then the per-run table. Pictures: pareto.png (val_bpb
vs artifact bytes, Pareto front marked), time.png (val_bpb vs training time), curves.png (train
loss / val_bpb of every run over steps and over training time).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

from pgolf_jax import plots
from pgolf_jax.fsio import atomic_output, read_json
from pgolf_jax.sweep.spec import Sweep

P_THRESHOLD = 0.01
COLUMNS = ("variant", "seed", "status", "params", "artifact_bytes", "steps", "step_ms", "train_time_ms",
           "final_train_loss", "pre_quant_val_bpb", "val_bpb", "val_loss", "error")


def load_rows(out: Path) -> list[dict]:
    return [r for r in (read_json(p, "a sweep row") for p in sorted((out / "rows").glob("*.json")))
            if isinstance(r, dict)]


def one_sided_p(variant: list[float], control: list[float], noise: float | None = None,
                noise_n: int = 0) -> float | None:
    """P(the variant's mean is not below the control's) under a one-sided t-test: Welch's when both
    have >= 2 values; else with the spread of the side that has >= 2 values (a single value as a new
    draw: (x - mean) / (sd sqrt(1 + 1/n)) ~ t(n - 1)); two single values against the sweep's seed
    noise (sd over noise_n control seeds: (x - y) / (sd sqrt 2) ~ t(noise_n - 1)); None without any
    spread to test against."""
    from scipy import stats

    nv, nc = len(variant), len(control)
    mv, mc = statistics.fmean(variant), statistics.fmean(control)
    if nv >= 2 and nc >= 2:
        res = stats.ttest_ind(variant, control, equal_var=False, alternative="less")
        return float(res.pvalue) if math.isfinite(res.pvalue) else (0.0 if mv < mc else 1.0)
    if nc >= 2 or nv >= 2:
        spread, n = (statistics.stdev(control), nc) if nc >= 2 else (statistics.stdev(variant), nv)
        scale = spread * math.sqrt(1 + 1 / n)
    elif noise is not None and noise_n >= 2:
        spread, n, scale = noise, noise_n, noise * math.sqrt(2)
    else:
        return None
    if spread == 0:
        return 0.0 if mv < mc else 1.0
    return float(stats.t.cdf((mv - mc) / scale, n - 1))


def _sign(x: float, noise: float) -> int:
    return 0 if abs(x) <= noise else (1 if x > 0 else -1)


def summarize(sweep: Sweep, rows: list[dict]) -> list[dict]:
    """One summary per variant (file order) over its finished seeds, each against its control
    (CONTROL, or COMPARE's choice)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    vals = {name: [r["val_bpb"] for r in ok if r["variant"] == name] for name in sweep.variants}
    ctrl = vals[sweep.control]
    noise = statistics.stdev(ctrl) if len(ctrl) >= 2 else None
    out = []
    for name in sweep.variants:
        mine = [r for r in ok if r["variant"] == name]
        failed = [r for r in rows if r["variant"] == name and r.get("status") != "ok"]
        vs = sweep.compare[name]
        s = {"variant": name, "vs": vs, "n": len(mine), "failed": len(failed),
             "error": failed[0].get("error") if failed and not mine else None, "noise": noise}
        if mine:
            v = vals[name]
            s.update(mean=statistics.fmean(v), sd=statistics.stdev(v) if len(v) > 1 else None,
                     params=mine[0]["params"],
                     artifact_bytes=round(statistics.fmean(r["artifact_bytes"] for r in mine)),
                     step_ms=statistics.fmean(r["step_ms"] for r in mine if r["step_ms"]),
                     vmapped=max(r.get("vmap_group", 1) for r in mine),
                     # rows written before the mode was recorded say "group"
                     group_mode=max(mine, key=lambda r: r.get("vmap_group", 1)).get("group_mode", "group"),
                     train_s=statistics.fmean(r["train_time_ms"] for r in mine) / 1000,
                     steps=round(statistics.fmean(r["steps"] for r in mine)),
                     pre=statistics.fmean(r["pre_quant_val_bpb"] for r in mine))
            c = vals[vs]
            if c and name != vs:
                s["delta"] = s["mean"] - statistics.fmean(c)
                p = (one_sided_p(v, c, noise, len(ctrl)) if s["delta"] < 0 else one_sided_p(c, v, noise, len(ctrl)))
                s["p"], s["clears"] = p, (p is not None and p < P_THRESHOLD)
        ref, ref_c = sweep.reference.get(name), sweep.reference.get(vs)
        if ref is not None:
            s["ref"] = ref
            if ref_c is not None and name != vs:
                s["ref_delta"] = ref - ref_c
                if "delta" in s:
                    ours = _sign(s["delta"], 0.0) if s["clears"] else 0
                    s["agreement"] = ("within noise" if ours == 0 else
                                      "agrees" if ours == _sign(s["ref_delta"], 0.0) else "disagrees")
        out.append(s)
    return out


def _f(x, fmt="{:.4f}") -> str:
    return "" if x is None else fmt.format(x)


def markdown(sweep: Sweep, rows: list[dict], summary: list[dict], command: str) -> str:
    ctrl_n = next((s["n"] for s in summary if s["variant"] == sweep.control), 0)
    noise = summary[0]["noise"] if summary else None

    lines = [f"# Sweep `{sweep.name}`", ""]
    if sweep.doc:
        lines += [sweep.doc, ""]
    lines += [f"Command: `{command}`", "",
              f"Control: `{sweep.control}` ({ctrl_n} seeds; seed noise sd = {_f(noise)}). Delta = variant mean - "
              f"its control's mean (`vs`; round-trip val_bpb, lower is better); p = one-sided t-test that the sign "
              f"of the delta is real (Welch with >= 2 seeds each, else against the spread of the side with seeds, "
              f"else against the seed noise); clears = p < {P_THRESHOLD}.", ""]
    if sweep.reference:
        lines += [f"Seed's numbers: {sweep.reference_note or 'REFERENCE of the sweep file'}. Agreement compares the "
                  "sign of our delta (when it clears the noise) with the sign of the seed's delta.", ""]
    head = ["variant", "seeds", "params", "artifact bytes", "steps", "step ms", "pre-quant bpb", "val_bpb", "sd",
            "vs", "delta", "p", "clears"]
    if sweep.reference:
        head += ["seed's bpb", "seed's delta", "agreement"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        if not s["n"]:
            why = (s.get("error") or "not run yet").replace("|", "/")
            lines.append("| " + " | ".join([f"`{s['variant']}`", "0", why] + [""] * (len(head) - 3)) + " |")
            continue
        cells = [f"`{s['variant']}`" + (" (control)" if s["variant"] == sweep.control else ""), str(s["n"]),
                 f"{s['params']:,}", f"{s['artifact_bytes']:,}", str(s["steps"]),
                 _f(s["step_ms"], "{:.0f}") + (f" ({s['group_mode']} x{s['vmapped']})" if s["vmapped"] > 1 else ""),
                 _f(s["pre"]), _f(s["mean"]), _f(s["sd"]), "" if s["vs"] == s["variant"] else f"`{s['vs']}`",
                 _f(s.get("delta"), "{:+.4f}"),
                 _f(s.get("p"), "{:.3g}"), {True: "yes", False: "no"}.get(s.get("clears"), "")]
        if sweep.reference:
            cells += [_f(s.get("ref")), _f(s.get("ref_delta"), "{:+.4f}"), s.get("agreement", "")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per run:", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c)) for c in COLUMNS) + " |")
    lines += ["", "Pictures: `pareto.png` (val_bpb vs artifact bytes), `time.png` (val_bpb vs training time), "
              "`curves.png` (loss curves of every run).", ""]
    return "\n".join(lines)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.0f}"
    return "" if v is None else str(v)


def write_report(sweep: Sweep, out: Path, command: str = "") -> dict:
    """results.csv, results.md and the PNGs from the rows present; returns {'rows', 'summary'}."""
    rows = load_rows(out)
    order = {r.run_id: r.index for r in sweep.rows}
    rows.sort(key=lambda r: order.get(r.get("run_id"), len(order)))
    summary = summarize(sweep, rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    with atomic_output(out / "results.csv", "w") as f:
        f.write(buf.getvalue())
    with atomic_output(out / "results.md", "w") as f:
        f.write(markdown(sweep, rows, summary, command or f"run.py sweep {sweep.path}"))
    done = [s for s in summary if s["n"]]
    if done:
        names = [s["variant"] for s in done]
        plots.plot_scatter(names, [s["artifact_bytes"] for s in done], [s["mean"] for s in done], out / "pareto.png",
                           "artifact bytes (weights + code)", f"{sweep.name}: val_bpb vs artifact bytes", front=True)
        plots.plot_scatter(names, [s["train_s"] for s in done], [s["mean"] for s in done], out / "time.png",
                           "training time (s)", f"{sweep.name}: val_bpb vs training time")
        ok = [r for r in rows if r.get("status") == "ok"]
        plots.plot_curves([out / r["run_dir"] for r in ok], out / "curves.png", [r["run_id"] for r in ok],
                          title=f"{sweep.name}: every run")
    return {"rows": rows, "summary": summary}
