"""`run.py data prepare|download|verify`: the command line over prepare, hub and samples (which
never import it, so the three stay free of circles)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pgolf_jax.data import hub, samples
from pgolf_jax.data.hub import REMOTE_ROOT
from pgolf_jax.data.layout import DEFAULT_NAME, verify_dataset
from pgolf_jax.data.prepare import NUM_VAL_DOCS, SHARD_SIZE, prepare_from_docs
from pgolf_jax.data.samples import SAMPLE_SHARD_SIZE


def _parse_sp_options(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--sp-option expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """The `data` sub-commands: prepare, download, verify."""
    sub = parser.add_subparsers(dest="action", required=True, metavar="{prepare,download,verify}")
    p = sub.add_parser("prepare", help="tokenize a docs jsonl (or a sample corpus) into the challenge layout")
    p.add_argument("--docs", required=True, help="docs_selected.jsonl, or sample:brown / sample:nlp-corpus")
    p.add_argument("--out", default="./data", help="output root (gets tokenizers/, datasets/, manifest.json)")
    p.add_argument("--variants", default="sp1024", help="comma list of sp<V>, sp<V>_caseops (SentencePiece on the "
                   "CaseOps-transformed text, with val byte sidecars) and/or byte260")
    p.add_argument("--num-val-docs", type=int, default=None,
                   help=f"first N docs are val (default: sidecar docs_val, the sample's default, or {NUM_VAL_DOCS}, "
                   "as the challenge and the published CaseOps set; the records' prepare_caseops_data.py uses 10000)")
    p.add_argument("--shard-size", type=int, default=None, help=f"tokens per shard (default {SHARD_SIZE}; "
                                                                f"samples {SAMPLE_SHARD_SIZE})")
    p.add_argument("--tokenizer-train-docs", type=int, default=None, help="train tokenizers on the first N docs")
    p.add_argument("--name", default=DEFAULT_NAME, help="dataset name prefix")
    p.add_argument("--force", action="store_true",
                   help="replace datasets of these variants built from other docs or settings (or not in the manifest)")
    p.add_argument("--sp-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra SentencePiece trainer option (repeatable), e.g. max_sentence_length=32768")
    d = sub.add_parser("download", help="download published challenge shards (manifest-driven)")
    d.add_argument("--variant", default="sp1024", help="sp1024, sp4096, sp8192, byte260 or sp8192_caseops (the "
                   "records' CaseOps set, alias sp8192_lossless_caps_caseops_v1_reserved, with its val byte sidecars)")
    d.add_argument("--train-shards", type=int, default=80, help="number of train shards (100M tokens each)")
    d.add_argument("--out", default="./data", help="output root")
    d.add_argument("--repo-id", default=None, help="Hugging Face dataset repo (default depends on the variant)")
    d.add_argument("--remote-root", default=REMOTE_ROOT)
    d.add_argument("--source", default=None, help="a local directory laid out like the repo (default: the "
                                                  "Hugging Face hub; HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE apply)")
    d.add_argument("--revision", default=None, help="hub revision (branch, tag or commit; default main)")
    d.add_argument("--force", action="store_true", help="replace a locally prepared dataset of this variant")
    v = sub.add_parser("verify", help="validate every shard of a dataset directory")
    v.add_argument("dir", help="dataset directory, e.g. data/datasets/fineweb10B_sp1024")
    v.add_argument("--vocab-size", type=int, default=0, help="also check every token id is below this")
    v.add_argument("--structure-only", action="store_true", help="accept shards no manifest records a checksum "
                   "for (a dataset copied without its manifest.json): headers and token ids are checked, contents not")


def data_command(args: argparse.Namespace) -> int:
    """Run a parsed `data` command; 0 on success, 1 with a one-line error on bad input."""
    try:
        if args.action == "prepare":
            docs, overrides = args.docs, _parse_sp_options(args.sp_option)
            n_val, shard = args.num_val_docs, args.shard_size
            if docs.startswith("sample:"):
                spec = samples.sample_spec(docs[len("sample:"):])
                overrides = {**(spec.trainer_overrides or {}), **overrides}
                n_val = spec.num_val_docs if n_val is None else n_val
                shard = samples.SAMPLE_SHARD_SIZE if shard is None else shard
                docs = samples.find_sample_docs(docs[len("sample:"):])
            variants = [x.strip() for x in args.variants.split(",") if x.strip()]
            manifest = prepare_from_docs(docs, args.out, variants=variants, num_val_docs=n_val,
                                         shard_size=SHARD_SIZE if shard is None else shard,
                                         tokenizer_train_docs=args.tokenizer_train_docs, name=args.name,
                                         trainer_overrides=overrides or None, force=args.force)
            print(f"prepared {', '.join(d['name'] for d in manifest['datasets'])} in {Path(args.out).resolve()}")
        elif args.action == "download":
            path = hub.download(args.variant, args.train_shards, args.out, repo_id=args.repo_id,
                                remote_root=args.remote_root, source=args.source, revision=args.revision,
                                force=args.force)
            print(f"downloaded {path}")
        elif args.action == "verify":
            c = verify_dataset(args.dir, args.vocab_size, args.structure_only)
            extra = f" (manifest lists {c['manifest_files_train']} train shards)" if "manifest_files_train" in c else ""
            if c["files_val_bytes"]:
                extra += f"; {c['files_val_bytes']} val byte sidecars"
            if c["unchecked_contents"]:
                extra += f"; structure only: {c['unchecked_contents']} shard(s) have no recorded checksum"
            print(f"verify {args.dir}: OK val {c['files_val']} files {c['tokens_val']} tokens, "
                  f"train {c['files_train']} files {c['tokens_train']} tokens{extra}")
        else:
            raise ValueError(f"unknown data action {args.action!r}")
    except KeyboardInterrupt as exc:
        from pgolf_jax.errors import signum_of

        what = "SIGTERM" if signum_of(exc) == 15 else "^C"
        print(f"error: data {args.action}: interrupted ({what}); a prepare changes nothing until it is complete",
              file=sys.stderr)
        return 128 + signum_of(exc)
    except (ValueError, OSError, RuntimeError) as exc:
        if os.environ.get("PGOLF_TRACEBACK"):
            import traceback
            traceback.print_exc()
        print(f"error: data {args.action}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return 0
