"""Packaging: what the code imports is declared, environment.yml (conda-forge) matches pyproject.toml."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CONDA_NAMES = {"torch": "pytorch"}  # PyPI name → conda-forge name where they differ


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _floor(requirement: str) -> str | None:
    match = re.search(r">=\s*([\w.]+)", requirement)
    return match.group(1) if match else None


CORE = {_name(r): _floor(r) for r in PYPROJECT["project"]["dependencies"]}
EXTRAS = {
    extra: {_name(r): _floor(r) for r in requirements}
    for extra, requirements in PYPROJECT["project"]["optional-dependencies"].items()
}


def _third_party_imports(paths) -> set[str]:
    modules: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m not in ("kdrepro", "run_all")}


def _distributions(modules: set[str]) -> dict[str, str]:
    owners = metadata.packages_distributions()
    return {m: _name(owners[m][0]) for m in modules if m in owners}


def test_every_package_the_library_imports_is_a_declared_dependency():
    sources = [*(ROOT / "kdrepro").rglob("*.py"), ROOT / "run_all.py"]
    imported = _distributions(_third_party_imports(sources))
    declared = set(CORE) | set(EXTRAS.get("cluster", {}))
    missing = {m: d for m, d in imported.items() if d not in declared}
    assert not missing, f"imported by kdrepro/ or run_all.py but not declared in pyproject.toml: {missing}"


def test_every_package_the_tests_import_is_declared():
    imported = _distributions(_third_party_imports((ROOT / "tests").glob("*.py")))
    declared = set(CORE) | {name for extra in EXTRAS.values() for name in extra}
    missing = {m: d for m, d in imported.items() if d not in declared and d != "pyyaml"}  # papermill brings PyYAML
    assert not missing, f"imported by tests/ but not declared: {missing}"


def test_declared_dev_tools_are_used():
    used = " ".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("*.py"))
    used += (ROOT / "Makefile").read_text(encoding="utf-8")
    for name in EXTRAS["dev"]:
        module = {"pytrec-eval-terrier": "pytrec_eval"}.get(name, name)
        assert module in used, f"dev extra {name!r} is declared but nothing uses it"


def test_environment_yml_is_conda_forge_only_and_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    assert env["channels"] == ["conda-forge"]
    conda: dict[str, str | None] = {}
    pip: list[str] = []
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            pip += entry.get("pip", [])
        else:
            conda[_name(entry)] = _floor(entry)
    wanted = {CONDA_NAMES.get(name, name): floor for name, floor in CORE.items()}
    for name, floor in wanted.items():
        assert name in conda, f"pyproject dependency {name} is missing from environment.yml"
        assert conda[name] == floor, f"{name}: environment.yml floor {conda[name]} != pyproject's {floor}"
    by_conda_name = {CONDA_NAMES.get(n, n): f for extra in (CORE, *EXTRAS.values()) for n, f in extra.items()}
    for name, floor in conda.items():
        if name in ("python", "pip"):
            continue
        assert name in by_conda_name, f"environment.yml has {name}, which pyproject.toml does not declare"
        assert floor == by_conda_name[name], f"{name}: floor {floor} != pyproject's {by_conda_name[name]}"
    assert "-e .[dev,lab]" in pip, "environment.yml installs the package with the dev and lab extras"


def test_setup_installs_jupyterlab_and_the_kernel():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert '-e ".[dev,lab]"' in makefile and "ipykernel install --sys-prefix --name kdrepro" in makefile
    assert "jupyterlab" in EXTRAS["lab"]


def test_ci_runs_lint_before_the_tests():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert lines.index("make lint") < lines.index("make test")
