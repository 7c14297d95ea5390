"""Run chapter notebooks under a profile and publish their reports, safely.

For each selected notebook (``notebooks/NN_*.ipynb``, in numbered order): resolve its parameters
(notebook ← profile ← ``-p``; types and values checked for every notebook before anything runs), skip it
when nothing it depends on changed since its last successful run (``force`` reruns), execute it with
papermill in the ``kdrepro`` kernel into this run's own staging folder, render it, and publish it.

Safety, for runs that crash, get killed or overlap:

- one exclusive lock per reports folder (``<reports>/.lock``, ``flock``): a second run stops at once
  with "another run (pid N) is writing <reports>/";
- a staging folder per run (``.staging/run-<time>-<pid>/``), removed at the end; stale ones of killed
  runs are removed by the next run (it holds the lock, so they are dead);
- :func:`publish` moves the published report aside into ``.<stem>.old/`` and deletes it only once the
  replacement is in place; :func:`recover` (run first, under the lock) finishes or undoes a publish a
  kill interrupted, so the last good report is never lost;
- a failed run never replaces a good report: its page is kept under ``.staging/failed/``, linked from
  the index;
- published files are world-readable (0644; folders 0755).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import papermill
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from kdrepro import jobs as fit_jobs
from kdrepro import profiles, scorecard
from kdrepro._io import environment_variable, write_json
from kdrepro.book import glance, index, provenance, render
from kdrepro.book.params import (
    SET_BY_RUNNER,
    Parameter,
    ParameterError,
    check_type,
    check_values,
    coerce,
    declared_parameters,
    parse_override,
)
from kdrepro.notebook_kernel import PrivateSocketKernelManager
from kdrepro.store import Store

ROOT = provenance.ROOT
NOTEBOOKS_DIR = ROOT / "notebooks"
REPORTS_DIR = ROOT / "reports"
KERNEL = "kdrepro"
STAGING = ".staging"
FAILED = "failed"  # under STAGING: the page of a failed run that kept the last good report
LOCK = ".lock"
HEARTBEAT_S = 60.0
PATH_VARIABLES = ("KDREPRO_DATA_DIR", "KDREPRO_CACHE_DIR")
_CHAPTER = re.compile(r"^\d{2}_\w+$")
_FIT_LINE = re.compile(r"^\[(\d+)/(\d+)\]\s*(.*)$")  # the library's "[i/n] label seed s: …" fit lines

Log = Callable[[str], None]


class RunLocked(RuntimeError):
    """Another run holds the reports folder."""


def discover(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[str]:
    """The chapter notebooks' stems (``NN_name``), in reading order."""
    return sorted(p.stem for p in Path(notebooks_dir).glob("*.ipynb") if _CHAPTER.match(p.stem))


# --------------------------------------------------------------------------------------------------
# Plan: which notebooks, with which parameters (all checked before anything runs)
# --------------------------------------------------------------------------------------------------


@dataclass
class Job:
    stem: str
    path: Path
    declared: dict[str, Parameter]
    parameters: dict[str, Any]  # final values passed to papermill
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # {"profile": …, "cli": …}


def select(stems: Sequence[str], only: Sequence[str]) -> list[str]:
    tokens = [t.strip() for item in only for t in item.split(",") if t.strip()]
    if not tokens:
        return list(stems)
    chosen = set()
    for token in tokens:
        hits = [s for s in stems if s == token or s.startswith(token)]
        if not hits:
            raise ParameterError(f"--only {token!r} matches no notebook; notebooks: {', '.join(stems)}")
        chosen.update(hits)
    return [s for s in stems if s in chosen]


