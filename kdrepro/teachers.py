"""Trained models without distillation (teachers, and students trained alone) and the outputs students
learn from, kept in :mod:`kdrepro.store`.

A model fit is keyed by (split content, model config, training config, seed) and the digest of the
code that trains it (the training loop and the model's own file, :data:`kdrepro.store.TRAINING_CODE`).
Its weights are a ``state_dict`` (read with ``weights_only=True``); config, metrics and history are
JSON beside it; the store verifies every file's sha256 on load.

Distillation never sees the teacher model, only :class:`~kdrepro.types.TeacherOutputs`: its top-N
items per user, top-N users per item and its representations, a store entry of their own (``.npz``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdrepro._io import stable_hash
from kdrepro.evaluate import gather_rows, rank_full
from kdrepro.models import MODELS, ModelConfig, Recommender, build
from kdrepro.splits import Split
from kdrepro.store import TRAINING_CODE, Store, code_digest
from kdrepro.train import FitResult, TrainConfig, fit, resolve_device
from kdrepro.types import TeacherOutputs

MODEL_KIND = "models"
OUTPUTS_KIND = "outputs"
# Settings that do not change what a fit computes (left out of keys).
COSMETIC_TRAIN_FIELDS = ("progress", "device")


def model_code_digest(model_name: str) -> str:
    """Digest of the code behind a fit of ``model_name``: the training loop and the model's file."""
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {sorted(MODELS)}")
    return code_digest(*TRAINING_CODE, MODELS[model_name])


def relevant_train(train_config: TrainConfig) -> dict:
    return {k: v for k, v in train_config.to_dict().items() if k not in COSMETIC_TRAIN_FIELDS}


def teacher_key(model_config: ModelConfig, split: Split, train_config: TrainConfig, seed: int) -> str:
    return stable_hash(describe(model_config, split, train_config, seed))


def describe(model_config: ModelConfig, split: Split, train_config: TrainConfig, seed: int) -> dict:
    """What decides a model fit (its store key hashes this; the ledger records it)."""
    return {"split": split.key, "model": model_config.to_dict(), "train": relevant_train(train_config),
            "seed": seed, "code": model_code_digest(model_config.name)}


def entry_name(model_config: ModelConfig, split: Split) -> str:
    return f"{split.dataset}-{split.protocol}-{model_config.name}-d{model_config.dim}"


@torch.no_grad()
def _item_side_topk(model: Recommender, split: Split, top_n_users: int, batch_size: int) -> torch.Tensor:
    """(I, top_n_users): users ranked best first for each item, training users excluded.

    One pass over the score matrix: each block of users is scored against every item once and merged
    into a running per-item top-N (the block's training pairs masked first). Equal scores rank the lower
    user id first (a stable sort over candidates kept in user order), so the result is fully determined.
    """
    device = next(model.parameters()).device
    best_scores = torch.full((split.num_items, 0), -torch.inf, device=device)
    best_users = torch.zeros((split.num_items, 0), dtype=torch.long, device=device)
    for lo in range(0, split.num_users, batch_size):
        users = np.arange(lo, min(lo + batch_size, split.num_users))
        scores = model.score_all(torch.as_tensor(users, device=device))
        rows, cols = gather_rows(split.train_indptr, split.train_items, users)
        scores[torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)] = -torch.inf
        candidates = torch.cat([best_scores, scores.T], dim=1)
        candidate_users = torch.cat([best_users, torch.as_tensor(users, device=device).expand(split.num_items, -1)],
                                    dim=1)
        order = torch.sort(candidates, dim=1, descending=True, stable=True).indices[:, :top_n_users]
        best_scores, best_users = candidates.gather(1, order), candidate_users.gather(1, order)
    return best_users.cpu()


