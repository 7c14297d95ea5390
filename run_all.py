#!/usr/bin/env python
"""The table of contents: run the chapter notebooks under a profile and render reports/.

    python run_all.py                          # every notebook, profile "quick"
    python run_all.py --profile smoke          # synthetic data, seconds per notebook (the tests)
    python run_all.py --profile paper --only 00,01 -p SEEDS=[0,1,2,3,4]
    python run_all.py --list                   # notebooks and their parameters
    python run_all.py --render-only            # re-render the published pages, run nothing
    python run_all.py --profile paper --plan   # fits the ledger lacks, per chapter, with estimated cost
    python run_all.py --as-published --plan    # what `make report` would compute on this machine
    python run_all.py --profile paper --fill --executor local --workers 2    # compute them, render nothing
    python run_all.py --profile paper --fill --commit-ledger   # ... and commit each ledger entry as it lands

The chapters are the notebooks ``notebooks/NN_*.ipynb``, in numbered order. For each: its parameters are
resolved (notebook defaults ← profile ← ``-p`` overrides) and checked — names, types and values (counts
≥ 1, seeds, known models and protocols, the device exists …) — for every selected notebook *before*
anything runs; it is skipped when nothing it depends on changed since its last successful run
(``--force`` runs it anyway), executed with papermill in the ``kdrepro`` kernel, rendered and published.
Before a notebook runs, the recorded fits it loads the weights of and this store lacks (a fresh machine has
the ledger, not the weights) are refitted through the executor, so every table of a page reads one entry.
A failed notebook is rendered too; the run goes on and exits non-zero at the end. Only one run at a time
may write a reports folder; a killed run never costs the last good report.

The runner itself is ``kdrepro.book`` (params, execute, render, index); this file is its command line.

Output (``--reports-dir``, default ``reports/``)::

    index.html                    every chapter with its own run, verdict counts, misses, headline
    manifest.json                 the last run + the latest manifest of every notebook
    <stem>.html                   the chapter's page (results at a glance, code collapsed per cell)
    <stem>/manifest.json          parameters, profile, overrides, git SHA, versions, dataset sha256,
                                  device, times, peak memory, input hash
    <stem>/<stem>.ipynb           the executed notebook (progress output coalesced)
    <stem>/metrics.json, config.json, tables/*.csv, figures/*.png    written by the notebook
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from kdrepro import jobs, profiles
from kdrepro.book.execute import (
    KERNEL,
    NOTEBOOKS_DIR,
    REPORTS_DIR,
    RunLocked,
    discover,
    plan,
    published_settings,
    render_only,
    run,
    run_as_published,
    select,
)
from kdrepro.book.params import ParameterError, declared_parameters, parse_parameters
from kdrepro.book.render import notebook_title
from kdrepro.store import Store

__all__ = ["NOTEBOOKS", "ParameterError", "main", "parse_parameters", "plan", "run"]

# The chapters, in reading order (stems of notebooks/NN_*.ipynb).
NOTEBOOKS: list[str] = discover(NOTEBOOKS_DIR)


def list_notebooks(notebooks_dir: Path, stems: Sequence[str], profile: str) -> None:
    for stem in stems:
        path = notebooks_dir / f"{stem}.ipynb"
        print(f"{stem}  ({notebook_title(path)})")
        declared = declared_parameters(path)
        chosen = profiles.overrides(stem, profile, declared)
        for p in declared.values():
            mark = f"  [{profile}: {chosen[p.name]!r}]" if p.name in chosen else ""
            print(f"    {p.name} = {p.value!r}{mark}  # {p.comment}")


def parser() -> argparse.ArgumentParser:
    """Every flag of the command line (the one place they are declared)."""
    cli = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cli.add_argument("--profile", default=None, help=f"{' | '.join(profiles.PROFILES)} (default quick)")
    cli.add_argument("--as-published", action="store_true",
                     help="rerun each chapter under the profile and -p overrides its published page states "
                          "(what `make report` does: a paper-campaign page stays a paper page)")
    cli.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="STEMS",
        help="comma-separated notebook stems or prefixes (e.g. 00,03)",
    )
    cli.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="[STEM:]KEY=VALUE",
        help="override a parameter (Python literal; repeatable)",
    )
    cli.add_argument("--reports-dir", default=str(REPORTS_DIR), help="where reports go (default: reports/)")
    cli.add_argument("--notebooks-dir", default=str(NOTEBOOKS_DIR), help=argparse.SUPPRESS)
    cli.add_argument("--force", action="store_true", help="run notebooks even when their inputs are unchanged")
    cli.add_argument("-k", "--kernel", default=KERNEL, help=f"Jupyter kernel (default {KERNEL})")
    cli.add_argument("--timeout", type=int, default=None, help="seconds per cell before failing")
    cli.add_argument("--list", action="store_true", help="list notebooks and parameters, then exit")
    cli.add_argument("--dry-run", action="store_true", help="check and print the parameters, run nothing")
    cli.add_argument("--plan", action="store_true",
                     help="list per chapter the fits of the profile missing from the results ledger (with costs); "
                          "train nothing")
    cli.add_argument("--fill", action="store_true",
                     help="compute the missing fits of the selected chapters through the executor; render nothing "
                          "(resumable: rerun after a kill)")
    cli.add_argument("--match", metavar="REGEX", default=None,
                     help="with --plan/--fill: only the fits whose plan line (\"students bpr DE lambda_de=0.1 seed "
                          "0\") matches, e.g. '^\\w+ bpr [\\w-]+ seed' for the BPR main-table rows; the teachers "
                          "they need come with them")
    cli.add_argument("--commit-ledger", action="store_true",
                     help="commit each results-ledger entry to git as its fit completes (only that file; several "
                          "runs at once take turns): a campaign's finished compute survives the machine")
    cli.add_argument("--executor", choices=jobs.EXECUTORS, default=None,
                     help="where fits run: serial | local (worker processes) | ray (default: $KDREPRO_EXECUTOR "
                          "or serial)")
    cli.add_argument("--workers", type=int, default=None, help="local worker processes (default: cores // threads)")
    cli.add_argument("--threads", type=int, default=None, help="torch threads per fit (default 1 with workers)")
    cli.add_argument("--ray-address", default=None, help="address of a running Ray cluster (default: a local Ray)")
    cli.add_argument(
        "--render-only",
        action="store_true",
        help="re-render the published pages and index from their stored executed notebooks; run nothing",
    )
    return cli


def use_executor(args: argparse.Namespace) -> jobs.ExecutorSettings:
    """The executor flags, for this process and (through KDREPRO_* variables) the notebooks' kernels."""
    chosen = {"KDREPRO_EXECUTOR": args.executor, "KDREPRO_WORKERS": args.workers, "KDREPRO_THREADS": args.threads,
              "KDREPRO_RAY_ADDRESS": args.ray_address}
    os.environ.update({name: str(value) for name, value in chosen.items() if value is not None})
    return jobs.configure()


