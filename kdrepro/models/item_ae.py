"""An item-based autoencoder (in the spirit of I-AutoRec, Sedhain et al., WWW'15, and of the item-side
multinomial autoencoders HetComp uses as a teacher).

Each item's training column y_i (the users who interacted with it) is L2-normalised, corrupted by input
dropout (p = 0.5) and encoded by a tanh hidden layer (600 wide) and a linear layer into a ``dim``-wide
item code z_i; a linear decoder gives one logit per user, and training maximises the multinomial
likelihood of the column over users (``objectives.multinomial_loss`` on the transposed problem):

    L_i = −Σ_u y_ui log softmax_u(W z_i + b)_u,   score(u, i) = <w_u, z_i> + b_u

Choices of this suite: the multinomial likelihood rather than I-AutoRec's squared error on observed
entries (one-class data; the same objective as the user-based VAE, as the suite's objectives module
offers), no variational layer, and the user-based VAE's input dropout and widths. A user's representation
is its decoder row w_u, an item's its code z_i. Dropout draws from torch's global generator (``fit``
seeds it).

Shapes: ``reconstruct(items)`` (B,) → logits (B, num_users) and no extra terms; ``score_all(users)``
encodes every item once (an embedding bag over the 60 % training pairs) and multiplies.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kdrepro.models.base import Recommender, pairwise_dot
from kdrepro.models.vae import HIDDEN, RowEncoder, csr_rows


class ItemAE(Recommender):
    row_side = "items"

    def __init__(self, num_users: int, num_items: int, dim: int, train_users: np.ndarray, train_items: np.ndarray,
                 hidden: int = HIDDEN) -> None:
        super().__init__()
        self.num_users, self.num_items, self.dim = num_users, num_items, dim
        indptr, cols = csr_rows(train_items, train_users, num_items)
        self.encoder = RowEncoder(num_users, hidden, dim, indptr, cols)
        self.decoder = nn.Linear(dim, num_users)

    def reconstruct(self, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.decoder(self.encoder(ids)), {}

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        codes = self.item_repr(items.reshape(-1)).view(*items.shape, self.dim)
        return pairwise_dot(self.user_repr(users), codes) + self.decoder.bias[users].view(
            -1, *([1] * (items.dim() - 1)))

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        codes = self.item_repr(torch.arange(self.num_items, device=users.device))
        return self.user_repr(users) @ codes.T + self.decoder.bias[users, None]

    def user_repr(self, users: torch.Tensor) -> torch.Tensor:
        return self.decoder.weight[users]

    def item_repr(self, items: torch.Tensor) -> torch.Tensor:
        return self.encoder(items)
