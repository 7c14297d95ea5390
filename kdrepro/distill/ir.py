"""IR — item-side ranking regularization (Kang et al., "Item-side ranking regularized distillation for
recommender system", Information Sciences 2021).

RRD (:mod:`kdrepro.distill.rrd`) teaches each user the teacher's ranking of items. IR adds the same
relaxed listwise loss on the other side of the score matrix: per item i, K "interesting" users are
sampled from the teacher's top-N users of the item with P(rank) ∝ exp(−(rank+1)/T) and kept in the
teacher's order (π_1, …, π_K); L "uninteresting" users U⁻(i) are drawn uniformly from the users outside
the item's training users and its teacher top-N. With r_{u,i} the student's score,

    L_IR = −Σ_i Σ_{k=1..K} [ r_{π_k,i} − log( Σ_{l≥k} e^{r_{π_l,i}} + Σ_{u ∈ U⁻(i)} e^{r_{u,i}} ) ],

summed over the items I_B of each batch, with samples redrawn every epoch. I_B is the authors' item set:
the distinct items of the batch users' RRD "interesting" ∪ "uninteresting" sets (``unique(S[users])``
with S the (U, K_RRD + L_RRD) per-user draw of :class:`~kdrepro.distill.rrd.RRD`): on CiteULike about 16k
items per batch of 1,024 pairs, some 9× the batch's positives ∪ negatives (~1.9k). IR-RRD is
L_base + λ_RRD L_RRD + λ_IR L_IR: build it as ``"rrd+ir"`` through the registry (a
:class:`kdrepro.distill.Combined` of :class:`~kdrepro.distill.rrd.RRD` and :class:`IR`), not as a
separate method; :func:`kdrepro.distill.build` then points IR at RRD's own per-user draw
(:meth:`IR.share_user_side`), so both terms cover the same sets, as in the authors' code. IR alone draws
those sets itself with RRD's sampler (``rrd_*`` fields, RRD's defaults); its draws come first from the
generator, exactly as RRD's do in IR-RRD, so the same seed gives IR alone and IR-RRD the same item sets.
The listwise loss and the rank sampler are RRD's own
(:func:`~kdrepro.distill.rrd.relaxed_ranking_loss`,
:func:`~kdrepro.distill.rrd.sample_interesting_positions`);
uninteresting users come from :func:`~kdrepro.sampling.sample_outside` with the roles of users and
items swapped (rows are items, columns users).

Defaults follow the authors' settings: N = 500, K = L = 20, T = 10, λ_IR = 5e-4; the user-side sets of IR
alone: RRD's N = 500, K = L = 40, T = 10.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from kdrepro.distill.base import DistillLoss, check_choice, check_positive
from kdrepro.distill.rrd import RRD, SAMPLINGS, RRDConfig, relaxed_ranking_loss, sample_interesting_positions
from kdrepro.sampling import PairSet, sample_outside

if TYPE_CHECKING:
    from kdrepro.models import Recommender
    from kdrepro.splits import Split
    from kdrepro.types import Batch, TeacherOutputs


@dataclass(frozen=True)
class IRConfig:
    lambda_ir: float = 5e-4  # λ_IR
    top_n: int = 500  # N: the teacher's top users per item the interesting users come from
    num_interesting: int = 20  # K (interesting users per item)
    num_uninteresting: int = 20  # L (uninteresting users per item)
    temperature: float = 10.0  # T in P(rank) ∝ exp(−(rank+1)/T)
    sampling: str = "rank"  # "rank": sample K of the top-N by rank (paper); "none": the teacher's top-K users
    # The per-user RRD sets whose items I_B IR covers, drawn by IR itself when it runs without RRD (with RRD,
    # "rrd+ir", RRD's own draw is used and these are ignored). RRD's defaults.
    rrd_top_n: int = 500  # RRD's N
    rrd_num_interesting: int = 40  # RRD's K (interesting items per user)
    rrd_num_uninteresting: int = 40  # RRD's L (uninteresting items per user)

    def __post_init__(self) -> None:
        check_choice("IRConfig.sampling", self.sampling, SAMPLINGS)
        check_positive(self, "top_n", "num_interesting", "num_uninteresting", "temperature", "rrd_top_n",
                       "rrd_num_interesting", "rrd_num_uninteresting")
        if self.num_interesting > self.top_n:
            raise ValueError(f"IRConfig.num_interesting={self.num_interesting} exceeds top_n={self.top_n}")
        if self.rrd_num_interesting > self.rrd_top_n:
            raise ValueError(f"IRConfig.rrd_num_interesting={self.rrd_num_interesting} exceeds "
                             f"rrd_top_n={self.rrd_top_n}")

    def rank_sampling(self) -> RRDConfig:
        """The same sampling settings in the form RRD's position sampler reads."""
        return RRDConfig(top_n=self.top_n, num_interesting=self.num_interesting,
                         num_uninteresting=self.num_uninteresting, temperature=self.temperature,
                         sampling=self.sampling)

    def user_side(self) -> RRDConfig:
        """The RRD settings of the per-user sets whose items IR covers (when IR draws them itself)."""
        return RRDConfig(top_n=self.rrd_top_n, num_interesting=self.rrd_num_interesting,
                         num_uninteresting=self.rrd_num_uninteresting)


