"""RD — Ranking Distillation (Tang & Wang, "Ranking Distillation: Learning Compact Ranking Models With
High Performance for Recommender System", KDD'18, Eq. 5–8), in a form for pairwise (BPR) students.

The teacher's top-K unobserved items π_1..π_K of a user become extra positives of the student, each
weighted by the product of two weights, normalised over r = 1..K per user:

- position importance (Eq. 6): w^a_r = exp(−r/λ), emphasising the teacher's first positions;
- ranking discrepancy (Eq. 7, the "dynamic" weight, used from epoch ``dynamic_start_epoch`` = 10 as in
  the authors' code): w^b_r = tanh(max(μ · (r̂_r − r_t), 0)), with r_t = r − 1 the item's place in the
  teacher's ranking and r̂_r the student's *estimated* place, from S items drawn uniformly per user:
  r̂_r = I · |{j sampled : s_{u,j} > s_{u,π_r}}| / S (CD's estimator, :func:`kdrepro.distill.cd.estimate_rank`).
  Items the student already ranks at least as high as the teacher get weight 0, those it ranks too low up
  to 1;

    w_r = w^a_r w^b_r / Σ_{r'} w^a_{r'} w^b_{r'}     (before the start epoch: w_r = w^a_r / Σ w^a).

The distillation term, over the distinct users of each batch, total L_base + α · L_RD:

- ``form="pairwise"`` (default, for BPR students): L_RD = −Σ_u Σ_r w_r log σ(s_{u,π_r} − s_{u,j_{u,r}}),
  one item j_{u,r} drawn uniformly outside the user's training items and teacher top-K per (u, r) and
  batch. RD's own student (Caser) had a pointwise log loss, and RD adds the teacher's top-K to it as
  pointwise positives; with a BPR student only score *differences* are trained, and a pointwise
  −log σ(s) term instead pushes absolute scores of the top-K up against Adam's weight decay, at a scale
  unrelated to the base loss. The pairwise form says what RD says ("rank the teacher's top-K above
  unobserved items, weighted by w_r") in the base loss's own terms: BPR with the top-K as extra positives.
- ``form="pointwise"``: RD's Eq. 5 as published, L_RD = −Σ_u Σ_r w_r log σ(s_{u,π_r}).

The DE-RRD authors compared with RD tuned on validation; K and λ are tuned here too (chapter 04's grid).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from kdrepro.distill.base import DistillLoss, check_choice, check_positive, teacher_topk
from kdrepro.distill.cd import estimate_rank
from kdrepro.sampling import PairSet, sample_outside

if TYPE_CHECKING:
    from kdrepro.models import Recommender
    from kdrepro.splits import Split
    from kdrepro.types import Batch, TeacherOutputs

FORMS = ("pairwise", "pointwise")


@dataclass(frozen=True)
class RDConfig:
    lambda_rd: float = 1.0  # α: weight of the distillation term (authors' code default 1.0)
    num_topk: int = 10  # K: the teacher's top-K items used as positives
    position_temperature: float = 1.0  # λ in w^a_r ∝ exp(−r/λ) (authors' code default 1)
    discrepancy_scale: float = 0.1  # μ in w^b_r = tanh(max(μ (r̂ − r_t), 0)) (authors' code default 0.1)
    dynamic_start_epoch: int = 10  # epoch from which the ranking-discrepancy weight is used (authors: 10)
    rank_samples: int = 100  # S: items drawn per user to estimate the student's ranks (authors' code: 100)
    form: str = "pairwise"  # "pairwise" (BPR students) | "pointwise" (RD's Eq. 5)

    def __post_init__(self) -> None:
        check_choice("RDConfig.form", self.form, FORMS)
        check_positive(self, "num_topk", "position_temperature", "discrepancy_scale", "rank_samples")
        if self.dynamic_start_epoch < 1:
            raise ValueError(f"RDConfig.dynamic_start_epoch must be >= 1, got {self.dynamic_start_epoch}")


def position_weights(num_topk: int, temperature: float) -> torch.Tensor:
    """w^a_r = exp(−r/λ) for r = 1..K, normalised to sum 1: (K,)."""
    weights = torch.exp(-torch.arange(1, num_topk + 1, dtype=torch.float32) / temperature)
    return weights / weights.sum()


def discrepancy_weights(student_ranks: torch.Tensor, scale: float) -> torch.Tensor:
    """w^b = tanh(max(μ (r̂ − r_t), 0)) with r_t = 0..K−1 the teacher's places: (B, K) from r̂ (B, K)."""
    teacher_ranks = torch.arange(student_ranks.shape[1], dtype=student_ranks.dtype, device=student_ranks.device)
    return torch.tanh((scale * (student_ranks - teacher_ranks)).clamp(min=0))


