"""`run.py submit`: runs of one config (one per seed) -> a folder that adds to the challenge's
records/ (README.md, submission.json with the challenge's fields, each seed's train log,
requirements.txt and the packed train_gpt.py that ran); `run.py export`: a run's weights in the
reference's own formats (final_model.pt, final_model.int8.ptz).

Nothing is trusted that can be checked: every run must be finished, under the cap, of the same
config but the seed, and hold the train_gpt.py its submission.json hashed; the folder is built in a
temporary directory and renamed into place only when complete.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import math
import re
import shutil
import statistics
import tempfile
import zipfile
from pathlib import Path

from pgolf_jax import config as config_lib
from pgolf_jax import registry
from pgolf_jax.config import Config, ConfigError
from pgolf_jax.errors import OutputRefused
from pgolf_jax.fsio import check_output, read_json, write_bytes, write_json

TRACKS = {"10min_16mb": "track_10min_16mb", "non_record_16mb": "track_non_record_16mb"}
CAP_BYTES = 16_000_000
TRAIN_CAP_S = EVAL_CAP_S = 600.0
RECORD_MARGIN_NATS = 0.005  # a record must beat the best by this much, at p < 0.01
# Fields a run may differ in and still be "the same config, another seed".
_PER_RUN = {"train.seed", "train.run_id", "train.out_dir", "train.progress", "train.process_id"}


class Run:
    """A finished run directory: its config, summary, log and packed code, checked."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.cfg: Config = config_lib.load_run_config(self.path)
        sub = read_json(self.path / "submission.json", "has the run finished?")
        if not isinstance(sub, dict) or not isinstance(sub.get("val_bpb"), (int, float)):
            raise ValueError(f"{self.path / 'submission.json'}: no val_bpb: not a finished run's summary")
        self.sub = sub
        self.log = self.path / "log.txt"
        self.code = self.path / "train_gpt.py"
        for f in (self.log, self.code):
            if not f.is_file():
                raise FileNotFoundError(f"{f} not found: {self.path} is not a complete run "
                                        "(re-run it with this version)")
        want = sub.get("code_sha256")
        if want and hashlib.sha256(self.code.read_bytes()).hexdigest() != want:
            raise ValueError(f"{self.code}: differs from the code the run counted (sha256 in its submission.json)")

    @property
    def seed(self) -> int:
        return self.cfg.train.seed

    def flat(self) -> dict:
        return config_lib.flat_dict(self.cfg)


def load_runs(paths: list[Path]) -> list[Run]:
    runs = [Run(p) for p in paths]
    base = runs[0].flat()
    for r in runs[1:]:
        diff = sorted(k for k, v in r.flat().items() if k not in _PER_RUN and base.get(k) != v)
        if diff:
            raise ConfigError(f"{r.path} is not the same config as {runs[0].path}: it differs in "
                              + ", ".join(f"{k} ({base[k]!r} vs {r.flat()[k]!r})" for k in diff[:6]))
    seeds = [r.seed for r in runs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"two runs share train.seed ({', '.join(map(str, seeds))}): one result per seed")
    for r in runs:
        total = r.sub.get("bytes_total", 0)
        if total > CAP_BYTES:
            raise ConfigError(f"{r.path}: artifact is {total:,} bytes, over the {CAP_BYTES:,}-byte cap")
    return runs


