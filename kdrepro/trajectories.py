"""Teachers and their training trajectories (HetComp's knowledge, chapter 07), trained once into the store.

A teacher kind is trained by one ``fit`` whose ``on_evaluate`` hook (:class:`RankingRecorder`) ranks every
user's top-N items at the validations that may become checkpoints; the trajectory keeps V of them, chosen by
:func:`checkpoint_epochs` (the first validated epochs at which validation Recall@50 reaches fixed fractions
of its best, then the best epoch), as int32 (V, U, N) rankings — never dense user × item scores — plus the
converged teacher's top users per item.

Each teacher's trajectory is a job of the task ``trajectory`` (:data:`TRAJECTORY_TASK`, :mod:`kdrepro.jobs`):
it runs on the configured executor, its ledger entry holds the fit's metrics, history, seconds and the
checkpoint epochs, and its store entry the rankings (``trajectory.npz``, no weights). HetComp's students are
jobs whose inputs are these trajectory jobs (computed first, like teachers).

This file is the code behind a stored trajectory (its digest is in the job key): the chapter's tables and
figures live in :mod:`kdrepro.heterogeneous`, so editing them does not retrain six teachers.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from kdrepro import jobs, teachers
from kdrepro.distill.hetcomp import TeacherTrajectories
from kdrepro.evaluate import rank_full
from kdrepro.models import MODELS, ModelConfig, Recommender
from kdrepro.splits import Split
from kdrepro.store import TRAINING_CODE, Store, code_digest
from kdrepro.train import TrainConfig, fit, resolve_device

# The base objective each teacher kind trains with, and how the chapter names it.
TEACHER_OBJECTIVES = {"bpr": "bpr", "cml": "cml", "neumf": "bce", "lightgcn": "bpr", "vae": "multinomial",
                      "item_ae": "multinomial"}
TEACHER_LABELS = {"bpr": "MF (BPR)", "cml": "CML", "neumf": "NeuMF", "lightgcn": "LightGCN", "vae": "Mult-VAE",
                  "item_ae": "Item-AE"}
TRAJECTORY_KIND = "trajectories"
MONITOR = "valid/Recall@50"


def checkpoint_epochs(history: Sequence[Mapping], fractions: Sequence[float], monitor: str = MONITOR) -> list[int]:
    """The trajectory's epochs: for each fraction f, the first validated epoch with monitor ≥ f · best; then
    the best epoch (the first maximum, the state ``fit`` restores). Equal epochs are allowed (a teacher that
    is already good at its first validation)."""
    if any(not 0 < f <= 1 for f in fractions) or list(fractions) != sorted(fractions):
        raise ValueError(f"trajectory fractions must increase within (0, 1], got {list(fractions)}")
    rows = [(h["epoch"], h[monitor]) for h in history if monitor in h]
    if not rows:
        raise ValueError(f"the history has no {monitor!r}: validate at least once")
    best_epoch, best = rows[0]
    for epoch, value in rows:
        if value > best:
            best_epoch, best = epoch, value
    return [next(e for e, v in rows if v >= f * best) for f in fractions] + [best_epoch]


class RankingRecorder:
    """``fit``'s ``on_evaluate`` hook: the model's top-N items per user (training items excluded), int32 (U, N),
    at the validations that may become checkpoints.

    A checkpoint (the first epoch reaching f · best) is always a new running maximum of the monitor, so only
    those are ranked (a full ranking costs as much as a validation: a minute for NeuMF on one core), and a
    stored ranking is dropped once it falls below min(f) · the running best (it can no longer be chosen).
    """

    def __init__(self, split: Split, top_n: int, min_fraction: float, monitor: str = MONITOR) -> None:
        self.split, self.top_n, self.min_fraction = split, top_n, min_fraction
        self.metric = monitor.removeprefix("valid/")
        self.best, self.rankings, self.values = -np.inf, {}, {}

    def __call__(self, epoch: int, model: Recommender, valid: Mapping[str, float]) -> None:
        value = valid[self.metric]
        if value <= self.best:
            return
        self.best = value
        self.rankings[epoch], self.values[epoch] = top_n_items(model, self.split, self.top_n), value
        for stale in [e for e, v in self.values.items() if v < self.min_fraction * self.best]:
            del self.rankings[stale], self.values[stale]


@torch.no_grad()
def top_n_items(model: Recommender, split: Split, top_n: int) -> np.ndarray:
    was_training = model.training
    model.eval()
    ranked = np.concatenate([r.cpu().numpy() for _, r in rank_full(model, split, "train", top_k=top_n)])
    model.train(was_training)
    return ranked.astype(np.int32)


@dataclass
class TeacherTrajectory:
    """One teacher kind: its trajectory of top-N rankings and the fit behind it. The metrics, history and
    checkpoint epochs come from the ledger; the rankings are read from the store when first used."""

    kind: str
    dim: int
    epochs: list[int]  # the checkpoints' epochs, v = 0 … V−1
    metrics: dict  # test / valid / best_epoch / seconds / epochs_run of the fit
    history: list[dict]  # at validation epochs (the ledger's)
    loaded: bool  # from the ledger (not trained by this call)
    job: jobs.FitJob = field(repr=False)
    store: Store = field(repr=False)

    @functools.cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        return jobs.load_entry(self.store, self.job).arrays("trajectory.npz")

    @property
    def rankings(self) -> np.ndarray:
        """(V, U, N) int32."""
        return self.arrays["rankings"]

    @property
    def item_rankings(self) -> np.ndarray:
        """(I, N) int32, converged teacher."""
        return self.arrays["item_rankings"]


def teacher_train_config(kind: str, base: TrainConfig, row_batch_size: int) -> TrainConfig:
    """The teacher's training: ``base`` with the kind's objective (rows per batch for the autoencoders)."""
    if kind not in TEACHER_OBJECTIVES:
        raise ValueError(f"unknown teacher kind {kind!r}; choose among {sorted(TEACHER_OBJECTIVES)}")
    objective = TEACHER_OBJECTIVES[kind]
    batch = row_batch_size if objective == "multinomial" else base.batch_size
    return replace(base, loss=objective, batch_size=batch)


def trajectory_job(model_config: ModelConfig, split: Split, train_config: TrainConfig, seed: int = 0, *,
                   top_n: int = 100, fractions: Sequence[float] = (0.5, 0.7, 0.9),
                   store: Store | None = None) -> jobs.FitJob:
    """The job of one teacher's trajectory: the teacher (kind, dim, training, seed) and the trajectory rule
    (ranking length, checkpoint fractions)."""
    if any(not 0 < f <= 1 for f in fractions) or list(fractions) != sorted(fractions):
        raise ValueError(f"trajectory fractions must increase within (0, 1], got {list(fractions)}")
    entry = jobs.split_entry(store or Store(), split)
    labels = {"protocol": split.protocol, "base": model_config.name, "method": "Teacher trajectory"}
    return jobs.FitJob(TRAJECTORY_KIND, entry, split.dataset, model_config.to_dict(), train_config.to_dict(), seed,
                       labels=labels, task="trajectory", params={"top_n": top_n, "fractions": list(fractions)})


def _run_trajectory(job: jobs.FitJob, split: Split, _inputs: None) -> jobs.FitOutcome:
    """One teacher fit (in a worker), rankings recorded at every new best validation; the checkpoints' kept."""
    top_n, fractions = job.params["top_n"], job.params["fractions"]
    recorder = RankingRecorder(split, top_n, min(fractions))
    result = fit(job.model_config, split, job.train_config, seed=job.seed, on_evaluate=recorder)
    epochs = checkpoint_epochs(result.history, fractions)
    outputs = teachers.compute_outputs(result.model, split, top_n=top_n, top_n_users=top_n)
    arrays = {"epochs": np.array(epochs), "rankings": np.stack([recorder.rankings[e] for e in epochs]),
              "item_rankings": outputs.item_topk.numpy().astype(np.int32)}
    summary = jobs.fit_summary(result, 0)
    summary["extra"] = {"checkpoint_epochs": epochs}
    return jobs.FitOutcome(key=job.key, state={}, result=summary, history=result.history, config=result.config,
                           threads=torch.get_num_threads(), device=str(resolve_device(job.train_config.device)),
                           files={"trajectory.npz": arrays})