def plan(
    stems: Sequence[str],
    notebooks_dir: Path,
    reports_dir: Path,
    profile: str,
    params: Sequence[str] = (),
) -> list[Job]:
    """Resolve and check the parameters of every selected notebook; ParameterError on any problem."""
    if profile not in profiles.PROFILES:
        raise ParameterError(f"--profile {profile!r}: choose one of {', '.join(profiles.PROFILES)}")
    parsed = [parse_override(p) for p in params]
    jobs: list[Job] = []
    used: set[int] = set()
    for stem in stems:
        path = Path(notebooks_dir) / f"{stem}.ipynb"
        if not path.is_file():
            raise ParameterError(f"{path} does not exist")
        declared = declared_parameters(path)
        from_profile = {
            k: check_type(k, v, declared, f"profile {profile!r} of {stem}")
            for k, v in profiles.overrides(stem, profile, declared).items()
        }
        from_cli: dict[str, Any] = {}
        for i, (scope, key, raw) in enumerate(parsed):
            if scope is not None and not stem.startswith(scope):
                continue
            if key not in declared and scope is None and key not in SET_BY_RUNNER:
                continue  # a global -p applies to the notebooks that declare it (checked below)
            used.add(i)
            from_cli[key] = check_type(key, coerce(raw, declared.get(key)), declared, f"-p {key}={raw} ({stem})")
        values = {name: p.value for name, p in declared.items()}
        values.update(from_profile)
        values.update(from_cli)
        check_values(f"{path.name} (profile {profile})", values, declared)
        if "RESULTS_DIR" in declared:
            values["RESULTS_DIR"] = str((Path(reports_dir) / stem).resolve())
        jobs.append(Job(stem, path, declared, values, {"profile": from_profile, "cli": from_cli}))
    for i, (scope, key, raw) in enumerate(parsed):
        if i not in used:
            if key in SET_BY_RUNNER:
                raise ParameterError(f"-p {key}: {key} is set by the runner (use --reports-dir)")
            where = f"notebooks matching {scope!r}" if scope else "the selected notebooks"
            known = sorted({n for job in jobs for n in job.declared})
            raise ParameterError(f"-p {key}={raw}: no parameter {key!r} in {where}; known: {', '.join(known)}")
    return jobs


