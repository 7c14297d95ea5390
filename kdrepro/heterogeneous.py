"""Chapter 07 (HetComp): the ensemble, the distilled students, and the chapter's tables and figures (the
teachers and their trajectories are :mod:`kdrepro.trajectories`).

- :func:`ranking_metrics`, :func:`ensemble_metrics` — holdout metrics of a precomputed ranking (the
  ensemble has no model to score).
- :func:`run_students` — the students (no KD, RRD and DCD on the ensemble, HetComp and its ablations)
  over seeds, each a job of :mod:`kdrepro.jobs` (the distilled ones of the task ``hetcomp``,
  :mod:`kdrepro.hetcomp_task`, whose inputs are the six trajectory jobs; the undistilled MF student a plain
  model job): from the ledger, or fitted through the executor; long-form results, histories and HetComp's
  DKC dynamics (kept in each ledger entry).
- :func:`teacher_results`, :func:`teacher_table`, :func:`efficiency_table`, :func:`gap_table`,
  :func:`dynamics_summary`, :func:`dynamics_plot` — the tables and figures of the chapter (plots take
  ``ax=None`` and return the figure).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from kdrepro import jobs
from kdrepro.distill.hetcomp import TeacherTrajectories, ensemble_topk
from kdrepro.efficiency import CONTENTION_COLUMN, CPUContention, count_parameters, time_recommend_all
from kdrepro.evaluate import gather_rows
from kdrepro.metrics import PROTOCOL_METRICS, per_user_metrics
from kdrepro.models import ModelConfig, build
from kdrepro.report import history_frame, long_results
from kdrepro.sampling import PairSet
from kdrepro.splits import Split
from kdrepro.store import Store
from kdrepro.train import TrainConfig
from kdrepro.trajectories import (
    MONITOR,
    TEACHER_LABELS,
    TEACHER_OBJECTIVES,
    TeacherTrajectory,
)

STUDENT_KIND = "hetcomp-students"

# label → (registry spec, config overrides of that method, the student's base objective). HetComp trains on
# its KD loss only (authors' code); the baselines keep BPR beside their KD term, as in their papers.
STUDENT_VARIANTS: dict[str, tuple[str, dict, str]] = {
    "Student": ("", {}, "bpr"),
    "RRD": ("rrd", {"sampling": "none"}, "bpr"),
    "DCD": ("dcd", {}, "bpr"),
    "HetComp": ("hetcomp", {}, "none"),
    "w/o DKC": ("hetcomp", {"construction": "fixed"}, "none"),
    "w/o AKT": ("hetcomp", {"transfer": "detailed"}, "none"),
    "Converged teachers": ("hetcomp", {"construction": "converged"}, "none"),
}


# ------------------------------------------------------------------------------------------------------
# The ensemble's quality (a ranking without a model)
# ------------------------------------------------------------------------------------------------------


def ranking_metrics(ranked: torch.Tensor, split: Split, which: str = "test", ks: Sequence[int] | None = None,
                    chunk: int = 1024) -> dict[str, float]:
    """Mean holdout metrics of precomputed top-N lists ``ranked`` (U, N), training items already excluded.

    At test time the validation items are moved to the end of each list (stable), as ``evaluate`` masks
    them; a list with fewer than max(ks) other entries keeps them as (never relevant) filler.
    """
    ks = tuple(ks or split.ks)
    if ranked.shape[1] < max(ks):
        raise ValueError(f"the ranking holds {ranked.shape[1]} items per user, fewer than k = {max(ks)}")
    held_users, held_items = getattr(split, f"{which}_users"), getattr(split, f"{which}_items")
    order = np.argsort(held_users, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(held_users, minlength=split.num_users))])
    held_sorted = held_items[order]
    users = np.flatnonzero(np.diff(indptr) > 0)
    valid = PairSet(torch.from_numpy(split.valid_users), torch.from_numpy(split.valid_items), split.num_users,
                    split.num_items) if which == "test" else None
    values: dict[str, list] = {}
    for lo in range(0, len(users), chunk):
        batch = users[lo : lo + chunk]
        lists = ranked[torch.from_numpy(batch)].long()
        if valid is not None:
            masked = valid.contains(torch.from_numpy(batch)[:, None].expand_as(lists), lists)
            lists = lists.gather(1, masked.to(torch.int8).argsort(dim=1, stable=True))
        relevant = torch.zeros(len(batch), split.num_items, dtype=torch.bool)
        rows, cols = gather_rows(indptr, held_sorted, batch)
        relevant[torch.from_numpy(rows), torch.from_numpy(cols)] = True
        counts = torch.from_numpy(indptr[batch + 1] - indptr[batch])
        for name, v in per_user_metrics(lists, relevant, PROTOCOL_METRICS[split.protocol], ks, counts).items():
            values.setdefault(name, []).append(v)
    return {name: float(torch.cat(v).mean()) for name, v in values.items()}


def ensemble_metrics(trajectories: TeacherTrajectories, split: Split, top_k: int = 100,
                     temperature: float = 10.0) -> dict[str, float]:
    """Test metrics of the converged teachers' ensemble top-``top_k``."""
    ranked, _ = ensemble_topk(trajectories.rankings[:, -1], top_k, temperature, split.num_items)
    return ranking_metrics(ranked, split, "test")


