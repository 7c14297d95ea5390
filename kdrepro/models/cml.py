"""CML — Collaborative Metric Learning (Hsieh et al., WWW'17).

Users and items live in a Euclidean space; score(u, i) = −‖e_u − e_i‖² so that higher is better, and
``constrain()`` projects every embedding back into the unit ball after each step, as in the paper.
"""

from __future__ import annotations

import torch

from kdrepro.models.base import Recommender, init_embedding


class CML(Recommender):
    def __init__(self, num_users: int, num_items: int, dim: int) -> None:
        super().__init__()
        self.num_users, self.num_items, self.dim = num_users, num_items, dim
        self.user_embedding = init_embedding(num_users, dim, std=1.0 / dim**0.5)
        self.item_embedding = init_embedding(num_items, dim, std=1.0 / dim**0.5)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        user_vectors = self.user_embedding(users)
        item_vectors = self.item_embedding(items)
        if items.dim() == 2:
            user_vectors = user_vectors.unsqueeze(1)
        return -((user_vectors - item_vectors) ** 2).sum(-1)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        user_vectors = self.user_embedding(users)
        items = self.item_embedding.weight
        return -(
            (user_vectors**2).sum(1, keepdim=True) - 2 * user_vectors @ items.T + (items**2).sum(1)[None, :]
        )

    def user_repr(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_embedding(users)

    def item_repr(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_embedding(items)

    @torch.no_grad()
    def constrain(self) -> None:
        for table in (self.user_embedding.weight, self.item_embedding.weight):
            table.div_(table.norm(dim=1, keepdim=True).clamp(min=1.0))