# --------------------------------------------------------------------------------------------------
# Lock, staging, publish, recover
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def reports_lock(reports_dir: Path) -> Iterator[None]:
    """Hold ``<reports>/.lock`` exclusively for the block; RunLocked at once when another run has it."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(reports_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunLocked(f"another run (pid {holder}) is writing {reports_dir}/; wait for it to finish") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _old(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.old")


def make_readable(path: Path) -> None:
    """Files 0644 and folders 0755 (temporary files are created 0600)."""
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def publish(staged_folder: Path, staged_page: Path, folder: Path, page: Path) -> None:
    """Put a staged report in place of the published one; the old one is deleted only at the end.

    Steps: move the old folder and page into ``.<stem>.old/``, move the staged folder, then the staged
    page into place (the commit point: from here folder and page are both new), delete ``.old``. A kill
    between any two steps is finished or undone by :func:`recover`.
    """
    make_readable(staged_folder)
    make_readable(staged_page)
    old = _old(folder)
    old.mkdir()  # recover() ran under the lock before this run: a leftover would be an error here
    if folder.exists():
        os.replace(folder, old / "folder")
    if page.exists():
        os.replace(page, old / "page.html")
    os.replace(staged_folder, folder)
    os.replace(staged_page, page)
    shutil.rmtree(old)


def recover(reports_dir: Path, log: Log = print) -> None:
    """Finish or undo every publish a killed run left half-done; remove the staging of dead runs.

    Folder and page both present: the replacement was complete, the old copy goes. Otherwise the old
    folder and page come back (a new folder without its page is dropped).
    """
    for old in sorted(reports_dir.glob(".*.old")):
        stem = old.name[1:-4]
        folder, page = reports_dir / stem, reports_dir / f"{stem}.html"
        if not (folder.exists() and page.exists()):
            if folder.exists():
                shutil.rmtree(folder)
            if (old / "folder").exists():
                os.replace(old / "folder", folder)
            if (old / "page.html").exists() and not page.exists():
                os.replace(old / "page.html", page)
            log(f"[{stem}] an interrupted publish was undone: the previous report is back")
        shutil.rmtree(old)
    for stale in sorted((reports_dir / STAGING).glob("run-*")):
        shutil.rmtree(stale, ignore_errors=True)


def _keep_failed(staged_folder: Path, staged_page: Path, reports_dir: Path) -> Path:
    """Move a failed attempt to ``.staging/failed/`` (replacing an older failed attempt)."""
    failed = reports_dir / STAGING / FAILED
    failed.mkdir(parents=True, exist_ok=True)
    target, target_page = failed / staged_folder.name, failed / staged_page.name
    if target.exists():
        shutil.rmtree(target)
    os.replace(staged_folder, target)
    os.replace(staged_page, target_page)
    make_readable(failed)
    return target_page


def _drop_failed(stem: str, reports_dir: Path) -> None:
    failed = reports_dir / STAGING / FAILED
    shutil.rmtree(failed / stem, ignore_errors=True)
    (failed / f"{stem}.html").unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# Progress on the console
# --------------------------------------------------------------------------------------------------


class Progress(io.TextIOBase):
    """Receives the kernel's stdout (papermill's ``stdout_file``): the library's ``[i/n] …`` fit lines
    become console lines with the chapter and the elapsed time; a heartbeat says the chapter still runs."""

    def __init__(self, stem: str, log: Log, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.stem, self.log, self.start = stem, log, time.perf_counter()
        self._partial, self._last = "", time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True)

    def elapsed(self) -> str:
        return glance.fmt_seconds(time.perf_counter() - self.start)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            match = _FIT_LINE.match(line.strip())
            if match:
                self._last = time.perf_counter()
                self.log(f"[{self.stem}] fit {match[1]}/{match[2]} · {self.elapsed()} · {match[3][:100]}")
        return len(text)

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every / 4):
            if time.perf_counter() - self._last >= every:
                self._last = time.perf_counter()
                self.log(f"[{self.stem}] running · {self.elapsed()}")

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


# --------------------------------------------------------------------------------------------------
# One notebook
# --------------------------------------------------------------------------------------------------


def check_kernel(kernel: str) -> None:
    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        raise ParameterError(
            f"no Jupyter kernel named {kernel!r}; install it with "
            f"`{sys.executable} -m ipykernel install --sys-prefix --name {kernel}` (make setup does)"
        ) from None


def absolute_path_variables() -> None:
    """Make relative data and cache folders absolute: the kernels inherit the environment but run in
    ``notebooks/``, where a path such as ``../shared/data`` would point somewhere else."""
    for name in PATH_VARIABLES:
        if os.environ.get(name):
            os.environ[name] = os.path.abspath(os.environ[name])


def reports_read(job: Job) -> dict[str, str] | None:
    """sha256 of every published report file a notebook reads, by path under its ``REPORTS_DIR``; None for a
    notebook that declares no ``REPORTS_DIR`` (reads no report). The scorecard (chapter 08) declares it and
    reads the other chapters' reports through :func:`kdrepro.scorecard.load_reports`; resolved like the
    kernel does, relative to the notebook's folder."""
    if "REPORTS_DIR" not in job.parameters:
        return None
    root = (job.path.parent / str(job.parameters["REPORTS_DIR"])).resolve()
    files = scorecard.report_files(root, exclude=(job.stem,))
    return {p.relative_to(root).as_posix(): provenance.file_sha256(p) for p in files}


def input_hash(job: Job, kernel: str, code: str, dataset: dict) -> tuple[str, dict]:
    inputs = {
        "notebook_sha256": provenance.file_sha256(job.path),
        "parameters": {k: v for k, v in job.parameters.items() if k not in SET_BY_RUNNER},
        "code_sha256": code,
        "dataset_sha256": dataset.get("sha256"),
        "kernel": kernel,
        "packages": {
            k: v for k, v in provenance.package_versions().items() if k in ("python", "torch", "numpy", "pandas")
        },
    }
    reports = reports_read(job)
    if reports is not None:  # only then: the hash of a notebook that reads no report stays what it was
        inputs["reports_read"] = reports
    return provenance.stable_hash(inputs), inputs


def error_text(exc: BaseException) -> str:
    """The exception's name and message (for a notebook error: the kernel's exception, not papermill's)."""
    if isinstance(exc, papermill.PapermillExecutionError):
        return f"{exc.ename}: {exc.evalue} (cell {exc.exec_count})"
    return f"{type(exc).__name__}: {exc}".strip()


def _fallback_notebook(job: Job, executed: Path, error: str) -> None:
    """When papermill wrote nothing (kernel missing, …): the source notebook with the error on top."""
    nb = nbformat.read(job.path, as_version=4)
    nb.cells.insert(
        0,
        nbformat.v4.new_markdown_cell(
            f"**The notebook did not run:** `{error}`", metadata={"tags": ["papermill-error-cell-tag"]}
        ),
    )
    nbformat.write(nb, executed)


