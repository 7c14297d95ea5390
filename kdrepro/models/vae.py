"""Mult-VAE — a user-based variational autoencoder (Liang, Krishnan, Hoffman, Jebara, WWW'18).

The encoder reads the user's whole training row x_u (L2-normalised, input dropout p = 0.5), maps it
through a tanh hidden layer (600 wide, the paper's) to the mean μ_u and log-variance of a Gaussian over a
``dim``-wide latent z_u; the decoder maps z_u to one logit per item, and training maximises the
multinomial likelihood of the row (``objectives.multinomial_loss``) minus β·KL(q(z_u | x_u) ‖ N(0, I)),
with β annealed linearly from 0 to 0.2 over the first ``anneal_steps`` optimiser steps (the paper's
KL annealing with its cap 0.2):

    L_u = −Σ_i x_ui log softmax(f(z_u))_i + β · ½ Σ_d (μ²_d + σ²_d − log σ²_d − 1),   z_u = μ_u + σ_u ⊙ ε

Choices of this suite (not the paper's): the decoder is one linear layer (``dim → items``; the paper's
[I-600-200-600-I] has a hidden decoder layer), so that a user-item score is the dot product
<μ_u, w_i> + b_i and items have a ``dim``-wide representation like the other models; the first encoder
layer is an embedding bag over the row's items (the same product as a dense (B, I) × (I, 600) matrix,
without forming the dense row). At inference z_u = μ_u. Dropout and ε draw from torch's global generator,
which ``fit`` seeds.

Shapes: ``reconstruct(users)`` (B,) → logits (B, num_items) and {"kl": β·KL summed over the batch}.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kdrepro.models.base import Recommender, pairwise_dot

HIDDEN = 600  # Mult-VAE's hidden width
INPUT_DROPOUT = 0.5  # Mult-VAE's dropout on the input row
ANNEAL_CAP = 0.2  # β's final value (the paper's best cap)
ANNEAL_STEPS = 2_000  # optimiser steps over which β rises to the cap (the paper: 200,000 steps of 500 users)


def csr_rows(rows: np.ndarray, cols: np.ndarray, num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row pointer (num_rows + 1,), columns sorted by row) of the training pairs, as int64 tensors."""
    order = np.argsort(rows, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=num_rows))])
    return torch.from_numpy(indptr.astype(np.int64)), torch.from_numpy(cols[order].astype(np.int64))


def row_entries(indptr: torch.Tensor, cols: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored columns of rows ``ids`` (flat, row after row) and each row's offset into them (B,)."""
    starts, counts = indptr[ids], indptr[ids + 1] - indptr[ids]
    offsets = torch.cumsum(counts, 0) - counts
    within = torch.arange(int(counts.sum()), device=ids.device) - torch.repeat_interleave(offsets, counts)
    return cols[torch.repeat_interleave(starts, counts) + within], offsets


class RowEncoder(nn.Module):
    """tanh(W₁ x̃ + b₁) → Linear, where x̃ is a 0/1 row L2-normalised with input dropout (as Mult-VAE/DAE).

    The first layer sums the rows of an embedding table over the row's entries (an embedding bag), each
    weighted 1/√n (normalisation) × keep/(1 − p) (dropout, training only).
    """

    def __init__(self, num_inputs: int, hidden: int, out: int, indptr: torch.Tensor, cols: torch.Tensor) -> None:
        super().__init__()
        self.first = nn.EmbeddingBag(num_inputs, hidden, mode="sum")
        nn.init.xavier_uniform_(self.first.weight)
        self.first_bias = nn.Parameter(torch.zeros(hidden))
        self.second = nn.Linear(hidden, out)
        self.register_buffer("indptr", indptr, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        entries, offsets = row_entries(self.indptr, self.cols, ids)
        counts = self.indptr[ids + 1] - self.indptr[ids]
        weights = torch.repeat_interleave(counts.clamp(min=1).float().rsqrt(), counts)
        if self.training:
            keep = torch.rand(len(entries), device=entries.device) >= INPUT_DROPOUT
            weights = weights * keep / (1 - INPUT_DROPOUT)
        hidden = torch.tanh(self.first(entries, offsets, per_sample_weights=weights) + self.first_bias)
        return self.second(hidden)


class MultVAE(Recommender):
    row_side = "users"

    def __init__(self, num_users: int, num_items: int, dim: int, train_users: np.ndarray, train_items: np.ndarray,
                 hidden: int = HIDDEN, anneal_steps: int = ANNEAL_STEPS) -> None:
        super().__init__()
        self.num_users, self.num_items, self.dim, self.anneal_steps = num_users, num_items, dim, anneal_steps
        indptr, cols = csr_rows(train_users, train_items, num_users)
        self.encoder = RowEncoder(num_items, hidden, 2 * dim, indptr, cols)
        self.decoder = nn.Linear(dim, num_items)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def posterior(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ_u and log σ²_u, each (B, dim)."""
        mean, log_var = self.encoder(users).chunk(2, dim=-1)
        return mean, log_var

    def beta(self) -> float:
        return ANNEAL_CAP * min(1.0, float(self.steps) / self.anneal_steps)

    def reconstruct(self, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mean, log_var = self.posterior(ids)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var) if self.training else mean
        kl = 0.5 * (mean**2 + log_var.exp() - log_var - 1).sum()
        beta = self.beta()
        if self.training:
            self.steps += 1
        return self.decoder(z), {"kl": beta * kl}

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return pairwise_dot(self.user_repr(users), self.decoder.weight[items]) + self.decoder.bias[items]

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.user_repr(users))

    def user_repr(self, users: torch.Tensor) -> torch.Tensor:
        return self.posterior(users)[0]

    def item_repr(self, items: torch.Tensor) -> torch.Tensor:
        return self.decoder.weight[items]