# ------------------------------------------------------------------------------------------------------
# Students
# ------------------------------------------------------------------------------------------------------


@dataclass
class StudentResults:
    results: pd.DataFrame  # dataset, protocol, base, method, seed, metric, value
    histories: pd.DataFrame  # one row per (method, seed, epoch)
    dynamics: pd.DataFrame  # HetComp variants: share of (teacher, user) pairs per checkpoint over epochs
    fits: pd.DataFrame  # method, seed, best epoch, epochs run, seconds, loaded


def _method_config(label: str, method_configs: Mapping[str, Mapping]) -> tuple[str, dict, str]:
    if label not in STUDENT_VARIANTS:
        raise ValueError(f"unknown student {label!r}; choose among {list(STUDENT_VARIANTS)}")
    spec, overrides, loss = STUDENT_VARIANTS[label]
    return spec, {**method_configs.get(spec, {}), **overrides} if spec else {}, loss


def student_job(split: Split, teacher_runs: Sequence[TeacherTrajectory], label: str, seed: int,
                train_config: TrainConfig, student_dim: int, method_configs: Mapping[str, Mapping],
                ensemble_top_n: int = 100, temperature: float = 10.0, store: Store | None = None) -> jobs.FitJob:
    """The job of one student: the undistilled MF student is a plain model job (shared with any chapter that
    trains the same fit); a distilled one a ``hetcomp`` task job with the trajectory jobs as its inputs."""
    spec, config, loss = _method_config(label, method_configs)
    student_train = dataclasses.replace(train_config, loss=loss)
    entry = jobs.split_entry(store or Store(), split)
    labels = {"protocol": split.protocol, "base": "bpr", "method": label}
    model = ModelConfig("bpr", student_dim)
    if not spec:
        return jobs.model_job(entry, split, model, student_train, seed, labels)
    params = {"label": label, "spec": spec, "config": config, "ensemble": [ensemble_top_n, temperature]}
    return jobs.FitJob(STUDENT_KIND, entry, split.dataset, model.to_dict(), student_train.to_dict(), seed,
                       labels=labels, task="hetcomp", params=params, inputs=tuple(r.job for r in teacher_runs))


