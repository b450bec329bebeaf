"""`run.py pack --config PRESET --platform gpu|cpu [--out F] [overrides]`: write the train_gpt.py a
run of that preset would write, without training, and say how big it is and what fills it. No JAX."""

from __future__ import annotations

import argparse

from pgolf_jax.errors import arg_parser
from pgolf_jax.packing import file, select

_Parser = arg_parser()
TOP = 10


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="run.py pack", description="Write the packed train_gpt.py a run of PRESET writes (no "
                                                "training) and print its size and its largest files.")
    p.add_argument("--config", required=True, help="preset file, e.g. configs/record_1809.py")
    p.add_argument("--platform", choices=select.PLATFORMS, default="gpu",
                   help="the machine the file will run on (cpu also packs the native CPU attention kernel)")
    p.add_argument("--out", help="where to write it (default: only print the sizes)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("overrides", nargs="*", metavar="section.field=value")
    return p


def pack_command(argv: list[str]) -> int:
    from pgolf_jax import config as config_lib
    from pgolf_jax.fsio import check_output, write_bytes

    args = _parser().parse_args(argv)
    cfg = config_lib.load(args.config, args.overrides)
    if args.out:
        check_output(args.out, "--out", args.force)
    data, files = select.pack_config(cfg, args.platform)
    if args.out:
        write_bytes(args.out, data)
    for line in report(data, files):
        print(line)
    if args.out:
        print(f"pack: wrote {args.out}")
    return 0


def report(data: bytes, files: dict[str, bytes]) -> list[str]:
    """The file's size, then its largest files: minified bytes and each one's bytes compressed alone
    (a file's share of the whole is a little less: the files compress together)."""
    rows = [(len(file.compress(body)), len(body), rel) for rel, body in file.payload_files(files).items()]
    rows.sort(reverse=True)
    out = [f"pack: train_gpt.py {len(data):,} bytes ({len(files)} files, {sum(r[1] for r in rows):,} bytes minified)"]
    out += [f"pack:file {rel} minified:{n:,} alone_compressed:{c:,}" for c, n, rel in rows[:TOP]]
    return out
