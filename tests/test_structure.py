"""The package's shape, checked: functx's modules import each other in a DAG (no cycles),
the few function-level imports each say why, and no module outgrows one job (~700 lines)."""
import ast
import pathlib

import functx

ROOT = pathlib.Path(functx.__file__).parent
MAX_LINES = 700
# Function-level imports of functx modules, each breaking a real cycle or deferring an
# optional dependency; every one carries a comment with its reason.
MAX_FUNCTION_LEVEL = 6


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("functx",) + path.relative_to(ROOT).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        yield ".".join(parts[:-1] if is_package else parts), path, is_package


NAMES = {name for name, _, _ in _modules()}


def _targets(module, is_package, node):
    """The functx modules an import statement runs: the target, the submodules it names,
    and the packages on the way (their __init__ runs first)."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module
    parts = target.split(".")
    out = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    out += [f"{target}.{a.name}" for a in node.names]
    return [t for t in out if t in NAMES]


def _import_graph():
    graph, function_level = {}, []
    for name, path, is_package in _modules():
        tree = ast.parse(path.read_text())
        lines = path.read_text().splitlines()
        top = {id(n) for n in tree.body}
        # A module's own packages are already running when it is imported: no dependency.
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        if is_package:
            ancestors.add(name)
        graph[name] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("functx")):
                deps = [t for t in _targets(name, is_package, node) if t not in ancestors and t != name]
                if id(node) in top:
                    graph[name].update(deps)
                elif deps:
                    function_level.append((str(path.relative_to(ROOT)), node.lineno, lines[node.lineno - 1]))
    return graph, function_level


def test_modules_import_in_a_dag():
    graph, _ = _import_graph()
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


def test_function_level_imports_are_few_and_explained():
    _, function_level = _import_graph()
    assert len(function_level) <= MAX_FUNCTION_LEVEL, function_level
    for path, lineno, line in function_level:
        assert "#" in line, f"{path}:{lineno}: a function-level import needs a comment saying why: {line.strip()}"


def test_no_module_outgrows_one_job():
    for name, path, _ in _modules():
        n = len(path.read_text().splitlines())
        assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines (split it by job)"