@dataclass
class Context:
    reports_dir: Path
    run_dir: Path
    stems: list[str]  # the chapters pages link to (previous / next): published or in this run
    profile: str
    kernel: str
    code: str
    force: bool
    progress: bool
    timeout: int | None
    log: Log


def remaining_fits(job: Job, ctx: Context) -> dict[str, Any] | None:
    """What the chapter's profile without this run's ``-p`` overrides still lacks in the results ledger.

    A run that narrows a profile (e.g. ``-p MODELS=['bpr']`` while a campaign is under way) shows what it
    left out: the fits of the whole profile missing from the ledger and their ``--plan`` cost. ``None``
    when nothing was overridden on the command line (the run itself computed everything it needed).
    """
    if not job.overrides.get("cli"):
        return None
    command = f"python run_all.py --profile {ctx.profile} --only {job.stem} --plan"
    try:
        with tempfile.TemporaryDirectory(prefix="kdrepro-remaining-") as workdir:
            whole = plan([job.stem], job.path.parent, Path(workdir) / "reports", ctx.profile)[0]
            found = fit_jobs.collect_jobs([(whole.stem, whole.path, whole.parameters)], kernel=ctx.kernel,
                                          workdir=workdir, log=ctx.log)
        todo = {row["key"]: row for row in fit_jobs.plan(found) if row["status"] != "done"}
    except Exception as exc:  # noqa: BLE001 - the page is still worth publishing; it says the count failed
        return {"error": error_text(exc), "command": command}
    seconds = sum(row["est_seconds"] for row in todo.values())
    return {"fits": len(todo), "thread_hours": round(seconds / 3600, 2),
            "estimate": "/".join(sorted({row["estimate"] for row in todo.values()})), "command": command}


def restore_refits(job: Job, ctx: Context) -> int:
    """Refit, before the notebook runs, the recorded fits of this chapter whose weights the store lacks
    (:func:`kdrepro.jobs.restore_weights`), so that every table of the page reads the same ledger entry.
    Returns how many; plans the chapter only when some recorded fit has no weights here at all."""
    if not fit_jobs.weights_gone(fit_jobs.Ledger(), Store()):
        return 0
    with tempfile.TemporaryDirectory(prefix="kdrepro-refits-") as workdir:
        parameters = dict(job.parameters)
        if "RESULTS_DIR" in parameters:
            parameters["RESULTS_DIR"] = str(Path(workdir) / "results")
        found = fit_jobs.collect_jobs([(job.stem, job.path, parameters)], kernel=ctx.kernel, workdir=workdir,
                                      log=ctx.log)
    return len(fit_jobs.restore_weights(found, log=ctx.log))


def read_ledger_reads(path: Path) -> dict[str, str]:
    """``{entry: digest}`` of the ledger entries a notebook's fits read (:data:`kdrepro.jobs.READS_FILE_ENV`),
    sorted; {} when it read none. The manifest keeps it: a later run reruns the page when one has changed."""
    if not path.is_file():
        return {}
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return dict(sorted((line["entry"], line["digest"]) for line in lines))


