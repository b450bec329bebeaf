"""The package layout: one package per stage, imports one way (no circles), as the README says."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "pgolf_jax"
# Lower stages never import higher ones; train and evaluation sit side by side (neither imports the
# other); the rank-0 foundation modules may use each other (the cycle test still applies).
RANK = {"config": 0, "registry": 0, "errors": 0, "options": 0, "renames": 0, "fsio": 0, "runlog": 0, "dist": 0, "provenance": 0, "data": 1, "model": 2, "optim": 3,
        "quant": 4, "train": 5, "evaluation": 5, "pipeline": 6, "bench": 7, "sweep": 7, "submit": 7, "hardware": 7, "cli": 8, "hyper": 0, "plots": 0,
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
    """A stage's options module (its config section and variant options, JAX-free) is rank 0: config
    imports it, and it imports only rank-0 modules."""
    return 0 if module.endswith(".options") else RANK[module.split(".")[0]]


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
        if module not in ("config", "options", "renames") and not module.endswith(".options"):
            continue
        own = module.split(".")[0] if module.endswith(".options") else None
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