def run_students(split: Split, teacher_runs: Sequence[TeacherTrajectory], methods: Sequence[str],
                 seeds: Sequence[int], train_config: TrainConfig, student_dim: int,
                 method_configs: Mapping[str, Mapping], ensemble_top_n: int = 100, temperature: float = 10.0,
                 store: Store | None = None) -> StudentResults:
    """Every (student variant, seed) as a job (:func:`student_job`; the trajectories first): from the ledger,
    or fitted through the executor. In planning mode the jobs are recorded and the results are empty."""
    store = store or Store()
    cells = {(label, seed): student_job(split, teacher_runs, label, seed, train_config, student_dim, method_configs,
                                        ensemble_top_n, temperature, store)
             for label in methods for seed in seeds}
    done = jobs.run_jobs(list(cells.values()), store=store)
    results, histories, dynamics, fits = [], [], [], []
    for (label, seed), job in cells.items():
        finished = done[job.key]
        entry = finished.entry
        keys = {"dataset": split.dataset, "protocol": split.protocol, "base": "bpr", "method": label, "seed": seed}
        results.append(long_results(entry["test"], **keys))
        histories.append(history_frame(entry["history"], **keys))
        dynamics.append(pd.DataFrame((entry.get("extra") or {}).get("dynamics", [])).assign(method=label, seed=seed))
        fits.append({"method": label, "seed": seed, "best_epoch": entry["best_epoch"],
                     "epochs_run": entry["epochs_run"], "seconds": entry["seconds"], "loaded": not finished.trained})
    trained = sum(d.trained for d in done.values())
    print(f"run_students: {len(cells)} fits, {len(cells) - trained} from the ledger, {trained} trained now",
          flush=True)
    return StudentResults(pd.concat(results, ignore_index=True), pd.concat(histories, ignore_index=True),
                          pd.concat(dynamics, ignore_index=True), pd.DataFrame(fits))


def teacher_results(runs: Sequence[TeacherTrajectory], ensemble: Mapping[str, float], split: Split,
                    seeds: Sequence[int]) -> pd.DataFrame:
    """Long-form test rows of every teacher and of the ensemble, repeated per student seed (the teachers are
    trained once: their rows are the same on every seed, so per-seed claims pair them with each student)."""
    frames = []
    for seed in seeds:
        keys = {"dataset": split.dataset, "protocol": split.protocol, "base": "bpr", "seed": seed}
        frames += [long_results(r.metrics, **keys, method=TEACHER_LABELS[r.kind]) for r in runs]
        frames.append(long_results(dict(ensemble), **keys, method="Ensemble"))
    return pd.concat(frames, ignore_index=True)[["dataset", "protocol", "base", "method", "seed", "metric", "value"]]


# ------------------------------------------------------------------------------------------------------
# Tables and figures
# ------------------------------------------------------------------------------------------------------


def teacher_table(runs: Sequence[TeacherTrajectory], split: Split) -> pd.DataFrame:
    """Per teacher: size, parameters, its checkpoints (epoch and validation Recall@50 each), test metrics."""
    rows = []
    for run in runs:
        valid = {h["epoch"]: h.get(MONITOR) for h in run.history}
        torch.manual_seed(0)
        model = build(ModelConfig(run.kind, run.dim), split)
        rows.append({
            "teacher": TEACHER_LABELS[run.kind], "kind": run.kind, "dim": run.dim,
            "objective": TEACHER_OBJECTIVES[run.kind], "parameters_millions": count_parameters(model) / 1e6,
            "checkpoint_epochs": " / ".join(str(e) for e in run.epochs),
            "checkpoint_valid_recall50": " / ".join(f"{valid[e]:.4f}" for e in run.epochs),
            "epochs_run": run.metrics["epochs_run"], "train_minutes": run.metrics["seconds"] / 60,
            **{f"test {k}": v for k, v in run.metrics["test"].items()},
        })
    return pd.DataFrame(rows)