def _trajectory_code(job: jobs.FitJob) -> str:
    return code_digest(*TRAINING_CODE, MODELS[job.model["name"]], "trajectories.py", "teachers.py")


def _trajectory_seconds(job: jobs.FitJob) -> float:
    """Fallback: the kind's epoch cost × expected epochs; NeuMF's validations (and the recorder's rankings at
    about every other one) rank every user against every item, ~a minute each on one core."""
    cost, kind, epochs = jobs.EPOCH_SECONDS, job.model["name"], jobs.expected_epochs(job.train)
    seconds = cost.get(f"trajectory_{kind}", cost["models"]) * epochs
    if kind == "neumf":
        seconds += 1.5 * cost["neumf_ranking"] * epochs / max(1, job.train["eval_every"])
    return seconds


def load_trajectories(store: Store, job: jobs.FitJob, split: Split) -> TeacherTrajectories:
    """A job's inputs (trajectory jobs) as HetComp reads them, from the store (the driver's side)."""
    arrays = [jobs.load_entry(store, j).arrays("trajectory.npz") for j in job.inputs]
    return TeacherTrajectories(names=tuple(j.model["name"] for j in job.inputs),
                               rankings=torch.from_numpy(np.stack([a["rankings"] for a in arrays])),
                               item_rankings=torch.from_numpy(np.stack([a["item_rankings"] for a in arrays])),
                               epochs=torch.from_numpy(np.stack([a["epochs"] for a in arrays])))


