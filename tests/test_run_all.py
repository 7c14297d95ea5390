"""The runner (kdrepro.book, run_all.py) on tiny throwaway notebooks: parameter types and values checked
first, skip-if-unchanged, failures named, one run per reports folder, publishing that survives a kill,
pages and index."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest
import torch

from kdrepro import jobs, report
from kdrepro.book import execute, glance, index, params, render

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import run_all  # noqa: E402 - the command line at the repository root

PARAMS = """X = 3  # a count
RATE = 0.5  # a float
NAME = "tiny"  # a string
FLAG = False  # a switch
SEEDS = [0, 1]  # a list of ints
EPOCHS = 3  # at most
MODELS = ["bpr"]  # base models
PROTOCOLS = ["loo_full"]  # protocols
TEACHER_DIMS = {"bpr": 8}  # per model
LR = 0.01  # a rate
TOLERANCE = 0.05  # a share
DEVICE = "auto"  # device
THREADS = 0  # torch threads (0: default)
RESULTS_DIR = "../reports/tiny"  # where metrics.json goes"""

SAVE = """import json, pathlib
folder = pathlib.Path(RESULTS_DIR)
(folder / "tables").mkdir(parents=True, exist_ok=True)
(folder / "tables" / "t.csv").write_text("a,b\\n1,2\\n")
(folder / "metrics.json").write_text(json.dumps({"headline": {"x": X / 10, "name": NAME}}))
print("ran with", X, RATE, NAME, FLAG, SEEDS)"""

PROGRESS = """import time
from tqdm.auto import tqdm
for _ in tqdm(range(40), desc="loop", mininterval=0):
    time.sleep(0.005)
print("[1/2] bpr-8 Teacher seed 0: trained", flush=True)
print("[2/2] bpr-8 Student seed 0: trained", flush=True)"""


def write_notebook(folder: Path, stem: str, *cells: str, params: str = PARAMS) -> Path:
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell(params)
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {stem} title\n\nAbstract."), parameters]
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


def run(books: Path, reports: Path, stems, log=lambda *_: None, **kwargs):
    return execute.run(notebooks=stems, notebooks_dir=books, reports_dir=reports, log=log, **kwargs)


# -- parameters ----------------------------------------------------------------------------------


def test_parse_parameters_reads_literals_and_comments():
    found = params.parse_parameters(PARAMS)
    assert {n: p.value for n, p in found.items()}["SEEDS"] == [0, 1]
    assert found["RATE"].value == 0.5 and found["RATE"].comment == "a float"
    assert list(found) == [line.split(" = ")[0] for line in PARAMS.splitlines()]


@pytest.mark.parametrize(
    "source",
    ["import numpy as np", "X: int = 3", "X = np.arange(3)", "X = Y = 1", "X = 1\nX = 2", "X = [i for i in ()]"],
)
def test_parse_parameters_rejects_anything_but_literal_assignments(source):
    with pytest.raises(params.ParameterError):
        params.parse_parameters(source)


def test_parameter_comment_with_equals_sign_is_rejected():
    with pytest.raises(params.ParameterError, match="contains '='"):
        params.parse_parameters("A = 1  # x = 2\n")