def efficiency_table(runs: Sequence[TeacherTrajectory], split: Split, student_dim: int, top_n: int = 50,
                     ensemble_top_n: int = 100, temperature: float = 10.0, repeats: int = 3,
                     device: str = "cpu") -> pd.DataFrame:
    """Inference cost: parameters and wall seconds to produce top-``top_n`` lists for all users, per teacher,
    for the ensemble (every teacher's top-``ensemble_top_n`` plus the aggregation, measured) and for the
    student, with the cores other processes kept busy meanwhile (the ensemble's: the largest of its parts').
    Cost depends on the architecture only: measured on freshly built models of the same sizes."""
    rows = []
    for run in runs:
        torch.manual_seed(0)
        model = build(ModelConfig(run.kind, run.dim), split).to(device)
        timing = time_recommend_all(model, split, ensemble_top_n, repeats=repeats)
        rows.append({"model": TEACHER_LABELS[run.kind], "parameters": count_parameters(model),
                     "seconds_all_users": timing.seconds, CONTENTION_COLUMN: timing.other_cores_busy})
    lists = torch.from_numpy(np.stack([run.rankings[-1] for run in runs]))
    with CPUContention() as contention:
        start = time.perf_counter()
        for _ in range(repeats):
            ensemble_topk(lists, top_n, temperature, split.num_items)
        aggregation = (time.perf_counter() - start) / repeats
    teachers_frame = pd.DataFrame(rows)
    rows.append({"model": "Ensemble (all teachers + aggregation)",
                 "parameters": int(teachers_frame["parameters"].sum()),
                 "seconds_all_users": float(teachers_frame["seconds_all_users"].sum()) + aggregation,
                 CONTENTION_COLUMN: max(teachers_frame[CONTENTION_COLUMN].max(), contention.other_cores)})
    torch.manual_seed(0)
    student = build(ModelConfig("bpr", student_dim), split).to(device)
    timing = time_recommend_all(student, split, top_n, repeats=repeats)
    rows.append({"model": f"Student (MF, dim {student_dim})", "parameters": count_parameters(student),
                 "seconds_all_users": timing.seconds, CONTENTION_COLUMN: timing.other_cores_busy})
    table = pd.DataFrame(rows)
    ensemble_row = table.iloc[-2]
    table["parameters_vs_ensemble"] = table["parameters"] / ensemble_row["parameters"]
    table["time_vs_ensemble"] = table["seconds_all_users"] / ensemble_row["seconds_all_users"]
    return table


def gap_table(results: pd.DataFrame, metric: str = "Recall@50", method: str = "HetComp",
              reference: str = "Student", target: str = "Ensemble") -> pd.DataFrame:
    """Per seed: how much of the gap between the undistilled student and the ensemble ``method`` closes,
    (method − reference) / (target − reference)."""
    values = results[results["metric"] == metric].pivot_table(index="seed", columns="method", values="value")
    missing = {method, reference, target} - set(values.columns)
    if missing:
        raise ValueError(f"gap_table needs results of {sorted(missing)}")
    table = values[[reference, method, target]].copy()
    table["gap_closed"] = (table[method] - table[reference]) / (table[target] - table[reference])
    return table.reset_index()


def dynamics_summary(dynamics: pd.DataFrame, method: str = "HetComp") -> pd.DataFrame:
    """Mean share of (teacher, user) pairs at each checkpoint per epoch (over teachers and seeds)."""
    rows = dynamics[dynamics["method"] == method]
    shares = [c for c in rows.columns if c.startswith("v") and c[1:].isdigit()]
    summary = rows.groupby("epoch", sort=True)[[*shares, "detailed_share"]].mean().reset_index()
    return summary.astype({"epoch": int})  # concatenated with the empty frames of methods without dynamics: float


def dynamics_plot(dynamics: pd.DataFrame, method: str = "HetComp", ax=None):
    """DKC's dynamics: share of (teacher, user) pairs at each checkpoint v over epochs (stacked), and the
    share of users in AKT's detailed phase (dashed)."""
    summary = dynamics_summary(dynamics, method)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        plt.close(fig)
    else:
        fig = ax.figure
    if summary.empty:
        ax.text(0.5, 0.5, f"no {method} dynamics recorded", ha="center", va="center", transform=ax.transAxes)
        return fig
    shares = [c for c in summary.columns if c.startswith("v") and c[1:].isdigit()]
    ax.stackplot(summary["epoch"], *(summary[c] for c in shares), labels=[f"checkpoint {c[1:]}" for c in shares],
                 step="post", alpha=0.8)
    ax.step(summary["epoch"], summary["detailed_share"], where="post", color="black", linestyle="--",
            label="users in the detailed phase")
    ax.set_xlabel("epoch")
    ax.set_ylabel("share of (teacher, user) pairs")
    ax.set_ylim(0, 1)
    ax.legend(frameon=False, fontsize="small", loc="center right")
    ax.set_title(method)
    return fig


__all__ = ["STUDENT_VARIANTS", "StudentResults", "dynamics_plot", "dynamics_summary",
           "efficiency_table", "ensemble_metrics", "gap_table", "ranking_metrics", "run_students", "student_job",
           "teacher_results", "teacher_table"]
