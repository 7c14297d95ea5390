"""The chapter notebooks: a fast lint of every notebook, and every notebook executed under ``smoke``.

The lint enforces the notebook template (docs in kdrepro/book and DESIGN.md): a cell tagged ``parameters``
made of ``NAME = literal  # meaning`` lines, every parameter used later, no stored outputs, no ``def`` or
``class``, a title first and a save at the end. The execution tier (marker ``notebooks``, run by default)
runs each notebook through ``kdrepro.book.execute.run`` into a temporary reports folder and checks what it saved.
"""

from __future__ import annotations

import ast
import io
import json
import math
import tokenize
from pathlib import Path

import pytest

from kdrepro.book import execute, params

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_FILES = sorted((ROOT / "notebooks").glob("*.ipynb"))
# Every chapter notebook declares these (a summary notebook that trains nothing may be exempted here).
REQUIRED = {"RESULTS_DIR", "DATASET", "SEEDS", "DEVICE"}
EXEMPT: dict[str, set[str]] = {"08_scorecard": {"DATASET", "SEEDS", "DEVICE"}}  # reads reports, trains nothing
CHAPTERS = execute.discover(ROOT / "notebooks")


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    return params.cell_source(cell)


def _names(source: str) -> set[str]:
    return {
        tok.string
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.NAME
    }


def test_every_notebook_is_a_numbered_chapter():
    stems = [p.stem for p in NOTEBOOK_FILES]
    assert CHAPTERS == stems, "name every notebook NN_title.ipynb: the runner picks chapters up by that name"


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_notebook_lint(path: Path):
    cells = _cells(path)
    code = [(i, c) for i, c in enumerate(cells) if c["cell_type"] == "code"]
    tagged = [i for i, c in code if "parameters" in (c.get("metadata", {}).get("tags") or [])]
    assert len(tagged) == 1, "exactly one code cell must be tagged 'parameters'"
    index = tagged[0]

    # Title and abstract first.
    assert cells[0]["cell_type"] == "markdown" and _source(cells[0]).lstrip().startswith("# "), (
        "the first cell is the title and abstract (markdown starting with '# ')"
    )

    # NAME = literal  # meaning, one per line.
    declared = params.parse_parameters(_source(cells[index]), f"{path.name}: parameters cell")
    for name, parameter in declared.items():
        assert name.isupper(), f"parameter {name} must be UPPER_CASE"
        assert parameter.comment, f"parameter {name} needs a '# meaning' comment on its line"
    missing = REQUIRED - EXEMPT.get(path.stem, set()) - set(declared)
    assert not missing, f"the template's parameters are missing: {sorted(missing)}"
    if "DEVICE" in declared:
        assert declared["DEVICE"].value == "auto", 'DEVICE defaults to "auto"'

    # Every parameter is used by a later cell.
    later = set().union(*(_names(_source(c)) for i, c in code if i > index)) if code else set()
    unused = [name for name in declared if name not in later]
    assert not unused, f"parameters never used after the parameters cell: {unused}"

    # No outputs, no execution counts, no def/class.
    for i, cell in code:
        assert not cell.get("outputs"), f"cell {i} has stored outputs: strip them"
        assert cell.get("execution_count") is None, f"cell {i} has an execution count: strip it"
        tree = ast.parse(_source(cell))
        defined = [
            n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        ]
        assert not defined, f"cell {i} defines {defined[0].name!r}: put functions in the library"

    # The last code cell saves the run.
    last = _source(code[-1][1])
    assert ".save(" in last or "save_run(" in last, "the last code cell saves metrics.json via the library"


@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_profiles_are_valid_for_every_notebook(profile, tmp_path):
    """Every profile override names a declared parameter with the declared type (checked before running)."""
    from kdrepro import profiles

    jobs = execute.plan(CHAPTERS, ROOT / "notebooks", tmp_path, profile)
    assert [job.stem for job in jobs] == CHAPTERS
    for stem in profiles.NOTEBOOKS:
        assert stem in CHAPTERS, f"profiles.NOTEBOOKS has {stem!r}, which is no notebook"
    for job in jobs:
        assert job.parameters.get("RESULTS_DIR") == str((tmp_path / job.stem).resolve())


def _finite_unit(value, where: str) -> None:
    assert isinstance(value, int | float) and not isinstance(value, bool), (
        f"{where}: {value!r} is not a number"
    )
    assert math.isfinite(value), f"{where}: {value} is not finite"
    assert 0.0 <= value <= 1.0, f"{where}: {value} is outside [0, 1]"


@pytest.mark.notebooks
@pytest.mark.parametrize("stem", CHAPTERS)
def test_notebook_runs_under_smoke(stem, tmp_path):
    manifests = execute.run(
        profile="smoke", only=[stem], reports_dir=tmp_path, force=True, log=lambda *_: None
    )
    manifest = manifests[0]
    assert manifest["status"] == "ok", f"{stem} failed under smoke:\n{manifest['error']}"
    folder = tmp_path / stem
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics.get("headline"), "metrics.json needs a non-empty 'headline' for the index page"
    for name, value in metrics["headline"].items():
        if not isinstance(value, str):
            _finite_unit(value, f"headline {name!r}")
    for row in metrics.get("results", []):
        _finite_unit(row["value"], f"result {row}")
    assert json.loads((folder / "config.json").read_text()), "config.json is empty"
    assert list((folder / "tables").glob("*.csv")), "no table saved under tables/"
    page = (tmp_path / f"{stem}.html").read_text(encoding="utf-8")
    assert "Results at a glance" in page and "<script" not in page, "the page opens with its run card, no scripts"
    assert (tmp_path / "index.html").exists() and (folder / "manifest.json").exists()
