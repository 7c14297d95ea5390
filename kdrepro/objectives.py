"""Base one-class CF objectives, as pure functions of scores — one place for every model and ConCF head.

Following the authors' code, every loss is a **sum** over the batch (not a mean); this matters because
the KD weights λ of the papers were tuned against summed losses.

Pairwise/pointwise shapes: ``pos`` (B,) scores of observed pairs, ``neg`` (B, n) scores of sampled
unobserved items. Listwise (multinomial) shapes: ``scores`` (B, N) over a whole row of items (user side)
or of users (item side) and a 0/1 ``targets`` mask of the same shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """BPR (Rendle et al., UAI'09): −Σ log σ(s_ui − s_uj)."""
    return -F.logsigmoid(pos.unsqueeze(1) - neg).sum()


def bce_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with observed = 1, sampled = 0 (NeuMF's objective)."""
    return -(F.logsigmoid(pos).sum() + F.logsigmoid(-neg).sum())


def mse_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Squared error towards 1 for observed and 0 for sampled pairs."""
    return ((pos - 1) ** 2).sum() + (neg**2).sum()


def cml_hinge_loss(pos: torch.Tensor, neg: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """CML's hinge (Hsieh et al., WWW'17) on scores s = −d²: Σ [m + d²_ui − d²_uj]_+."""
    return F.relu(margin - pos.unsqueeze(1) + neg).sum()


def multinomial_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multinomial log-likelihood (Mult-VAE, Liang et al., WWW'18, Eq. 2): −Σ_b Σ_i y_bi log softmax(s_b)_i.

    User side: ``scores`` (B, num_items) of B users, ``targets`` their training rows. Item side (the
    item-based autoencoder, ConCF's item multinomial head): ``scores`` (B, num_users) of B items and
    their training columns — the same function on the transposed problem.
    """
    return -(torch.log_softmax(scores, dim=-1) * targets).sum()


BASE_LOSSES = {"bpr": bpr_loss, "bce": bce_loss, "mse": mse_loss, "cml": cml_hinge_loss}
