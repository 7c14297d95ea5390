"""BPR-MF (Rendle et al., UAI'09): score(u, i) = <e_u, e_i>."""

from __future__ import annotations

import torch

from kdrepro.models.base import Recommender, init_embedding, pairwise_dot


class MF(Recommender):
    def __init__(self, num_users: int, num_items: int, dim: int) -> None:
        super().__init__()
        self.num_users, self.num_items, self.dim = num_users, num_items, dim
        self.user_embedding = init_embedding(num_users, dim)
        self.item_embedding = init_embedding(num_items, dim)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return pairwise_dot(self.user_embedding(users), self.item_embedding(items))

    def score_users(self, items: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Item-side scores (IR): items (B,) against users (B, C) → (B, C), each item looked up once."""
        return pairwise_dot(self.item_embedding(items), self.user_embedding(users))

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_embedding(users) @ self.item_embedding.weight.T

    def user_repr(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_embedding(users)

    def item_repr(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_embedding(items)
