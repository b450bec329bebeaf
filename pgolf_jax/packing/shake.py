"""Tree shaking for the packed train_gpt.py: from the function a run starts at, keep the package
modules and the top-level definitions it can reach, drop the rest. Pure Python (ast), no JAX.

Names resolve as Python resolves them at module level: a name used in module M is M's own
definition or the binding of one of M's imports; `mod.attr` (an imported module's attribute, also
through a dotted chain) is that module's definition. A string that names code keeps it: a
"module:attr" target (the registry's entries) keeps that definition, a module path kept as a plain
string ("pgolf_jax.x.y", read with importlib) keeps that whole module, an identifier keeps the
definition of that name in the same module (getattr by a literal name). Statements that are not
definitions (a call at import time, an `if` at top level) always stay with their module. Classes
stay whole: methods are reached through instances that libraries call (flax's `__call__`, pytree
hooks), which no scan of names can follow. Function annotations are not references (the minifier
drops them and nothing evaluates them); class annotations are (dataclasses and typing read them).
What the caller declares unreachable (`left_out`: registry.FEATURES a run leaves off) is the one
exception: a function or class becomes `name = None` where code names it, a method or class attribute
is cut from its class, and none of their references are followed.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

# A string that can name code: an identifier, a dotted module path, or a "module:attr" target.
_NAME_LIKE = re.compile(r"([A-Za-z_][A-Za-z0-9_.]*)(?::([A-Za-z_][A-Za-z0-9_]*))?")
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


class ShakeError(ValueError):
    pass


@dataclass
class Source:
    """One module of the package: its dotted name, path relative to the repo root, and text."""
    name: str
    rel: str
    text: str
    tree: ast.Module = field(init=False, repr=False)

    _uses: dict = field(init=False, repr=False, default_factory=dict)
    _cut: dict = field(init=False, repr=False, default_factory=dict)  # classes less some methods, kept alive

    def without_methods(self, cls: ast.ClassDef, methods: frozenset) -> ast.ClassDef:
        """cls without the named methods (one copy per cut, held here: `uses` caches by id)."""
        key = (cls.name, methods)
        if key not in self._cut:
            body = [s for s in cls.body if member_name(s) not in methods]
            self._cut[key] = ast.ClassDef(**{**vars(cls), "body": body})
        return self._cut[key]

    def __post_init__(self):
        self.tree = ast.parse(self.text, filename=self.rel)

    def uses(self, node: ast.AST) -> tuple[list, list[str], list[tuple[str, tuple[str, ...]]], list[str]]:
        """What a statement of this module refers to (computed once: packing every preset reuses it):
        its nested imports (statement, alias), names, attribute chains on a name (base, attrs outward)
        and string constants."""
        if id(node) not in self._uses:
            imports, names, chains, strings = [], [], [], []
            for n in _walk(node):
                if isinstance(n, (ast.Import, ast.ImportFrom)) and n is not node:
                    imports += [(n, a) for a in n.names]
                elif isinstance(n, ast.Name):
                    names.append(n.id)
                elif isinstance(n, ast.Attribute):
                    chain, base = [], n
                    while isinstance(base, ast.Attribute):
                        chain.append(base.attr)
                        base = base.value
                    if isinstance(base, ast.Name):
                        chains.append((base.id, tuple(reversed(chain))))
                elif isinstance(n, ast.Constant) and isinstance(n.value, str):
                    strings.append(n.value)
            self._uses[id(node)] = (imports, sorted(set(names)), sorted(set(chains)), sorted(set(strings)))
        return self._uses[id(node)]


def _alias_binding(alias: ast.alias, stmt: ast.stmt) -> str:
    if alias.asname:
        return alias.asname
    return alias.name.split(".")[0] if isinstance(stmt, ast.Import) else alias.name


def _bindings(stmt: ast.stmt) -> list[str] | None:
    """The names a top-level statement binds when it can be dropped; None = it always stays."""
    if isinstance(stmt, _DEFS):
        return [stmt.name]
    if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
        return [t.id for t in stmt.targets]
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
        return [stmt.target.id]
    if isinstance(stmt, (ast.Import, ast.ImportFrom)) and getattr(stmt, "module", "") != "__future__":
        return [_alias_binding(a, stmt) for a in stmt.names]
    return None


def member_name(stmt: ast.stmt) -> str | None:
    """The name a statement of a class body defines: a method, or a class attribute (`NAME = ...`)."""
    if isinstance(stmt, _FUNCS):
        return stmt.name
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id
    return None


def _is_type_checking(stmt: ast.stmt) -> bool:
    """`if TYPE_CHECKING:` blocks never run: what they import is not a reference."""
    return isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Name) and stmt.test.id == "TYPE_CHECKING"


def _walk(node: ast.AST):
    """ast.walk without function annotations."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        if isinstance(n, _FUNCS):
            args = n.args
            stack.extend([*args.defaults, *(d for d in args.kw_defaults if d is not None), *n.decorator_list, *n.body])
        elif isinstance(n, ast.Lambda):
            stack.extend([*n.args.defaults, *(d for d in n.args.kw_defaults if d is not None), n.body])
        else:
            stack.extend(ast.iter_child_nodes(n))


