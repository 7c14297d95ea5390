"""DCD — Dual Correction strategy for ranking Distillation (Lee & Kim, "Dual Correction Strategy for Ranking
Distillation in Top-N Recommender System", CIKM 2021, arXiv 2109.03459).

DCD builds on RRD but picks what to distil from the student's **errors**. Per user u, the teacher's top-M
unobserved items with teacher rank r_T (0 = best); at each epoch the student's rank r_S of those items
among the user's unobserved items; discrepancy d = r_S − r_T. Under-estimated items (the student ranks them
lower than the teacher, d > 0) and over-estimated items (d < 0) get the weights

    w⁺ = tanh(max(d / T, 0)),   w⁻ = tanh(max(−d / T, 0))   (each floored at 1e-5),

K of each are sampled per user in proportion to the weights, without replacement, and the student learns
the relaxed ranking (RRD's loss) with the under-estimated items, kept in the teacher's order, above the
over-estimated ones:

    L_UCD = −Σ_u Σ_{k=1..K} [ s_{u,π⁺_k} − log( Σ_{i≥k} e^{s_{u,π⁺_i}} + Σ_{j ∈ over(u)} e^{s_uj} ) ].

The paper corrects the **item side** the same way (L_ICD: per item, the teacher's top-M users and the
student's ranks of them among the item's non-interacting users), beside the user side; the only public port
has the user side alone. Total: L_base + λ (L_UCD + L_ICD). Users (items) are the distinct users (positive
and negative items) of each batch, as in RRD and IR.

Choices of this suite: student ranks beyond M + 5T are counted as M + 5T (their weight tanh(≥ 5) differs
from 1 by < 1e-4), so each epoch needs the student's top-(M + 5T) per row rather than a full sort; M = 100
and K = 20 for the HetComp comparison, where the teacher is the ensemble of six teachers (its top-100).
The item side ranks users by the dot product of an MF student (``item_repr · user_repr``).

Shapes: teacher ``user_topk`` (U, ≥ M), ``item_topk`` (I, ≥ M); ``discrepancy_weights`` (R, M) → (R, M) twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kdrepro.distill.base import DistillLoss, check_positive, gumbel_top_k
from kdrepro.distill.rrd import relaxed_ranking_loss
from kdrepro.models import MF, Recommender
from kdrepro.splits import Split
from kdrepro.types import Batch, TeacherOutputs

WEIGHT_FLOOR = 1e-5
RANK_CHUNK = 1024  # rows scored against every column at once when the student's ranks are computed


@dataclass(frozen=True)
class DCDConfig:
    lambda_dcd: float = 0.01  # λ, for each side
    top_n: int = 100  # M: the teacher's top items per user (users per item)
    num_samples: int = 20  # K: under- and over-estimated entries sampled per user (item), each
    temperature: float = 10.0  # T of the weights tanh(max(±d/T, 0))
    item_side: bool = True  # the item-side correction L_ICD beside L_UCD (the paper); False: the public port

    def __post_init__(self) -> None:
        check_positive(self, "top_n", "num_samples", "temperature")
        if self.num_samples > self.top_n:
            raise ValueError(f"DCDConfig.num_samples={self.num_samples} exceeds top_n={self.top_n}")


def discrepancy_weights(student_rank: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(under-estimation, over-estimation) weights of the teacher's top-M, given the student's ranks (R, M).

    The teacher's rank of column m is m; d = r_S − m.
    """
    d = student_rank.float() - torch.arange(student_rank.shape[1], dtype=torch.float32)
    under = torch.tanh((d / temperature).clamp(min=0)).clamp(min=WEIGHT_FLOOR)
    over = torch.tanh((-d / temperature).clamp(min=0)).clamp(min=WEIGHT_FLOOR)
    return under, over


def capped_ranks(scores: torch.Tensor, targets: torch.Tensor, cap: int) -> torch.Tensor:
    """Ranks (0 = best) of ``targets`` (R, M) in each row of ``scores`` (R, C) (excluded entries set to −inf by
    the caller); ranks at or beyond ``cap`` are returned as ``cap``.

    The row's top-``cap`` is sorted by column id once; each target is found in it by binary search.
    """
    top = scores.topk(min(cap, scores.shape[1]), dim=1).indices  # (R, cap), best first
    by_id, position = top.sort(dim=1)
    slot = torch.searchsorted(by_id, targets).clamp(max=by_id.shape[1] - 1)
    found = by_id.gather(1, slot) == targets
    return torch.where(found, position.gather(1, slot), torch.full_like(targets, cap))