def significance(bpbs: list[float], baseline_bpb: float, nats_per_bpb: float) -> dict:
    """The challenge's record test: is the mean val_bpb below baseline - 0.005 nats (as bpb, with
    this tokenizer's bytes per token), one-sided one-sample t-test, p < 0.01?"""
    from scipy import stats

    margin = RECORD_MARGIN_NATS / nats_per_bpb
    target = baseline_bpb - margin
    mean, sd = statistics.fmean(bpbs), statistics.stdev(bpbs)
    if sd == 0:
        p = 0.0 if mean < target else 1.0
    else:
        p = float(stats.t.cdf((mean - target) / (sd / math.sqrt(len(bpbs))), len(bpbs) - 1))
    return {"baseline_val_bpb": baseline_bpb, "margin_nats": RECORD_MARGIN_NATS, "margin_bpb": round(margin, 6),
            "mean": round(mean, 6), "sd": round(sd, 6), "n": len(bpbs), "p_value": p, "record": p < 0.01}


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _baseline(vs: str) -> float:
    """--vs as a val_bpb: a finite positive number, or a submission.json holding one."""
    try:
        value = float(vs)
    except ValueError:
        value = None
    if value is not None:
        if not _positive(value):
            raise ConfigError(f"--vs {vs}: not a val_bpb (a finite number above 0)")
        return value
    try:
        sub = read_json(Path(vs))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise ConfigError(f"--vs {vs}: neither a val_bpb number nor a readable submission.json ({exc})") from None
    bpb = sub.get("val_bpb") if isinstance(sub, dict) else None
    if not _positive(bpb):
        raise ConfigError(f"--vs {vs}: val_bpb {bpb!r} in it is not a finite number above 0")
    return float(bpb)


def records_folder(out: Path | None, track: str, name: str, date: str, force: bool = False) -> Path:
    """The folder submit will create, checked before anything is written: --out must be a records/
    folder (new, empty, or holding track_* folders, as the challenge's does) unless force, never a
    run directory's insides; the submission folder itself must not exist (it is never replaced)."""
    root = Path(out or "records")
    final = root / TRACKS[track] / f"{date}_{_slug(name)}"
    if final.exists():
        raise FileExistsError(f"{final} exists already; pick another --name or --out (nothing was written)")
    if root.exists() and not root.is_dir():
        raise OutputRefused(f"--out {root}: is a file, not a records folder")
    check_output(final, "--out")  # no folder inside a run directory, even with --force
    if root.is_dir() and not force and any(root.iterdir()) and not any((root / t).is_dir() for t in TRACKS.values()):
        raise OutputRefused(f"--out {root}: exists and is not a records folder (no {' or '.join(TRACKS.values())} "
                            "in it); pass --force to add to it")
    return final


def technique_summary(cfg: Config) -> str:
    """The config's departures from the reference baseline, in the records' style."""
    m, o, q, e, t = cfg.model, cfg.optim, cfg.quant, cfg.eval, cfg.train
    bits = [f"SP{m.vocab_size}", f"{m.num_layers}L x {m.model_dim}d"]
    if m.family != "gpt":
        bits.append(f"family {m.family}")
    for label, on in [(f"topology {m.topology}", m.topology != "unet"),
                      (f"attention {m.attention}", m.attention != "gqa"),
                      (f"{m.linear} linears", m.linear != "dense"), (f"{m.activation}", m.activation != "relu2"),
                      (f"depth recurrence x{m.num_loops + 1} (L{m.loop_start}-{m.loop_end})", m.num_loops > 0),
                      (f"{'two-lane ' * (m.parallel_residual == 'two_lane')}parallel residuals "
                       f"(L{m.parallel_residual_start}+)", m.parallel_residual_start >= 0),
                      (f"partial RoPE {m.rope_dims}", m.rope_dims > 0), (f"XSA last {m.xsa_last_n}", m.xsa_last_n > 0),
                      ("layerwise LN scale", m.ln_scale), ("gated U-Net skips", m.skip_gates_enabled),
                      (f"QK-gain {m.qk_gain_init}", m.qk_gain_init != 1.5),
                      (f"BigramHash {m.bigram_vocab_size}", m.bigram_vocab_size > 0),
                      (f"SmearGate {m.smear_gate}", bool(m.smear_gate)),
                      (f"attention gate {m.attn_gate}", bool(m.attn_gate)), ("QuantGate", q.gate_int8),
                      (f"{o.orthogonalizer}", o.orthogonalizer != "newton_schulz"),
                      ("MuonEq-R", o.muon_row_normalize), (f"WD {o.muon_wd}", o.muon_wd > 0),
                      (f"WD {o.wd_schedule}", o.wd_schedule != "constant"),
                      (f"EMA {t.ema_decay}", t.ema_decay > 0), (f"objective {t.objective}", t.objective != "ce"),
                      ("QAT", q.qat)]:
        if on:
            bits.append(label)
    bits.append(registry.resolve(registry.QUANT_SCHEMES, q.scheme).describe(q) + f" + {q.compressor}")
    modes = e.final_modes.replace(",", " -> ")
    bits.append(f"eval {modes}" + (f" + {e.ngram_order}-gram mixing" if e.ngram_order else "")
                + (" + n-gram token tilt" if e.ngram_tilt else ""))
    return " + ".join(bits)


