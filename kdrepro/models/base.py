"""The one contract every base recommender follows: models only score, losses score the scores."""

from __future__ import annotations

import torch
from torch import nn


class Recommender(nn.Module):
    """Base class of the recommenders.

    - ``score(users, items)``: users (B,) and items (B,) or (B, C) → scores (B,) or (B, C).
    - ``score_all(users)``: (B,) → (B, num_items).
    - ``user_repr(users)`` / ``item_repr(items)``: the representation latent KD distills, (B, repr_dim).
    - ``constrain()``: called after every optimizer step (CML's unit-ball projection); a no-op here.
    - ``row_side``: ``None`` for models trained on (user, item) pairs; ``"users"`` or ``"items"`` for
      models trained on whole rows of the training matrix (the autoencoders), which then implement
      ``reconstruct(ids)`` → (scores (B, num_cols) of the rows' reconstruction, {name: own loss term}).
    """

    num_users: int
    num_items: int
    dim: int
    row_side: str | None = None

    @property
    def repr_dim(self) -> int:
        return self.dim

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def user_repr(self, users: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def item_repr(self, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def constrain(self) -> None:
        return None

    def reconstruct(self, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError(f"{type(self).__name__} trains on (user, item) pairs, not on rows")


class Embedding(nn.Embedding):
    """``nn.Embedding`` looked up with ``index_select``: the same rows, a faster backward.

    The gradient of ``index_select`` is one ``index_add`` into the table, 2–3× faster on CPU than
    ``nn.Embedding``'s dense backward for the ~80,000 rows a batch of RRD or IR gathers.
    """

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight.index_select(0, ids.reshape(-1)).view(*ids.shape, self.embedding_dim)


def init_embedding(num: int, dim: int, std: float = 0.01) -> Embedding:
    """An embedding table initialised N(0, std²), as in the authors' code."""
    table = Embedding(num, dim)
    nn.init.normal_(table.weight, std=std)
    return table


# Largest (B, C, d) product ``pairwise_dot`` forms elementwise (16 MB of float32): below it a multiply-sum
# is 2–4× faster than ``bmm`` forward and backward (bmm's backward is a batch of rank-1 products); well
# above it (full candidate lists at evaluation, d = 200) the temporary no longer fits in cache and bmm wins.
ELEMENTWISE_DOT_MAX = 1 << 22


def pairwise_dot(user_vectors: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
    """Dot products of (B, d) users with (B, d) or (B, C, d) items."""
    if item_vectors.dim() == 2:
        return (user_vectors * item_vectors).sum(-1)
    if item_vectors.numel() <= ELEMENTWISE_DOT_MAX:
        return (item_vectors * user_vectors.unsqueeze(1)).sum(-1)
    return torch.bmm(item_vectors, user_vectors.unsqueeze(-1)).squeeze(-1)