def use_ledger_commits(args: argparse.Namespace) -> None:
    """--commit-ledger, for this process and the notebooks' kernels (``KDREPRO_COMMIT_LEDGER``): checked
    here (a git work tree, a committer identity) so that a campaign cannot run for hours and then fail to
    commit."""
    if args.commit_ledger:
        os.environ[jobs.COMMIT_ENV] = "1"
    if os.environ.get(jobs.COMMIT_ENV, "") == "1":
        jobs.LedgerCommits(jobs.default_ledger_root())


def campaign(args: argparse.Namespace, notebooks_dir: Path, settings: jobs.ExecutorSettings) -> int:
    """--plan / --fill: enumerate the chapters' fits (each notebook run in planning mode), then list what the
    ledger lacks, or compute it (only the fits matching --match, when given)."""
    jobs.select_jobs({}, args.match)  # a bad pattern fails here, before any notebook runs
    stems = select(discover(notebooks_dir), args.only)
    with tempfile.TemporaryDirectory(prefix="kdrepro-plan-") as workdir:
        if args.as_published:  # what `make report` would compute: each chapter under its page's settings
            resolved = []
            for stem in stems:
                profile, params = published_settings(Path(args.reports_dir), stem) or (profiles.DEFAULT, [])
                resolved += plan([stem], notebooks_dir, Path(workdir) / "reports", profile, params)
        else:
            resolved = plan(stems, notebooks_dir, Path(workdir) / "reports", args.profile, args.param)
        chapters = [(job.stem, job.path, job.parameters) for job in resolved]
        found = jobs.collect_jobs(chapters, kernel=args.kernel, workdir=workdir,
                                  timeout=args.timeout or jobs.PLAN_CELL_TIMEOUT)
    found = jobs.select_jobs(found, args.match)
    if args.fill:
        jobs.fill(found, settings=settings)
    print(jobs.format_plan(jobs.plan(found, store=Store()), settings.pool_size if settings.kind == "local" else 1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    profile_given = args.profile is not None
    args.profile = args.profile or profiles.DEFAULT
    notebooks_dir = Path(args.notebooks_dir)
    try:
        if args.as_published and (profile_given or args.param):
            raise ParameterError("--as-published takes each chapter's profile and -p overrides from its "
                                 "published page: drop --profile and -p")
        settings = use_executor(args)
        use_ledger_commits(args)
        if args.plan or args.fill:
            return campaign(args, notebooks_dir, settings)
        if args.list:
            list_notebooks(notebooks_dir, discover(notebooks_dir), args.profile)
            return 0
        if args.render_only:
            render_only(only=args.only, notebooks_dir=notebooks_dir, reports_dir=args.reports_dir)
            return 0
        if args.as_published:
            manifests = run_as_published(only=args.only, notebooks_dir=notebooks_dir, reports_dir=args.reports_dir,
                                         force=args.force, kernel=args.kernel, timeout=args.timeout,
                                         dry_run=args.dry_run)
        else:
            manifests = run(profile=args.profile, params=args.param, only=args.only, notebooks_dir=notebooks_dir,
                            reports_dir=args.reports_dir, force=args.force, kernel=args.kernel,
                            timeout=args.timeout, dry_run=args.dry_run)
    except (ParameterError, RunLocked, ValueError) as exc:
        print(f"run_all.py: error: {exc}", file=sys.stderr)
        return 2
    failed = [m for m in manifests if m.get("status") != "ok"]
    if manifests:
        print(
            f"{len(manifests) - len(failed)}/{len(manifests)} notebooks ok"
            + "".join(f"\n  failed: {m['stem']}: {m.get('error')}" for m in failed)
            + f"\n→ {Path(args.reports_dir) / 'index.html'}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
