"""run_all.py on tiny throwaway notebooks: validation first, skip-if-unchanged, failures, rendering."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_run_all():
    if "run_all" in sys.modules:
        return sys.modules["run_all"]
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module
    spec.loader.exec_module(module)
    return module


run_all = _load_run_all()

PARAMS = """X = 3  # a count
RATE = 0.5  # a float
NAME = "tiny"  # a string
FLAG = False  # a switch
SEEDS = [0, 1]  # a list of ints
RESULTS_DIR = "../reports/tiny"  # where metrics.json goes"""

SAVE = """import json, pathlib
folder = pathlib.Path(RESULTS_DIR)
folder.mkdir(parents=True, exist_ok=True)
(folder / "metrics.json").write_text(json.dumps({"headline": {"x": X / 10, "name": NAME}}))
print("ran with", X, RATE, NAME, FLAG, SEEDS)"""

PROGRESS = """import time
from tqdm.auto import tqdm
for _ in tqdm(range(40), desc="loop", mininterval=0):
    time.sleep(0.005)"""


def write_notebook(folder: Path, stem: str, *cells: str, params: str = PARAMS) -> Path:
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell(params)
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {stem} title"), parameters]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "stored kernelspec", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    path = folder / f"{stem}.ipynb"
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def books(tmp_path):
    folder = tmp_path / "notebooks"
    write_notebook(folder, "00_ok", PROGRESS, SAVE)
    write_notebook(folder, "01_fails", "raise ValueError('boom from the notebook')", SAVE)
    return folder


def run(books: Path, reports: Path, stems, **kwargs):
    return run_all.run(
        notebooks=stems, notebooks_dir=books, reports_dir=reports, log=lambda *_: None, **kwargs
    )


# -- parameters ----------------------------------------------------------------------------------


def test_parse_parameters_reads_literals_and_comments():
    found = run_all.parse_parameters(PARAMS)
    assert {n: p.value for n, p in found.items()} == {
        "X": 3,
        "RATE": 0.5,
        "NAME": "tiny",
        "FLAG": False,
        "SEEDS": [0, 1],
        "RESULTS_DIR": "../reports/tiny",
    }
    assert found["RATE"].comment == "a float"


@pytest.mark.parametrize(
    "source",
    [
        "import numpy as np",
        "X: int = 3",
        "X = np.arange(3)",
        "X = Y = 1",
        "X = 1\nX = 2",
        "X = [i for i in ()]",
    ],
)
def test_parse_parameters_rejects_anything_but_literal_assignments(source):
    with pytest.raises(run_all.ParameterError):
        run_all.parse_parameters(source)


