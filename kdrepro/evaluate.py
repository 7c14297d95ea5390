"""Evaluate a recommender on a split: masking, batching, and the protocol's metrics.

``evaluate(model, split, "test")`` returns the mean of every metric over evaluated users, e.g.
``{"HR@5": 0.51, ...}``. Under ``loo_sampled`` the held-out item is ranked among the user's fixed
negatives; under full ranking every item outside the user's training set competes (at test time the
validation items are excluded as well).
"""

from __future__ import annotations

import numpy as np
import torch

from kdrepro.metrics import PROTOCOL_METRICS, per_user_metrics
from kdrepro.models.mf import MF
from kdrepro.splits import Split

SAMPLED_CHUNK_ELEMENTS = 32_768  # (user, candidate) pairs scored at once under loo_sampled on CPU
SAMPLED_SCORE_ALL_ELEMENTS = 1 << 22  # (user, item) scores per chunk when MF scores all items on CPU


class NonFiniteScoresError(FloatingPointError):
    """A model scored an item NaN or +inf: its metrics would be meaningless (a divergent fit)."""


def _refuse_non_finite(values: torch.Tensor, where: str) -> None:
    # -inf is how masked items are excluded, so only NaN and +inf are refused here.
    if bool(torch.isnan(values).any() or torch.isposinf(values).any()):
        raise NonFiniteScoresError(f"the model gives non-finite scores ({where}); a divergent fit is not evaluated")


def gather_rows(indptr: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR look-up without a Python loop: (position of each row in ``rows``, value) for every stored entry."""
    counts = indptr[rows + 1] - indptr[rows]
    position = np.repeat(np.arange(len(rows)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return position, values[np.repeat(indptr[rows], counts) + offsets]


def _held_out_csr(users: np.ndarray, items: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(users, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=num_users))])
    return indptr, items[order]


@torch.no_grad()
def rank_full(
    model,
    split: Split,
    which: str = "test",
    *,
    top_k: int = 50,
    batch_size: int = 1024,
    users: np.ndarray | None = None,
):
    """Top-``top_k`` items for each user (training items masked; validation items too when ``which='test'``).

    Yields ``(user_ids, ranked)`` per batch of users; ``ranked`` is (B, top_k) on the model's device.
    """
    device = next(model.parameters()).device
    train_ptr = split.train_indptr
    valid_ptr, valid_items = _held_out_csr(split.valid_users, split.valid_items, split.num_users)
    user_ids = np.arange(split.num_users) if users is None else np.asarray(users)
    for lo in range(0, len(user_ids), batch_size):
        batch = user_ids[lo : lo + batch_size]
        scores = model.score_all(torch.as_tensor(batch, device=device))
        masks = [(train_ptr, split.train_items)] + ([(valid_ptr, valid_items)] if which == "test" else [])
        for indptr, items in masks:
            rows, cols = gather_rows(indptr, items, batch)
            scores[torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)] = -torch.inf
        top = scores.topk(top_k, dim=1)
        _refuse_non_finite(top.values, "full ranking")  # NaN and +inf sort first, so the top-k shows them
        yield batch, top.indices


@torch.no_grad()
def evaluate(
    model,
    split: Split,
    which: str = "test",
    ks: tuple[int, ...] | None = None,
    *,
    batch_size: int = 1024,
    per_user: bool = False,
) -> dict[str, float] | dict[str, np.ndarray]:
    """Mean metrics over the users with held-out items in ``which`` (``"valid"`` or ``"test"``).

    With ``per_user=True`` returns the per-user arrays (and ``"user"``) instead of means, for
    breakdowns and significance tests.
    """
    if which not in ("valid", "test"):
        raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
    ks = tuple(ks or split.ks)
    names = PROTOCOL_METRICS[split.protocol]
    was_training = model.training
    model.eval()
    try:
        held_users = getattr(split, f"{which}_users")
        held_items = getattr(split, f"{which}_items")
        if split.protocol == "loo_sampled":
            values = _evaluate_sampled(model, split, held_users, held_items, names, ks, batch_size)
        else:
            values = _evaluate_full(model, split, which, held_users, held_items, names, ks, batch_size)
    finally:
        model.train(was_training)
    if per_user:
        return values
    return {name: float(v.mean()) for name, v in values.items() if name != "user"}


def _evaluate_sampled(model, split, held_users, held_items, names, ks, batch_size):
    device = next(model.parameters()).device
    # Candidate 0 is the held-out item, 1.. the user's fixed negatives.
    candidates = np.concatenate([held_items[:, None], split.negatives[held_users]], axis=1)
    out: dict[str, list] = {}
    max_k = max(ks)
    # Small chunks keep the gathered candidate embeddings (chunk × 500 × dim) inside the CPU cache:
    # 64 users per chunk is 2.5x faster than 1024 on CiteULike at dim 200 (measured).
    chunk = batch_size if device.type == "cuda" else max(1, SAMPLED_CHUNK_ELEMENTS // candidates.shape[1])
    # Matrix factorization on CPU: one product of the chunk's users with every item, then the candidates'
    # columns, is 2x cheaper than gathering 500 candidate embeddings per user (memory-bound; CiteULike, dim
    # 200, measured). The same dot products summed in another order: a score may differ in its last bit.
    by_score_all = device.type == "cpu" and isinstance(model, MF)
    if by_score_all:
        chunk = max(1, SAMPLED_SCORE_ALL_ELEMENTS // split.num_items)
    for lo in range(0, len(held_users), chunk):
        users = torch.as_tensor(held_users[lo : lo + chunk], device=device)
        cands = torch.as_tensor(candidates[lo : lo + chunk], device=device)
        if by_score_all:
            scores = torch.take_along_dim(model.score_all(users), cands, dim=1)  # (B, 1 + negatives)
        else:
            scores = model.score(users, cands)
        _refuse_non_finite(scores, "sampled candidates")
        # Pessimistic about ties: a negative scoring exactly like the held-out item ranks above it.
        negatives = scores[:, 1:]
        above = torch.nextafter(negatives, torch.full_like(negatives, torch.inf))
        scores[:, 1:] = torch.where(negatives == scores[:, :1], above, negatives)
        ranked = scores.topk(max_k, dim=1).indices
        relevant = torch.zeros_like(scores, dtype=torch.bool)
        relevant[:, 0] = True
        for name, v in per_user_metrics(ranked, relevant, names, ks).items():
            out.setdefault(name, []).append(v.cpu())
    result = {name: torch.cat(v).numpy() for name, v in out.items()}
    result["user"] = held_users
    return result


def _evaluate_full(model, split, which, held_users, held_items, names, ks, batch_size):
    held_ptr, held_sorted = _held_out_csr(held_users, held_items, split.num_users)
    users = np.flatnonzero(np.diff(held_ptr) > 0)
    out: dict[str, list] = {}
    for batch, ranked in rank_full(model, split, which, top_k=max(ks), batch_size=batch_size, users=users):
        relevant = torch.zeros((len(batch), split.num_items), dtype=torch.bool, device=ranked.device)
        rows, cols = gather_rows(held_ptr, held_sorted, batch)
        relevant[torch.as_tensor(rows, device=ranked.device), torch.as_tensor(cols, device=ranked.device)] = True
        n_relevant = torch.as_tensor(held_ptr[batch + 1] - held_ptr[batch], device=ranked.device)
        for name, v in per_user_metrics(ranked, relevant, names, ks, n_relevant).items():
            out.setdefault(name, []).append(v.cpu())
    result = {name: torch.cat(v).numpy() for name, v in out.items()}
    result["user"] = users
    return result