class _Shaker:
    def __init__(self, sources: dict[str, Source], left_out: frozenset = frozenset()):
        self.sources = sources
        self.modules: set[str] = set()
        self.kept: set[tuple[str, str]] = set()
        self.left_out = left_out  # (module, name): a placeholder in the module, its references not followed
        self.placeholders: set[tuple[str, str]] = set()
        self.pending: list[tuple[str, ast.AST]] = []
        self.binders: dict[str, dict[str, list[ast.stmt]]] = {}
        for name, src in sources.items():
            table: dict[str, list[ast.stmt]] = {}
            for stmt in src.tree.body:
                for b in _bindings(stmt) or ():
                    table.setdefault(b, []).append(stmt)
            self.binders[name] = table

    def module(self, name: str) -> None:
        """Import a module: its parents first, then every statement of it that always runs."""
        if name in self.modules or name not in self.sources:
            return
        parts = name.split(".")
        for i in range(1, len(parts)):
            self.module(".".join(parts[:i]))
        self.modules.add(name)
        for stmt in self.sources[name].tree.body:
            if _bindings(stmt) is None and not _is_type_checking(stmt):
                self.pending.append((name, stmt))

    def keep(self, mod: str, name: str) -> None:
        """Keep module mod's definition of name (an import binding keeps what it imports)."""
        self.module(mod)
        if (mod, name) in self.left_out:
            self.placeholders.add((mod, name))
            return
        if (mod, name) in self.kept or name not in self.binders.get(mod, {}):
            return
        self.kept.add((mod, name))
        for stmt in self.binders[mod][name]:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                for a in stmt.names:
                    if _alias_binding(a, stmt) == name:
                        self.imported(stmt, a)
            elif isinstance(stmt, ast.ClassDef) and (cut := self.cut_methods(mod, name)):
                self.pending.append((mod, self.sources[mod].without_methods(stmt, cut)))
            else:
                self.pending.append((mod, stmt))

    def cut_methods(self, mod: str, cls: str) -> frozenset:
        """The methods of class cls left out ("Class.method" entries of left_out)."""
        return frozenset(n.partition(".")[2] for m, n in self.left_out if m == mod and n.startswith(cls + "."))

    def imported(self, stmt: ast.stmt, alias: ast.alias) -> None:
        if isinstance(stmt, ast.Import):
            self.module(alias.name)
        elif stmt.level:
            raise ShakeError(f"relative import of {stmt.module!r} at line {stmt.lineno}: use the absolute name")
        elif f"{stmt.module}.{alias.name}" in self.sources:
            self.module(f"{stmt.module}.{alias.name}")
        else:
            self.keep(stmt.module, alias.name)

    def target(self, mod: str, binding: str) -> str | None:
        """The module a name bound in mod stands for, when it is one of the package's modules."""
        for stmt in self.binders.get(mod, {}).get(binding, []):
            for a in getattr(stmt, "names", []):
                if _alias_binding(a, stmt) != binding:
                    continue
                if isinstance(stmt, ast.Import):
                    return a.name if a.asname else a.name.split(".")[0]
                if isinstance(stmt, ast.ImportFrom) and f"{stmt.module}.{a.name}" in self.sources:
                    return f"{stmt.module}.{a.name}"
        return None

    def scan(self, mod: str, node: ast.AST) -> None:
        imports, names, chains, strings = self.sources[mod].uses(node)
        local: dict[str, str] = {}  # names that imports inside this statement bind to modules
        for n, a in imports:
            self.imported(n, a)
            if isinstance(n, ast.Import):
                local[_alias_binding(a, n)] = a.name if a.asname else a.name.split(".")[0]
            elif f"{n.module}.{a.name}" in self.sources:
                local[_alias_binding(a, n)] = f"{n.module}.{a.name}"
        for name in names:
            self.keep(mod, name)
        for base_name, chain in chains:
            self.attribute(mod, base_name, chain, local)
        for text in strings:
            self.string(mod, text)

    def attribute(self, mod: str, base_name: str, chain: tuple[str, ...], local: dict[str, str]) -> None:
        """`base_name.a.b...`: when base_name stands for a package module, what the chain reaches."""
        base = local.get(base_name) or self.target(mod, base_name)
        if base is None:
            return
        for attr in chain:
            if f"{base}.{attr}" in self.sources:
                base = f"{base}.{attr}"
                self.module(base)
            else:
                self.keep(base, attr)
                return

    def string(self, mod: str, text: str) -> None:
        m = _NAME_LIKE.fullmatch(text)
        if not m:
            return
        path, attr = m.groups()
        if attr:
            self.keep(path, attr)
        elif path in self.sources:  # a module read by name (importlib): all of it
            self.module(path)
            for name in self.binders[path]:
                self.keep(path, name)
        elif "." not in path:
            self.keep(mod, path)

    def run(self, roots: list[tuple[str, str]]) -> None:
        for mod, name in roots:
            if mod not in self.sources or name not in self.binders[mod]:
                raise ShakeError(f"{mod}:{name} is not defined in the package")
            self.keep(mod, name)
        while self.pending:
            self.scan(*self.pending.pop())


