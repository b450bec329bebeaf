"""Whole-program renaming for the packed train_gpt.py: the minifier renames each function's locals,
but a module-level function or constant keeps its name, since other modules import it. Here every
such name that means one thing across all the packed modules gets the shortest free identifier,
in every module at once (its definition, imports, `module.name` uses and plain uses). Pure Python
(ast, tokenize), no JAX.

A name is renamed only when every place it occurs in any module is its definition or a reference
to it (uses inside f-strings and a registry's plain "module:attr" literal of it included); one
occurrence that could mean something else keeps it, as it is: a parameter, a local binding, a
keyword argument, an attribute of anything but its module (module aliases are resolved per
function), a word in any other string (getattr by name), a second definition. Classes keep their
names (error lines print them, flax names submodules after them), as do dunder names and the
packed file's entry. A renamed name found left over refuses the pack.
"""

from __future__ import annotations

import ast
import builtins
import io
import itertools
import keyword
import re
import string
import tokenize
from collections import Counter

ENTRY = frozenset({"packed_main"})  # the loader of packing/file.py imports it by this name
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TARGET = re.compile(r"([A-Za-z_][A-Za-z0-9_.]*):([A-Za-z_][A-Za-z0-9_]*)")  # a registry entry, "module:attr"
_RESERVED = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins))


def rename_globals(modules: dict[str, str]) -> dict[str, str]:
    """{dotted module name: minified source} -> the same sources with every safely renamable
    module-level name replaced by a short one (the most used names get the shortest)."""
    trees = {m: ast.parse(t) for m, t in modules.items()}
    owners = _definitions(trees)
    via = _reexports(trees, owners)
    refused = set(ENTRY)
    for mod, tree in trees.items():
        refused |= _refused(mod, tree, owners, set(trees), via)
    spots = {m: _name_spots(t, trees[m], refused) for m, t in modules.items()}
    names = {n for n in owners if n not in refused}
    used = Counter(name for s in spots.values() for name in s.values())
    taken = set(used) | _RESERVED
    fresh = (n for n in _identifiers() if n not in taken)
    new = {n: next(fresh) for n in sorted(names, key=lambda n: (-used[n] * len(n), n))}
    out = {m: _replace(modules[m], spots[m], new) for m in modules}
    for m, text in out.items():  # a name left behind would fail only when the file runs: refuse to pack it
        left = {n for n in _identifiers_in(ast.parse(text)) if n in new}
        if left:
            raise ValueError(f"packing: renaming left {sorted(left)[0]!r} in {m} (a bug of packing/rename.py)")
    return out


def _identifiers_in(tree: ast.Module) -> set[str]:
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, (*_FUNCS, ast.ClassDef)):
            out.add(n.name)
        elif isinstance(n, ast.alias):
            out.update(filter(None, (n.name, n.asname)))
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and _TARGET.fullmatch(n.value):
            out.add(_TARGET.fullmatch(n.value)[2])
    return out


def _definitions(trees: dict[str, ast.Module]) -> dict[str, str]:
    """name -> the one module that defines it at top level (a function or a plain assignment); a
    name defined in two modules, or bound at top level any other way, is left out."""
    seen: Counter = Counter()
    owner = {}
    for mod, tree in trees.items():
        for stmt in tree.body:
            for name in _top_names(stmt):
                seen[name] += 1
                owner[name] = mod
    return {n: m for n, m in owner.items() if seen[n] == 1 and not (n.startswith("__") and n.endswith("__"))
            and n not in _RESERVED}


def _reexports(trees: dict[str, ast.Module], owners: dict[str, str]) -> dict[tuple[str, str], str]:
    """(module, name) -> the module that defines name, for a module that only imports it at top level
    (`from a import name`, followed through chains): importing it from there is importing the definition."""
    direct = {(m, a.name): s.module for m, t in trees.items() for s in t.body
              if isinstance(s, ast.ImportFrom) and s.module for a in s.names if not a.asname}
    out = {}
    for key, src in direct.items():
        for _ in range(len(trees)):  # a chain is at most as long as there are modules
            if owners.get(key[1]) == src or (src, key[1]) not in direct:
                break
            src = direct[(src, key[1])]
        if owners.get(key[1]) == src:
            out[key] = src
    return out


def _top_names(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, _FUNCS):
        return [stmt.name]
    if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
        return [t.id for t in stmt.targets]
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
        return [stmt.target.id]
    return []


def _imported_modules(imports, packed: set[str]) -> dict[str, str]:
    """name -> module, for the names these import statements bind to modules: `import a.b [as x]`,
    `from a import b [as x]` where a.b is a packed module."""
    out: dict[str, str] = {}
    for n in imports:
        if isinstance(n, ast.Import):
            for a in n.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif n.module:
            out.update((a.asname or a.name, f"{n.module}.{a.name}") for a in n.names
                       if f"{n.module}.{a.name}" in packed)
    return out


