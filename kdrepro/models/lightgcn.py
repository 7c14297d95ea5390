"""LightGCN (He et al., SIGIR'20): embeddings smoothed over the normalised user-item graph.

E^{(l+1)} = D^{-1/2} A D^{-1/2} E^{(l)}; the final representation is the mean of layers 0..L and
score(u, i) = <e_u, e_i>. The graph is built from the split's training pairs.
"""

from __future__ import annotations

import numpy as np
import torch

from kdrepro.models.base import Recommender, init_embedding, pairwise_dot


def normalized_adjacency(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int) -> torch.Tensor:
    """Symmetric-normalised bipartite adjacency as a sparse (U+I, U+I) COO tensor."""
    rows = np.concatenate([users, items + num_users])
    cols = np.concatenate([items + num_users, users])
    degree = np.bincount(rows, minlength=num_users + num_items).astype(np.float32)
    inv_sqrt = np.power(degree, -0.5, out=np.zeros_like(degree), where=degree > 0)
    values = inv_sqrt[rows] * inv_sqrt[cols]
    n = num_users + num_items
    indices = torch.from_numpy(np.vstack([rows, cols]))
    return torch.sparse_coo_tensor(indices, torch.from_numpy(values), (n, n), check_invariants=True).coalesce()


class LightGCN(Recommender):
    def __init__(
        self, num_users: int, num_items: int, dim: int, train_users: np.ndarray, train_items: np.ndarray,
        num_layers: int = 3,
    ) -> None:
        super().__init__()
        self.num_users, self.num_items, self.dim, self.num_layers = num_users, num_items, dim, num_layers
        self.user_embedding = init_embedding(num_users, dim)
        self.item_embedding = init_embedding(num_items, dim)
        self.register_buffer(
            "adjacency", normalized_adjacency(train_users, train_items, num_users, num_items), persistent=False
        )

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        layer = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        total = layer
        for _ in range(self.num_layers):
            layer = self.adjacency @ layer
            total = total + layer
        final = total / (self.num_layers + 1)
        return final[: self.num_users], final[self.num_users :]

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        user_final, item_final = self.propagate()
        return pairwise_dot(user_final[users], item_final[items])

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        user_final, item_final = self.propagate()
        return user_final[users] @ item_final.T

    def user_repr(self, users: torch.Tensor) -> torch.Tensor:
        return self.propagate()[0][users]

    def item_repr(self, items: torch.Tensor) -> torch.Tensor:
        return self.propagate()[1][items]
