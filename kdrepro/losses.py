"""Base objectives of the recommenders, as pure functions of scores.

Following the authors' code, every loss is a **sum** over the batch (not a mean); this matters because
the KD weights λ of the papers were tuned against summed losses.

Shapes: ``pos`` (B,) scores of observed pairs, ``neg`` (B, n) scores of sampled unobserved items.
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


BASE_LOSSES = {"bpr": bpr_loss, "bce": bce_loss, "mse": mse_loss, "cml": cml_hinge_loss}
