"""The code of a run packed as one self-contained Python file, `train_gpt.py`, as the records ship
theirs (minified source, compressed, encoded as text, a short `exec` stub): the files
packing/select.py picks for the run (and the native kernel's C++ in a CPU file), the run's config,
and a small importer that serves those modules from memory. Run inside a records folder with only
the third-party requirements installed, it trains and evaluates the config it was packed for
(its command line sets only where it runs and its seed: config.PLACE_KEYS, such as `train.seed=42`)
and writes the same logs. Its size is
what the artifact's code bytes count (quant.code_bytes=packed).

Minification (python-minifier) drops docstrings, comments and annotations and renames locals;
then rename.py gives the module-level names that mean one thing across the packed modules short
names in all of them at once.

The file: a stub (`_STUB`), a checksum line, then the PPMd-compressed payload in base 253 as
comment lines. The stub reads the comment lines of its own file and checks them before it decodes
anything, so a damaged copy stops with one line, `error: corrupt packed file <path>: <what>`
(exit 1), before anything heavy is imported. Comment lines keep the file valid Python when it is
truncated anywhere in the payload or a payload byte changes (the `#coding:latin-1` line makes any
byte but a line break and NUL legal in a comment). Left to Python (its SyntaxError, naming the file
and line, exit 1, before anything runs): a payload byte damaged into a line break or NUL (about one
random bit flip in 84), and damage to the stub's own code or to the `#` that starts a line.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from pathlib import Path

# The payload, decompressed: this importer, one entry per file ("path\ncontents", the largest first),
# then the config (JSON), all separated by NUL bytes (sources carry no escapes this way; NUL never
# occurs in them). It serves the modules from memory and runs the main job. (That order compresses
# best of those tried: the config's keys come after the code that names them; BENCHMARKS.md.)
_BOOT = """import sys,os,json,importlib.util as U
R=os.path.dirname(os.path.abspath(__file__))
S=dict(z.split(b"\\n",1)for z in Z[1:-1])
class F:
 def find_spec(s,n,p=None,t=None):
  k=n.replace(".","/")
  for f,i in((k+".py",0),(k+"/__init__.py",1)):
   if f.encode()in S:return U.spec_from_loader(n,s,is_package=i,origin=f)
 def create_module(s,p):0
 def exec_module(s,m):
  f=m.__spec__.origin;m.__file__=os.path.join(R,f);exec(compile(S[f.encode()],m.__file__,"exec"),m.__dict__)
 def get_data(s,p):return S[os.path.relpath(p,R).replace(os.sep,"/").encode()]
