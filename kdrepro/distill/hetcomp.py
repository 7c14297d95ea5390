"""HetComp — distillation from heterogeneous teachers' training trajectories (Kang, Kweon, D. Lee, Lian, Xie,
Yu, "Distillation from Heterogeneous Models for Top-K Recommendation", WWW 2023, arXiv 2303.01130).

X teachers of different kinds (MF, CML, NeuMF, LightGCN, Mult-VAE, item-AE) each leave a **trajectory** of
V checkpoints v = 0 … V−1 (V−1 converged), stored as top-N rankings ``rankings`` (X, V, U, N). The student
learns from an **ensemble** ranking built from one checkpoint per (teacher, user):

- **Ensemble** (this suite's choice of importance): item i's importance for user u is
  Σ_x exp(−rank_x(u, i) / T), rank counted from 0 in teacher x's current top-N list for u (0 outside it);
  the ensemble's top-K (K = 100) are the K most important items.
- **Dynamic knowledge construction (DKC)**, the rule of the authors' training script (its ``DKC`` and
  ``get_NDCG_u``): state v_x(u) per (teacher, user), all 0 at the start. With π_s the student's top-k (k = 50,
  training items excluded) and D(π_s, π) = 1 − NDCG@k of π_s, where the item at the student's position t
  (from 0) gains 2^{exp(−t/T)} − 1 (T = 10) when it is in π's top-k, over the same gains of a list all in π's
  top-k. Constructions run after every p epochs, the first after epoch p; the first only *records*
  d_x(u) = D(π_s, π_x^{v+1}), the distance to the next checkpoint. Each later one (the c-th after epoch c·p)
  computes the distance now, D' = D(π_s, π_x^{v+1}), and moves v_x(u) one checkpoint when

      d_x(u) / D' > θ_c   or   d_x(u) / D' < 1,        θ_c = α · decay^c   (α = 1.05, decay = 0.995),

  i.e. when the student has closed the distance to the next checkpoint by more than the factor θ since it
  was recorded, or has drifted farther from it; after a move d_x(u) is recorded afresh for the new next
  checkpoint (unchanged otherwise). θ_c < 1 from the 10th construction (epoch 100 at p = 10): from then on
  every pair moves at every construction, so every trajectory ends by epoch 130 at the latest.
- **Adaptive knowledge transfer (AKT)**, one switch for all users as in the authors' script: until every
  teacher's mean checkpoint over users, rounded to two decimals, is the last one (DKC then stops), the
  **overall** loss (weight 0.01) puts the 10 sampled observed items O_u and the ensemble top-K E_u (as one
  set, order ignored) above L items R_u drawn uniformly from the rest:

      L_overall(u) = −Σ_{i ∈ O_u ∪ E_u} [ s_ui − log( e^{s_ui} + Σ_{j ∈ R_u} e^{s_uj} ) ]

  afterwards the **detailed** loss (weight 0.005): Plackett–Luce (ListMLE) lists of the observed items,
  of the ensemble's top-K/2 and of its top-K/10, each ranked above everything outside its list — as the
  authors' ``rank_loss`` does (its denominators add every non-training item outside the list):

      L_detailed(u) = PL(O_u | E_u[K/2:] ∪ R_u) + ½ [ PL(E_u[:K/2] | E_u[K/2:] ∪ R_u)
                                                     + PL(E_u[:K/10] | E_u[K/10:] ∪ R_u) ],
      PL(π | Q) = −Σ_k [ s_{π_k} − log( Σ_{i ≥ k} e^{s_{π_i}} + Σ_{j ∈ Q} e^{s_j} ) ]

  (the observed items in their sampled order, as in the authors' code). **Departure**: the rest of the
  catalogue is the sampled R_u, not every remaining item, in both phases; it keeps an epoch cheap. A
  first version left the rest out of the detailed loss altogether: students trained on it alone (w/o AKT,
  converged teachers) never learned to rank the lists above the catalogue (Recall@50 ≈ 0.003).

The student (MF, dim 6 in the paper) trains on these terms only (``TrainConfig(loss="none")``); the loss
covers the distinct users of each batch, samples are redrawn each epoch. The authors loop over 6 × 5,220
users in Python; here the states, distances, ensemble and samples are tensors over all users at once.

Variants (the chapter's ablations): ``construction="fixed"`` moves every teacher one checkpoint for every
user every p epochs regardless of the student (w/o DKC); ``"converged"`` uses the converged checkpoints
from the start (no trajectory), so AKT is in its detailed phase throughout; ``transfer="detailed"`` uses
the detailed loss from the start (w/o AKT).

Shapes: ``rankings`` (X, V, U, N) int; ``item_rankings`` (X, I, N_u) int (converged teachers' users per
item, for the item side of DCD); every loss function below takes (B, ·) score tensors and sums over B.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdrepro.distill.base import DistillLoss, check_choice, check_positive
from kdrepro.distill.rrd import relaxed_ranking_loss
from kdrepro.evaluate import rank_full
from kdrepro.models import Recommender
from kdrepro.sampling import PairSet, sample_outside
from kdrepro.splits import Split
from kdrepro.types import Batch, TeacherOutputs

CONSTRUCTIONS = ("dynamic", "fixed", "converged")
TRANSFERS = ("adaptive", "detailed")
ENSEMBLE_CHUNK = 1024  # users whose (chunk, items) importance matrix is built at once (100 MB at 25k items)


@dataclass(frozen=True, eq=False)
class TeacherTrajectories:
    """The teachers' trajectories as rankings (what HetComp reads instead of :class:`TeacherOutputs`).

    - ``names``: the X teachers' names, in the order of the first axis.
    - ``rankings`` (X, V, U, N): each checkpoint's top-N items per user, best first, training items excluded.
    - ``item_rankings`` (X, I, N_u): each converged teacher's top users per item, training users excluded.
    - ``epochs`` (X, V): the training epoch of each checkpoint.
    """

    names: tuple[str, ...]
    rankings: torch.Tensor
    item_rankings: torch.Tensor
    epochs: torch.Tensor

    def __post_init__(self) -> None:
        x, v, u, n = self.rankings.shape
        if len(self.names) != x or tuple(self.epochs.shape) != (x, v) or self.item_rankings.shape[0] != x:
            raise ValueError(f"trajectories disagree: {len(self.names)} names, rankings {tuple(self.rankings.shape)}, "
                             f"item rankings {tuple(self.item_rankings.shape)}, epochs {tuple(self.epochs.shape)}")

    @property
    def num_checkpoints(self) -> int:
        return self.rankings.shape[1]


@dataclass(frozen=True)
class HetCompConfig:
    lambda_overall: float = 0.01  # weight of L_overall (AKT's first phase)
    lambda_detailed: float = 0.005  # weight of L_detailed (AKT's second phase)
    top_n: int = 100  # K: the ensemble's top items per user (the teachers' lists must be as long)
    num_observed: int = 10  # |O_u|: observed items per user, sampled each epoch (with replacement)
    num_rest: int = 100  # |R_u|: items drawn uniformly outside O_u's user's training set ∪ E_u
    temperature: float = 10.0  # T of the ensemble importance exp(−rank/T)
    period: int = 10  # p: epochs between knowledge constructions (the first after epoch p)
    alpha: float = 1.05  # α: move when the recorded / current distance to the next checkpoint exceeds α · decay^c
    alpha_decay: float = 0.995  # decay per construction c (the authors: 0.995^(epoch // p))
    ndcg_k: int = 50  # k of the distance 1 − NDCG@k
    construction: str = "dynamic"  # "dynamic" (DKC) | "fixed" (w/o DKC) | "converged" (no trajectory)
    transfer: str = "adaptive"  # "adaptive" (AKT) | "detailed" (w/o AKT)

    def __post_init__(self) -> None:
        check_choice("HetCompConfig.construction", self.construction, CONSTRUCTIONS)
        check_choice("HetCompConfig.transfer", self.transfer, TRANSFERS)
        check_positive(self, "top_n", "num_observed", "num_rest", "temperature", "period", "alpha", "alpha_decay",
                       "ndcg_k")
        if self.top_n < 10:
            raise ValueError(f"HetCompConfig.top_n={self.top_n}: the detailed loss needs K >= 10 (top-K/10)")


# ------------------------------------------------------------------------------------------------------
# Pure functions (hand-checked in tests/test_hetcomp.py)
# ------------------------------------------------------------------------------------------------------


def ensemble_topk(lists: torch.Tensor, top_k: int, temperature: float, num_items: int) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """The ensemble's top-``top_k`` per row and their importances, from X rankings ``lists`` (X, R, N).

    importance(r, i) = Σ_x exp(−rank_x(r, i) / T) with rank counted from 0 (0 when i is not in the list).
    Returns (items (R, top_k) long, importance (R, top_k)), best first.
    """
    x, rows, n = lists.shape
    if n < top_k:
        raise ValueError(f"the teachers' rankings hold {n} entries per row, fewer than top_k={top_k}")
    weights = torch.exp(-torch.arange(n, dtype=torch.float32) / temperature).repeat(x)
    items, values = [], []
    for lo in range(0, rows, ENSEMBLE_CHUNK):
        chunk = lists[:, lo : lo + ENSEMBLE_CHUNK].permute(1, 0, 2).reshape(-1, x * n).long()
        importance = torch.zeros(len(chunk), num_items).scatter_add_(1, chunk, weights.expand(len(chunk), -1))
        top = importance.topk(top_k, dim=1)
        items.append(top.indices)
        values.append(top.values)
    return torch.cat(items), torch.cat(values)


def ndcg_distance(student_top: torch.Tensor, teacher_top: torch.Tensor, temperature: float = 10.0) -> torch.Tensor:
    """(U,) 1 − NDCG@k of the student's top-k (U, k) against "in the teacher's top-k" (U, k), the authors' form:
    the item at the student's position t (from 0) gains g_t = 2^{exp(−t/T)} − 1 when in the teacher's top-k,
    discounted by log2(t + 2); the ideal list is all hits: IDCG = Σ_t g_t / log2(t + 2)."""
    k = student_top.shape[1]
    positions = torch.arange(k, dtype=torch.float32)
    weights = (2.0 ** torch.exp(-positions / temperature) - 1.0) / torch.log2(positions + 2.0)
    hits = (student_top.unsqueeze(2) == teacher_top.unsqueeze(1)).any(dim=2).float()  # (U, k)
    return 1.0 - (hits * weights).sum(1) / weights.sum()


def construct_knowledge(state: torch.Tensor, recorded: torch.Tensor, distance: torch.Tensor, threshold: float,
                        last: int) -> torch.Tensor:
    """DKC's move (X, U) bool: v < last and (recorded / distance > ``threshold`` or recorded / distance < 1), with
    ``recorded`` the distance to the next checkpoint when it was last recorded and ``distance`` it now. As in
    the authors' NumPy: a distance of 0 now moves (ratio ∞), unless the recorded one was 0 too (0/0: no move)."""
    ratio = recorded / distance
    return (state < last) & ((ratio > threshold) | (ratio < 1))


