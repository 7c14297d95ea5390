"""NeuMF (He et al., WWW'17): a GMF branch and an MLP branch fused by a linear prediction layer.

``dim`` is the width of each branch's embeddings (teacher 250, student 25 in DE-RRD, whose Table 3
parameter counts this matches); the MLP maps [p_u; q_i] (2·dim) → dim → dim/2. The distilled
representation is the concatenation of both branches' embeddings (2·dim).
"""

from __future__ import annotations

import torch
from torch import nn

from kdrepro.models.base import Recommender, init_embedding

SCORE_ALL_ELEMENTS = 1 << 25  # hidden activations held at once by score_all (~128 MB in float32)


class NeuMF(Recommender):
    def __init__(self, num_users: int, num_items: int, dim: int) -> None:
        super().__init__()
        self.num_users, self.num_items, self.dim = num_users, num_items, dim
        self.user_gmf = init_embedding(num_users, dim)
        self.item_gmf = init_embedding(num_items, dim)
        self.user_mlp = init_embedding(num_users, dim)
        self.item_mlp = init_embedding(num_items, dim)
        hidden = max(dim // 2, 1)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, hidden), nn.ReLU())
        self.predict = nn.Linear(dim + hidden, 1)

    @property
    def repr_dim(self) -> int:
        return 2 * self.dim

    def _fuse(self, pu_gmf, qi_gmf, pu_mlp, qi_mlp) -> torch.Tensor:
        mlp = self.mlp(torch.cat([pu_mlp, qi_mlp], dim=-1))
        return self.predict(torch.cat([pu_gmf * qi_gmf, mlp], dim=-1)).squeeze(-1)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        pu_gmf, pu_mlp = self.user_gmf(users), self.user_mlp(users)
        if items.dim() == 2:
            pu_gmf = pu_gmf.unsqueeze(1).expand(-1, items.shape[1], -1)
            pu_mlp = pu_mlp.unsqueeze(1).expand(-1, items.shape[1], -1)
        return self._fuse(pu_gmf, self.item_gmf(items), pu_mlp, self.item_mlp(items))

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        # The first MLP layer is linear in [p_u; q_i]: split it so users and items are projected once.
        first = self.mlp[0]
        w_user, w_item = first.weight[:, : self.dim], first.weight[:, self.dim :]
        hu = self.user_mlp(users) @ w_user.T + first.bias  # (B, dim)
        hi = self.item_mlp.weight @ w_item.T  # (I, dim)
        w_gmf, w_mlp = self.predict.weight[0, : self.dim], self.predict.weight[0, self.dim :]
        scores = (self.user_gmf(users) * w_gmf) @ self.item_gmf.weight.T + self.predict.bias
        # The (B, items, dim) hidden activations are built for a block of items at a time so that
        # memory stays bounded (a whole batch at dim 250 would need ~26 GB).
        block = max(1, SCORE_ALL_ELEMENTS // max(1, len(users) * self.dim))
        for lo in range(0, self.num_items, block):
            hidden = torch.relu(hu.unsqueeze(1) + hi[lo : lo + block].unsqueeze(0))  # (B, block, dim)
            hidden = self.mlp[3](self.mlp[2](hidden))  # (B, block, dim/2)
            scores[:, lo : lo + block] += hidden @ w_mlp
        return scores

    def user_repr(self, users: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.user_gmf(users), self.user_mlp(users)], dim=-1)

    def item_repr(self, items: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.item_gmf(items), self.item_mlp(items)], dim=-1)
