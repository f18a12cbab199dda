"""The web package's modules import each other as a tree: no module imports one that imports it back."""
from __future__ import annotations

import ast
from pathlib import Path

import steno_exportd.web

PACKAGE = "steno_exportd.web"
ROOT = Path(steno_exportd.web.__file__).parent


def module_name(path: Path) -> str:
    return PACKAGE if path.name == "__init__.py" else f"{PACKAGE}.{path.stem}"


def web_imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports anywhere (top level or inside a function)."""
    me = module_name(path)
    here = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = here.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for a in node.names:             # "from pkg import mod" imports the module, else pkg itself
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    return {m for m in out if m in modules and m != me}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(ROOT.glob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): web_imports(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when the graph is a tree (a DAG)."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str]:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return []


def test_find_cycle_sees_a_cycle_and_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_web_modules_import_each_other_without_a_cycle():
    graph = import_graph()
    assert f"{PACKAGE}.app" in graph and graph[f"{PACKAGE}.app"], graph     # the walk saw the package
    cycle = find_cycle(graph)
    assert not cycle, "import cycle in steno_exportd/web: " + " -> ".join(cycle)


def test_the_app_imports_the_route_modules_never_the_reverse():
    graph = import_graph()
    importers_of_app = sorted(m for m, deps in graph.items() if f"{PACKAGE}.app" in deps)
    assert importers_of_app == [PACKAGE], importers_of_app     # only the package's lazy serve()/make_app()
