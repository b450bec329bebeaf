"""The packed train_gpt.py guards itself: a damaged copy (a flipped bit anywhere in its payload or
checksum line, a truncation) stops with one line `error: corrupt packed file ...` (exit 1) before
anything heavy is imported, and `--config` is refused (it trains the config it was packed with)
while overrides still apply. Each case runs the file as a records folder would: a subprocess in a
clean folder with pgolf_jax unimportable (test_submit's guard)."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tree_sums
from test_submit import GUARD

from pgolf_jax import config as config_lib
from pgolf_jax.packing import file as pack

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> bytes:
    """train_gpt.py holding the whole package (so --dry-run finds every module it imports) and tiny.py."""
    files = {p.relative_to(ROOT).as_posix(): p.read_bytes() for p in sorted((ROOT / "pgolf_jax").rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts}
    return pack.pack(files, pack.run_config(config_lib.to_dict(config_lib.load(str(ROOT / "configs" / "tiny.py")))))


def _folder(tmp_path: Path, data: bytes) -> Path:
    (tmp_path / "train_gpt.py").write_bytes(data)
    (tmp_path / "guard.py").write_text(GUARD)
    return tmp_path


def _run(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, "guard.py", "train_gpt.py", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)


def _payload_span(data: bytes) -> tuple[int, int]:
    """Byte offsets [start, end) of the payload lines (after the stub and the checksum line)."""
    start = len(pack._STUB)
    return data.index(b"\n", start) + 1, len(data)


def test_layout_and_alphabet(packed):
    """The stub, a checksum line (hash, compressed length, PPMd order), then the payload in comment lines of
    every byte but a line end, a carriage return and NUL."""
    assert packed.startswith(pack._STUB)
    lines = packed[len(pack._STUB):].split(b"\n")
    assert lines[-1] == b"" and all(ln.startswith(b"#") and len(ln) <= pack._WIDTH + 1 for ln in lines[:-1])
    digest, length, order = lines[0][1:].split()
    assert len(digest) == pack._HEX and int(length) > 0 and 2 <= int(order) <= pack.PPMD["max_order"]
    text = set(b"".join(ln[1:] for ln in lines[1:]))
    assert text <= set(pack.ALPHABET) and set(pack.ALPHABET) == set(range(256)) - {0, ord("\n"), ord("\r")}
    assert 253 ** pack._DIGITS >= 256 ** pack._BLOCK > 253 ** (pack._DIGITS - 1)


def test_base253_blocks_round_trip(tmp_path):
    """The encoder and the stub's decoder (run from the stub's own text) agree on every tail length."""
    import pyppmd

    stub = pack._STUB.decode("latin-1")
    decoder = stub[stub.index("def V(p):"):stub.index("Z=V(")]
    for n in (1, 2, 255, 256, 1023, 1024, 1025, 2100):
        body = bytes((i * 37 + n) % 256 for i in range(n))
        text = pack.encode(body)
        assert set(text) <= set(pack.ALPHABET)
        ns = {"sys": sys, "H": hashlib, "P": type("P", (), {"decompress": staticmethod(lambda o, **_: bytes(o))})}
        exec(decoder, ns)
        f = tmp_path / f"b253_{n}.py"
        f.write_bytes(b"#x\n#" + pack.checksum_line(text, n, 16) + b"\n#" + text + b"\n")
        assert ns["V"](str(f)) == body
    assert pyppmd.decompress(pack.compress(b"x"), **pack.PPMD) == b"x"
    assert pack.compress_checked(b"x") == (pack.compress(b"x"), pack.PPMD["max_order"])


def _corruptions(data: bytes, seed: int = 23) -> list[tuple[str, bytes]]:
    """One-bit flips at 24 payload positions (one per equal slice), two in the checksum line, two
    line ends, and three truncations; each a (label, file bytes) pair."""
    rng = random.Random(seed)
    start, end = _payload_span(data)
    cases = []
    n = 24
    for k in range(n):
        lo, hi = start + k * (end - start) // n, start + (k + 1) * (end - start) // n
        pos = rng.randrange(lo, hi)
        while data[pos] in b"\n" or data[pos - 1] == ord("\n"):  # a data character, not the line framing
            pos = rng.randrange(lo, hi)
        cases.append((f"flip@{pos}", pos))
    for _ in range(2):
        cases.append(("checksum-flip", rng.randrange(len(pack._STUB) + 1, start - 1)))
    for at in (start + (end - start) // 3, start + 2 * (end - start) // 3):  # a line end: two lines become one
        cases.append(("line-end-flip", data.index(b"\n", at)))
    out = []
    for label, pos in cases:
        b = bytearray(data)
        b[pos] ^= 1 << rng.randrange(8)
        out.append((f"{label}@{pos}", bytes(b)))
    mid = rng.randrange(start, end)
    out += [("truncated-mid-line", data[:mid]), ("truncated-last-line", data[:data.rindex(b"\n", 0, end - 1) + 1]),
            ("truncated-in-checksum", data[:start - 10])]
    return out


def _into_terminator(data: bytes) -> list[tuple[str, bytes]]:
    """A payload byte flipped into a line feed, a carriage return and a NUL (the first bytes one bit away)."""
    start, end = _payload_span(data)
    out = []
    for t in (ord("\n"), ord("\r"), 0):
        pos = next(i for i in range(start + 1, end) if data[i - 1] != ord("\n") and bin(data[i] ^ t).count("1") == 1)
        out.append((f"into-{t}@{pos}", data[:pos] + bytes([t]) + data[pos + 1:]))
    return out


def test_a_corrupt_copy_stops_with_one_line(packed, tmp_path):
    """Every damage but a payload byte turned into a line end or NUL: one line, before anything runs. Those
    (about one random bit flip in 84) are Python's SyntaxError, before anything runs too."""
    cases = _corruptions(packed) + _into_terminator(packed)
    assert len({label for label, _ in cases}) == len(cases) >= 34
    for label, data in cases:
        (tmp_path / label).mkdir()
        folder = _folder(tmp_path / label, data)
        proc = _run(folder, "--dry-run")
        ctx = f"{label}: exit {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        lines = proc.stderr.splitlines()
        assert proc.returncode == 1 and proc.stdout == "", ctx
        start, end = _payload_span(packed)
        if any(c in (0, 10, 13) for c in data[start:end].replace(b"\n#", b"")[:-1]):  # Python's own refusal
            assert "SyntaxError" in proc.stderr, ctx
        else:
            assert "Traceback" not in proc.stderr, ctx
            assert len(lines) == 1 and lines[0].startswith("error: corrupt packed file train_gpt.py: "), ctx
        assert sorted(p.name for p in folder.iterdir()) == ["guard.py", "train_gpt.py"], ctx


