"""RD — Ranking Distillation (Tang & Wang, "Ranking Distillation: Learning Compact Ranking Models With
High Performance for Recommender System", KDD'18, Eq. 5–8).

The teacher's top-K unobserved items become extra positives of the student, weighted by position
importance w_r = exp(−r/λ) / Σ_{r'=1..K} exp(−r'/λ), r = 1..K:

    L_RD = −Σ_u Σ_{r=1..K} w_r log σ(s_{u, π_r}),

over the distinct users of each batch; total L_base + α · L_RD (the paper's "teach_alpha"; 1 balances
the two equally). Only the position-importance weighting is implemented, not the paper's hybrid with
the ranking-discrepancy weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from kdrepro.distill.base import DistillLoss, check_positive, teacher_topk

if TYPE_CHECKING:
    from kdrepro.models import Recommender
    from kdrepro.splits import Split
    from kdrepro.types import Batch, TeacherOutputs


@dataclass(frozen=True)
class RDConfig:
    lambda_rd: float = 1.0  # α: weight of the distillation term (authors' code default 1.0)
    num_topk: int = 10  # K: the teacher's top-K items used as positives
    position_temperature: float = 1.0  # λ in w_r ∝ exp(−r/λ) (authors' code default 1)

    def __post_init__(self) -> None:
        check_positive(self, "num_topk", "position_temperature")


def position_weights(num_topk: int, temperature: float) -> torch.Tensor:
    """w_r = exp(−r/λ) for r = 1..K, normalised to sum 1: (K,)."""
    weights = torch.exp(-torch.arange(1, num_topk + 1, dtype=torch.float32) / temperature)
    return weights / weights.sum()


def ranking_distillation_loss(topk_scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """−Σ_b Σ_r w_r log σ(s_{b,r}): ``topk_scores`` (B, K) in the teacher's order, ``weights`` (K,)."""
    return -(F.logsigmoid(topk_scores) * weights).sum()


class RD(DistillLoss):
    Config = RDConfig

    def __init__(
        self, config: RDConfig, teacher: TeacherOutputs, split: Split, student_repr_dim: int, seed: int = 0
    ) -> None:
        super().__init__(seed)
        self.config = config
        self.register_buffer("teacher_topk", teacher_topk(teacher, config.num_topk, "RD"), persistent=False)
        self.register_buffer(
            "weights", position_weights(config.num_topk, config.position_temperature), persistent=False
        )

    def forward(self, student: Recommender, batch: Batch) -> dict[str, torch.Tensor]:
        users = torch.unique(batch.users)
        scores = student.score(users, self.teacher_topk[users])
        return {"rd": self.config.lambda_rd * ranking_distillation_loss(scores, self.weights)}