def item_side_scores(student: Recommender, items: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
    """(n, C) student scores r_{users[j, c], items[j]} of ``items`` (n,) against ``users`` (n, C).

    A model may offer ``score_users(items, users)`` (one item against C users, the mirror of ``score``),
    which looks each item up once instead of C times; otherwise the n·C pairs go through ``score`` flat.
    """
    score_users = getattr(student, "score_users", None)
    if score_users is not None:
        return score_users(items, users)
    flat = student.score(users.reshape(-1), items.repeat_interleave(users.shape[1]))
    return flat.view(users.shape)


def teacher_item_topk(teacher: TeacherOutputs, n: int) -> torch.Tensor:
    """The first ``n`` columns of the teacher's per-item ranking of users; an error when it is shorter."""
    available = teacher.item_topk.shape[1]
    if n > available:
        raise ValueError(
            f"IR needs the teacher's top-{n} users per item, but the teacher outputs hold only {available}; "
            f"compute them with top_n_users >= {n} or lower IR's top_n."
        )
    return teacher.item_topk[:, :n]


class IR(DistillLoss):
    Config = IRConfig

    def __init__(
        self, config: IRConfig, teacher: TeacherOutputs, split: Split, student_repr_dim: int, seed: int = 0
    ) -> None:
        super().__init__(seed)
        self.config = config
        topk = teacher_item_topk(teacher, config.top_n)
        self.register_buffer("teacher_topk", topk, persistent=False)
        train_users, train_items = split.train_tensors()
        # Uninteresting users avoid the item's training users and the teacher's top-N users of the item.
        # The teacher's ranking excludes training users, so the two sets are disjoint whenever the item has
        # more than N other users; an item whose excluded set covers every user cannot be sampled.
        excluded_count = torch.bincount(train_items, minlength=split.num_items) + topk.shape[1]
        if int(excluded_count.max()) >= split.num_users:
            raise ValueError(
                f"an item's training users and top-{topk.shape[1]} teacher users cover all "
                f"{split.num_users} users: "
                "no uninteresting user is left to sample; lower IRConfig.top_n."
            )
        all_items = torch.arange(split.num_items)
        self.excluded = PairSet(  # rows are items, columns users: sample_outside draws users per item
            torch.cat([train_items, all_items.repeat_interleave(topk.shape[1])]),
            torch.cat([train_users, topk.reshape(-1)]),
            split.num_items,
            split.num_users,
        )
        width = config.num_interesting + config.num_uninteresting
        # Per item: interesting users (teacher's order) then uninteresting users; redrawn every epoch.
        samples = torch.empty(split.num_items, width, dtype=torch.long)
        self.register_buffer("samples", samples, persistent=False)
        # The per-user RRD sets (S): IR's own draw, until share_user_side hands it RRD's.
        self.user_sets = RRD(config.user_side(), teacher, split, student_repr_dim, seed)
        self.owns_user_sets = True
        self.on_epoch_start(0, self.generator)

    def share_user_side(self, rrd: RRD) -> None:
        """Cover the items of ``rrd``'s own per-user draw (IR-RRD), which ``rrd`` redraws every epoch."""
        self.user_sets = rrd
        self.owns_user_sets = False

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """(I, K + L) users per item: the interesting ones in the teacher's order, then the uninteresting."""
        cfg = self.config
        topk = self.teacher_topk.cpu()
        positions = sample_interesting_positions(topk.shape[0], cfg.rank_sampling(), generator)
        interesting = topk.gather(1, positions)
        items = torch.arange(topk.shape[0])
        uninteresting = sample_outside(self.excluded, items, cfg.num_uninteresting, generator)
        return torch.cat([interesting, uninteresting], 1)

    def on_epoch_start(self, epoch: int, generator: torch.Generator) -> None:
        super().on_epoch_start(epoch, generator)
        if self.owns_user_sets:  # drawn first, as RRD's are in IR-RRD (where RRD redraws its own)
            self.user_sets.on_epoch_start(epoch, generator)
        self.samples = self.sample(generator).to(self.samples.device)

    def batch_items(self, batch: Batch) -> torch.Tensor:
        """I_B: the distinct items of the batch users' RRD interesting ∪ uninteresting sets, sorted."""
        return torch.unique(self.user_sets.samples[torch.unique(batch.users)])

    def forward(self, student: Recommender, batch: Batch) -> dict[str, torch.Tensor]:
        items = self.batch_items(batch)
        scores = item_side_scores(student, items, self.samples[items])
        k = self.config.num_interesting
        return {"ir": self.config.lambda_ir * relaxed_ranking_loss(scores[:, :k], scores[:, k:])}
