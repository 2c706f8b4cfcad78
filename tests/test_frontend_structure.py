"""The front end's structure: the lowering tables reject a second registration of an op,
every lowering module imports on its own, and frontend modules import each other at
module level without cycles (the class-to-implementation calls in tensor.py are the only
function-level imports)."""
import ast
import importlib
import pathlib

import pytest
import torch

import functx  # noqa: F401  (fills the tables)
from functx.frontend.lowerings import registry

aten = torch.ops.aten
FRONTEND = pathlib.Path(functx.__file__).parent / "frontend"
LOWERING_MODULES = sorted(p.stem for p in (FRONTEND / "lowerings").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("decorator, table", [(registry.register, registry.LOWERINGS),
                                              (registry.register_special, registry.SPECIAL)])
def test_registering_an_op_twice_raises(decorator, table):
    op = aten.relu.default if table is registry.LOWERINGS else aten.copy_.default
    assert op in table
    before = table[op]
    with pytest.raises(ValueError, match=r"aten\.(relu|copy_)\.default is registered twice"):
        decorator(op)(lambda *a: None)
    assert table[op] is before


def test_only_as_strided_is_in_both_tables():
    # A SPECIAL entry shadows a lowering at dispatch; as_strided's lowering replays view chains.
    assert set(registry.SPECIAL) & set(registry.LOWERINGS) == {aten.as_strided.default}


@pytest.mark.parametrize("name", LOWERING_MODULES)
def test_lowering_module_imports(name):
    importlib.import_module(f"functx.frontend.lowerings.{name}")


def _frontend_modules():
    for path in sorted(FRONTEND.rglob("*.py")):
        parts = path.relative_to(FRONTEND.parent.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, path.name == "__init__.py"


def _resolve(module, is_package, node):
    """The modules a relative `from .m import x` / `from . import x` statement needs: the
    target, the names it imports (when they are submodules), and the packages between
    functx.frontend and the target (their __init__ runs first)."""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    target = ".".join(base + ([node.module] if node.module else []))
    parts = target.split(".")
    parents = [".".join(parts[:i]) for i in range(3, len(parts))]
    return parents + [target] + [f"{target}.{a.name}" for a in node.names]


def test_frontend_imports_form_a_dag():
    # functx.frontend's own __init__ runs before any of its modules, so it is no dependency.
    names = {name for name, _, _ in _frontend_modules()} - {"functx.frontend"}
    graph, function_level = {}, []
    for name, path, is_package in _frontend_modules():
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        graph[name] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                targets = [t for t in _resolve(name, is_package, node) if t in names and t != name]
                if id(node) in top:
                    graph[name].update(targets)
                else:
                    function_level.append((path.name, node.lineno))
    # tensor.py is the bottom layer; its class calls up into dispatch and functionalize.
    assert {f for f, _ in function_level} <= {"tensor.py"} and len(function_level) <= 2, function_level

    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "active", "import cycle: " + " -> ".join(path + [m])
        state[m] = "active"
        for dep in sorted(graph.get(m, ())):
            visit(dep, path + [m])
        state[m] = "done"

    for m in sorted(graph):
        visit(m, [])
