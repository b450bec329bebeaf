"""Which code a run's packed train_gpt.py holds: the entry (cli.packed_main), the registry entries
the config selects (the registry itself is packed with only those), the attention kernels the
target platform can pick, and whatever of the package that code reaches (shake.py), less the code of
each registry.FEATURES entry the run leaves off. The native CPU kernel's C++ goes in only for a CPU
file whose run can pick that kernel. No JAX."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from pgolf_jax import registry
from pgolf_jax.packing import file, shake

PLATFORMS = ("gpu", "cpu")
ENTRY = ("pgolf_jax.cli", "packed_main")
# What "auto" attention resolves to on each platform (model/attention.py resolve_impl). The fallback
# of a GPU file is the plain XLA path, which only runs off its target (a CPU, as the tests run it) or
# in fp32: the blocked flash path (~650 bytes packed) keeps a CPU file's memory linear in T (a doc-masked
# run's file holds it too: model/varlen.py runs cuDNN's share with segments on it).
_AUTO_IMPLS = {"gpu": ("cudnn", "xla"), "cpu": ("fused_cpu", "flash")}
KERNEL_SOURCE = "pgolf_jax/model/kernels/causal_attention_cpu.cc"


@dataclass(frozen=True)
class Selection:
    """The registry entries a packed file keeps: registry variable name -> its kept keys."""
    entries: dict[str, tuple[str, ...]]
    native_kernel: bool


def _registry_names() -> dict[int, str]:
    return {id(v): k for k, v in vars(registry).items() if isinstance(v, dict) and k.isupper()}


def select(cfg, platform: str) -> Selection:
    """The entries cfg selects, for a run on platform ("gpu" or "cpu")."""
    if platform not in PLATFORMS:
        raise ValueError(f"--platform {platform!r}: choose from {', '.join(PLATFORMS)}")
    by_id, keep = _registry_names(), {}
    for key, reg in registry.FIELDS.items():
        section, _, name = key.partition(".")
        keep.setdefault(by_id[id(reg)], set()).update(registry.names(key, getattr(getattr(cfg, section), name)))
    # registry.OPTIONAL_FIELDS left empty select their default entry
    if not cfg.model.mlp_linear:
        keep["LINEAR"].add(cfg.model.linear)
    if not cfg.model.mixers:
        keep["MIXERS"].add("attn")
    impl = cfg.model.attention_impl
    impls = set(_AUTO_IMPLS[platform]) if impl == "auto" else {impl}
    keep["ATTENTION_IMPLS"] = impls
    keep["VARLEN"] = set(registry.VARLEN) if cfg.model.doc_mask else set()
    keep["NGRAM_MIX"] = set(registry.NGRAM_MIX) if cfg.eval.ngram_order else set()
    keep["TOKENIZERS"] = {Path(cfg.data.tokenizer_path).suffix} & set(registry.TOKENIZERS)
    keep["FEATURES"] = {name for name in registry.FEATURES if registry.feature_on(cfg, name)}
    keep["CHECKPOINTS"] = set(registry.CHECKPOINTS) if "checkpoints" in keep["FEATURES"] else set()
    keep["TOOLING"] = set()
    entries = {name: tuple(sorted(keys)) for name, keys in keep.items()}
    return Selection(entries, native_kernel="fused_cpu" in impls)


def left_out(selection: Selection) -> frozenset[tuple[str, str]]:
    """(module, name) of every definition of the FEATURES the selection leaves off."""
    on = set(selection.entries.get("FEATURES", ()))
    return frozenset(tuple(target.split(":")) for name, f in registry.FEATURES.items() if name not in on
                     for target in f.code)


# A packed file's config was validated when it was packed, and its command line sets only
# config.PLACE_KEYS (TrainConfig.check_place checks those): the rest of the validation is code its
# run cannot reach. Config's __post_init__ (config.validate) and, in the options modules, each class's
# `check` and its RANGES / CHOICES tables.
_VALIDATION_MEMBERS = ("check", "RANGES", "CHOICES")


# Methods only the package calls (its tests and data preparation): a packed run reads token ids and
# counts bytes, it never encodes or decodes text, builds a section by hand, finishes a byte-progress
# line or asks a model for its final hidden states.
PACKAGE_ONLY = frozenset({
    ("pgolf_jax.options", "Section.replace"), ("pgolf_jax.runlog", "Progress.finish"),
    ("pgolf_jax.model.gpt", "Model.hidden"), ("pgolf_jax.model.gpt", "GPT.hidden"),
    *(("pgolf_jax.data.tokenizer", f"{cls}.{m}") for cls in ("PureByteTokenizer", "SentencePieceTokenizer")
      for m in ("encode", "encode_batch", "decode")),
    ("pgolf_jax.data.tokenizer", "PureByteTokenizer.encode_array"),
    *(("pgolf_jax.data.caseops", f"CaseOpsTokenizer.{m}") for m in ("encode", "encode_batch", "decode",
                                                                   "encode_with_byte_counts")),
})


def validation(sources: dict[str, shake.Source]) -> frozenset[tuple[str, str]]:
    """(module, "Class.member") of the validation code a packed file leaves out."""
    out = {("pgolf_jax.config", "Config.__post_init__")}
    for name, src in sources.items():
        if name.endswith((".options", "_options")) or name == "pgolf_jax.options":
            out.update((name, f"{cls.name}.{shake.member_name(m)}") for cls in src.tree.body
                       if isinstance(cls, ast.ClassDef) for m in cls.body
                       if shake.member_name(m) in _VALIDATION_MEMBERS)
    return frozenset(out)


def registry_source(text: str, selection: Selection) -> str:
    """registry.py's text with each selected registry reduced to its kept entries, written out as
    plain strings (so the shaker reads every "module:attr" target as a reference)."""
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    out, pos = [], 0
    for stmt in tree.body:
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                and stmt.targets[0].id in selection.entries):
            name = stmt.targets[0].id
            live = getattr(registry, name)
            body = ", ".join(f"{k!r}: {live[k]!r}" for k in selection.entries[name])
            out.extend(lines[pos:stmt.lineno - 1])
            out.append(f"{name} = {{{body}}}\n")
            pos = stmt.end_lineno
    out.extend(lines[pos:])
    return "".join(out)


def packed_sources(cfg, platform: str, root: Path, sources: dict[str, shake.Source] | None = None) -> dict[str, bytes]:
    """{path relative to root: contents} of everything the packed file for cfg on platform holds
    (sources: the package's parsed modules, to reuse across calls)."""
    selection = select(cfg, platform)
    sources = dict(sources or shake.package_sources(root))
    reg = sources["pgolf_jax.registry"]
    sources["pgolf_jax.registry"] = shake.parsed(reg.name, reg.rel, registry_source(reg.text, selection))
    kept = shake.shake(sources, [ENTRY], left_out(selection) | validation(sources) | PACKAGE_ONLY)
    problems = shake.unresolved(kept, sources)
    if problems:  # a bug of the shaker, never of the config: the file would fail when it runs
        raise shake.ShakeError(f"the packed code is not closed: {'; '.join(problems[:5])}")
    files = {sources[m].rel: text.encode("utf-8") for m, text in kept.items()}
    if selection.native_kernel and "pgolf_jax.model.kernels" in kept:
        files[KERNEL_SOURCE] = (Path(root) / KERNEL_SOURCE).read_bytes()
    return files


def repo_root() -> Path:
    """The folder holding pgolf_jax/ (where the package runs from)."""
    return Path(__file__).resolve().parents[2]


def pack_config(cfg, platform: str, root: Path | None = None, sources=None) -> tuple[bytes, dict[str, bytes]]:
    """The train_gpt.py a run of cfg on platform writes, and {path: source} of what it holds."""
    from pgolf_jax import config as config_lib

    files = packed_sources(cfg, platform, root or repo_root(), sources)
    return file.pack(files, without_defaults(file.run_config(config_lib.to_dict(cfg)))), files


def without_defaults(d: dict) -> dict:
    """A to_dict-shaped config less every value equal to its default: the packed code holds the defaults and
    config.from_dict restores them (the record stack's JSON: 3,363 -> ~1,240 bytes)."""
    from pgolf_jax import config as config_lib

    out = {}
    for s, sec in d.items():
        base = config_lib.SECTION_CLASSES[s]()
        kept = {}
        for k, v in sec.items():
            if isinstance(v, dict):  # a selected variant's options: against its options class's defaults
                opts = registry.load(registry.options_path(s, k))()
                v = {f: x for f, x in v.items() if getattr(opts, f) != x}
                if v:
                    kept[k] = v
            elif getattr(base, k) != v:
                kept[k] = v
        out[s] = kept
    return out


def code_for_run(cfg) -> tuple[bytes, dict[str, bytes], int]:
    """pack_config for the platform this process runs on, and the zstd-22 size of the sources it holds."""
    import jax
    import zstandard

    data, files = pack_config(cfg, "cpu" if jax.default_backend() == "cpu" else "gpu")
    return data, files, len(zstandard.ZstdCompressor(level=22).compress(b"".join(files.values())))


def package_tooling():
    """Running from the package: the run packs its own train_gpt.py, draws its loss curves and reports
    the unigram floor and the 8xH100 bounds of its evals."""
    from pgolf_jax.data.source import dataset_paths
    from pgolf_jax.model.flops import h100x8_seconds_bound
    from pgolf_jax.pipeline import Tooling, unigram_line

    def curves(run_dir, cfg, log):
        from pgolf_jax.plots import plot_curves
        try:  # a picture is a convenience: it never fails a finished run
            plot_curves([run_dir], run_dir / "curves.png", [cfg.train.run_id])
        except Exception as exc:  # noqa: BLE001
            log(f"plot:skipped curves.png ({type(exc).__name__}: {exc})")

    def bound(cfg, seq_len, forward_tokens, train_tokens=0):
        return {"bound_8xH100_seconds": h100x8_seconds_bound(cfg, seq_len, forward_tokens, train_tokens)}

    return Tooling(code=code_for_run, dataset=dataset_paths, curves=curves, unigram=unigram_line, bound=bound)