def dcd_samples(teacher_top: torch.Tensor, student_rank: torch.Tensor, config: DCDConfig,
                generator: torch.Generator) -> torch.Tensor:
    """(R, 2K): K under-estimated entries in the teacher's order, then K over-estimated ones."""
    under, over = discrepancy_weights(student_rank, config.temperature)
    under_pos = gumbel_top_k(under.log(), config.num_samples, generator).sort(dim=1).values
    over_pos = gumbel_top_k(over.log(), config.num_samples, generator)
    return torch.cat([teacher_top.gather(1, under_pos), teacher_top.gather(1, over_pos)], dim=1)


class DCD(DistillLoss):
    Config = DCDConfig

    def __init__(self, config: DCDConfig, teacher: TeacherOutputs, split: Split, student_repr_dim: int,
                 seed: int = 0) -> None:
        super().__init__(seed)
        for name, ranking in (("user_topk", teacher.user_topk), ("item_topk", teacher.item_topk)):
            if ranking.shape[1] < config.top_n and (name == "user_topk" or config.item_side):
                raise ValueError(f"DCD needs the teacher's top-{config.top_n} ({name}); it holds {ranking.shape[1]}")
        self.config, self.split = config, split
        self.cap = config.top_n + math.ceil(5 * config.temperature)
        self.user_top = teacher.user_topk[:, : config.top_n].long()
        self.item_top = teacher.item_topk[:, : config.top_n].long() if config.item_side else None
        self.train_users, self.train_items = split.train_tensors()
        k2 = 2 * config.num_samples
        self.register_buffer("user_samples", torch.empty(split.num_users, k2, dtype=torch.long), persistent=False)
        self.register_buffer("item_samples", torch.empty(split.num_items if config.item_side else 0, k2,
                                                         dtype=torch.long), persistent=False)
        self._prepared_epoch = -1

    @torch.no_grad()
    def student_ranks(self, student: Recommender, side: str) -> torch.Tensor:
        """The student's (capped) ranks of the teacher's top-M, per user (side "users") or item ("items")."""
        if side == "items" and not isinstance(student, MF):
            raise ValueError("DCD's item side ranks users by an MF student's dot product, not "
                             f"{type(student).__name__}")
        top = self.user_top if side == "users" else self.item_top
        rows_of, cols_of = (self.train_users, self.train_items) if side == "users" else (self.train_items,
                                                                                       self.train_users)
        device = next(student.parameters()).device
        ranks = []
        for lo in range(0, len(top), RANK_CHUNK):
            ids = torch.arange(lo, min(lo + RANK_CHUNK, len(top)), device=device)
            if side == "users":
                scores = student.score_all(ids).cpu()
            else:
                scores = (student.item_repr(ids) @ student.user_embedding.weight.T).cpu()
            inside = (rows_of >= lo) & (rows_of < lo + RANK_CHUNK)
            scores[rows_of[inside] - lo, cols_of[inside]] = -torch.inf  # the row's training entries
            ranks.append(capped_ranks(scores, top[lo : lo + RANK_CHUNK], self.cap))
        return torch.cat(ranks)

    def prepare(self, student: Recommender, epoch: int) -> None:
        """At the first batch of an epoch: the student's ranks and this epoch's samples (both sides)."""
        was_training = student.training
        student.eval()
        user_ranks = self.student_ranks(student, "users")
        item_ranks = self.student_ranks(student, "items") if self.config.item_side else None
        student.train(was_training)
        self.user_samples = dcd_samples(self.user_top, user_ranks, self.config, self.generator).to(
            self.user_samples.device)
        if item_ranks is not None:
            self.item_samples = dcd_samples(self.item_top, item_ranks, self.config, self.generator).to(
                self.item_samples.device)
        self._prepared_epoch = epoch

    def forward(self, student: Recommender, batch: Batch) -> dict[str, torch.Tensor]:
        if batch.epoch != self._prepared_epoch:
            self.prepare(student, batch.epoch)
        k, lam = self.config.num_samples, self.config.lambda_dcd
        users = torch.unique(batch.users)
        scores = student.score(users, self.user_samples[users])
        loss = relaxed_ranking_loss(scores[:, :k], scores[:, k:])  # L_UCD
        if self.config.item_side:
            items = torch.unique(torch.cat([batch.pos, batch.neg.reshape(-1)]))
            scores = student.score_users(items, self.item_samples[items])
            loss = loss + relaxed_ranking_loss(scores[:, :k], scores[:, k:])  # L_ICD
        return {"dcd": lam * loss}