def test_config_is_refused_and_overrides_still_apply(packed, tmp_path):
    folder = _folder(tmp_path, packed)
    (folder / "other.py").write_text('OVERRIDES = {"model.num_layers": 5}\n')
    before = tree_sums(folder)
    for args in (["--config", "other.py", "--dry-run"], ["--config=other.py"]):
        proc = _run(folder, *args)
        ctx = f"{args}: exit {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        lines = proc.stderr.splitlines()
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1, ctx
        assert lines[0] == f"error: config: --config other.py: refused, {config_lib.packed_line()}", ctx
        assert tree_sums(folder) == before, ctx
    proc = _run(folder, "--dry-run", "train.seed=7", "train.run_id=again", "data.data_path=elsewhere")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert '"seed": 7' in proc.stdout and '"run_id": "again"' in proc.stdout and "model_params:" in proc.stdout
    assert tree_sums(folder) == before
    # What it trains is the packed config's: any other key is one line naming it (config.PLACE_KEYS), and the
    # place keys are checked as the package checks them.
    for args, want in ((["model.num_layers=3"], "error: config: model.num_layers: this train_gpt.py trains the config "
                                                "packed in it and takes only train.seed, "),
                       (["train.seed=-1"], "error: config: train.seed=-1 must be in [0, 4294967295]"),
                       (["train.run_id=../x"], "error: config: train.run_id='../x': use letters, digits")):
        proc = _run(folder, "--dry-run", *args)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(want), (args, proc.stderr[-2000:])
        assert tree_sums(folder) == before


def test_a_machine_without_pyppmd_is_told_in_one_line(packed, tmp_path):
    """The stub decompresses its code with pyppmd: where that import fails, one line names the package."""
    folder = _folder(tmp_path, packed)
    (folder / "pyppmd.py").write_text('raise ImportError("not installed here")\n')  # shadows the real one
    before = tree_sums(folder)
    proc = _run(folder, "--dry-run")
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.splitlines() == ["error: train_gpt.py needs the pyppmd package (pip install pyppmd)"]
    assert tree_sums(folder) == before


def test_an_order_pyppmd_cannot_decode_back_is_not_used(monkeypatch, tmp_path):
    """pyppmd 1.3.1 mis-decodes some streams at some orders (our whole package once at order 16): the packer
    checks the round trip and steps down; the checksum line names the order the stub decodes with."""
    import pyppmd

    real, top = pyppmd.decompress, pack.PPMD["max_order"]

    def flaky(data, max_order, mem_size):
        if max_order == top:
            raise ValueError("L1595: Corrupted input data.")
        return real(data, max_order=max_order, mem_size=mem_size)

    payload = pack._BOOT.encode() + b"\0{}"
    monkeypatch.setattr(pyppmd, "decompress", flaky)
    data = pack.packed_file(payload)
    monkeypatch.setattr(pyppmd, "decompress", real)
    assert data[len(pack._STUB):].split(b"\n")[0].endswith(f" {top - 1}".encode())
    assert _stub_decodes(data, tmp_path) == payload


def test_payload_lines_may_start_and_end_with_any_byte(monkeypatch, tmp_path):
    """Base 253 writes spaces, tabs and form feeds too: the stub takes each comment line's bytes as they are."""
    monkeypatch.setattr(pack, "_WIDTH", 3)
    rng = random.Random(5)
    payload = bytes(rng.randrange(256) for _ in range(3000))
    data = pack.packed_file(payload)
    edges = {ln[1:2] for ln in data.split(b"\n")[18:-1]} | {ln[-1:] for ln in data.split(b"\n")[18:-1]}
    assert edges & {b" ", b"\t", b"\x0b", b"\x0c"}
    assert _stub_decodes(data, tmp_path) == payload


def test_a_missing_dataset_is_one_line_and_nothing_is_kept(packed, tmp_path):
    """A packed file never prepares data: a dataset that is not there is named in one line, with how to get it."""
    folder = _folder(tmp_path, packed)
    proc = _run(folder, "data.data_path=no_such_dataset", "train.run_id=x", "train.progress=false")
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert lines[0].startswith("error: FileNotFoundError: no_such_dataset not found: a packed train_gpt.py reads a "
                               "prepared dataset"), lines
    assert not (folder / "runs" / "x").exists()


def _stub_decodes(data: bytes, tmp_path: Path) -> bytes:
    """The payload the stub's own decoder reads back from a packed file's bytes."""
    import pyppmd

    stub = pack._STUB.decode("latin-1")
    ns = {"sys": sys, "H": hashlib, "P": pyppmd}
    exec(stub[stub.index("def V(p):"):stub.index("Z=V(")], ns)
    (tmp_path / "t.py").write_bytes(data)
    return ns["V"](str(tmp_path / "t.py"))