def shake(sources: dict[str, Source], roots: list[tuple[str, str]],
          left_out: frozenset = frozenset()) -> dict[str, str]:
    """{module name: Source} and the (module, name) definitions a run starts at -> {module name: its
    kept text} for every module the run can reach. left_out: (module, name) definitions the run
    cannot reach although code names them (registry.FEATURES it leaves off): each becomes `name = None`
    where it is reached, so imports of it still bind, and what only it reaches goes."""
    s = _Shaker(sources, left_out)
    s.run(roots)
    return {name: _render(sources[name], {n for m, n in s.kept if m == name},
                          {n for m, n in s.placeholders if m == name}, {n for m, n in left_out if m == name})
            for name in sorted(s.modules)}


def _start(stmt: ast.stmt) -> int:
    return min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])


def _render(src: Source, kept: set[str], placeholders: set[str] = frozenset(), cut: set[str] = frozenset()) -> str:
    """The module's text with its dropped statements cut out (a trimmed import is re-written), each
    placeholder's definition replaced by `name = None` and the cut ("Class.method") methods left out."""
    lines = src.text.splitlines(keepends=True)
    out, pos = [], 0
    for stmt in src.tree.body:
        bound = _bindings(stmt)
        start = _start(stmt)
        out.extend(lines[pos:start - 1])
        pos = stmt.end_lineno
        if _is_type_checking(stmt):
            continue
        if isinstance(stmt, _DEFS) and stmt.name in placeholders:
            out.append(f"{stmt.name} = None\n")
        elif isinstance(stmt, ast.ClassDef) and stmt.name in kept and any(c.startswith(stmt.name + ".") for c in cut):
            gone = [m for m in stmt.body if f"{stmt.name}.{member_name(m)}" in cut]
            spans = {i for m in gone for i in range(_start(m) - 1, m.end_lineno)}
            out.extend(line for i, line in enumerate(lines[start - 1:stmt.end_lineno], start - 1) if i not in spans)
            if len(gone) == len(stmt.body):  # nothing left of the body
                out.append(" " * (stmt.body[0].col_offset) + "pass\n")
        elif bound is None or all(b in kept for b in bound):
            out.extend(lines[start - 1:stmt.end_lineno])
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)) and any(b in kept for b in bound):
            names = [a for a in stmt.names if _alias_binding(a, stmt) in kept]
            out.append(ast.unparse(ast.copy_location(type(stmt)(**{**vars(stmt), "names": names}), stmt)) + "\n")
        elif any(b in kept for b in bound):
            out.extend(lines[start - 1:stmt.end_lineno])
    out.extend(lines[pos:])
    return "".join(out)