def _own_nodes(scope: ast.AST):
    """The nodes of a function (or module) body, not those of the functions and classes inside it."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        n = stack.pop()
        yield n
        if not isinstance(n, (*_FUNCS, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(n))


def _scoped_modules(tree: ast.Module, packed: set[str]) -> dict[int, dict[str, str]]:
    """id(attribute node) -> the names that stand for modules where it is: the module's imports,
    then each function's own (minified code reuses one short name for a module in one function and
    for anything at all in the next); a name a function binds otherwise is not a module there."""
    out: dict[int, dict[str, str]] = {}

    def visit(scope: ast.AST, outer: dict[str, str]) -> None:
        own = list(_own_nodes(scope))
        bound = dict(outer)
        if scope is not tree:
            args = scope.args if isinstance(scope, (*_FUNCS, ast.Lambda)) else None
            for a in ([*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg] if args else []):
                if a is not None:
                    bound.pop(a.arg, None)
            for n in own:
                if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
                    bound.pop(n.id, None)
        bound.update(_imported_modules([n for n in own if isinstance(n, (ast.Import, ast.ImportFrom))], packed))
        for n in own:
            if isinstance(n, ast.Attribute):
                out[id(n)] = bound
            elif isinstance(n, (*_FUNCS, ast.Lambda, ast.ClassDef)):
                for d in (getattr(n, "decorator_list", []) + [*getattr(getattr(n, "args", None), "defaults", [])]):
                    for m in ast.walk(d):
                        if isinstance(m, ast.Attribute):
                            out[id(m)] = bound
                visit(n, bound)

    visit(tree, {})
    return out


def _refused(mod: str, tree: ast.Module, owners: dict[str, str], packed: set[str], via: dict) -> set[str]:
    """The candidate names that occur in mod in a way renaming could break: anything but their own
    defining statement, a plain use, an import from their module (or from a module that imports it
    from there: via), or an attribute of their module."""
    scoped = _scoped_modules(tree, packed)
    defining = set()  # the nodes that define a name of this module: not a refusal
    for stmt in tree.body:
        if isinstance(stmt, _FUNCS):
            defining.add(id(stmt))
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            defining.update(id(t) for t in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, _FUNCS) and id(node) not in defining or isinstance(node, ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load) and id(node) not in defining:
            out.add(node.id)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, ast.keyword) and node.arg:
            out.add(node.arg)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            out.update(node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            out.add(node.name)
        elif isinstance(node, ast.Import):
            out.update(a.asname or a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            for a in node.names:
                if a.asname:
                    out.add(a.asname)
                if owners.get(a.name) != via.get((node.module, a.name), node.module):
                    out.add(a.name)  # imported from elsewhere (or a module): not this definition
        elif isinstance(node, ast.Attribute):
            base = _module_of(node.value, scoped.get(id(node), {}))
            if owners.get(node.attr) != via.get((base, node.attr), base):  # (every token of a name is renamed)
                out.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            target = _TARGET.fullmatch(node.value)
            if target and owners.get(target[2]) == via.get((target[1], target[2]), target[1]):
                continue  # a registry's "module:attr" of this very definition: renamed inside the string too
            out.update(_named_by(node.value))
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            out.add(node.name)
    return out


def _module_of(node: ast.AST, bound: dict[str, str]) -> str | None:
    """The packed module an attribute's base stands for (`mod`, `pkg.mod`), else None."""
    chain = []
    while isinstance(node, ast.Attribute):
        chain.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in bound:
        return None
    return ".".join([bound[node.id], *reversed(chain)])


def _named_by(text: str) -> set[str]:
    """Every identifier-like word of a string: it may be looked up by name (getattr, a registry's
    "module:attr" target, or one assembled from parts in an f-string)."""
    return set(_WORD.findall(text))


def _identifiers():
    """Identifiers by length: a..z, A..Z, then two characters, and so on."""
    first = string.ascii_letters
    rest = first + string.digits + "_"
    for n in itertools.count(1):
        for head in first:
            for tail in itertools.product(rest, repeat=n - 1):
                yield head + "".join(tail)


def _name_spots(text: str, tree: ast.Module, refused: set[str]) -> dict[tuple[int, int], str]:
    """(row, column) -> identifier of every name in text: the NAME tokens, and the names inside
    f-strings (one STRING token before Python 3.12), placed by the parser and checked against the
    text; a name whose place does not check is added to refused."""
    lines = text.splitlines()
    out = {tok.start: tok.string for tok in tokenize.generate_tokens(io.StringIO(text).readline)
           if tok.type == tokenize.NAME}
    for node in ast.walk(tree):
        target = isinstance(node, ast.Constant) and isinstance(node.value, str) and _TARGET.fullmatch(node.value)
        if target:  # the attr of a plain one-line 'module:attr' literal (what the packed registry writes)
            row, col = node.lineno, node.col_offset + 1 + len(target[1]) + 1
            if node.end_lineno == row and lines[row - 1][node.col_offset] in "'\"" and \
                    lines[row - 1][node.col_offset + 1:node.end_col_offset - 1] == node.value:
                out[(row, col)] = target[2]
            else:
                refused.add(target[2])
        elif isinstance(node, ast.JoinedStr):
            for n in ast.walk(node):
                if isinstance(n, ast.Name):
                    name, row, col = n.id, n.lineno, n.col_offset
                elif isinstance(n, ast.Attribute):
                    name, row, col = n.attr, n.end_lineno, n.end_col_offset - len(n.attr)
                else:
                    continue
                if lines[row - 1][col:col + len(name)] == name:
                    out[(row, col)] = name
                else:
                    refused.add(name)
    return out


def _replace(text: str, spots: dict[tuple[int, int], str], new: dict[str, str]) -> str:
    """text with the names at spots that are in new replaced (right to left: offsets stay valid)."""
    lines = text.splitlines(keepends=True)
    for (row, col), name in sorted(spots.items(), reverse=True):
        if name in new:
            line = lines[row - 1]
            lines[row - 1] = line[:col] + new[name] + line[col + len(name):]
    return "".join(lines)