TRAJECTORY_TASK = jobs.Task(code=_trajectory_code, run=_run_trajectory, seconds=_trajectory_seconds)


def _trajectory(job: jobs.FitJob, done: jobs.Done, store: Store) -> TeacherTrajectory:
    entry = done.entry
    return TeacherTrajectory(kind=job.model["name"], dim=job.model["dim"],
                             epochs=list((entry.get("extra") or {}).get("checkpoint_epochs", [])),
                             metrics={k: entry.get(k) for k in ("test", "valid", "best_epoch", "seconds",
                                                                "epochs_run")},
                             history=entry.get("history", []), loaded=not done.trained, job=job, store=store)


def get_trajectory(model_config: ModelConfig, split: Split, train_config: TrainConfig, seed: int = 0, *,
                   top_n: int = 100, fractions: Sequence[float] = (0.5, 0.7, 0.9),
                   store: Store | None = None) -> TeacherTrajectory:
    """The teacher's trajectory: from the ledger and the store, or trained once through the executor."""
    store = store or Store()
    job = trajectory_job(model_config, split, train_config, seed, top_n=top_n, fractions=fractions, store=store)
    return _trajectory(job, jobs.run_jobs([job], store=store)[job.key], store)


def get_trajectories(kinds: Sequence[str], dims: Mapping[str, int], split: Split, base_train: TrainConfig,
                     row_batch_size: int = 256, seed: int = 0, *, top_n: int = 100,
                     fractions: Sequence[float] = (0.5, 0.7, 0.9), store: Store | None = None
                     ) -> list[TeacherTrajectory]:
    """Every teacher kind's trajectory: one job each, run together on the configured executor (trained once;
    from the ledger after). In planning mode the jobs are recorded and the trajectories are empty."""
    store = store or Store()
    work = [trajectory_job(ModelConfig(kind, dims[kind]), split, teacher_train_config(kind, base_train, row_batch_size),
                           seed, top_n=top_n, fractions=fractions, store=store) for kind in kinds]
    done = jobs.run_jobs(work, store=store)
    trained = sum(done[j.key].trained for j in work)
    print(f"trajectories: {len(work)} teachers, {len(work) - trained} from the ledger, {trained} trained now",
          flush=True)
    return [_trajectory(job, done[job.key], store) for job in work]


def as_teacher_trajectories(runs: Sequence[TeacherTrajectory]) -> TeacherTrajectories:
    """What HetComp reads: (X, V, U, N) rankings, (X, I, N) item rankings, (X, V) epochs."""
    return TeacherTrajectories(names=tuple(r.kind for r in runs),
                               rankings=torch.from_numpy(np.stack([r.rankings for r in runs])),
                               item_rankings=torch.from_numpy(np.stack([r.item_rankings for r in runs])),
                               epochs=torch.tensor([r.epochs for r in runs]))


__all__ = ["MONITOR", "TEACHER_LABELS", "TEACHER_OBJECTIVES", "TRAJECTORY_TASK", "RankingRecorder",
           "TeacherTrajectory", "as_teacher_trajectories", "checkpoint_epochs", "get_trajectories", "get_trajectory",
           "load_trajectories", "teacher_train_config", "top_n_items", "trajectory_job"]