def _requirements(cfg: Config) -> list[str]:
    # pyppmd: the packed train_gpt.py decompresses its code with it
    names = ["jax", "flax", "optax", "orbax-checkpoint", "sentencepiece", "zstandard", "numpy", "ml_dtypes", "pyppmd"]
    if cfg.quant.compressor in ("brotli", "pergroup"):  # pergroup: brotli for all but the int8 groups
        names.append("brotli")
    out = []
    for n in names:
        try:
            out.append(f"{n}=={importlib.metadata.version(n)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(n)
    return out


def _eval_seconds(sub: dict) -> tuple[float, float | None]:
    """(measured seconds of the scored evals, their 8xH100 projection, or None where a run has none: a
    packed train_gpt.py's run measures its evals only)."""
    finals = sub.get("final_modes") or {}
    bounds = [v.get("bound_8xH100_seconds", v.get("projected_8xH100_seconds")) for v in finals.values()]
    if finals:
        return sum(v.get("eval_seconds", 0) for v in finals.values()), None if None in bounds else sum(bounds)
    return 0.0, None


def compliance(runs: list[Run]) -> dict:
    cfg = runs[0].cfg
    hw = runs[0].sub.get("hardware", "")
    on_h100 = "H100" in hw
    evals = [_eval_seconds(r.sub) for r in runs]
    projected = [p for _, p in evals if p is not None]
    eval_s = max(projected) if (projected and not on_h100) else max(m for m, _ in evals)
    modes = set(cfg.eval.final_modes.split(","))
    return {
        "train_under_600s": all(r.sub.get("train_time_ms", math.inf) <= 1000 * TRAIN_CAP_S for r in runs),
        "train_time_measured_on": hw,
        "artifact_under_16mb": all(r.sub.get("bytes_total", math.inf) <= CAP_BYTES for r in runs),
        "eval_under_600s": eval_s <= EVAL_CAP_S,
        "eval_seconds": round(eval_s, 1),
        "eval_time_basis": "measured" if on_h100 or not projected else
        f"a lower bound for 8xH100 from analytic FLOPs at MFU {cfg.eval.h100_mfu}, not a measured time (ran on {hw})",
        "score_first_ttt": bool(modes & {"ttt", "lora_ttt"}),  # the TTT code scores every chunk before adapting
        "no_ngram_cache": cfg.eval.ngram_order == 0 and not cfg.eval.ngram_tilt,
        "no_pre_quant_ttt": True,  # TTT runs on the round-tripped artifact only
        "three_seeds": len(runs) >= 3,
    }


def _readme(name: str, runs: list[Run], sub: dict, cfg: Config, sig: dict | None) -> str:
    r0 = runs[0].sub
    lines = [f"# {name}", "",
             f"**val_bpb = {sub['val_bpb']:.4f}** ({len(runs)}-seed mean, std {sub['val_bpb_std']:.4f}) | "
             f"**{max(r.sub['bytes_total'] for r in runs):,} bytes** | {sub['hardware']}", "",
             f"Trained with pgolf_jax (JAX/Flax). {sub['technique_summary']}.", "",
             "## Results", "", "| Seed | val_bpb | pre-quant val_bpb | steps | train time | eval time | Artifact |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        m, p = _eval_seconds(r.sub)
        ev = f"{m:.0f} s" + (f" (>= {p:.2g} s on 8xH100: a FLOP bound, not a time)" if p is not None else "")
        lines.append(f"| {r.seed} | **{r.sub['val_bpb']:.5f}** | {r.sub.get('pre_quant_val_bpb', float('nan')):.5f} | "
                     f"{r.sub.get('steps')} | {r.sub.get('train_time_ms', 0) / 1000:.0f} s | {ev} | "
                     f"{r.sub['bytes_total']:,} |")
    lines.append(f"| **Mean** | **{sub['val_bpb']:.5f}** | | | | | |")
    if sig:
        lines += ["", f"Against {sig['baseline_val_bpb']:.5f}: the mean must be below it by 0.005 nats "
                      f"({sig['margin_bpb']:.5f} bpb with this tokenizer) at p < 0.01 (one-sided t-test over the "
                      f"seeds): p = {sig['p_value']:.3g}, {'a record' if sig['record'] else 'not a record'}."]
    lines += ["", "## Byte accounting", "",
              f"- model: {r0['bytes_model']:,} bytes ({r0['artifact']}, the quantized weights compressed)",
              f"- code: {r0['bytes_code']:,} bytes (`train_gpt.py`: the {len(r0.get('code_files', []))} files the run "
              "imported, minified, lzma, base85; it is the whole program)",
              f"- total: {r0['bytes_total']:,} of {CAP_BYTES:,}", "",
              "## Configuration", "", "Everything not listed is the reference baseline's default.", "", "```"]
    default = config_lib.flat_dict(Config())  # a variant the baseline does not select: all its options listed
    for key, v in config_lib.flat_dict(cfg).items():
        if (key not in default or default[key] != v) and key not in _PER_RUN:
            lines.append(f"{key}={v!r}")
    lines += ["```", "", "## Compliance", ""]
    lines += [f"- {k}: {v}" for k, v in sub["compliance"].items()]
    lines += ["", "## Reproduction", "", "```bash", "pip install -r requirements.txt   # + jax[cuda12] on GPUs"]
    if cfg.quant.compressor == "pergroup":  # the artifact's int8 groups are lrzip (ZPAQ) streams
        lines.append("apt-get install -y lrzip   # the lrzip binary is needed to write and to load the artifact")
    lines.append("# data in the challenge layout under ./data (python data/cached_challenge_fineweb.py ...)")
    lines += [f"python train_gpt.py train.seed={r.seed}" for r in runs]
    lines += ["```", "", "`train_gpt.py` embeds the config above; `section.field=value` arguments override it.", "",
              "## Included files", "", "- `README.md`", "- `submission.json`", "- `train_gpt.py`",
              "- `requirements.txt`"] + [f"- `train_seed{r.seed}.log`" for r in runs] + [""]
    return "\n".join(lines)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")[:80] or "submission"


def submit(run_dirs: list[Path], name: str, author: str, github_id: str, track: str = "10min_16mb",
           out: Path | None = None, vs: str | None = None, say=print, force: bool = False) -> Path:
    if track not in TRACKS:
        raise ConfigError(f"--track {track!r}: choose from {', '.join(TRACKS)}")
    if not name.strip() or not author.strip() or not github_id.strip():
        raise ConfigError("--name, --author and --github-id must not be empty")
    date = datetime.date.today().isoformat()
    # Every input and the output folder are checked before anything is written.
    baseline = _baseline(vs) if vs is not None else None
    final = records_folder(out, track, name, date, force)
    runs = load_runs(run_dirs)
    runs.sort(key=lambda r: r.seed)
    cfg = runs[0].cfg
    bpbs = [r.sub["val_bpb"] for r in runs]
    r0 = runs[0].sub
    nats_per_bpb = r0["val_bytes"] * math.log(2) / r0["val_tokens"] if r0.get("val_tokens") else math.log(2)
    sig = None
    if vs is not None:
        if len(runs) < 3:
            raise ConfigError(f"--vs needs at least 3 seeds (got {len(runs)}): the test has no spread to use")
        sig = significance(bpbs, baseline, nats_per_bpb)
    sub = {
        "author": author, "github_id": github_id, "name": name, "date": date, "track": track,
        "val_bpb": round(statistics.fmean(bpbs), 5),
        "val_bpb_std": round(statistics.stdev(bpbs), 5) if len(bpbs) > 1 else 0.0,
        "seeds": [r.seed for r in runs],
        "seed_results": {str(r.seed): {"val_bpb": round(r.sub["val_bpb"], 5), "val_loss": round(r.sub["val_loss"], 5),
                                       "artifact_bytes": r.sub["bytes_total"], "steps": r.sub.get("steps"),
                                       "train_time_ms": r.sub.get("train_time_ms")} for r in runs},
        "hardware": r0.get("hardware", ""),
        "jax_version": r0.get("jax_version", ""),
        "technique_summary": technique_summary(cfg),
        "bytes": {"model": r0["bytes_model"], "code": r0["bytes_code"],
                  "total_max": max(r.sub["bytes_total"] for r in runs)},
        "compliance": compliance(runs),
        "attribution": {"implementation": "pgolf_jax (JAX/Flax reimplementation of openai/parameter-golf)"},
    }
    if sig:
        sub["significance"] = sig
    out = final.parent
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=out))
    try:
        write_json(tmp / "submission.json", sub)
        write_bytes(tmp / "README.md", _readme(name, runs, sub, cfg, sig).encode())
        write_bytes(tmp / "requirements.txt", ("\n".join(_requirements(cfg)) + "\n").encode())
        shutil.copyfile(runs[0].code, tmp / "train_gpt.py")
        for r in runs:
            shutil.copyfile(r.log, tmp / f"train_seed{r.seed}.log")
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"submit: {final} ({len(runs)} seeds, val_bpb {sub['val_bpb']:.5f} +- {sub['val_bpb_std']:.5f})")
    if sig:
        say(f"submit: vs {sig['baseline_val_bpb']}: mean {sig['mean']:.5f} sd {sig['sd']:.5f} margin "
            f"{sig['margin_bpb']:.5f} bpb p={sig['p_value']:.3g} -> {'record' if sig['record'] else 'not a record'}")
    return final