def execute(job: Job, ctx: Context) -> dict:
    """Run one notebook (or skip it when unchanged) and return its manifest."""
    folder = ctx.reports_dir / job.stem
    page = ctx.reports_dir / f"{job.stem}.html"
    dataset = provenance.dataset_info(job.parameters)
    digest, inputs = input_hash(job, ctx.kernel, ctx.code, dataset)
    previous = glance.read_json(folder / "manifest.json")
    superseded = fit_jobs.Ledger().changed((previous or {}).get("ledger_entries", {}))
    if (
        not ctx.force
        and previous
        and previous.get("status") == "ok"
        and previous.get("input_hash") == digest
        and page.exists()
    ):
        if not superseded:
            ctx.log(
                f"[{job.stem}] unchanged since {previous.get('started')} (input hash {digest[:12]}): skipped; "
                "--force reruns"
            )
            return {**previous, "skipped_in_last_run": True}
        ctx.log(f"[{job.stem}] {len(superseded)} of the ledger entries its page read changed since "
                f"{previous.get('started')} (refits), e.g. {superseded[0]}: rerunning")

    staging = ctx.run_dir / job.stem
    staged_page = ctx.run_dir / f"{job.stem}.html"
    staging.mkdir(parents=True)
    if "RESULTS_DIR" in job.parameters:
        job = dataclasses.replace(job, parameters={**job.parameters, "RESULTS_DIR": str(staging)})
    executed = staging / f"{job.stem}.ipynb"
    manifest: dict[str, Any] = {
        "stem": job.stem,
        "title": render.notebook_title(job.path),
        "notebook": os.path.relpath(job.path, ROOT) if job.path.is_relative_to(ROOT) else str(job.path),
        "profile": ctx.profile,
        "parameters": job.parameters,
        "overrides": job.overrides,
        "kernel": ctx.kernel,
        "git": provenance.git_info(),
        "packages": provenance.package_versions(),
        "dataset": dataset,
        "device": {"requested": job.parameters.get("DEVICE"), **provenance.device_info()},
        "input_hash": digest,
        "inputs": inputs,
        "command": " ".join(sys.argv),
        "started": provenance.now(),
    }
    ctx.log(f"[{job.stem}] running (profile {ctx.profile}) …")
    start = time.perf_counter()
    error, trace = None, None
    os.environ.setdefault("TQDM_MININTERVAL", "2")  # tqdm's own switch: fewer stored progress refreshes
    reads = ctx.run_dir / f"{job.stem}.ledger-reads.jsonl"
    try:
        with provenance.PeakMemory() as memory, Progress(job.stem, ctx.log) as progress:
            manifest["refitted_before_run"] = restore_refits(job, ctx)
            with environment_variable(fit_jobs.READS_FILE_ENV, str(reads)):
                papermill.execute_notebook(
                    str(job.path),
                    str(executed),
                    parameters=job.parameters,
                    kernel_name=ctx.kernel,
                    language="python",
                    cwd=str(job.path.parent),
                    progress_bar=ctx.progress,
                    log_output=False,
                    stdout_file=progress,
                    execution_timeout=ctx.timeout,
                    extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
                    kernel_manager_class=PrivateSocketKernelManager,
                )
    except Exception as exc:  # noqa: BLE001 - a failed notebook is recorded and rendered; the run goes on
        error = error_text(exc)
        trace = traceback.format_exc(limit=5)
    duration = time.perf_counter() - start
    manifest["ledger_entries"] = read_ledger_reads(reads)
    metrics = glance.read_json(staging / "metrics.json")
    config = glance.read_json(staging / "config.json") or {}
    if error is None and metrics is None and "RESULTS_DIR" in job.parameters:
        error = "MissingResults: the notebook ran but wrote no metrics.json (its last cell must save the run)"
    manifest.update(
        {
            "status": "ok" if error is None else "failed",
            "error": error,
            "traceback": trace,
            "ended": provenance.now(),
            "duration_s": round(duration, 2),
            "peak_memory_mib": round(memory.peak, 1),
            "headline": (metrics or {}).get("headline", {}),
        }
    )
    if error is None:
        manifest["remaining"] = remaining_fits(job, ctx)
    used = (config.get("environment") or {}).get("device")
    if used:
        manifest["device"]["used"] = used
    if not executed.exists():
        _fallback_notebook(job, executed, error or "no output notebook")
    nb = nbformat.read(executed, as_version=4)
    render.clean_outputs(nb)  # keep the stored notebook small: progress refreshes collapsed
    nbformat.write(nb, executed)
    manifest["outputs"] = {
        "html": page.name,
        "executed_notebook": f"{job.stem}/{executed.name}",
        "metrics": f"{job.stem}/metrics.json" if metrics is not None else None,
        "tables": sorted(f"{job.stem}/tables/{p.name}" for p in (staging / "tables").glob("*.csv")),
        "figures": sorted(f"{job.stem}/figures/{p.name}" for p in (staging / "figures").glob("*.png")),
    }
    kept = manifest["status"] != "ok" and previous is not None and previous.get("status") == "ok" and page.exists()
    try:
        write_page(
            staged_page, nb, manifest, staging, ctx.stems, index_href="../../index.html" if kept else "index.html"
        )
    except Exception as exc:  # noqa: BLE001 - rendering must not hide the run's result
        manifest["status"] = "failed"
        manifest["error"] = (manifest["error"] + "; " if manifest["error"] else "") + f"rendering: {error_text(exc)}"
        staged_page.write_text(f"<pre>{manifest['error']}</pre>", encoding="utf-8")
    write_json(staging / "manifest.json", manifest)
    if kept:
        where = f"{_keep_failed(staging, staged_page, ctx.reports_dir)} (the last good report, {page.name}, is kept)"
    else:
        publish(staging, staged_page, folder, page)
        _drop_failed(job.stem, ctx.reports_dir)
        where = str(page)
    ctx.log(
        f"[{job.stem}] {manifest['status']} in {glance.fmt_seconds(duration)}, peak memory {memory.peak:.0f} MiB"
        f" → {where}" + (f"\n    {manifest['error']}" if manifest["error"] else "")
    )
    return manifest


