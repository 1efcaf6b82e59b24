"""The folders import one way: kernels/, grammars/ and tools/ never import from engine/ (or
api/), so each can be used, tested and moved on its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOWER_LAYERS = {"kernels": ("corral.engine", "corral.api"),
                "grammars": ("corral.engine", "corral.api", "corral.tools"),
                "tools": ("corral.engine", "corral.api")}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("folder", sorted(LOWER_LAYERS))
def test_lower_layers_import_nothing_above_them(folder):
    forbidden = LOWER_LAYERS[folder]
    found = [f"{path.relative_to(ROOT)}: {name}"
             for path in sorted((ROOT / folder).rglob("*.py"))
             for name in _imports(path) if name.startswith(forbidden)]
    assert not found, "imports against the layering:\n" + "\n".join(found)