def export(run_dir: Path, torch_path: Path | None = None, ptz_path: Path | None = None, say=print) -> None:
    """A run's float weights as the reference's state dict and/or its int8+zlib artifact."""
    import numpy as np

    from pgolf_jax.quant.export import name_rules, quantize_int8
    from pgolf_jax.quant.interop import reference_incompatible, save_reference_int8_ptz, save_torch_state_dict

    cfg = config_lib.load_run_config(run_dir)
    bad = reference_incompatible(cfg.model)
    if bad:
        raise ConfigError(f"{run_dir} is not a reference-architecture run ({', '.join(bad[:5])}): train_gpt.py "
                          "cannot load it")
    npz = Path(run_dir) / "final_model.npz"
    if not npz.is_file():
        raise FileNotFoundError(f"{npz} not found: is {run_dir} a finished run?")
    try:
        with np.load(npz) as z:
            named = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{npz}: not a readable weights file ({exc})") from None
    if torch_path:
        n = save_torch_state_dict(named, torch_path)
        say(f"export: {torch_path} ({n:,} bytes, {len(named)} tensors, reference names)")
    if ptz_path:
        obj, _ = quantize_int8(named, name_rules(named), cfg.quant.clip_percentile, cfg.quant.keep_float_max_numel)
        n = save_reference_int8_ptz(obj, ptz_path)
        say(f"export: {ptz_path} ({n:,} bytes, int8_clean_per_row_v1 + zlib)")
