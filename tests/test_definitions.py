"""No module of the package defines a top-level function, class or constant twice.

A merge of two branches that added the same helper in different places keeps both copies
without a conflict; the later one silently replaces the first. This fails such a merge.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "steno_exportd"


def top_level_names(tree: ast.Module) -> list[tuple[str, int]]:
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append((node.name, node.lineno))
        elif isinstance(node, ast.Assign):
            out += [(t.id, node.lineno) for t in node.targets if isinstance(t, ast.Name) and t.id.isupper()]
    return out


def test_no_top_level_definition_twice():
    twice = []
    for path in sorted(PACKAGE.rglob("*.py")):
        seen: dict[str, int] = {}
        for name, line in top_level_names(ast.parse(path.read_text("utf-8"), str(path))):
            if name in seen:
                twice.append(f"{path.relative_to(PACKAGE.parent)}: {name} at lines {seen[name]} and {line}")
            seen.setdefault(name, line)
    assert not twice, "defined twice:\n" + "\n".join(twice)
