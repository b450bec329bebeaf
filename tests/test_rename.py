"""packing/rename.py: module-level names get short names in every packed module at once, and a
name that anything could reach another way (a local, an attribute, a string, a class) keeps its
name. The renamed modules must still run, and give the same results."""

from __future__ import annotations

import importlib
import sys

import pytest

from pgolf_jax.packing.rename import rename_globals

MODULES = {
    "pkg": "",
    "pkg.util": (
        "LONG_CONSTANT_NAME = 40\n"
        "def helper_function(x):\n    return x + LONG_CONSTANT_NAME\n"
        "def shadowed_name(x):\n    return x * 2\n"
        "def looked_up_by_string():\n    return 'found'\n"
        "def used_as_attribute():\n    return 1\n"
        "class KeptClass:\n    value = 3\n"
        "def in_fstring():\n    return 5\n"),
    "pkg.main": (
        "from pkg.util import helper_function, shadowed_name, KeptClass\n"
        "from pkg import util\n"
        "def packed_main():  # the entry keeps its name\n"
        "    shadowed_name = 7  # a local of the same name: shadowed_name keeps its name everywhere\n"
        "    target = getattr(util, 'looked_up_by_string')\n"
        "    obj = KeptClass()\n"
        "    obj.used_as_attribute = 2  # an attribute of something else: kept\n"
        "    return [helper_function(1), util.helper_function(2), shadowed_name, target(), obj.value,\n"
        "            f'{util.in_fstring()}-{helper_function(0)}', util.used_as_attribute()]\n"),
}
WANT = [41, 42, 7, "found", 3, "5-40", 1]


def _load(tmp_path, modules: dict[str, str], tag: str):
    root = tmp_path / tag
    for name, text in modules.items():
        path = root / (name.replace(".", "/") + ("/__init__.py" if name == "pkg" else ".py"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    sys.path.insert(0, str(root))
    try:
        for name in [n for n in sys.modules if n == "pkg" or n.startswith("pkg.")]:
            del sys.modules[name]
        return importlib.import_module("pkg.main").packed_main()
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n == "pkg" or n.startswith("pkg.")]:
            del sys.modules[name]


def test_renamed_modules_run_the_same(tmp_path):
    renamed = rename_globals(MODULES)
    assert _load(tmp_path, MODULES, "before") == WANT
    assert _load(tmp_path, renamed, "after") == WANT
    util, main = renamed["pkg.util"], renamed["pkg.main"]
    for gone in ("LONG_CONSTANT_NAME", "helper_function", "in_fstring"):  # definition, import, attribute, f-string
        assert gone not in util and gone not in main, gone
    for kept in ("shadowed_name", "looked_up_by_string", "used_as_attribute", "KeptClass"):
        assert kept in util, kept
    assert sum(map(len, renamed.values())) < sum(map(len, MODULES.values()))


@pytest.mark.parametrize("clash", ["def f(helper_function):\n    return helper_function\n",
                                   "x = [helper_function for helper_function in ()]\n",
                                   "d = dict(helper_function=1)\n",
                                   "import os as helper_function\n"])
def test_a_second_meaning_anywhere_keeps_the_name(clash):
    modules = {**MODULES, "pkg.other": clash}
    assert "def helper_function(" in rename_globals(modules)["pkg.util"]


def test_new_names_never_shadow_an_existing_identifier():
    """A fresh name is none of the identifiers already used (a local 'a' would hide a global 'a')."""
    modules = {"pkg": "", "pkg.m": "def long_function_name():\n    a = b = 1\n    return a + b\n"
                                    "def other():\n    return long_function_name()\n"}
    out = rename_globals(modules)["pkg.m"]
    assert "long_function_name" not in out and "def c():" in out


def test_a_short_name_that_is_a_module_in_one_function_is_not_one_in_the_next():
    """Minified code reuses a short name: a module alias in one function, a plain object in another.
    An attribute of the object is not the module's definition (the name that looks like it keeps it)."""
    modules = {"pkg": "", "pkg.util": "def shared_name():\n    return 1\n",
               "pkg.main": ("def f():\n    from pkg import util as B\n    return B.shared_name()\n"
                            "def g(B):\n    return B.shared_name\n")}
    assert "def shared_name(" in rename_globals(modules)["pkg.util"]


def test_a_name_imported_through_a_module_that_imports_it_is_renamed():
    modules = {"pkg": "", "pkg.util": "def long_helper_name():\n    return 1\n",
               "pkg.mid": "from pkg.util import long_helper_name\n",
               "pkg.main": "from pkg.mid import long_helper_name\ndef packed_main():\n    return long_helper_name()\n"}
    out = rename_globals(modules)
    assert not any("long_helper_name" in t for t in out.values())


def test_a_name_that_is_also_an_attribute_of_a_library_module_keeps_it():
    """Every token of a renamed name changes: `json.dumps` must not become `json.<short>`."""
    modules = {"pkg": "", "pkg.util": "import json\ndef dumps(x):\n    return json.dumps(x)\n",
               "pkg.main": "from pkg.util import dumps\ndef packed_main():\n    return dumps(1)\n"}
    assert "json.dumps" in rename_globals(modules)["pkg.util"]


def test_a_registry_target_string_is_renamed_with_its_definition(tmp_path):
    """A "module:attr" literal naming the definition (what the packed registry holds) changes with it, so
    registry.load's getattr still finds it."""
    modules = {"pkg": "", "pkg.util": "def long_registered_name():\n    return 7\n",
               "pkg.main": ("import importlib\nTARGETS = {'x': 'pkg.util:long_registered_name'}\n"
                            "def packed_main():\n    mod, _, attr = TARGETS['x'].partition(':')\n"
                            "    return getattr(importlib.import_module(mod), attr)()\n")}
    out = rename_globals(modules)
    assert not any("long_registered_name" in t for t in out.values())
    assert _load(tmp_path, out, "after") == 7
