"""Imports sit at the top of each module; the CLI's lazy imports (start-up time) are the
exception, and any other lazy import says why on the line before it."""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "src" / "ehi_bridge"
MARK = "Deliberately lazy"


def _is_cli(path: Path) -> bool:
    return path.name == "cli.py" or "cli" in path.relative_to(SOURCE).parts[:-1]


def _local_imports(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        node.lineno
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(function)
        if isinstance(node, ast.Import | ast.ImportFrom)
    ]


def test_function_local_imports_are_the_clis_or_say_why() -> None:
    unexplained = []
    for path in sorted(SOURCE.rglob("*.py")):
        if _is_cli(path):
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for lineno in _local_imports(path):
            if MARK not in lines[lineno - 2]:
                unexplained.append(f"{path.relative_to(SOURCE)}:{lineno}")
    assert unexplained == []


def test_the_scan_sees_a_function_local_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\n\ndef f():\n    import json\n    return json\n")
    assert _local_imports(module) == [5]
