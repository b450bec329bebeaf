"""The package layout: one package per stage, imports one way (no circles), as the README says."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "pgolf_jax"
# Lower stages never import higher ones; train and evaluation sit side by side (neither imports the
# other); the rank-0 foundation modules may use each other (the cycle test still applies).
RANK = {"config": 0, "registry": 0, "errors": 0, "options": 0, "renames": 0, "fsio": 0, "runlog": 0, "dist": 0, "provenance": 0, "data": 1, "model": 2, "optim": 3,
        "quant": 4, "train": 5, "evaluation": 5, "pipeline": 6, "packing": 6.5, "bench": 7, "sweep": 7, "submit": 7, "hardware": 7, "cli": 8, "hyper": 0, "plots": 0,
        "__main__": 9}


def _module(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """pgolf_jax modules a file imports, lazy ones included, TYPE_CHECKING-only ones not."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pgolf_jax"):
            base = node.module.removeprefix("pgolf_jax").lstrip(".")
            for alias in node.names:  # `from pgolf_jax.data import shards` imports a module
                sub = f"{base}.{alias.name}".lstrip(".")
                found.add(sub if (PKG / sub.replace(".", "/")).with_suffix(".py").is_file()
                          or (PKG / sub.replace(".", "/")).is_dir() else base)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("pgolf_jax.") for a in node.names if a.name.startswith("pgolf_jax."))
    return {m for m in found if m}


def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in PKG.rglob("*.py")}


def test_every_module_belongs_to_a_ranked_stage():
    assert {m.split(".")[0] for m in _graph() if m} <= set(RANK)


def _rank(module: str) -> int:
    """A stage's options modules (`options.py`, `<kind>_options.py`: its config section and variant
    options, JAX-free) are rank 0: config imports them, and they import only rank-0 modules."""
    return 0 if module.endswith("options") else RANK[module.split(".")[0]]


def test_imports_go_one_way():
    bad = [f"{a} -> {b}" for a, deps in _graph().items() if a for b in deps
           if a.split(".")[0] != b.split(".")[0] and _rank(b) >= _rank(a) > 0]
    assert not bad, bad


def _strings(path: Path) -> set[str]:
    """pgolf_jax module paths named in string literals ("pgolf_jax.x.y" or "pgolf_jax.x.y:attr")."""
    return {node.value.split(":")[0].removeprefix("pgolf_jax.") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("pgolf_jax.")}


def test_config_layer_reaches_no_stage():
    """config, options, renames and the stages' options modules import (statically or by string) only
    rank-0 modules; an options module may read a table of its own stage (by string, lazily)."""
    bad = []
    for path in PKG.rglob("*.py"):
        module = _module(path)
        if module not in ("config", "options", "renames") and not module.endswith("options"):
            continue
        own = module.split(".")[0] if module.endswith("options") else None
        for dep in (_imports(path) | _strings(path)) - {""}:
            if _rank(dep) and dep.split(".")[0] != own:
                bad.append(f"{module} -> {dep}")
    assert not bad, bad


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph.get(m, ()):
            if d == m:
                continue
            if state.get(d) == 1:
                raise AssertionError(" -> ".join(stack + [m, d]))
            if d in graph and not state.get(d):
                visit(d, stack + [m])
        state[m] = 2

    for m in graph:
        if not state.get(m):
            visit(m, [])


# ---------------------------------------------------------------------------------------------
# No hidden global state: code that runs after import (functions, methods, lambdas) never writes
# to a module-level list, dict or set, a module-level object's attributes or a class attribute; what
# a call needs is handed to it (model/layers.Pass, nnx intermediates, return values).

MUTATORS = {"append", "extend", "insert", "pop", "popitem", "remove", "clear", "update", "setdefault", "add",
            "discard", "__setitem__", "__delitem__", "__setattr__"}
# (module, name) pairs whose in-function writes are allowed, each with why it is safe. There is no
# import-time registry written from a function; the caches below are per-process memos keyed by
# everything their value depends on (so a second call sees what a first would compute), written
# from host code that no jax transformation traces.
GLOBAL_WRITES_ALLOWED = {
    ("data.shards", "_MANIFESTS"): "memo: (manifest path, mtime) -> its checksums",
    ("data.shards", "_CHECKED"): "memo: (shard path, size, mtime, inode) -> its max token id, checked once",
    ("hardware.target", "_TOPOLOGIES"): "memo: (n, target text) -> compile-only device descriptions",
    ("model.kernels", "_LIB"): "keeps the native library loaded once (functools.cache'd load) alive for XLA",
}


def _bound(node) -> set[str]:
    """Names a statement binds in its own scope (not inside nested functions or classes)."""
    names = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
            continue
        if isinstance(n, ast.Lambda):
            continue
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            names.add(n.id)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in n.names)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            names.add(n.name)
        stack.extend(ast.iter_child_nodes(n))
    return names


def _params(fn) -> set[str]:
    a = fn.args
    return {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs + [v for v in (a.vararg, a.kwarg) if v]}


