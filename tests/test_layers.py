"""The package's layering: shared types and samplers below train and distill, no import cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kdrepro"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path) -> set[str]:
    """kdrepro modules imported when ``path`` runs (imports under ``if TYPE_CHECKING:`` left out)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:  # module level only: the project allows no imports inside functions
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kdrepro"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("kdrepro"))
    return found


def _with_parents(imported: str, importer: str) -> set[str]:
    """Importing ``a.b.c`` first runs package ``a.b`` (unless the importer lives inside ``a.b``)."""
    parts = imported.split(".")
    parents = {".".join(parts[:n]) for n in range(2, len(parts))}
    return {imported} | {p for p in parents if not importer.startswith(p + ".") and importer != p}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set().union(*(_with_parents(m, name) for m in _runtime_imports(path)))
        graph[name] = {m for m in edges if m in modules and m != name}
    return graph


def test_types_and_sampling_import_nothing_of_kdrepro():
    graph = _graph()
    assert graph["kdrepro.types"] == set()
    assert graph["kdrepro.sampling"] == set()


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_importing_train_does_not_load_the_methods():
    code = "import sys, kdrepro.train; print(sorted(m for m in sys.modules if m.startswith('kdrepro.distill')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