@pytest.mark.parametrize(
    "override, message",
    [
        ("NOPE=1", "no parameter 'NOPE'"),
        ("X=abc", "not a Python literal"),
        ("X=2.5", "X must be of type int"),
        ("X=True", "X must be of type int"),
        ("FLAG=1", "FLAG must be of type bool"),
        ("SEEDS=[0,'a']", "SEEDS must be of type list of int"),
        ("SEEDS=3", "SEEDS must be of type list"),
        ("RESULTS_DIR=/tmp/x", "set by run_all.py"),
        ("00:NOPE=1", "unknown parameter 'NOPE'"),
        ("X", "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_fail_before_anything_runs(books, tmp_path, override, message):
    reports = tmp_path / "reports"
    with pytest.raises(run_all.ParameterError, match=message.replace("[", r"\[")):
        run(books, reports, ["00_ok"], profile="smoke", params=[override])
    assert not reports.exists(), "nothing may run or be written when the parameters are invalid"


def test_good_overrides_are_coerced(books, tmp_path):
    jobs = run_all.plan(
        ["00_ok"],
        books,
        tmp_path,
        "smoke",
        ["X=7", "RATE=1", "NAME=plain words", "SEEDS=(4, 5)", "FLAG=True"],
    )
    values = jobs[0].parameters
    assert values["X"] == 7 and values["RATE"] == 1.0 and isinstance(values["RATE"], float)
    assert values["NAME"] == "plain words" and values["SEEDS"] == [4, 5] and values["FLAG"] is True
    assert values["RESULTS_DIR"] == str((tmp_path / "00_ok").resolve())
    assert jobs[0].overrides["cli"]["X"] == 7


def test_main_exits_2_on_a_bad_override(books, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_all, "NOTEBOOKS", ["00_ok"])
    code = run_all.main(["--notebooks-dir", str(books), "--reports-dir", str(tmp_path / "r"), "-p", "X=oops"])
    assert code == 2
    assert "X=oops" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_only_rejects_unknown_notebooks(books, tmp_path):
    with pytest.raises(run_all.ParameterError, match="matches no notebook"):
        run(books, tmp_path / "r", ["00_ok"], only=["07"])


# -- execution -----------------------------------------------------------------------------------


def test_failed_notebook_is_rendered_and_the_run_goes_on(books, tmp_path, monkeypatch):
    reports = tmp_path / "reports"
    monkeypatch.setattr(run_all, "NOTEBOOKS", ["00_ok", "01_fails"])
    code = run_all.main(["--notebooks-dir", str(books), "--reports-dir", str(reports), "--profile", "smoke"])
    assert code == 1
    failed = json.loads((reports / "01_fails" / "manifest.json").read_text())
    assert failed["status"] == "failed" and "boom from the notebook" in failed["error"]
    page = (reports / "01_fails.html").read_text(encoding="utf-8")
    assert "boom from the notebook" in page
    ok = json.loads((reports / "00_ok" / "manifest.json").read_text())
    assert ok["status"] == "ok" and ok["headline"] == {"x": 0.3, "name": "tiny"}
    index = (reports / "index.html").read_text(encoding="utf-8")
    assert "01_fails.html" in index and "failed" in index and "0.3000" in index
    run_manifest = json.loads((reports / "manifest.json").read_text())
    assert [n["status"] for n in run_manifest["run"]["notebooks"]] == ["ok", "failed"]


def test_manifest_rendering_and_progress(books, tmp_path):
    reports = tmp_path / "reports"
    [manifest] = run(books, reports, ["00_ok"], profile="quick", params=["X=5"])
    assert manifest["status"] == "ok", manifest["error"]
    for key in (
        "parameters",
        "profile",
        "git",
        "packages",
        "dataset",
        "device",
        "started",
        "ended",
        "duration_s",
        "peak_memory_mib",
        "input_hash",
    ):
        assert key in manifest, key
    assert manifest["parameters"]["X"] == 5 and manifest["profile"] == "quick"
    assert manifest["kernel"] == "kdrepro"  # the fixed kernel, not the notebook's stored one
    assert manifest["peak_memory_mib"] > 0
    assert {"torch", "numpy", "pandas", "papermill", "kdrepro"} <= set(manifest["packages"])
    page = (reports / "00_ok.html").read_text(encoding="utf-8")
    assert "highlight hl-ipython3" not in page, "code cells must not be rendered"
    assert "ran with 5" in page
    assert page.count("loop:") == 1 and "40/40" in page, "one line per progress bar, in its final state"
    stored = nbformat.read(reports / "00_ok" / "00_ok.ipynb", as_version=4)
    streams = [
        o
        for c in stored.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.output_type == "stream"
    ]
    assert all("\r" not in o.text for o in streams)


def test_unchanged_notebooks_are_skipped_until_something_changes(books, tmp_path):
    reports = tmp_path / "reports"
    first = run(books, reports, ["00_ok"], profile="smoke")[0]
    assert first["status"] == "ok" and not first.get("skipped_in_last_run")
    again = run(books, reports, ["00_ok"], profile="smoke")[0]
    assert again.get("skipped_in_last_run") and again["started"] == first["started"]
    changed = run(books, reports, ["00_ok"], profile="smoke", params=["X=4"])[0]
    assert not changed.get("skipped_in_last_run") and changed["input_hash"] != first["input_hash"]
    forced = run(books, reports, ["00_ok"], profile="smoke", params=["X=4"], force=True)[0]
    assert not forced.get("skipped_in_last_run")
    write_notebook(books, "00_ok", PROGRESS, SAVE + "\nprint('edited')")
    edited = run(books, reports, ["00_ok"], profile="smoke", params=["X=4"])[0]
    assert not edited.get("skipped_in_last_run")


def test_failed_notebooks_are_never_skipped(books, tmp_path):
    reports = tmp_path / "reports"
    assert run(books, reports, ["01_fails"], profile="smoke")[0]["status"] == "failed"
    second = run(books, reports, ["01_fails"], profile="smoke")[0]
    assert second["status"] == "failed" and not second.get("skipped_in_last_run")


def test_relative_data_folder_reaches_the_kernels_absolute(books, tmp_path, monkeypatch):
    # Kernels run inside the notebooks' folder: a relative ../shared/data must not be read from there.
    write_notebook(books, "02_env", "import os\nprint('data at', os.environ['KDREPRO_DATA_DIR'])", SAVE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDREPRO_DATA_DIR", "relative/data")
    [manifest] = run(books, tmp_path / "reports", ["02_env"], profile="smoke")
    assert manifest["status"] == "ok", manifest["error"]
    page = (tmp_path / "reports" / "02_env.html").read_text(encoding="utf-8")
    assert f"data at {tmp_path / 'relative' / 'data'}" in page


def test_a_failed_rerun_keeps_the_last_good_report(books, tmp_path):
    reports = tmp_path / "reports"
    assert run(books, reports, ["00_ok"], profile="smoke")[0]["status"] == "ok"
    page = (reports / "00_ok.html").read_text(encoding="utf-8")
    write_notebook(books, "00_ok", "raise ValueError('broken later')", SAVE)
    assert run(books, reports, ["00_ok"], profile="smoke")[0]["status"] == "failed"
    assert (reports / "00_ok.html").read_text(encoding="utf-8") == page
    assert json.loads((reports / "00_ok" / "manifest.json").read_text())["status"] == "ok"
    assert (reports / "00_ok" / "metrics.json").exists()
    assert "broken later" in (reports / ".staging" / "00_ok.html").read_text(encoding="utf-8")
    assert "a later run" in (reports / "index.html").read_text(encoding="utf-8")
    write_notebook(books, "00_ok", PROGRESS, SAVE)  # fixed: the next run replaces the report, staging empties
    assert run(books, reports, ["00_ok"], profile="smoke", params=["X=7"])[0]["status"] == "ok"
    assert json.loads((reports / "00_ok" / "metrics.json").read_text())["headline"]["x"] == 0.7
    assert not (reports / ".staging" / "00_ok").exists()
    assert "a later run" not in (reports / "index.html").read_text(encoding="utf-8")


# -- rendering helpers ---------------------------------------------------------------------------


def test_collapse_progress_keeps_each_bar_final_state():
    text = "\rloop: 10%\rloop: 50%\rloop: 100%\nafter\n\rother: 1/2\rother: 2/2\n"
    assert run_all.collapse_progress(text) == "loop: 100%\nafter\nother: 2/2\n"
    cleared = "\repochs: 1/3\repochs: 3/3\r          \r"
    assert run_all.collapse_progress(cleared).strip() == ""


def test_clean_outputs_merges_streams_and_unreddens_bars():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="\rfits: 0/2 [00:00<?, ?it/s]"),
        nbformat.v4.new_output("stream", name="stdout", text="line\n"),
        nbformat.v4.new_output("stream", name="stderr", text="\rfits: 2/2 [00:01<00:00, 2.0it/s]\n"),
        nbformat.v4.new_output("stream", name="stderr", text="UserWarning: real warning\n"),
    ]
    other = nbformat.v4.new_code_cell("y")
    other.outputs = [nbformat.v4.new_output("stream", name="stderr", text="\rfits: 2/2 [00:01<00:00]\n")]
    nb.cells = [cell, other]
    run_all.clean_outputs(nb)
    texts = {(o.name, o.text) for o in cell.outputs}
    assert ("stdout", "line\n") in texts
    assert ("stderr", "fits: 2/2 [00:01<00:00, 2.0it/s]\nUserWarning: real warning\n") in texts
    assert [(o.name, o.text) for o in other.outputs] == [("stdout", "fits: 2/2 [00:01<00:00]\n")]


def test_math_becomes_mathml_outside_code_and_prices():
    converted = run_all.math_to_mathml("a $x_i^2$ b `$HOME` costs $5, \\$ stays, and $$\\sum_k w_k$$")
    assert converted.count("<math") == 2
    assert 'display="inline"' in converted and 'display="block"' in converted
    assert "`$HOME`" in converted and "costs $5" in converted and "\\$ stays" in converted
    assert "<msub><mi>x</mi>" in converted or "<msubsup><mi>x</mi>" in converted


def test_parameter_comment_with_equals_sign_is_rejected():
    with pytest.raises(run_all.ParameterError, match="contains '='"):
        run_all.parse_parameters("A = 1  # x = 2\n")