def hybrid_weights(position: torch.Tensor, discrepancy: torch.Tensor) -> torch.Tensor:
    """w = w^a w^b normalised per row: (B, K). A row whose w^b is all 0 (every item already ranked at least
    as high as the teacher ranks it) gets weight 0: nothing to correct."""
    product = position * discrepancy
    return product / product.sum(dim=1, keepdim=True).clamp(min=torch.finfo(product.dtype).tiny)


def ranking_distillation_loss(
    topk_scores: torch.Tensor, weights: torch.Tensor, negative_scores: torch.Tensor | None = None
) -> torch.Tensor:
    """−Σ_b Σ_r w_{b,r} log σ(s_{b,r} − s⁻_{b,r}) (pairwise) or −Σ w log σ(s_{b,r}) without ``negative_scores``.

    ``topk_scores`` (B, K) in the teacher's order, ``weights`` (K,) or (B, K), ``negative_scores`` (B, K).
    """
    margins = topk_scores if negative_scores is None else topk_scores - negative_scores
    return -(F.logsigmoid(margins) * weights).sum()


class RD(DistillLoss):
    Config = RDConfig

    def __init__(
        self, config: RDConfig, teacher: TeacherOutputs, split: Split, student_repr_dim: int, seed: int = 0
    ) -> None:
        super().__init__(seed)
        self.config = config
        self.num_items = split.num_items
        topk = teacher_topk(teacher, config.num_topk, "RD")
        self.register_buffer("teacher_topk", topk, persistent=False)
        self.register_buffer(
            "weights", position_weights(config.num_topk, config.position_temperature), persistent=False
        )
        train_users, train_items = split.train_tensors()
        # Pairwise negatives avoid the user's training items and the teacher's top-K.
        self.excluded = PairSet(
            torch.cat([train_users, torch.arange(split.num_users).repeat_interleave(topk.shape[1])]),
            torch.cat([train_items, topk.reshape(-1)]),
            split.num_users,
            split.num_items,
        )

    def batch_weights(self, student: Recommender, users: torch.Tensor, topk_scores: torch.Tensor,
                      epoch: int) -> torch.Tensor:
        """(B, K) weights w_r: position only before the start epoch, the hybrid afterwards."""
        if epoch < self.config.dynamic_start_epoch:
            return self.weights.expand_as(topk_scores)
        sampled = torch.randint(self.num_items, (len(users), self.config.rank_samples), generator=self.generator)
        with torch.no_grad():
            sampled_scores = student.score(users, sampled.to(users.device))
            ranks = estimate_rank(topk_scores.detach(), sampled_scores, self.num_items)
        return hybrid_weights(self.weights, discrepancy_weights(ranks, self.config.discrepancy_scale))

    def forward(self, student: Recommender, batch: Batch) -> dict[str, torch.Tensor]:
        users = torch.unique(batch.users)
        scores = student.score(users, self.teacher_topk[users])
        weights = self.batch_weights(student, users, scores, batch.epoch)
        negative_scores = None
        if self.config.form == "pairwise":
            negatives = sample_outside(self.excluded, users.cpu(), self.config.num_topk, self.generator)
            negative_scores = student.score(users, negatives.to(users.device))
        loss = ranking_distillation_loss(scores, weights, negative_scores)
        return {"rd": self.config.lambda_rd * loss}