def package_sources(root: Path) -> dict[str, Source]:
    """Every module of the package under root (the folder holding pgolf_jax/)."""
    out = {}
    for f in sorted((Path(root) / "pgolf_jax").rglob("*.py")):
        rel = f.relative_to(root).as_posix()
        name = rel[:-3].replace("/", ".")
        name = name[:-len(".__init__")] if name.endswith(".__init__") else name
        out[name] = parsed(name, rel, f.read_text(encoding="utf-8"))
    return out


@functools.lru_cache(maxsize=1024)
def parsed(name: str, rel: str, text: str) -> Source:
    """Source(name, rel, text), parsed once per process for the same text (every run packs its code:
    the parse and the references it caches are reused by the next run of the same package)."""
    return Source(name, rel, text)


def unresolved(kept: dict[str, str], sources: dict[str, Source]) -> list[str]:
    """What kept code names in the package that the kept text does not hold: `from pgolf_jax.x
    import y` and `import pgolf_jax.x` of a module or name that was dropped, a "module:attr" string
    whose definition was, and a name the module defined but no longer binds. [] when closed. The
    kept text is parsed again: this checks what the file will hold, not the shaker's bookkeeping."""
    facts = {m: _facts(m, t, frozenset(b for s in sources[m].tree.body for b in (_bindings(s) or [])))
             for m, t in kept.items()}
    out = []
    for m, (bound, imported, modules, targets, dropped_uses) in facts.items():
        out += [f"{m}: from {mod} import {name}" for mod, name in imported
                if f"{mod}.{name}" not in kept and name not in facts.get(mod, ((),))[0]]
        out += [f"{m}: import {mod}" for mod in modules if mod not in kept]
        out += [f"{m}: '{mod}:{name}'" for mod, name in targets if name not in facts.get(mod, ((),))[0]]
        out += [f"{m}: {name}" for name in dropped_uses]
    return sorted(set(out))


@functools.lru_cache(maxsize=1024)
def _facts(module: str, text: str, original: frozenset) -> tuple:
    """One kept module's text: (its top-level names, the package names it imports (module, name),
    the package modules it imports whole, its "module:attr" strings, the names it uses that it
    defined before shaking but no longer binds). Cached: presets share most kept modules."""
    tree = ast.parse(text)
    bound = frozenset(b for s in tree.body for b in (_bindings(s) or []))
    dropped = original - bound - _locals(tree)
    imported, modules, targets, uses = set(), set(), set(), set()
    for n in _walk(tree):
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("pgolf_jax"):
            imported.update((n.module, a.name) for a in n.names)
        elif isinstance(n, ast.Import):
            modules.update(a.name for a in n.names if a.name.startswith("pgolf_jax"))
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            g = _NAME_LIKE.fullmatch(n.value)
            if g and g[2] and g[1].startswith("pgolf_jax"):
                targets.add((g[1], g[2]))
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in dropped:
            uses.add(n.id)
    return bound, sorted(imported), sorted(modules), sorted(targets), sorted(uses)


def _locals(tree: ast.Module) -> set[str]:
    """Names bound below the top level (function locals, loop targets, comprehension variables,
    imports inside functions): a use of one of them is not a use of a dropped global."""
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            out.add(n.id)
        elif isinstance(n, ast.arg):
            out.add(n.arg)
        elif isinstance(n, (ast.Import, ast.ImportFrom)) and n not in tree.body:
            out.update(_alias_binding(a, n) for a in n.names)
        elif isinstance(n, _DEFS) and n not in tree.body:
            out.add(n.name)
    return out