def set_above_loss(top: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """−Σ_b Σ_i [ t_i − log( e^{t_i} + Σ_j e^{r_j} ) ]: every item of ``top`` (B, n) above all of ``rest`` (B, m),
    the order inside each set ignored."""
    log_rest = torch.logsumexp(rest, dim=1, keepdim=True)
    return -(top - torch.logaddexp(top, log_rest)).sum()


def overall_loss(observed: torch.Tensor, top: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """AKT's first phase: observed (B, n_o) and ensemble top (B, K) items, as one set, above the rest (B, L)."""
    return set_above_loss(torch.cat([observed, top], dim=1), rest)


def detailed_loss(observed: torch.Tensor, top: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """AKT's second phase on ``observed`` (B, n_o), the ensemble's top-K ``top`` (B, K) best first, and the
    sampled rest (B, L): Plackett–Luce lists of the observed items, the top-K/2 and the top-K/10, each above
    every scored item outside its list (the authors' ``rank_loss``: pos + (top-K/2 + top-K/10) / 2)."""
    k = top.shape[1]
    below_half = torch.cat([top[:, k // 2 :], rest], dim=1)
    below_tenth = torch.cat([top[:, k // 10 :], rest], dim=1)
    return relaxed_ranking_loss(observed, below_half) + 0.5 * (
        relaxed_ranking_loss(top[:, : k // 2], below_half) + relaxed_ranking_loss(top[:, : k // 10], below_tenth))


# ------------------------------------------------------------------------------------------------------
# The module
# ------------------------------------------------------------------------------------------------------


class HetComp(DistillLoss):
    Config = HetCompConfig

    def __init__(self, config: HetCompConfig, teacher: TeacherTrajectories, split: Split, student_repr_dim: int,
                 seed: int = 0) -> None:
        super().__init__(seed)
        teacher = as_trajectories(teacher)
        if teacher.rankings.shape[3] < max(config.top_n, config.ndcg_k):
            raise ValueError(f"HetComp needs the teachers' top-{max(config.top_n, config.ndcg_k)} per checkpoint; "
                             f"the trajectories hold {teacher.rankings.shape[3]}")
        self.config, self.split, self.names = config, split, teacher.names
        self.rankings = teacher.rankings  # (X, V, U, N) on the CPU: gathered from at each construction
        self.last = teacher.num_checkpoints - 1
        x, u = len(teacher.names), split.num_users
        start = self.last if config.construction == "converged" else 0
        self.state = torch.full((x, u), start, dtype=torch.long)
        self.recorded: torch.Tensor | None = None  # (X, U) DKC's recorded distance to each next checkpoint
        self.constructions = 0
        self.threshold = config.alpha
        self.train_users, self.train_items = split.train_tensors()
        self.indptr = torch.from_numpy(split.train_indptr)
        if bool((self.indptr[1:] == self.indptr[:-1]).any()):
            raise ValueError("HetComp samples observed items per user: every user needs a training interaction")
        self.dynamics: list[dict] = []  # per construction: epoch, α, share of (teacher, user) per checkpoint
        self.register_buffer("ensemble", torch.empty(u, config.top_n, dtype=torch.long), persistent=False)
        self.register_buffer("detailed", torch.zeros(u, dtype=torch.bool), persistent=False)
        self.register_buffer("samples", torch.empty(u, config.num_observed + config.num_rest, dtype=torch.long),
                             persistent=False)
        self._rebuild()
        self._log(0)
        self._prepared_epoch = -1

    # -- knowledge ------------------------------------------------------------------------------------

    def current_lists(self, n: int | None = None) -> torch.Tensor:
        """(X, U, n) every teacher's ranking at its current checkpoint per user."""
        x, u = self.state.shape
        lists = self.rankings[torch.arange(x)[:, None], self.state, torch.arange(u)[None, :]]
        return lists if n is None else lists[..., :n]

    def _rebuild(self) -> None:
        """The ensemble top-K of the current states, the phase per user, and the items the rest avoids."""
        cfg = self.config
        top, _ = ensemble_topk(self.current_lists(), cfg.top_n, cfg.temperature, self.split.num_items)
        self.ensemble = top.to(self.ensemble.device)
        self.switched = bool(torch.round(self.state.float().mean(dim=1), decimals=2).eq(self.last).all())
        self.detailed.fill_(self.switched or cfg.transfer == "detailed")
        users = torch.arange(self.split.num_users)
        self.excluded = PairSet(torch.cat([self.train_users, users.repeat_interleave(cfg.top_n)]),
                                torch.cat([self.train_items, top.reshape(-1)]), self.split.num_users,
                                self.split.num_items)

    @torch.no_grad()
    def student_topk(self, student: Recommender) -> torch.Tensor:
        """(U, k) the student's top-k items per user, training items excluded."""
        was_training = student.training
        student.eval()
        ranked = torch.cat([r.cpu() for _, r in rank_full(student, self.split, "train", top_k=self.config.ndcg_k)])
        student.train(was_training)
        return ranked

    def distances_to_next(self, student_top: torch.Tensor) -> torch.Tensor:
        """(X, U) D(π_s, π_x^{v+1}) of every (teacher, user) at its state v (the last checkpoint: itself)."""
        x, u = self.state.shape
        following = (self.state + 1).clamp(max=self.last)
        upcoming = self.rankings[torch.arange(x)[:, None], following, torch.arange(u)[None, :], : self.config.ndcg_k]
        return torch.stack([ndcg_distance(student_top, upcoming[t].long(), self.config.temperature)
                            for t in range(x)])

    def construct(self, student: Recommender) -> None:
        """One knowledge construction (DKC, or the fixed schedule of the w/o-DKC ablation): the c-th compares
        against θ_c = α · decay^c."""
        cfg = self.config
        self.constructions += 1
        self.threshold = cfg.alpha * cfg.alpha_decay**self.constructions
        if cfg.construction == "dynamic":
            student_top = self.student_topk(student)
            distance = self.distances_to_next(student_top)
            if self.recorded is None:  # the first construction records the distances only
                self.recorded = distance
            else:
                moved = construct_knowledge(self.state, self.recorded, distance, self.threshold, self.last)
                self.state = self.state + moved.long()
                self.recorded = torch.where(moved, self.distances_to_next(student_top), self.recorded)
        elif cfg.construction == "fixed":
            self.state = (self.state + 1).clamp(max=self.last)
        self._rebuild()

    def _log(self, epoch: int) -> None:
        for t, name in enumerate(self.names):
            shares = torch.bincount(self.state[t], minlength=self.last + 1).float() / self.state.shape[1]
            self.dynamics.append({"epoch": epoch, "teacher": name, "threshold": self.threshold,
                                  "detailed_share": float(self.detailed.float().mean()),
                                  **{f"v{v}": float(s) for v, s in enumerate(shares)}})

    # -- per epoch ------------------------------------------------------------------------------------

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """(U, n_o + L): observed items (uniform over the user's training items) then the uniform rest."""
        cfg = self.config
        counts = self.indptr[1:] - self.indptr[:-1]
        picks = (torch.rand(len(counts), cfg.num_observed, generator=generator) * counts[:, None]).long()
        observed = self.train_items[self.indptr[:-1, None] + picks]
        rest = sample_outside(self.excluded, torch.arange(len(counts)), cfg.num_rest, generator)
        return torch.cat([observed, rest], dim=1)

    def prepare(self, student: Recommender, epoch: int) -> None:
        """At the first batch of an epoch: a construction after every p epochs, then this epoch's samples."""
        completed = epoch - 1
        if self.config.construction != "converged" and not self.switched and completed >= self.config.period and \
                completed % self.config.period == 0:
            self.construct(student)
            self._log(completed)
        self.samples = self.sample(self.generator).to(self.samples.device)
        self._prepared_epoch = epoch

    def forward(self, student: Recommender, batch: Batch) -> dict[str, torch.Tensor]:
        if batch.epoch != self._prepared_epoch:
            self.prepare(student, batch.epoch)
        cfg = self.config
        users = torch.unique(batch.users)
        items = torch.cat([self.samples[users, : cfg.num_observed], self.ensemble[users],
                           self.samples[users, cfg.num_observed :]], dim=1)
        scores = student.score(users, items)
        n_top = cfg.num_observed + cfg.top_n
        observed, top, rest = scores[:, : cfg.num_observed], scores[:, cfg.num_observed : n_top], scores[:, n_top:]
        detailed = self.detailed[users]
        first, second = ~detailed, detailed
        terms: list[torch.Tensor] = []
        if bool(first.any()):
            terms.append(cfg.lambda_overall * overall_loss(observed[first], top[first], rest[first]))
        if bool(second.any()):
            terms.append(cfg.lambda_detailed * detailed_loss(observed[second], top[second], rest[second]))
        return {"hetcomp": sum(terms)}


def as_trajectories(teacher: TeacherTrajectories | TeacherOutputs) -> TeacherTrajectories:
    """Trajectories as given, or one converged teacher's outputs as a trajectory of one checkpoint (then HetComp
    is the AKT losses on that teacher's ranking: what the registry's contract tests build)."""
    if isinstance(teacher, TeacherTrajectories):
        return teacher
    if isinstance(teacher, TeacherOutputs):
        return TeacherTrajectories(names=("teacher",), rankings=teacher.user_topk[None, None],
                                   item_rankings=teacher.item_topk[None], epochs=torch.zeros(1, 1, dtype=torch.long))
    raise TypeError(f"HetComp learns from TeacherTrajectories or TeacherOutputs, not {type(teacher).__name__}")


def ensemble_outputs(trajectories: TeacherTrajectories, top_k: int = 100, top_k_users: int = 100,
                     temperature: float = 10.0, num_items: int | None = None) -> TeacherOutputs:
    """The converged teachers' ensemble as a single teacher's outputs, for RRD and DCD (no representations).

    ``user_topk`` (U, top_k): the ensemble's items per user; ``user_topk_scores`` their importances;
    ``item_topk`` (I, top_k_users): the ensemble of the teachers' top users per item (the same importance
    rule over users). ``user_repr``/``item_repr`` are empty (U, 0)/(I, 0): no latent knowledge.
    """
    converged = trajectories.rankings[:, -1]
    num_users = converged.shape[1]
    num_items = int(num_items if num_items is not None else trajectories.item_rankings.shape[1])
    user_top, importance = ensemble_topk(converged, top_k, temperature, num_items)
    item_top, _ = ensemble_topk(trajectories.item_rankings, top_k_users, temperature, num_users)
    return TeacherOutputs(user_topk=user_top, user_topk_scores=importance, item_topk=item_top,
                          user_repr=torch.zeros(num_users, 0), item_repr=torch.zeros(num_items, 0))


__all__ = ["HetComp", "HetCompConfig", "TeacherTrajectories", "as_trajectories", "construct_knowledge", "detailed_loss",
           "ensemble_outputs", "ensemble_topk", "ndcg_distance", "overall_loss",
           "set_above_loss"]
