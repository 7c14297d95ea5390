"""RRD — Relaxed Ranking Distillation (Kang et al., "DE-RRD: A Knowledge Distillation Framework for
Recommender System", CIKM'20, Eq. 8–9).

Per user, K "interesting" items are sampled from the teacher's top-N with P(rank) ∝ exp(−(rank+1)/T)
and kept in the teacher's order (π_1, …, π_K); L "uninteresting" items are drawn uniformly from the
items outside the user's training set and the teacher's top-N. The student maximises the likelihood
of the interesting items' order placed above all uninteresting ones, whose mutual order is ignored:

    L_RRD = −Σ_u Σ_{k=1..K} [ r_{π_k} − log( Σ_{i=k..K} e^{r_{π_i}} + Σ_{j ∈ uninteresting} e^{r_j} ) ]

with r the student's scores. Samples are redrawn at every epoch (authors' code) and the loss covers the
distinct users of each batch; the total is L_base + λ_RRD · L_RRD.

Options: ``sampling="none"`` takes the teacher's top-K directly (found better later, HetComp README);
``ranking="full"`` (Table 4 d) treats the K + L items as one permutation, so the uninteresting items
are ordered too — in the order they were drawn, as the teacher's cached outputs rank only its top-N
(the paper ordered them by the teacher's scores); ``ranking="interesting_only"`` (Table 4 e) drops the
uninteresting items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from kdrepro.distill.base import DistillLoss, check_choice, check_positive, gumbel_top_k, teacher_topk
from kdrepro.sampling import PairSet, sample_outside

if TYPE_CHECKING:
    from kdrepro.models import Recommender
    from kdrepro.splits import Split
    from kdrepro.types import Batch, TeacherOutputs

SAMPLINGS = ("rank", "none")
RANKINGS = ("relaxed", "full", "interesting_only")


@dataclass(frozen=True)
class RRDConfig:
    lambda_rrd: float = 1e-3  # λ_RRD (BPR students)
    top_n: int = 500  # N: the teacher's ranking the interesting items come from
    num_interesting: int = 40  # K
    num_uninteresting: int = 40  # L (unused with ranking="interesting_only")
    temperature: float = 10.0  # T in P(rank) ∝ exp(−(rank+1)/T)
    sampling: str = "rank"  # "rank": sample K of the top-N by rank (paper); "none": the teacher's top-K
    ranking: str = "relaxed"  # "relaxed" (paper) | "full" | "interesting_only" (Table 4 variants)

    def __post_init__(self) -> None:
        check_choice("RRDConfig.sampling", self.sampling, SAMPLINGS)
        check_choice("RRDConfig.ranking", self.ranking, RANKINGS)
        check_positive(self, "top_n", "num_interesting", "num_uninteresting", "temperature")
        if self.num_interesting > self.top_n:
            raise ValueError(f"RRDConfig.num_interesting={self.num_interesting} exceeds top_n={self.top_n}")


def relaxed_ranking_loss(interesting: torch.Tensor, uninteresting: torch.Tensor) -> torch.Tensor:
    """−Σ_b Σ_k [ r_k − log( Σ_{i≥k} e^{r_i} + Σ_j e^{u_j} ) ], summed over the batch.

    ``interesting`` (B, K): scores in the teacher's order, best first. ``uninteresting`` (B, L): scores
    whose order does not matter (L may be 0).
    """
    return -(interesting - log_denominators(interesting, uninteresting)).sum()


def log_denominators(interesting: torch.Tensor, uninteresting: torch.Tensor) -> torch.Tensor:
    """(B, K): log( Σ_{i≥k} e^{r_i} + Σ_j e^{u_j} ) for every position k, numerically stable.

    Each row is shifted by its largest score and the exponentials are summed in float64 (a reversed
    cumulative sum, 6× faster on CPU than ``torch.logcumsumexp``). That is exact while every sum stays a
    normal float64, i.e. unless a row's scores span more than ~700 nats; a batch with such a row falls
    back to the reversed log-cumsum-exp.
    """
    shift = torch.cat([interesting, uninteresting], dim=1).detach().amax(dim=1, keepdim=True)
    tail = torch.exp((interesting - shift).double()).flip(1).cumsum(1).flip(1)
    rest = torch.exp((uninteresting - shift).double()).sum(dim=1, keepdim=True)
    total = tail + rest
    if bool((total >= torch.finfo(torch.float64).tiny).all()):
        return (torch.log(total) + shift).to(interesting.dtype)
    log_tail = torch.logcumsumexp(interesting.flip(1), dim=1).flip(1)
    return torch.logaddexp(log_tail, torch.logsumexp(uninteresting, dim=1, keepdim=True))


def sample_interesting_positions(
    num_users: int, config: RRDConfig, generator: torch.Generator
) -> torch.Tensor:
    """(num_users, K) positions in the teacher's top-N, increasing (the teacher's order)."""
    if config.sampling == "none":
        return torch.arange(config.num_interesting).expand(num_users, -1)
    log_weights = -(torch.arange(config.top_n, dtype=torch.float32) + 1) / config.temperature
    positions = gumbel_top_k(log_weights.expand(num_users, -1), config.num_interesting, generator)
    return positions.sort(dim=1).values


class RRD(DistillLoss):
    Config = RRDConfig

    def __init__(
        self, config: RRDConfig, teacher: TeacherOutputs, split: Split, student_repr_dim: int, seed: int = 0
    ) -> None:
        super().__init__(seed)
        self.config = config
        topk = teacher_topk(teacher, config.top_n, "RRD")
        self.register_buffer("teacher_topk", topk, persistent=False)
        train_users, train_items = split.train_tensors()
        all_users = torch.arange(split.num_users)
        # Uninteresting items avoid both the user's training items and the teacher's top-N.
        self.excluded = PairSet(
            torch.cat([train_users, all_users.repeat_interleave(topk.shape[1])]),
            torch.cat([train_items, topk.reshape(-1)]),
            split.num_users,
            split.num_items,
        )
        num_uninteresting = 0 if config.ranking == "interesting_only" else config.num_uninteresting
        # Per user: interesting items (teacher's order) then uninteresting items; redrawn every epoch.
        samples = torch.empty(split.num_users, config.num_interesting + num_uninteresting, dtype=torch.long)
        self.register_buffer("samples", samples, persistent=False)
        self.on_epoch_start(0, self.generator)

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """(U, K [+ L]) items for every user: the interesting ones in rank order, then the uninteresting."""
        cfg = self.config
        topk = self.teacher_topk.cpu()
        positions = sample_interesting_positions(topk.shape[0], cfg, generator)
        interesting = topk.gather(1, positions)
        if cfg.ranking == "interesting_only":
            return interesting
        users = torch.arange(topk.shape[0])
        uninteresting = sample_outside(self.excluded, users, cfg.num_uninteresting, generator)
        return torch.cat([interesting, uninteresting], dim=1)

    def on_epoch_start(self, epoch: int, generator: torch.Generator) -> None:
        super().on_epoch_start(epoch, generator)
        self.samples = self.sample(generator).to(self.samples.device)

    def forward(self, student: Recommender, batch: Batch) -> dict[str, torch.Tensor]:
        users = torch.unique(batch.users)
        scores = student.score(users, self.samples[users])
        k = self.config.num_interesting
        if self.config.ranking == "relaxed":
            loss = relaxed_ranking_loss(scores[:, :k], scores[:, k:])
        else:  # "full" orders all sampled items; "interesting_only" has no others
            loss = relaxed_ranking_loss(scores, scores[:, :0])
        return {"rrd": self.config.lambda_rrd * loss}
