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
    """

    num_users: int
    num_items: int
    dim: int

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


def init_embedding(num: int, dim: int, std: float = 0.01) -> nn.Embedding:
    """An embedding table initialised N(0, std²), as in the authors' code."""
    table = nn.Embedding(num, dim)
    nn.init.normal_(table.weight, std=std)
    return table


def pairwise_dot(user_vectors: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
    """Dot products of (B, d) users with (B, d) or (B, C, d) items."""
    if item_vectors.dim() == 2:
        return (user_vectors * item_vectors).sum(-1)
    return torch.bmm(item_vectors, user_vectors.unsqueeze(-1)).squeeze(-1)