@torch.no_grad()
def compute_outputs(model: Recommender, split: Split, top_n: int = 500, top_n_users: int = 500,
                    batch_size: int = 512) -> TeacherOutputs:
    """The teacher's rankings (training interactions excluded) and representations."""
    model.eval()
    device = next(model.parameters()).device
    top_n = min(top_n, split.num_items)
    user_topk = torch.cat(
        [ranked.cpu() for _, ranked in rank_full(model, split, "train", top_k=top_n, batch_size=batch_size)]
    )
    all_users = torch.arange(split.num_users, device=device)
    all_items = torch.arange(split.num_items, device=device)
    user_topk_scores = torch.cat([
        model.score(all_users[u : u + batch_size], user_topk[u : u + batch_size].to(device)).float().cpu()
        for u in range(0, split.num_users, batch_size)
    ])
    return TeacherOutputs(
        user_topk=user_topk,
        user_topk_scores=user_topk_scores,
        item_topk=_item_side_topk(model, split, min(top_n_users, split.num_users), batch_size),
        user_repr=model.user_repr(all_users).float().cpu(),
        item_repr=model.item_repr(all_items).float().cpu(),
    )


@dataclass
class Teacher:
    """A trained model: its weights, metrics, history and its store entry."""

    model: Recommender
    model_config: ModelConfig
    split: Split
    metrics: dict
    history: list[dict]
    path: Path
    key: str = ""
    loaded: bool = False  # True when it came from the store, False when trained by this call
    store: Store | None = None

    def outputs(self, top_n: int = 500, top_n_users: int = 500) -> TeacherOutputs:
        """The stored :class:`TeacherOutputs` (computed and stored on first use)."""
        store = self.store or Store()
        key = stable_hash({"teacher": self.key, "top_n": [top_n, top_n_users],
                           "code": code_digest("teachers.py", "evaluate.py")})
        name = f"{self.path.name.rsplit('-', 1)[0]}-n{top_n}-u{top_n_users}"
        entry = store.open(OUTPUTS_KIND, name, key)
        if entry is not None:
            return TeacherOutputs.from_arrays(entry.arrays("outputs.npz"))
        outputs = compute_outputs(self.model, self.split, top_n, top_n_users)
        store.write(OUTPUTS_KIND, name, key, {"outputs.npz": outputs.to_arrays()}, {"teacher": self.key})
        return outputs


def fit_metrics(result: FitResult) -> dict:
    return {"test": result.test, "valid": result.valid, "best_epoch": result.best_epoch, "seconds": result.seconds}


def load(model_config: ModelConfig, split: Split, train_config: TrainConfig, seed: int, store: Store
         ) -> Teacher | None:
    """The stored fit (verified), or ``None``."""
    key = teacher_key(model_config, split, train_config, seed)
    entry = store.open(MODEL_KIND, entry_name(model_config, split), key)
    if entry is None:
        return None
    torch.manual_seed(seed)
    model = build(model_config, split)
    model.load_state_dict(entry.state("model.pt"))
    model.to(resolve_device(train_config.device))
    return Teacher(model, model_config, split, entry.json("metrics.json"), entry.json("history.json"), entry.path,
                   key, True, store)


def save(result: FitResult, model_config: ModelConfig, split: Split, train_config: TrainConfig, seed: int,
         store: Store) -> Teacher:
    """Store a finished fit (weights, config, metrics, history; manifest last)."""
    described = describe(model_config, split, train_config, seed)
    key = stable_hash(described)
    files = {"config.json": {"model": model_config.to_dict(), **result.config, "key": key, "described": described},
             "history.json": result.history, "metrics.json": fit_metrics(result),
             "model.pt": result.model.state_dict()}
    entry = store.write(MODEL_KIND, entry_name(model_config, split), key, files, described)
    return Teacher(result.model, model_config, split, fit_metrics(result), result.history, entry.path, key, False,
                   store)


def get(
    model_config: ModelConfig,
    split: Split,
    train_config: TrainConfig = TrainConfig(),
    seed: int = 0,
    *,
    cache_dir: str | os.PathLike | Store | None = None,
    retrain: bool = False,
) -> Teacher:
    """The model for these settings: loaded from the store (``cache_dir``: its root), or trained once and stored."""
    store = cache_dir if isinstance(cache_dir, Store) else Store(cache_dir)
    if not retrain:
        found = load(model_config, split, train_config, seed, store)
        if found is not None:
            return found
    result = fit(model_config, split, train_config, seed=seed)
    return save(result, model_config, split, train_config, seed, store)