def _root(node):
    """The Name under x[...][...] (or x itself), else None."""
    while isinstance(node, ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _global_writes(tree) -> list[tuple[int, str, str]]:
    """(line, module-level name, what) for every write to module-level state from inside a function.
    Imported names count for attribute assignment (monkey-patching) but not for calls or items:
    `pause.insert(...)` calls a module's function."""
    module_names = set().union(*(_bound(s) for s in tree.body)) if tree.body else set()
    imported = set().union(set(), *(_bound(s) for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))))
    found = []

    def scan(fn, outer_locals: set[str]):
        body = fn.body if isinstance(fn.body, list) else [fn.body]
        declared = {n for s in body for n in ast.walk(s) if isinstance(n, ast.Global) for n in n.names}
        local = (outer_locals | _params(fn) | set().union(*(_bound(s) for s in body))) - declared
        shared = module_names - local
        data = shared - imported
        is_cm = any(isinstance(d, ast.Name) and d.id == "classmethod" for d in getattr(fn, "decorator_list", []))
        cls_arg = (fn.args.posonlyargs + fn.args.args)[0].arg if is_cm and fn.args.args else None
        found.extend((fn.lineno, name, "global statement") for name in declared)
        todo = list(body)
        while todo:
            n = todo.pop()
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                scan(n, local)
                continue
            if isinstance(n, ast.ClassDef):
                todo.extend(s for s in n.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)))
                for s in n.body:
                    if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        scan(s, local)
                continue
            targets = (n.targets if isinstance(n, (ast.Assign, ast.Delete)) else
                       [n.target] if isinstance(n, (ast.AugAssign, ast.AnnAssign)) else [])
            for t in targets:
                if isinstance(t, ast.Subscript) and _root(t) in data:
                    found.append((n.lineno, _root(t), "item assignment"))
                elif isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name):
                    if t.value.id in shared or t.value.id == cls_arg:
                        found.append((n.lineno, t.value.id, f"attribute .{t.attr} assignment"))
            if isinstance(n, ast.Call):
                f = n.func
                if isinstance(f, ast.Attribute) and f.attr in MUTATORS and _root(f.value) in data:
                    found.append((n.lineno, _root(f.value), f".{f.attr}()"))
                elif isinstance(f, ast.Name) and f.id in ("setattr", "delattr") and n.args \
                        and isinstance(n.args[0], ast.Name) and n.args[0].id in shared:
                    found.append((n.lineno, n.args[0].id, f"{f.id}()"))
            todo.extend(ast.iter_child_nodes(n))

    todo = list(tree.body)
    while todo:
        n = todo.pop()
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            scan(n, set())
        else:
            todo.extend(ast.iter_child_nodes(n))
    return found


def global_writes(root: Path = PKG) -> list[str]:
    """'module:line name what' for every write to module-level state not allowed above."""
    out = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(p for p in path.relative_to(root).with_suffix("").parts if p != "__init__")
        for line, name, what in _global_writes(ast.parse(path.read_text())):
            if (module, name) not in GLOBAL_WRITES_ALLOWED:
                out.append(f"{module}:{line} {name} {what}")
    return sorted(out)


def test_no_function_writes_module_level_state():
    bad = global_writes()
    assert not bad, bad


def test_the_global_write_check_finds_each_kind():
    """The check flags the old model/layers.py pattern (a module-level stack pushed and popped around
    a call) and every other kind of write, and leaves locals that shadow a module name alone."""
    src = """
import contextlib
_POSITION: list = []
_TAPS: list[dict] = []
COUNT = 0
class Reg:
    items = {}
@contextlib.contextmanager
def block_position(layer, slot):
    _POSITION.append((layer, slot))
    try:
        yield
    finally:
        _POSITION.pop()
def record_input(linear, weight, x):
    if _TAPS:
        _TAPS[-1][f"{linear.tap}.{weight}"] = x
def bump():
    global COUNT
    COUNT += 1
def register(name, cls):
    Reg.items = {name: cls}
    setattr(Reg, name, cls)
class Thing:
    @classmethod
    def remember(cls, v):
        cls.last = v
def fine(_TAPS):
    _TAPS.append(1)
    local = []
    local.append(2)
    return [x for x in local]
"""
    found = sorted((name, what) for _, name, what in _global_writes(ast.parse(src)))
    assert found == sorted([("_POSITION", ".append()"), ("_POSITION", ".pop()"), ("_TAPS", "item assignment"),
                            ("COUNT", "global statement"), ("Reg", "attribute .items assignment"),
                            ("Reg", "setattr()"), ("cls", "attribute .last assignment")]), found


# ---------------------------------------------------------------------------------------------
# Size limits: a module, a function and a line stay small enough to read whole (issue 24).

MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_LINE_CHARS = 400, 100, 120
# Modules (paths under pgolf_jax/) the check skips for now, each with why.
SIZE_EXEMPT: dict[str, str] = {}  # module path under pgolf_jax -> why it may be over the limits


def size_problems(root: Path = PKG) -> list[str]:
    """'path: what' for every module, function (method, nested function) or line over its limit."""
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in SIZE_EXEMPT:
            continue
        text = path.read_text()
        lines = text.splitlines()
        if len(lines) > MAX_MODULE_LINES:
            out.append(f"{rel}: {len(lines)} lines (max {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = node.end_lineno - first + 1
                if n > MAX_FUNCTION_LINES:
                    out.append(f"{rel}:{node.lineno}: function {node.name} is {n} lines (max {MAX_FUNCTION_LINES})")
        out.extend(f"{rel}:{i}: line of {len(line)} characters (max {MAX_LINE_CHARS})"
                   for i, line in enumerate(lines, 1) if len(line) > MAX_LINE_CHARS)
    return out


def test_modules_functions_and_lines_stay_small():
    bad = size_problems()
    assert not bad, "\n".join(bad)


def test_the_size_check_finds_each_kind(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(100))
    (tmp_path / "big.py").write_text(f"def long():\n{body}\n" + "\n" * 300 + "y = '" + "a" * 120 + "'\n")
    (tmp_path / "ok.py").write_text("def short():\n    return 1\n")
    found = size_problems(tmp_path)
    assert [f.split(":")[0] for f in found] == ["big.py"] * 3, found
    assert "function long is 101 lines" in found[1] and "line of 126 characters" in found[2], found
