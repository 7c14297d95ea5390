"""Pure, vectorised top-k ranking metrics.

Every function takes ``ranked``: a (U, >=k) long tensor of item ids, best first, and ``relevant``: a
(U, num_items) bool tensor marking each user's held-out items, and returns the (U,) per-user values.
Users without any relevant item get 0; callers evaluate only users that have held-out items.
``recall_at_k`` and ``ndcg_at_k`` accept the (U,) count of relevant items when the caller already knows
it: summing a (U, num_items) mask costs more than the rest of a full-ranking evaluation.
"""

from __future__ import annotations

import torch


def _hits(ranked: torch.Tensor, relevant: torch.Tensor, k: int) -> torch.Tensor:
    if ranked.shape[1] < k:
        raise ValueError(f"ranked has {ranked.shape[1]} columns, fewer than k={k}")
    return relevant.gather(1, ranked[:, :k]).float()  # (U, k)


def _discounts(k: int, device: torch.device) -> torch.Tensor:
    return 1.0 / torch.log2(torch.arange(2, k + 2, device=device, dtype=torch.float32))


def hit_at_k(ranked: torch.Tensor, relevant: torch.Tensor, k: int) -> torch.Tensor:
    """HR@k: 1 if any relevant item is in the top k."""
    return _hits(ranked, relevant, k).amax(1)


def _count(relevant: torch.Tensor, n_relevant: torch.Tensor | None) -> torch.Tensor:
    return relevant.sum(1) if n_relevant is None else n_relevant


def recall_at_k(
    ranked: torch.Tensor, relevant: torch.Tensor, k: int, n_relevant: torch.Tensor | None = None
) -> torch.Tensor:
    """Recall@k = |top-k ∩ relevant| / |relevant| (equals HR@k with one held-out item)."""
    return _hits(ranked, relevant, k).sum(1) / _count(relevant, n_relevant).clamp(min=1).float()


def ndcg_at_k(
    ranked: torch.Tensor, relevant: torch.Tensor, k: int, n_relevant: torch.Tensor | None = None
) -> torch.Tensor:
    """NDCG@k with binary gains: Σ_r rel_r / log2(r + 1) over the ideal ordering's value."""
    discounts = _discounts(k, ranked.device)
    dcg = (_hits(ranked, relevant, k) * discounts).sum(1)
    n_ideal = _count(relevant, n_relevant).clamp(max=k)
    ideal = torch.cat([torch.zeros(1, device=ranked.device), discounts.cumsum(0)])[n_ideal]
    return torch.where(n_ideal > 0, dcg / ideal.clamp(min=1e-12), torch.zeros_like(dcg))


def mrr_at_k(ranked: torch.Tensor, relevant: torch.Tensor, k: int) -> torch.Tensor:
    """MRR@k: reciprocal rank of the first relevant item in the top k, else 0."""
    hits = _hits(ranked, relevant, k)
    reciprocal = 1.0 / torch.arange(1, k + 1, device=ranked.device, dtype=torch.float32)
    return (hits * reciprocal).amax(1)


METRICS = {"HR": hit_at_k, "Recall": recall_at_k, "NDCG": ndcg_at_k, "MRR": mrr_at_k}
PROTOCOL_METRICS = {
    "loo_sampled": ("HR", "MRR", "NDCG"),
    "loo_full": ("Recall", "NDCG"),
    "holdout": ("Recall", "NDCG"),
}


def per_user_metrics(
    ranked: torch.Tensor,
    relevant: torch.Tensor,
    names: tuple[str, ...],
    ks: tuple[int, ...],
    n_relevant: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``{"NDCG@10": (U,) tensor, ...}`` for every metric name × k."""
    if n_relevant is None:
        n_relevant = relevant.sum(1)
    counted = {"Recall", "NDCG"}
    return {
        f"{name}@{k}": METRICS[name](ranked, relevant, k, n_relevant) if name in counted else METRICS[name](
            ranked, relevant, k)
        for name in names
        for k in ks
    }


def per_user_metrics_from_ranks(ranks: torch.Tensor, names: tuple[str, ...], ks: tuple[int, ...]
                                ) -> dict[str, torch.Tensor]:
    """Leave-one-out protocols (one held-out item per user): every metric from the held-out item's 1-based
    rank among the candidates (0: not within the top ``max(ks)``), through :func:`per_user_metrics`."""
    max_k = max(ks)
    ranked = torch.arange(max_k).expand(len(ranks), -1)
    relevant = torch.zeros((len(ranks), max_k), dtype=torch.bool)
    inside = (ranks > 0) & (ranks <= max_k)
    relevant[torch.nonzero(inside).ravel(), ranks[inside] - 1] = True
    return per_user_metrics(ranked, relevant, names, ks, torch.ones(len(ranks), dtype=torch.long))
