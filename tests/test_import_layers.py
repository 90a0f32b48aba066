"""The package is layered: a module imports only from its own layer or below — at the top of a file or inside a
function, and never through importlib (docs/ARCHITECTURE.md draws the same order)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sammerge"

LAYERS = [  # lowest first; a unit is a subpackage or a top-level module of sammerge
    {"__init__", "errors", "progress", "io", "data", "cache"},
    {"models"},
    {"merging"},
    {"zoo"},
    {"evaluation"},
    {"jobs", "analytics", "importing", "planner"},
    {"shipped"},
    {"training"},
    {"explorer"},
    {"webapp", "cli", "__main__"},
]
LEVEL = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sammerge":
            if node.module == "sammerge":
                yield from ((f"sammerge.{a.name}", node.lineno) for a in node.names)
            else:
                yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            yield from ((a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "sammerge")
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module":
            yield "importlib", node.lineno


def test_every_unit_has_a_layer():
    units = {p.stem if p.parent == PACKAGE else p.relative_to(PACKAGE).parts[0] for p in PACKAGE.rglob("*.py")}
    assert units <= set(LEVEL), sorted(units - set(LEVEL))


def test_no_module_imports_from_a_higher_layer():
    upward, importlib_calls = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        unit = rel.stem if len(rel.parts) == 1 else rel.parts[0]
        for module, line in _imports(path):
            if module == "importlib":
                if rel.as_posix() != "merging/modern/__init__.py":  # registers every method file of its own folder
                    importlib_calls.append(f"{rel}:{line}")
                continue
            target = _unit(module) if module != "sammerge" else "__init__"
            if target in LEVEL and LEVEL[target] > LEVEL[unit]:
                upward.append(f"{rel}:{line} ({unit}) imports {module} ({target})")
    assert not upward, "upward imports:\n" + "\n".join(upward)
    assert not importlib_calls, importlib_calls
