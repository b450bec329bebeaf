"""Where a run's dataset comes from: data.data_path and data.tokenizer_path as they are, or built on
first use from data.source (a docs_selected.jsonl or sample:<name>) where that source puts them."""

from __future__ import annotations

from pathlib import Path

from pgolf_jax import config as config_lib
from pgolf_jax.config import Config


def prepared_dataset(cfg: Config, log=print, how: str = "a packed train_gpt.py reads a prepared dataset "
                                                        "(prepare it with the package: python run.py data)"):
    """(data_path, tokenizer_path) as they are: what a packed train_gpt.py reads (it never prepares
    data); one line naming what is missing and how to get it."""
    data_path, tok_path = Path(cfg.data.data_path), Path(cfg.data.tokenizer_path)
    if data_path.is_dir() and tok_path.is_file():
        return data_path, tok_path
    raise FileNotFoundError(f"{data_path if not data_path.is_dir() else tok_path} not found: {how}")


def dataset_paths(cfg: Config, log=print) -> tuple[Path, Path]:
    """(data_path, tokenizer_path). With data.source set, the dataset is prepared from it on first
    use (and checked to have been built from it with these settings after); the paths must be
    where that source puts them, which is checked before anything is read or written."""
    d = cfg.data
    data_path, tok_path = Path(d.data_path), Path(d.tokenizer_path)
    if not d.source:
        return prepared_dataset(cfg, how="download the challenge data (`python run.py data download --variant "
                                          "sp1024`) or set data.source to a docs_selected.jsonl or sample:<name>")
    # Only a run that builds its data imports (and ships) the layout and the builder.
    from pgolf_jax.data import layout, prepare

    variant = "byte260" if tok_path.suffix == ".json" else f"sp{cfg.model.vocab_size}"
    if data_path.name.endswith(layout.CASEOPS_SUFFIX):  # a CaseOps dataset is built as one
        variant += "_caseops"
    root = data_path.parent.parent
    want_data = root / "datasets" / layout.dataset_dir_for_variant(variant)
    want_tok = layout.tokenizer_file(root, variant)
    if want_data.resolve() != data_path.resolve() or want_tok.resolve() != tok_path.resolve():
        raise config_lib.ConfigError(
            f"data.source={d.source!r} prepares {variant} under {root} (two levels above data.data_path) as "
            f"{want_data} and {want_tok}, but data.data_path={data_path} and data.tokenizer_path={tok_path}: "
            "fix the paths (nothing was written)")
    kwargs = dict(num_val_docs=d.num_val_docs, tokenizer_train_docs=d.tokenizer_train_docs or None)
    if (not d.source.startswith("sample:") and not Path(d.source).is_file()
            and data_path.is_dir() and tok_path.is_file()):
        log(f"data:source {d.source} not found; using {data_path} as it is (its build is not re-checked)")
        return data_path, tok_path
    if d.source.startswith("sample:"):
        from pgolf_jax.data import samples

        samples.ensure_sample_dataset(d.source[len("sample:"):], root, variant=variant, **kwargs)
    else:
        prepare.prepare_from_docs(Path(d.source), root, variants=(variant,), verbose=False, **kwargs)
    log(f"data:source:{d.source} variant:{variant} root:{root}")
    return data_path, tok_path