sys.meta_path.insert(0,F())
import pgolf_jax
pgolf_jax.__packed__=os.path.abspath(__file__)
from pgolf_jax.cli import packed_main
sys.exit(packed_main(sys.argv[1:],json.loads(Z[-1])))
"""


def minify_source(rel: str, raw: bytes) -> bytes:
    """A file as it goes into the payload: Python and C++ minified, anything else as it is."""
    if rel.endswith(".py"):
        return minify(raw.decode("utf-8"), rel).encode("utf-8")
    return minify_cpp(raw.decode("utf-8")).encode("utf-8") if rel.endswith(".cc") else raw


@functools.lru_cache(maxsize=512)  # pure and slow (~0.1 s a module): a process packing often reuses it
def minify(source: str, filename: str) -> str:
    """The module as python-minifier writes it, from the disk cache when this text was minified before
    (every run packs its code: ~6 s of a new process's run went to minifying the same files again)."""
    import python_minifier

    key = hashlib.sha256(f"{_minifier_version()}\0{filename}\0{source}".encode()).hexdigest()
    cached = _minify_cache() / f"{key}.py"
    try:
        return cached.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    out = python_minifier.minify(source, filename=filename, remove_literal_statements=True, rename_globals=False,
                                 hoist_literals=False, remove_asserts=False, remove_debug=False)
    try:  # content-addressed, written whole then renamed: concurrent runs never read a partial entry
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{key}.{os.getpid()}.tmp")
        tmp.write_text(out, encoding="utf-8")
        os.replace(tmp, cached)
    except OSError:  # a read-only or full cache only costs the time
        pass
    return out


@functools.cache
def _minifier_version() -> str:
    """python-minifier's version: its output is what the cache keeps."""
    import importlib.metadata

    return importlib.metadata.version("python-minifier")


def _minify_cache() -> Path:
    """PGOLF_MINIFY_CACHE, else ~/.cache/pgolf_jax/minify (XDG_CACHE_HOME respected)."""
    if os.environ.get("PGOLF_MINIFY_CACHE"):
        return Path(os.environ["PGOLF_MINIFY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pgolf_jax" / "minify"


# C++ comments and string/char literals, matched together so a comment marker inside a literal stays.
_CPP_TOKENS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|//[^\n]*|/\*.*?\*/', re.S)


def minify_cpp(source: str) -> str:
    """C++ without comments, indentation or blank lines (line breaks stay: preprocessor lines end
    at them)."""
    text = _CPP_TOKENS.sub(lambda m: "" if m[0][:2] in ("//", "/*") else m[0], source)
    return "\n".join(line.strip() for line in text.splitlines() if line.strip()) + "\n"


# The payload's alphabet: every byte a comment line can hold (all but NUL, line feed and carriage
# return). The compressed payload is written in base 253, 1024 bytes to a block of 1027 digits:
# 0.29% over the bytes themselves, where base85 adds 25%. (Sessions 11-12 kept to the 231 bytes no
# one-bit flip turns into a line end or NUL: 1.95%, ~550 bytes more in the record stack's file, for
# a one-line error on the 1 in 84 random flips Python now reports itself.)
ALPHABET = bytes(b for b in range(256) if b not in (0, 10, 13))
_BLOCK = 1024


@functools.cache
def _digits(nbytes: int) -> int:
    """The fewest base-253 digits that hold any nbytes-byte number."""
    n = int(nbytes * 8 / math.log2(len(ALPHABET)))
    while len(ALPHABET) ** n < 256 ** nbytes:
        n += 1
    return n


_DIGITS = _digits(_BLOCK)
_WIDTH = 16_000  # payload bytes per comment line (each line costs 2 bytes; Python takes any length)
# The checksum line: a hash, the compressed length and the PPMd order the payload was compressed
# with; the hash is the sha256 of the line's "length order" and the payload text as it stands in
# the file (its comment lines joined, '#' and line ends dropped), its first _HEX hex digits (64 bits:
# a damaged copy passes with odds of 2**-64). Checked first, it catches every damage to that text
# with one comparison, before any decoder sees corrupt input. PPMd (variant I, order 16: higher
# orders give the same bytes here) packs our minified sources ~11% smaller than brotli-11 and ~14%
# smaller than LZMA (BENCHMARKS.md): a context model suits source text better than LZ77 matching.
# A file without pyppmd installed says so.
PPMD = {"max_order": 16, "mem_size": 16 << 20}
_HEX = 16
_STUB = b"""#coding:latin-1
import sys,hashlib as H
try:import pyppmd as P
except ImportError:sys.exit("error: train_gpt.py needs the pyppmd package (pip install pyppmd)")
def V(p):
 try:
  h,*d=[l[1:-1]for l in open(p,"rb")if l[:1]==b"#"][1:];d=b"".join(d);h,r=h.split(b" ",1)
  n,m=map(int,r.split());o=b""
  if H.sha256(r+d).hexdigest()[:%d].encode()!=h:raise ValueError("checksum mismatch")
  for i in range(0,len(d),%d):
   v=0
   for c in d[i:i+%d]:v=v*253+c-1-(c>10)-(c>13)
   o+=v.to_bytes(min(%d,n-len(o)),"big")
  return P.decompress(o,max_order=m,mem_size=%d<<20)
 except Exception as e:sys.exit(f"error: corrupt packed file {p}: {e}")
Z=V(__file__).split(b"\\0");exec(Z[0])
""" % (_HEX, _DIGITS, _DIGITS, _BLOCK, PPMD["mem_size"] >> 20)


def encode(data: bytes) -> bytes:
    """data in ALPHABET, base 253 by blocks (the last block with as many digits as its bytes need)."""
    out = bytearray()
    for i in range(0, len(data), _BLOCK):
        block = data[i:i + _BLOCK]
        v, n = int.from_bytes(block, "big"), _digits(len(block))
        digits = bytearray(n)
        for k in range(n - 1, -1, -1):
            v, digits[k] = divmod(v, len(ALPHABET))
        out += digits.translate(bytes(ALPHABET) + bytes(256 - len(ALPHABET)))
    return bytes(out)


def pack(files: dict[str, bytes], config: dict) -> bytes:
    """files {path relative to the repo root ('pgolf_jax/...'): contents} and a config dict ->
    the bytes of train_gpt.py. Only the package's files go in (run.py is what it replaces)."""
    return packed_file(payload(files, config))


def payload(files: dict[str, bytes], config: dict) -> bytes:
    """What the file holds, decompressed: the importer, the files' entries, the config (see _BOOT)."""
    entries = []
    for rel, body in sorted(payload_files(files).items(), key=lambda kv: (-len(kv[1]), kv[0])):
        if b"\0" in body:
            raise ValueError(f"{rel}: a NUL byte cannot be packed")
        entries.append(rel.encode() + b"\n" + body)
    return b"\0".join([_BOOT.encode(), *entries, json.dumps(config, separators=(",", ":")).encode()])


def payload_files(files: dict[str, bytes]) -> dict[str, bytes]:
    """{path: contents} of the package's files as the payload holds them, in path order: minified,
    then the Python modules' module-level names shortened across all of them (rename.py)."""
    from pgolf_jax.packing.rename import rename_globals

    out = {rel: minify_source(rel, raw) for rel, raw in sorted(files.items()) if rel.startswith("pgolf_jax/")}
    modules = {_module_name(rel): rel for rel in out if rel.endswith(".py")}
    renamed = rename_globals({m: out[rel].decode("utf-8") for m, rel in modules.items()})
    out.update((modules[m], text.encode("utf-8")) for m, text in renamed.items())
    return out


def _module_name(rel: str) -> str:
    """'pgolf_jax/a/b.py' -> 'pgolf_jax.a.b'; a package's __init__.py is the package."""
    name = rel[:-3].replace("/", ".")
    return name[:-len(".__init__")] if name.endswith(".__init__") else name


def packed_file(payload: bytes) -> bytes:
    """The file for a payload: the stub, the checksum line, the compressed payload in comment lines."""
    body, order = compress_checked(payload)
    text = encode(body)
    lines = [text[i:i + _WIDTH] for i in range(0, len(text), _WIDTH)]
    return _STUB + b"".join(b"#" + line + b"\n" for line in [checksum_line(text, len(body), order), *lines])


def checksum_line(text: bytes, length: int, order: int) -> bytes:
    """The checksum line's text (without '#'): hash, compressed length, PPMd order."""
    rest = f"{length} {order}".encode()
    return hashlib.sha256(rest + text).hexdigest()[:_HEX].encode() + b" " + rest


def compress(payload: bytes, order: int = PPMD["max_order"]) -> bytes:
    """The payload PPMd-compressed (variant I, PPMD's memory) at the given order."""
    import pyppmd

    return pyppmd.compress(payload, max_order=order, mem_size=PPMD["mem_size"])


def compress_checked(payload: bytes) -> tuple[bytes, int]:
    """(the payload compressed, its order): the highest order from PPMD's down whose stream decodes
    back to the payload. pyppmd 1.3.1 mis-decodes some streams (the whole package at order 16 stops
    with "Corrupted input data"; order 15 decodes it), so no file is written without this check."""
    import pyppmd

    for order in range(PPMD["max_order"], 1, -1):
        body = compress(payload, order)
        try:
            if pyppmd.decompress(body, max_order=order, mem_size=PPMD["mem_size"]) == payload:
                return body, order
        except (pyppmd.PpmdError, ValueError):  # what a stream it cannot decode raises
            pass
    raise ValueError("packing: no PPMd order decodes the payload back (pyppmd)")


def run_config(config: dict) -> dict:
    """What a packed file embeds: the run's config without its identity (a rerun makes a new run)."""
    out = {s: dict(v) for s, v in config.items()}
    out["train"]["run_id"] = ""
    out["train"]["out_dir"] = "runs"
    return out