def _nav(stem: str, stems: Sequence[str], reports_dir: Path | None, index_href: str) -> dict:
    prefix = index_href.rsplit("index.html", 1)[0]
    at = stems.index(stem) if stem in stems else -1

    def link(i: int) -> dict | None:
        if at < 0 or not 0 <= i < len(stems):
            return None
        other = stems[i]
        title = other
        if reports_dir is not None:
            title = (glance.read_json(reports_dir / other / "manifest.json") or {}).get("title") or other
        return {"href": f"{prefix}{other}.html", "title": title}

    return {"index": index_href, "previous": link(at - 1), "next": link(at + 1)}


def write_page(
    path: Path, nb, manifest: dict, folder: Path, stems: Sequence[str], *, index_href: str = "index.html"
) -> None:
    """Render the page of ``manifest``'s chapter and write it atomically (0644)."""
    reports_dir = path.parent if index_href == "index.html" else None
    body = render.render(nb, manifest, folder=folder, nav=_nav(manifest["stem"], stems, reports_dir, index_href))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# A run
# --------------------------------------------------------------------------------------------------


def _run_dir(reports_dir: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = reports_dir / STAGING / f"run-{stamp}-{os.getpid()}"
    path.mkdir(parents=True)
    return path


def run(
    *,
    profile: str = profiles.DEFAULT,
    params: Sequence[str] = (),
    only: Sequence[str] = (),
    notebooks: Sequence[str] | None = None,
    notebooks_dir: Path | str = NOTEBOOKS_DIR,
    reports_dir: Path | str = REPORTS_DIR,
    force: bool = False,
    kernel: str = KERNEL,
    progress: bool | None = None,
    timeout: int | None = None,
    dry_run: bool = False,
    log: Log = print,
) -> list[dict]:
    """Check everything, then run the notebooks; returns their manifests.

    Raises ParameterError (bad parameters, before anything is written) or RunLocked.
    """
    notebooks_dir, reports_dir = Path(notebooks_dir).resolve(), Path(reports_dir).resolve()
    stems = list(notebooks) if notebooks is not None else discover(notebooks_dir)
    jobs = plan(select(stems, only), notebooks_dir, reports_dir, profile, params)
    if dry_run:
        for job in jobs:
            log(f"[{job.stem}] {json.dumps(job.parameters, default=str)}")
        return []
    check_kernel(kernel)
    absolute_path_variables()
    with reports_lock(reports_dir):
        recover(reports_dir, log)
        run_dir = _run_dir(reports_dir)
        ctx = Context(
            reports_dir=reports_dir,
            run_dir=run_dir,
            stems=[s for s in stems if s in {job.stem for job in jobs} or (reports_dir / f"{s}.html").exists()],
            profile=profile,
            kernel=kernel,
            code=provenance.code_hash(),
            force=force,
            progress=sys.stderr.isatty() if progress is None else progress,
            timeout=timeout,
            log=log,
        )
        started, t0 = provenance.now(), time.perf_counter()
        try:
            manifests = [execute(job, ctx) for job in jobs]
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        run_info = {
            "profile": profile,
            "started": started,
            "ended": provenance.now(),
            "duration_s": round(time.perf_counter() - t0, 2),
            "command": " ".join(sys.argv),
            "git": provenance.git_info(),
            "packages": provenance.package_versions(),
            "device": provenance.device_info(),
            "notebooks": [
                {
                    "stem": m["stem"],
                    "status": m["status"],
                    "skipped": bool(m.get("skipped_in_last_run")),
                    "duration_s": m.get("duration_s"),
                    "input_hash": m.get("input_hash"),
                }
                for m in manifests
            ],
        }
        write_index(reports_dir, stems, run_info, notebooks_dir)
    return manifests


def write_index(
    reports_dir: Path, stems: Sequence[str], run_info: dict | None = None, notebooks_dir: Path = NOTEBOOKS_DIR
) -> Path:
    """``manifest.json`` (the last run + every chapter's manifest) and ``index.html``."""
    latest = {stem: glance.read_json(reports_dir / stem / "manifest.json") for stem in stems}
    if run_info is None:
        run_info = (glance.read_json(reports_dir / "manifest.json") or {}).get("run", {})
    write_json(reports_dir / "manifest.json", {"run": run_info, "notebooks": {k: v for k, v in latest.items() if v}})
    titles = {stem: render.notebook_title(Path(notebooks_dir) / f"{stem}.ipynb") for stem in stems}
    path = index.write(reports_dir, stems, titles)
    make_readable(reports_dir / "manifest.json")
    return path


def published_settings(reports_dir: Path, stem: str) -> tuple[str, list[str]] | None:
    """The profile and command-line overrides (as ``-p STEM:KEY=VALUE``) the published report of ``stem``
    records, or ``None`` when ``stem`` has no published manifest."""
    manifest = glance.read_json(Path(reports_dir) / stem / "manifest.json")
    if not manifest:
        return None
    cli = (manifest.get("overrides") or {}).get("cli") or {}
    return str(manifest.get("profile", profiles.DEFAULT)), [f"{stem}:{key}={value!r}" for key, value in cli.items()]


def run_as_published(
    *,
    only: Sequence[str] = (),
    notebooks_dir: Path | str = NOTEBOOKS_DIR,
    reports_dir: Path | str = REPORTS_DIR,
    log: Log = print,
    **options: Any,
) -> list[dict]:
    """Rerun each chapter under the profile and ``-p`` overrides its published page states (a chapter never
    published: the default profile), so that regenerating ``reports/`` keeps each page's own settings (a
    page from the paper campaign is not replaced by a quick one). Unchanged chapters are skipped as by
    :func:`run`; ``options`` are :func:`run`'s (force, kernel, timeout, dry_run …)."""
    notebooks_dir, reports_dir = Path(notebooks_dir).resolve(), Path(reports_dir).resolve()
    manifests: list[dict] = []
    for stem in select(discover(notebooks_dir), only):
        profile, params = published_settings(reports_dir, stem) or (profiles.DEFAULT, [])
        log(f"[{stem}] as published: profile {profile}" + (f", {' '.join(params)}" if params else ""))
        manifests += run(profile=profile, params=params, only=[stem], notebooks_dir=notebooks_dir,
                         reports_dir=reports_dir, log=log, **options)
    return manifests


def render_only(
    *,
    only: Sequence[str] = (),
    notebooks_dir: Path | str = NOTEBOOKS_DIR,
    reports_dir: Path | str = REPORTS_DIR,
    log: Log = print,
) -> list[dict]:
    """Re-render published reports from their stored executed notebook and manifest (nothing runs)."""
    notebooks_dir, reports_dir = Path(notebooks_dir).resolve(), Path(reports_dir).resolve()
    stems = discover(notebooks_dir)
    chosen = select(stems, only)
    published = [s for s in stems if (reports_dir / s / f"{s}.ipynb").is_file() or (reports_dir / f"{s}.html").exists()]
    manifests = []
    with reports_lock(reports_dir):
        recover(reports_dir, log)
        for stem in chosen:
            folder = reports_dir / stem
            manifest = glance.read_json(folder / "manifest.json")
            executed = folder / f"{stem}.ipynb"
            if manifest is None or not executed.is_file():
                log(f"[{stem}] no published report to re-render (needs {stem}/manifest.json and {stem}/{stem}.ipynb)")
                continue
            page = reports_dir / f"{stem}.html"
            write_page(page, nbformat.read(executed, as_version=4), manifest, folder, published)
            make_readable(folder)
            manifests.append(manifest)
            log(f"[{stem}] re-rendered from {stem}/{stem}.ipynb (run of {manifest.get('started')})")
        write_index(reports_dir, stems, notebooks_dir=notebooks_dir)
    return manifests
