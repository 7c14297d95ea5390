"""Train-once cache of teachers and of the outputs distillation needs.

A teacher is keyed by a hash of (dataset content, split, model config, train config, seed). Its
weights are a ``state_dict`` saved with ``torch.save`` and read back with ``weights_only=True`` (no
arbitrary unpickling); config, metrics and history are JSON beside it. Every write is atomic.

Distillation never sees the teacher model, only :class:`TeacherOutputs`: its top-N items per user,
top-N users per item, and its user/item representations (cached as ``.npz``, no pickles).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdrepro._io import atomic_write, cache_root, stable_hash, write_json
from kdrepro.evaluate import gather_rows, rank_full
from kdrepro.models import ModelConfig, Recommender, build
from kdrepro.splits import Split
from kdrepro.train import FitResult, TrainConfig, fit, resolve_device
from kdrepro.types import TeacherOutputs


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
    # Item side: score blocks of items against all users, mask each item's training users.
    item_order = np.argsort(split.train_items, kind="stable")
    item_ptr = np.concatenate([[0], np.cumsum(np.bincount(split.train_items, minlength=split.num_items))])
    item_users = split.train_users[item_order]
    all_users = torch.arange(split.num_users, device=device)
    top_n_users = min(top_n_users, split.num_users)
    blocks = []
    for lo in range(0, split.num_items, batch_size):
        items = np.arange(lo, min(lo + batch_size, split.num_items))
        scores = torch.cat([model.score_all(all_users[u : u + batch_size])[:, lo : lo + len(items)]
                            for u in range(0, split.num_users, batch_size)]).T.contiguous()
        rows, cols = gather_rows(item_ptr, item_users, items)
        scores[torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)] = -torch.inf
        blocks.append(scores.topk(top_n_users, dim=1).indices.cpu())
    all_items = torch.arange(split.num_items, device=device)
    user_topk_scores = torch.cat([
        model.score(all_users[u : u + batch_size], user_topk[u : u + batch_size].to(device)).float().cpu()
        for u in range(0, split.num_users, batch_size)
    ])
    return TeacherOutputs(
        user_topk=user_topk,
        user_topk_scores=user_topk_scores,
        item_topk=torch.cat(blocks),
        user_repr=model.user_repr(all_users).float().cpu(),
        item_repr=model.item_repr(all_items).float().cpu(),
    )


@dataclass
class Teacher:
    """A trained teacher: the model, its metrics, and where its cache lives."""

    model: Recommender
    model_config: ModelConfig
    split: Split
    metrics: dict
    history: list[dict]
    path: Path

    def outputs(self, top_n: int = 500, top_n_users: int = 500) -> TeacherOutputs:
        """Cached :class:`TeacherOutputs` (computed on first use)."""
        # v2: with user_topk_scores (files of the first layout lack them and are recomputed).
        file = self.path / f"outputs-v2-n{top_n}-u{top_n_users}.npz"
        if file.exists():
            with np.load(file, allow_pickle=False) as npz:
                return TeacherOutputs.from_arrays(dict(npz))
        outputs = compute_outputs(self.model, self.split, top_n, top_n_users)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, **outputs.to_arrays())

        atomic_write(file, write)
        return outputs


def teacher_key(model_config: ModelConfig, split: Split, train_config: TrainConfig, seed: int) -> str:
    relevant_train = {k: v for k, v in train_config.to_dict().items() if k not in ("progress", "device")}
    return stable_hash(
        {"split": split.key, "model": model_config.to_dict(), "train": relevant_train, "seed": seed}
    )


def get(
    model_config: ModelConfig,
    split: Split,
    train_config: TrainConfig = TrainConfig(),
    seed: int = 0,
    *,
    cache_dir: str | os.PathLike | None = None,
    retrain: bool = False,
) -> Teacher:
    """The teacher for these settings: loaded from the cache, or trained once and saved."""
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "teachers"
    key = teacher_key(model_config, split, train_config, seed)
    path = folder / f"{split.dataset}-{model_config.name}-d{model_config.dim}-{key}"
    weights = path / "model.pt"
    device = resolve_device(train_config.device)
    if weights.exists() and not retrain:
        torch.manual_seed(seed)
        model = build(model_config, split)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        model.to(device)
        metrics = json.loads((path / "metrics.json").read_text())
        history = json.loads((path / "history.json").read_text())
    else:
        result: FitResult = fit(model_config, split, train_config, seed=seed)
        model = result.model
        metrics = {"test": result.test, "valid": result.valid, "best_epoch": result.best_epoch,
                   "seconds": result.seconds}
        history = result.history
        write_json(path / "config.json", {"model": model_config.to_dict(), **result.config, "key": key})
        write_json(path / "history.json", history)
        write_json(path / "metrics.json", metrics)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        atomic_write(weights, lambda tmp: torch.save(state, tmp))
    return Teacher(model=model, model_config=model_config, split=split, metrics=metrics, history=history, path=path)
