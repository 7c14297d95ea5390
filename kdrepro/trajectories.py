"""Teachers and their training trajectories (HetComp's knowledge, chapter 07), trained once into the store.

A teacher kind is trained by one ``fit`` whose ``on_evaluate`` hook (:class:`RankingRecorder`) ranks every
user's top-N items at the validations that may become checkpoints; the trajectory keeps V of them, chosen by
:func:`checkpoint_epochs` (the first validated epochs at which validation Recall@50 reaches fixed fractions
of its best, then the best epoch), as int32 (V, U, N) rankings — never dense user × item scores — plus the
converged teacher's top users per item. :func:`_stored_trajectory` is the one function that meets the store.

This file is the code behind a stored trajectory (its digest is in the store key): the chapter's tables and
figures live in :mod:`kdrepro.heterogeneous`, so editing them does not retrain six teachers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from kdrepro import teachers
from kdrepro._io import stable_hash
from kdrepro.distill.hetcomp import TeacherTrajectories
from kdrepro.evaluate import rank_full
from kdrepro.models import ModelConfig, Recommender
from kdrepro.splits import Split
from kdrepro.store import Store, code_digest
from kdrepro.train import TrainConfig, fit

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
    """One teacher kind: its trajectory of top-N rankings and the fit behind it."""

    kind: str
    dim: int
    epochs: list[int]  # the checkpoints' epochs, v = 0 … V−1
    rankings: np.ndarray  # (V, U, N) int32
    item_rankings: np.ndarray  # (I, N) int32, converged teacher
    metrics: dict  # test / valid / best_epoch / seconds of the fit
    history: list[dict]
    loaded: bool


def teacher_train_config(kind: str, base: TrainConfig, row_batch_size: int) -> TrainConfig:
    """The teacher's training: ``base`` with the kind's objective (rows per batch for the autoencoders)."""
    if kind not in TEACHER_OBJECTIVES:
        raise ValueError(f"unknown teacher kind {kind!r}; choose among {sorted(TEACHER_OBJECTIVES)}")
    objective = TEACHER_OBJECTIVES[kind]
    batch = row_batch_size if objective == "multinomial" else base.batch_size
    return replace(base, loss=objective, batch_size=batch)


def _stored_trajectory(store: Store, name: str, key: str, build_files) -> tuple[dict, bool]:
    """The one place trajectories meet storage: (files, loaded) from the store, building them when absent."""
    entry, loaded = store.get_or_build(TRAJECTORY_KIND, name, key, build_files)
    files = {"arrays": entry.arrays("trajectory.npz"), "history": entry.json("history.json"),
             "metrics": entry.json("metrics.json")}
    return files, loaded


def get_trajectory(model_config: ModelConfig, split: Split, train_config: TrainConfig, seed: int = 0, *,
                   top_n: int = 100, fractions: Sequence[float] = (0.5, 0.7, 0.9),
                   store: Store | None = None) -> TeacherTrajectory:
    """The teacher's trajectory: from the store, or trained once (one ``fit``, rankings recorded at every
    validation; only the checkpoints' are kept) and stored."""
    described = {**teachers.describe(model_config, split, train_config, seed), "top_n": top_n,
                 "fractions": list(fractions), "trajectory_code": code_digest("trajectories.py", "teachers.py")}
    name = teachers.entry_name(model_config, split)

    def build_files() -> tuple[dict, dict]:
        recorder = RankingRecorder(split, top_n, min(fractions))
        result = fit(model_config, split, train_config, seed=seed, on_evaluate=recorder)
        epochs = checkpoint_epochs(result.history, fractions)
        outputs = teachers.compute_outputs(result.model, split, top_n=top_n, top_n_users=top_n)
        arrays = {"epochs": np.array(epochs), "rankings": np.stack([recorder.rankings[e] for e in epochs]),
                  "item_rankings": outputs.item_topk.numpy().astype(np.int32)}
        files = {"trajectory.npz": arrays, "history.json": result.history,
                 "metrics.json": teachers.fit_metrics(result)}
        return files, described

    files, loaded = _stored_trajectory(store or Store(), name, stable_hash(described), build_files)
    arrays = files["arrays"]
    return TeacherTrajectory(kind=model_config.name, dim=model_config.dim, epochs=arrays["epochs"].tolist(),
                             rankings=arrays["rankings"], item_rankings=arrays["item_rankings"],
                             metrics=files["metrics"], history=files["history"], loaded=loaded)


def get_trajectories(kinds: Sequence[str], dims: Mapping[str, int], split: Split, base_train: TrainConfig,
                     row_batch_size: int = 256, seed: int = 0, *, top_n: int = 100,
                     fractions: Sequence[float] = (0.5, 0.7, 0.9), store: Store | None = None
                     ) -> list[TeacherTrajectory]:
    """Every teacher kind's trajectory (trained once each, in order)."""
    return [get_trajectory(ModelConfig(kind, dims[kind]), split, teacher_train_config(kind, base_train, row_batch_size),
                           seed, top_n=top_n, fractions=fractions, store=store) for kind in kinds]


def as_teacher_trajectories(runs: Sequence[TeacherTrajectory]) -> TeacherTrajectories:
    """What HetComp reads: (X, V, U, N) rankings, (X, I, N) item rankings, (X, V) epochs."""
    return TeacherTrajectories(names=tuple(r.kind for r in runs),
                               rankings=torch.from_numpy(np.stack([r.rankings for r in runs])),
                               item_rankings=torch.from_numpy(np.stack([r.item_rankings for r in runs])),
                               epochs=torch.tensor([r.epochs for r in runs]))


def trajectories_digest(trajectories: TeacherTrajectories) -> str:
    digest = hashlib.sha256()
    for tensor in (trajectories.rankings, trajectories.item_rankings, trajectories.epochs):
        digest.update(tensor.contiguous().numpy().tobytes())
    digest.update(",".join(trajectories.names).encode())
    return digest.hexdigest()[:16]


__all__ = ["MONITOR", "TEACHER_LABELS", "TEACHER_OBJECTIVES", "RankingRecorder", "TeacherTrajectory",
           "as_teacher_trajectories", "checkpoint_epochs", "get_trajectories", "get_trajectory", "teacher_train_config",
           "top_n_items", "trajectories_digest"]