def test_a_line_papermill_cannot_read_is_an_error(tmp_path):
    # Valid Python, but papermill's parser cuts the string at its "#": overrides would be injected wrongly.
    path = write_notebook(tmp_path, "00_hash", params='D = "a # b"  # a string with a hash\nX = 1  # one')
    with pytest.raises(params.ParameterError, match="papermill cannot read the line of D"):
        params.declared_parameters(path)
    assert papermill.inspect_notebook(str(write_notebook(tmp_path, "00_fine")))["X"]["default"] == "3"


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
        ("RESULTS_DIR=/tmp/x", "set by the runner"),
        ("00:NOPE=1", "unknown parameter 'NOPE'"),
        ("X", "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_fail_before_anything_runs(books, tmp_path, override, message):
    reports = tmp_path / "reports"
    with pytest.raises(params.ParameterError, match=message.replace("[", r"\[")):
        run(books, reports, ["00_ok"], profile="smoke", params=[override])
    assert not reports.exists(), "nothing may run or be written when the parameters are invalid"


BAD_VALUES = [
    ("SEEDS=[]", r"SEEDS = \[\]: must not be empty"),
    ("SEEDS=[0,0]", "a seed is repeated"),
    ("SEEDS=[-1]", r"SEEDS: \[-1\] below the allowed minimum 0"),
    ("MODELS=['nope']", r"MODELS: unknown model\(s\) \['nope'\]; allowed: bpr, mf, neumf"),
    ("PROTOCOLS=['nope']", r"unknown protocol\(s\) \['nope'\]; allowed: loo_sampled, loo_full, holdout"),
    ("MODELS=['bpr','neumf']", r"TEACHER_DIMS = \{'bpr': 8\} has no entry for model\(s\) \['neumf'\]"),
    ("TEACHER_DIMS={'bpr': 0}", r"TEACHER_DIMS\['bpr'\] = 0: a dimension, allowed ≥ 1"),
    ("EPOCHS=-1", "EPOCHS = -1: a count, allowed ≥ 1"),
    ("EPOCHS=0", "EPOCHS = 0: a count, allowed ≥ 1"),
    ("X=-2", "X = -2: allowed ≥ 0"),
    ("THREADS=-3", "THREADS = -3: allowed ≥ 0"),
    ("LR=0", "LR = 0.0: allowed > 0"),
    ("TOLERANCE=1.5", "TOLERANCE = 1.5: a share, allowed 0 … 1"),
    ("DEVICE='gpu'", 'DEVICE = \'gpu\': allowed: "auto", "cpu", "cuda"'),
    ("DEVICE='cuda:7'", "DEVICE = 'cuda:7': (CUDA is not available|this machine has)"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES)
def test_bad_values_fail_before_anything_runs_naming_notebook_parameter_and_allowed(books, tmp_path, override, message):
    reports = tmp_path / "reports"
    with pytest.raises(params.ParameterError, match=message) as error:
        run(books, reports, ["00_ok"], profile="smoke", params=[override])
    assert "00_ok.ipynb" in str(error.value)
    assert not reports.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_an_error(books, tmp_path):
    with pytest.raises(params.ParameterError, match="CUDA is not available on this machine"):
        run(books, tmp_path / "r", ["00_ok"], profile="smoke", params=["DEVICE='cuda'"])


def test_every_profile_of_every_chapter_passes_the_value_checks(tmp_path):
    for profile in ("smoke", "quick", "paper"):
        jobs = execute.plan(execute.discover(), ROOT / "notebooks", tmp_path, profile)
        assert [job.stem for job in jobs] == execute.discover()


def test_good_overrides_are_coerced(books, tmp_path):
    jobs = execute.plan(
        ["00_ok"], books, tmp_path, "smoke", ["X=7", "RATE=1", "NAME=plain words", "SEEDS=(4, 5)", "FLAG=True"]
    )
    values = jobs[0].parameters
    assert values["X"] == 7 and values["RATE"] == 1.0 and isinstance(values["RATE"], float)
    assert values["NAME"] == "plain words" and values["SEEDS"] == [4, 5] and values["FLAG"] is True
    assert values["RESULTS_DIR"] == str((tmp_path / "00_ok").resolve())
    assert jobs[0].overrides["cli"]["X"] == 7


def test_main_exits_2_on_a_bad_override(books, tmp_path, capsys):
    code = run_all.main(["--notebooks-dir", str(books), "--reports-dir", str(tmp_path / "r"), "-p", "X=oops"])
    assert code == 2
    assert "X=oops" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_only_rejects_unknown_notebooks(books, tmp_path):
    with pytest.raises(params.ParameterError, match="matches no notebook"):
        run(books, tmp_path / "r", ["00_ok"], only=["07"])


def test_chapters_are_discovered_in_numbered_order(books):
    write_notebook(books, "07_later", SAVE)
    (books / "scratch.ipynb").write_text((books / "00_ok.ipynb").read_text())
    assert execute.discover(books) == ["00_ok", "01_fails", "07_later"]


# -- execution -----------------------------------------------------------------------------------


def test_failed_notebook_names_its_exception_on_console_page_and_index(books, tmp_path, capsys):
    reports = tmp_path / "reports"
    code = run_all.main(["--notebooks-dir", str(books), "--reports-dir", str(reports), "--profile", "smoke"])
    assert code == 1
    console = capsys.readouterr().out
    assert "ValueError: boom from the notebook" in console
    failed = json.loads((reports / "01_fails" / "manifest.json").read_text())
    assert failed["status"] == "failed" and failed["error"].startswith("ValueError: boom from the notebook")
    assert "boom from the notebook" in (reports / "01_fails.html").read_text(encoding="utf-8")
    ok = json.loads((reports / "00_ok" / "manifest.json").read_text())
    assert ok["status"] == "ok" and ok["headline"] == {"x": 0.3, "name": "tiny"}
    index = (reports / "index.html").read_text(encoding="utf-8")
    assert "01_fails.html" in index and "ValueError: boom from the notebook" in index and "0.3000" in index
    run_manifest = json.loads((reports / "manifest.json").read_text())
    assert [n["status"] for n in run_manifest["run"]["notebooks"]] == ["ok", "failed"]


def test_manifest_page_and_progress(books, tmp_path):
    reports = tmp_path / "reports"
    lines: list[str] = []
    [manifest] = run(books, reports, ["00_ok"], log=lines.append, profile="quick", params=["X=5"])
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
        "overrides",
    ):
        assert key in manifest, key
    assert manifest["parameters"]["X"] == 5 and manifest["profile"] == "quick"
    assert manifest["kernel"] == "kdrepro"  # the fixed kernel, not the notebook's stored one
    assert manifest["peak_memory_mib"] > 0
    assert any("[00_ok] fit 1/2 · " in line for line in lines) and any("fit 2/2" in line for line in lines)
    page = (reports / "00_ok.html").read_text(encoding="utf-8")
    assert "ran with 5" in page
    assert page.count("loop:") == 1 and "40/40" in page, "one line per progress bar, in its final state"
    assert "<script" not in page and "mathjax" not in page.lower() and "require.js" not in page
    assert '<details class="code">' in page, "code is on the page, collapsed"
    assert "a count</span>" not in page and "X = 3  # a count" not in page, "parameters cells give way to the card"
    assert "Results at a glance" in page and "<code>X = 5</code>" in page and "-p (command line)" in page
    assert 'href="index.html"' in page
    stored = nbformat.read(reports / "00_ok" / "00_ok.ipynb", as_version=4)
    streams = [
        o for c in stored.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "stream"
    ]
    assert all("\r" not in o.text for o in streams)


def test_a_narrowed_run_says_what_the_whole_profile_still_lacks(books, tmp_path, monkeypatch):
    planned = {}

    def collect(chapters, **_):
        stem, _, parameters = chapters[0]
        planned.update(parameters)
        return {stem: ["enumerated"]}

    rows = [{"key": "a", "status": "missing", "est_seconds": 5400.0, "estimate": "fallback"},
            {"key": "a", "status": "missing", "est_seconds": 5400.0, "estimate": "fallback"},  # shared by sections
            {"key": "b", "status": "done", "est_seconds": 0.0, "estimate": ""}]
    monkeypatch.setattr(execute.fit_jobs, "collect_jobs", collect)
    monkeypatch.setattr(execute.fit_jobs, "plan", lambda found: rows)
    reports = tmp_path / "reports"
    [manifest] = run(books, reports, ["00_ok"], profile="quick", params=["X=5"])
    assert manifest["remaining"] == {"fits": 1, "thread_hours": 1.5, "estimate": "fallback",
                                     "command": "python run_all.py --profile quick --only 00_ok --plan"}
    assert planned["X"] == 3, "the whole profile is planned, without the command-line overrides"
    for page in (reports / "00_ok.html", reports / "index.html"):
        text = page.read_text(encoding="utf-8")
        assert "1 fits of the whole profile" in text and "≈ 1.5 thread-hours" in text, page.name
    [again] = run(books, reports, ["00_ok"], profile="quick", force=True)
    assert again["remaining"] is None
    assert "Not yet computed" not in (reports / "00_ok.html").read_text(encoding="utf-8")


def test_a_render_restores_missing_weights_before_its_notebook_runs(books, tmp_path, monkeypatch):
    calls = []
    reports = tmp_path / "reports"

    def collect(chapters, **_):
        stem, _, parameters = chapters[0]
        calls.append(("planned", stem, parameters["X"]))
        return {stem: ["enumerated"]}

    def restore(found, **_):
        calls.append(("restored", found))
        return ["fit a", "fit b"]

    def papermill_run(*args, **kwargs):
        calls.append(("notebook",))
        return papermill_execute(*args, **kwargs)

    papermill_execute = execute.papermill.execute_notebook
    monkeypatch.setattr(execute.papermill, "execute_notebook", papermill_run)

    monkeypatch.setattr(execute.fit_jobs, "collect_jobs", collect)
    monkeypatch.setattr(execute.fit_jobs, "restore_weights", restore)
    monkeypatch.setattr(execute.fit_jobs, "weights_gone", lambda ledger, store: False)
    [manifest] = run(books, reports, ["00_ok"], profile="quick")
    assert manifest["refitted_before_run"] == 0 and calls == [("notebook",)], "nothing planned: no weights gone"
    calls.clear()
    monkeypatch.setattr(execute.fit_jobs, "weights_gone", lambda ledger, store: True)
    [manifest] = run(books, reports, ["00_ok"], profile="quick", params=["X=5"], force=True)
    assert manifest["status"] == "ok" and manifest["refitted_before_run"] == 2
    # Planned with the parameters it runs with; the refits come before the notebook runs.
    assert calls[:3] == [("planned", "00_ok", 5), ("restored", {"00_ok": ["enumerated"]}), ("notebook",)]


def test_as_published_reruns_each_chapter_under_the_settings_its_page_states(books, tmp_path):
    reports = tmp_path / "reports"
    [first] = run(books, reports, ["00_ok"], profile="smoke", params=["X=5", 'NAME="paper-ish"'])
    profile, params = execute.published_settings(reports, "00_ok")
    assert profile == "smoke" and sorted(params) == ["00_ok:NAME='paper-ish'", "00_ok:X=5"]
    assert execute.published_settings(reports, "01_fails") is None
    [again] = execute.run_as_published(only=["00_ok"], notebooks_dir=books, reports_dir=reports, force=True,
                                       log=lambda *_: None)
    assert again["status"] == "ok" and again["started"] != first["started"]
    assert again["profile"] == "smoke" and again["parameters"]["X"] == 5 and again["parameters"]["NAME"] == "paper-ish"
    code = run_all.main(["--as-published", "--profile", "quick", "--reports-dir", str(reports),
                         "--notebooks-dir", str(books), "--only", "00_ok"])
    assert code == 2, "--as-published takes the profile from the page, not from the command line"


def test_plan_as_published_plans_each_chapter_under_the_settings_its_page_states(books, tmp_path, monkeypatch,
                                                                                 capsys):
    reports = tmp_path / "reports"
    run(books, reports, ["00_ok"], profile="smoke", params=["X=5"])
    planned: dict[str, dict] = {}

    def collect(chapters, **_):
        planned.update({stem: parameters for stem, _, parameters in chapters})
        return {}

    monkeypatch.setattr(run_all.jobs, "collect_jobs", collect)
    code = run_all.main(["--as-published", "--plan", "--reports-dir", str(reports), "--notebooks-dir", str(books)])
    assert code == 0, capsys.readouterr().err
    assert planned["00_ok"]["X"] == 5 and planned["00_ok"]["NAME"] == "tiny", "the page's profile and -p"
    assert planned["01_fails"]["X"] == 3, "a chapter never published: the default profile"
    code = run_all.main(["--as-published", "--plan", "-p", "X=4", "--reports-dir", str(reports),
                         "--notebooks-dir", str(books)])
    assert code == 2 and "drop --profile and -p" in capsys.readouterr().err


def test_published_files_are_world_readable(books, tmp_path):
    reports = tmp_path / "reports"
    run(books, reports, ["00_ok"], profile="smoke")
    for path in [
        reports / "00_ok.html",
        reports / "index.html",
        reports / "manifest.json",
        *(reports / "00_ok").rglob("*"),
    ]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: {oct(mode)}"


def test_unchanged_notebooks_are_skipped_until_something_changes(books, tmp_path, monkeypatch):
    monkeypatch.setattr(execute.provenance, "code_hash", lambda: "fixed")  # others may edit kdrepro/ meanwhile
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


READS_ENTRY = """import json, os, pathlib
from kdrepro import jobs
name = "toy/students/fit-k.json"  # what run_jobs notes for each entry it hands back
entry = json.loads((pathlib.Path(os.environ["KDREPRO_RESULTS_DIR"]) / name).read_text())
with open(os.environ[jobs.READS_FILE_ENV], "a") as handle:
    handle.write(json.dumps({"entry": name, "digest": jobs.entry_digest(entry)}) + "\\n")"""


def test_a_page_reruns_and_the_index_warns_when_a_ledger_entry_it_read_is_superseded(books, tmp_path, monkeypatch):
    monkeypatch.setattr(execute.provenance, "code_hash", lambda: "fixed")
    monkeypatch.setenv("KDREPRO_RESULTS_DIR", str(tmp_path / "results"))
    entry = tmp_path / "results" / "toy" / "students" / "fit-k.json"
    entry.parent.mkdir(parents=True)
    entry.write_text(json.dumps({"key": "k", "test": {"HR@5": 0.5}}))
    write_notebook(books, "00_ok", READS_ENTRY, SAVE)
    reports, logged = tmp_path / "reports", []
    first = run(books, reports, ["00_ok"], profile="smoke")[0]
    assert first["status"] == "ok" and list(first["ledger_entries"]) == ["toy/students/fit-k.json"]
    assert run(books, reports, ["00_ok"], profile="smoke")[0].get("skipped_in_last_run")
    assert "ledger entries this page read changed" not in (reports / "index.html").read_text()
    entry.write_text(json.dumps({"key": "k", "test": {"HR@5": 0.49}, "superseded": [{"test": {"HR@5": 0.5}}]}))
    index.write(reports, ["00_ok"])
    assert "1 of the ledger entries this page read changed" in (reports / "index.html").read_text()
    again = run(books, reports, ["00_ok"], profile="smoke", log=logged.append)[0]
    assert not again.get("skipped_in_last_run") and again["ledger_entries"] != first["ledger_entries"]
    assert any("changed since" in line and "rerunning" in line for line in logged)
    assert "ledger entries this page read changed" not in (reports / "index.html").read_text()


def test_a_notebook_reading_the_reports_reruns_when_a_report_changes(books, tmp_path, monkeypatch):
    monkeypatch.setattr(execute.provenance, "code_hash", lambda: "fixed")
    reads = PARAMS + '\nREPORTS_DIR = "../reports"  # the published chapter reports read'
    write_notebook(books, "08_card", SAVE, params=reads)
    reports = tmp_path / "reports"
    run(books, reports, ["00_ok"], profile="smoke")
    first = run(books, reports, ["08_card"], profile="smoke")[0]
    assert first["inputs"]["reports_read"].keys() == {"00_ok/metrics.json", "00_ok/manifest.json"}
    assert run(books, reports, ["08_card"], profile="smoke")[0].get("skipped_in_last_run")
    run(books, reports, ["00_ok"], profile="smoke", params=["X=5"])  # another chapter's report changes
    again = run(books, reports, ["08_card"], profile="smoke")[0]
    assert not again.get("skipped_in_last_run") and again["input_hash"] != first["input_hash"]
    assert "reports_read" not in run(books, reports, ["00_ok"], profile="smoke")[0]["inputs"]


def test_failed_notebooks_are_never_skipped(books, tmp_path):
    reports = tmp_path / "reports"
    assert run(books, reports, ["01_fails"], profile="smoke")[0]["status"] == "failed"
    second = run(books, reports, ["01_fails"], profile="smoke")[0]
    assert second["status"] == "failed" and not second.get("skipped_in_last_run")


def test_relative_data_folder_reaches_the_kernels_absolute(books, tmp_path, monkeypatch):
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
    assert "broken later" in (reports / ".staging" / "failed" / "00_ok.html").read_text(encoding="utf-8")
    index = (reports / "index.html").read_text(encoding="utf-8")
    assert "A later run" in index and "ValueError: broken later" in index
    write_notebook(books, "00_ok", PROGRESS, SAVE)  # fixed: the next run replaces the report
    assert run(books, reports, ["00_ok"], profile="smoke", params=["X=7"])[0]["status"] == "ok"
    assert json.loads((reports / "00_ok" / "metrics.json").read_text())["headline"]["x"] == 0.7
    assert not (reports / ".staging" / "failed" / "00_ok").exists()
    assert not list((reports / ".staging").glob("run-*")), "a run removes its own staging folder"
    assert "A later run" not in (reports / "index.html").read_text(encoding="utf-8")


def test_a_second_run_on_the_same_reports_stops_at_once(books, tmp_path):
    write_notebook(books, "02_slow", "import time\ntime.sleep(6)", SAVE)
    reports = tmp_path / "reports"
    script = (
        "import sys; from kdrepro.book import execute; "
        f"m = execute.run(notebooks=['02_slow'], notebooks_dir={str(books)!r}, reports_dir={str(reports)!r}, "
        "profile='smoke', log=lambda *_: None); sys.exit(m[0]['status'] != 'ok')"
    )
    first = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    lock = reports / ".lock"
    deadline = time.time() + 60
    while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.1)
    started = time.perf_counter()
    with pytest.raises(execute.RunLocked, match=rf"another run \(pid {first.pid}\) is writing .*reports/"):
        run(books, reports, ["00_ok"], profile="smoke")
    assert time.perf_counter() - started < 5, "the second run stops at once, it does not wait"
    assert first.wait(timeout=120) == 0, "the first run is not disturbed"
    assert json.loads((reports / "02_slow" / "manifest.json").read_text())["status"] == "ok"
    assert run(books, reports, ["00_ok"], profile="smoke")[0]["status"] == "ok", "the lock is released"


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (no except/finally of the publish steps catches it)."""


def _report(reports: Path, stem: str, tag: str) -> tuple[Path, Path]:
    folder = reports / stem
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(tag)
    page = reports / f"{stem}.html"
    page.write_text(tag)
    return folder, page


@pytest.mark.parametrize("steps_done", [0, 1, 2, 3, 4])
def test_a_kill_between_publish_steps_never_loses_the_last_good_report(tmp_path, monkeypatch, steps_done):
    reports = tmp_path / "reports"
    folder, page = _report(reports, "00_x", "old")
    staged, staged_page = _report(reports / ".staging" / "run-1", "00_x", "new")
    calls = {"n": 0}
    real_replace, real_rmtree = os.replace, execute.shutil.rmtree

    def replace(src, dst):
        if calls["n"] == steps_done:
            raise Killed
        calls["n"] += 1
        real_replace(src, dst)

    def rmtree(path, *args, **kwargs):
        if calls["n"] == steps_done:
            raise Killed
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(execute.os, "replace", replace)
    monkeypatch.setattr(execute.shutil, "rmtree", rmtree)
    with pytest.raises(Killed):
        execute.publish(staged, staged_page, folder, page)
    monkeypatch.undo()
    execute.recover(reports, log=lambda *_: None)
    shown = ((folder / "metrics.json").read_text(), page.read_text())
    assert shown in {("old", "old"), ("new", "new")}, f"killed after {steps_done} steps: {shown}"
    assert shown == (("new", "new") if steps_done == 4 else ("old", "old"))
    assert not list(reports.glob(".*.old")) and not (reports / ".staging" / "run-1").exists()


def test_after_a_killed_publish_a_failing_run_still_keeps_the_good_report(books, tmp_path, monkeypatch):
    reports = tmp_path / "reports"
    assert run(books, reports, ["00_ok"], profile="smoke")[0]["status"] == "ok"
    good = (reports / "00_ok" / "metrics.json").read_text()
    old = reports / ".00_ok.old"  # a kill after the first publish step of a later run
    old.mkdir()
    os.replace(reports / "00_ok", old / "folder")
    write_notebook(books, "00_ok", "raise ValueError('later failure')", SAVE)
    assert run(books, reports, ["00_ok"], profile="smoke")[0]["status"] == "failed"
    assert (reports / "00_ok" / "metrics.json").read_text() == good
    assert json.loads((reports / "00_ok" / "manifest.json").read_text())["status"] == "ok"


def test_render_only_rebuilds_pages_from_the_stored_notebook(books, tmp_path):
    reports = tmp_path / "reports"
    write_notebook(books, "01_fails", SAVE)  # both chapters ok
    run(books, reports, ["00_ok"], profile="smoke", params=["X=6"])
    run(books, reports, ["01_fails"], profile="quick")
    manifest = (reports / "00_ok" / "manifest.json").read_text()
    (reports / "00_ok.html").write_text("stale")
    rendered = execute.render_only(notebooks_dir=books, reports_dir=reports, log=lambda *_: None)
    assert [m["stem"] for m in rendered] == ["00_ok", "01_fails"]
    page = (reports / "00_ok.html").read_text(encoding="utf-8")
    assert "ran with 6" in page and "<code>X = 6</code>" in page and "profile <b>smoke</b>" in page
    assert 'href="01_fails.html" rel="next"' in page
    assert (reports / "00_ok" / "manifest.json").read_text() == manifest, "re-rendering changes no manifest"
    index = (reports / "index.html").read_text(encoding="utf-8")
    assert "profile <b>smoke</b>" in index and "profile <b>quick</b>" in index, "each chapter shows its own run"


# -- pages, glance, progress ---------------------------------------------------------------------


def test_collapse_progress_keeps_each_bar_final_state():
    text = "\rloop: 10%\rloop: 50%\rloop: 100%\nafter\n\rother: 1/2\rother: 2/2\n"
    assert render.collapse_progress(text) == "loop: 100%\nafter\nother: 2/2\n"
    cleared = "\repochs: 1/3\repochs: 3/3\r          \r"
    assert render.collapse_progress(cleared).strip() == ""


def test_clean_outputs_merges_streams_and_unreddens_bars():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="\rfits: 0/2 [00:00<?, ?it/s]"),
        nbformat.v4.new_output("stream", name="stderr", text="\rfits: 2/2 [00:01<00:00, 2.0it/s]\n"),
        nbformat.v4.new_output("stream", name="stdout", text="line\n"),
        nbformat.v4.new_output("stream", name="stderr", text="UserWarning: real warning\n"),
    ]
    other = nbformat.v4.new_code_cell("y")
    other.outputs = [nbformat.v4.new_output("stream", name="stderr", text="\rfits: 2/2 [00:01<00:00]\n")]
    nb.cells = [cell, other]
    render.clean_outputs(nb)
    assert [(o.name, o.text) for o in cell.outputs] == [
        ("stdout", "fits: 2/2 [00:01<00:00, 2.0it/s]\n"),
        ("stdout", "line\n"),
        ("stderr", "UserWarning: real warning\n"),
    ]
    assert [(o.name, o.text) for o in other.outputs] == [("stdout", "fits: 2/2 [00:01<00:00]\n")]


def test_math_becomes_mathml_outside_code_and_prices():
    converted = render.math_to_mathml("a $x_i^2$ b `$HOME` costs $5, \\$ stays, and $$\\sum_k w_k$$")
    assert converted.count("<math") == 2
    assert 'display="inline"' in converted and 'display="block"' in converted
    assert "`$HOME`" in converted and "costs $5" in converted and "\\$ stays" in converted


@pytest.mark.parametrize(
    "tex",
    [
        r"\arg\max_m \alpha^x_m",
        r"\big(\arg\max \alpha\big) \in Z",
        r"\lVert h_t(x) - f(h_s(x)) \rVert^2",
        r"\sum_{x} \Big\lVert h_t(x) - E\big(h_s(x)\big) \Big\rVert_2^2",
    ],
)
def test_math_the_converter_cannot_spell_is_rewritten(tex):
    converted = render.math_to_mathml(f"${tex}$")
    assert converted.startswith("<math") and "\\" not in converted, converted


def test_glance_reads_verdicts_in_either_layout(tmp_path):
    old = glance.verdict_counts(
        {"verdicts": {"reproduced": 3, "not": 1, "partially": 0}, "ordering": {"claims": 4, "hold": 3}}
    )
    assert old == {"cells": {"reproduced": 3, "not": 1}, "gains": None, "claims": {"hold": 3, "do not hold": 1}}
    new = glance.verdict_counts(
        {"verdicts": {"cells": {"reproduced": 2}, "gains": {"reproduced": 1, "not": 1}, "claims": {"hold": 2}}}
    )
    assert new == {"cells": {"reproduced": 2}, "gains": {"reproduced": 1, "not": 1}, "claims": {"hold": 2}}
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "main_vs_paper.csv").write_text(
        "base,method,metric,paper,ours_mean,rel_delta,verdict\nBPR,RD,HR@5,0.4533,0.4428,-0.0232,not\n"
        "BPR,DE,HR@5,0.48,0.48,0.0,reproduced\n"
    )
    (tmp_path / "tables" / "claims.csv").write_text(
        "base,metric,claim,holds\nBPR,HR@5,Student < RD,False\nBPR,HR@5,A < B,True\n"
    )
    assert glance.misses({}, tmp_path) == [
        "claims: claim “Student < RD” does not hold (BPR HR@5)",
        "main_vs_paper: BPR RD HR@5 (not) — ours 0.4428 vs paper 0.4533 (-2.3 %)",
    ]


def test_progress_turns_fit_lines_into_console_lines():
    lines: list[str] = []
    progress = execute.Progress("03_x", lines.append)
    progress.write("[3/12] bpr-20 FTD seed 0: trained in 26.3 s\nnoise\n[4/1")
    progress.write("2] bpr-20 HTD seed 0: loaded\n")
    assert [line.split(" · ")[0] for line in lines] == ["[03_x] fit 3/12", "[03_x] fit 4/12"]
    assert lines[1].endswith("bpr-20 HTD seed 0: loaded")


def test_papermill_errors_show_the_kernels_exception():
    exc = papermill.PapermillExecutionError(3, 5, "raise ValueError", "ValueError", "bad thing", ["tb"])
    assert execute.error_text(exc) == "ValueError: bad thing (cell 5)"


def test_a_plus_that_continues_a_sentence_is_no_bullet():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("IR-RRD (RRD\n+ IR) beats RRD.\n\n- a real bullet")]
    render.MathToMathML().preprocess(nb, {})
    assert nb.cells[0].source == "IR-RRD (RRD\n\\+ IR) beats RRD.\n\n- a real bullet"


def test_a_displayed_dict_becomes_a_table_and_word_cells_align_left():
    table = render._dict_table("{'device': 'cpu',\n 'torch_threads': 1}")
    assert table.count("<tr>") == 2 and "<th class='t'>device</th><td class='t'>cpu</td>" in table
    assert render._dict_table("[1, 2]") is None and render._dict_table("Interactions('x', users=3)") is None
    cells = render._align_text_cells('<td>0.1234</td><td>loo_full</td><td class="data col1">BPR</td><td>–</td>')
    assert cells == '<td>0.1234</td><td class="t">loo_full</td><td class="t data col1">BPR</td><td>–</td>'


def test_a_stored_one_point_sweep_figure_becomes_not_run():
    nb = nbformat.v4.new_notebook()
    fits = nbformat.v4.new_code_cell("lambdas = run()")
    fits.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="[1/1] bpr-20 RRD lambda_rrd=0.001 seed 0: ok\n")
    ]
    figure = nbformat.v4.new_code_cell('recorder.figure("l", report.sweep_plot(lambdas.results, "lambda_rrd", M))')
    figure.outputs = [nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<F>"})]
    two = nbformat.v4.new_code_cell('recorder.figure("p", report.sweep_plot(sizes.results, "phi", M))')
    two.outputs = [nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo="})]
    sizes = nbformat.v4.new_code_cell("sizes = run()")
    sizes.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="[1/2] a phi=0.1 seed 0\n[2/2] a phi=1.0 seed 0\n")
    ]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# t"),
        fits,
        figure,
        nbformat.v4.new_markdown_cell("## next"),
        sizes,
        two,
    ]
    render.ChapterPage().preprocess(nb, {"kdrepro": {"card_html": ""}})
    [shown] = nb.cells[3].outputs
    assert "Not run in this profile" in shown.data["text/html"] and "lambda_rrd" in shown.data["text/html"]
    assert "image/png" in nb.cells[-1].outputs[0].data, "a two-point sweep is still drawn"


def test_long_column_names_may_wrap_after_underscores():
    markup = '<table><tr><th class="col_heading">paper_parameters_millions</th><td>a_b</td></tr></table>'
    wrapped = render._breakable_headers(markup)
    assert '<th class="col_heading">paper_<wbr>parameters_<wbr>millions</th>' in wrapped and "<td>a_b</td>" in wrapped


def test_shown_tables_are_rebuilt_from_their_csv_with_todays_view(tmp_path):
    frame = pd.DataFrame({"method": ["SingleCF bpr", "SingleCF cml"], "Recall@10": [0.0257, 0.0041]})
    frame.columns.name = "metric"
    (tmp_path / "tables").mkdir()
    for name in ("raw", "named", "rounded"):
        frame.to_csv(tmp_path / "tables" / f"{name}.csv", index=False)
    named = frame.set_index("method")

    def cell(source, stored):
        code = nbformat.v4.new_code_cell(source)
        code.outputs = [nbformat.v4.new_output("execute_result", data={"text/html": stored}, execution_count=1)]
        return code

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# t"),
        cell('recorder.show("raw", frame)', frame._repr_html_()),
        cell('recorder.show("named", named)', named._repr_html_()),
        cell('t = 1\nrecorder.show("rounded", t, report.show_table(t, precision=2))', "<table>stored</table>"),
    ]
    render.ChapterPage().preprocess(nb, {"kdrepro": {"card_html": "", "folder": tmp_path}})
    raw, kept, rounded = (c.outputs[0].data["text/html"] for c in nb.cells[2:])
    assert "<th>0</th>" not in raw and ">SingleCF bpr</td>" in raw, "row numbers were no data: the index goes"
    assert kept.startswith("<div>") and "<th>SingleCF bpr</th>" in kept, "a meaningful index is not in the CSV: kept"
    assert ">0.03</td>" in rounded and "stored" not in rounded, "show_table's precision is the call's"


def test_figures_get_alt_text_from_their_png_or_their_plotting_call(tmp_path):
    figure = report.training_curves(pd.DataFrame({"epoch": [1, 2], "loss": [0.9, 0.5]}), "loss")
    report.write_figure(tmp_path / "figures" / "drawn.png", figure)
    params = nbformat.v4.new_code_cell('METRICS = ["HR@5", "NDCG@5"]  # metrics')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), params, nbformat.v4.new_code_cell("from kdrepro import report")]
    for source in (
        'recorder.figure("drawn", report.training_curves(h, "loss"))',
        'sweep = report.sweep_plot(r, "phi", METRICS)\nrecorder.figure("older", sweep)',
        'recorder.figure("other", make())',
    ):
        cell = nbformat.v4.new_code_cell(source)
        cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo="})]
        nb.cells.append(cell)
    render.ChapterPage().preprocess(nb, {"kdrepro": {"card_html": "", "folder": tmp_path}})
    drawn, older, other = (c.outputs[0].metadata["image/png"]["alt"] for c in nb.cells[-3:])
    assert drawn == "Figure “drawn”: loss against epoch", "what the saved PNG says it draws"
    assert older == (
        "Figure “older”: Mean test HR@5, NDCG@5 (error bars: std over seeds) against the swept column phi."
    ), "a PNG saved without a description: the plotting function's docstring, with the call's arguments"
    assert other.startswith("Figure “other” of section"), "nothing known: its name and section"


def _bar_state(visibility: str | None) -> dict:
    layout = {"state": {"visibility": visibility}} if visibility else {"state": {}}
    return {
        "box": {
            "state": {"children": ["IPY_MODEL_left", "IPY_MODEL_bar", "IPY_MODEL_right"], "layout": "IPY_MODEL_lay"}
        },
        "lay": layout,
        "left": {"state": {"_model_name": "HTMLModel", "value": "epochs:&nbsp;100%"}},
        "bar": {"state": {"max": 2, "value": 2}},
        "right": {"state": {"_model_name": "HTMLModel", "value": "&nbsp;2/2&nbsp;[00:01&lt;00:00,&nbsp;1.5it/s]"}},
    }


def test_widget_bars_become_their_final_text_and_hidden_ones_vanish():
    view = {"application/vnd.jupyter.widget-view+json": {"model_id": "box"}}
    assert render._widget_text(view, _bar_state(None)) == "epochs: 100% 2/2 [00:01<00:00, 1.5it/s]"
    assert render._widget_text(view, _bar_state("hidden")) is None, "leave=False bars are cleared, as in a terminal"


@pytest.mark.parametrize("steps_done", [1, 3])
def test_a_sigkill_during_publish_never_loses_the_last_good_report(tmp_path, steps_done):
    reports = tmp_path / "reports"
    folder, page = _report(reports, "00_x", "old")
    staged, staged_page = _report(reports / ".staging" / "run-1", "00_x", "new")
    script = f"""
import os, signal
from pathlib import Path
from kdrepro.book import execute
real, calls = os.replace, [0]
def replace(src, dst):
    if calls[0] == {steps_done}:
        os.kill(os.getpid(), signal.SIGKILL)
    calls[0] += 1
    real(src, dst)
os.replace = replace
execute.publish(*(Path(p) for p in {[str(staged), str(staged_page), str(folder), str(page)]!r}))
"""
    killed = subprocess.run([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -signal.SIGKILL
    execute.recover(reports, log=lambda *_: None)
    assert ((folder / "metrics.json").read_text(), page.read_text()) == ("old", "old")
    assert not list(reports.glob(".*.old"))


def test_commit_ledger_outside_a_git_work_tree_fails_before_anything_runs(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match="not inside a git work tree"):
        jobs.Ledger(tmp_path / "plain", commit=True)
    monkeypatch.setenv("KDREPRO_RESULTS_DIR", str(tmp_path / "plain"))
    assert run_all.main(["--commit-ledger", "--list"]) == 2
    assert "not inside a git work tree" in capsys.readouterr().err
