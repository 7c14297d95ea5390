"""ConCF — consensus learning from heterogeneous objectives (Kang, D. Lee, Kweon, Hwang, Yu, "Consensus
Learning from Heterogeneous Objectives for One-Class Collaborative Filtering", WWW'22, arXiv 2202.13140).

One model (:class:`kdrepro.models.multihead.MultiHeadCF`) with a head per one-class CF objective x ∈ X on
shared embeddings. Each head learns its own objective L^x_CF (:mod:`kdrepro.objectives`); the heads' rankings
are consolidated into a per-user **consensus**, and every head also learns the consensus (**consensus
learning**, CL) after a warm-up. Only the target head is kept for inference. The training objective:

    L = Σ_{x ∈ X} w_x ( L^x_CF + α · L^x_CL ),                       α = 0.005, CL from epoch 51

**Consensus generation** (every p = 10 epochs): each head ranks every user's unobserved items; with
r^x_ui the position of item i in head x's top-N (N = 100, 0 = best) and σ^x_ui the standard deviation of
that position over the last Q = 5 rankings of the head (a position outside a top-N counts as N),

    s_ui = Σ_x 𝟙[r^x_ui < N] · ( exp(−r^x_ui / T) + β · exp(−σ^x_ui / T) ),    T = 10

(importance of the position plus a rank-consistency bonus for items the head keeps ranking alike; β = 1;
only ranks < N count). The consensus π_u is the top-N of s_u.

**Consensus learning** (the relaxed Plackett-Luce loss of RRD, :func:`kdrepro.distill.rrd.relaxed_ranking_loss`):
the consensus' first K = 50 items, in order, above its last N − K = 50 (their order ignored), on the scores
r^x of each head, for the distinct users of a batch:

    L^x_CL = −Σ_u Σ_{k=1..K} [ r^x_{uπ_k} − log( Σ_{l=k..K} e^{r^x_{uπ_l}} + Σ_{j=K+1..N} e^{r^x_{uπ_j}} ) ]

**Balancing** (GradNorm, Chen et al., ICML'18): with G_x = w_x ‖∇_W (L^x_CF + α L^x_CL)‖ the norm of head x's
gradient on the shared embeddings W, L̃_x = L^x_CF / L^x_CF(first batch) and r_x = L̃_x / mean(L̃),

    L_grad = Σ_x | G_x − mean(G) · r_x^τ |,      τ = 0.15 (target held constant)

trains the learnable weights w (clipped to [0.5, 2] and renormalised to sum |X| before every step).

Shapes: U users, I items, H = |X| heads, B batch pairs. Head rankings (H, U, N); queue (Q, U, N) per head;
consensus (U, N); CL scores (B_u, N) per head over the B_u distinct users of a batch.

**Departures from the authors' code, each stated in chapter 06:**
- Balancing: the authors differentiate L_grad with second-order gradients that also reach the model; here
  L_grad reaches the weights only (GradNorm's rule), and G_x is the per-head gradient norm on the embedding
  rows the head used, captured by hooks during the previous step's backward pass (one step of lag, no
  extra backward pass).
- Consensus: ranked afresh at the update epoch from the current heads, training items masked (the authors
  reused the previous evaluation's rankings); the consistency queue keeps updating for the whole run (the
  authors' consistency term stopped changing at epoch 50).
- Multinomial heads: each epoch covers every user (user multinomial) and every item (item multinomial)
  once, a slice per batch, as an autoencoder epoch does; pairwise heads see the batch's (user, pos, neg).
- The consensus is generated vectorised, a block of users at a time (the authors ranked in a Python loop over
  users); the speed kernels (ranking, queue positions, consensus top-N, the multinomial heads' loss, the
  consensus-list scores as sparse products, the batch's embedding gathers) are in
  :mod:`kdrepro.distill._concf_kernels`, each tested against its plain form.
- Dropout in the branches draws its masks from random words (:func:`kdrepro.models.multihead.relu_dropout`):
  the distribution of ``nn.Dropout``, not its random draws.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from kdrepro.distill._concf_kernels import (
    ListPattern,
    SortedConsensus,
    consensus_top_n,
    distinct,
    gather_row_sets,
    listed_scores,
    queue_positions,
    rank_top_n,
    ranking_tables,
    sparse_multinomial_loss,
)
from kdrepro.distill.base import check_positive
from kdrepro.distill.rrd import log_denominators, relaxed_ranking_loss
from kdrepro.evaluate import gather_rows, rank_full
from kdrepro.metrics import PROTOCOL_METRICS, per_user_metrics
from kdrepro.models.base import Recommender
from kdrepro.models.multihead import OBJECTIVES, MultiHeadCF
from kdrepro.objectives import BASE_LOSSES

if TYPE_CHECKING:
    from kdrepro.splits import Split
    from kdrepro.types import Batch

# How each objective reads a batch: pairwise on (user, pos, neg) pairs, or listwise over a user's row
# (user multinomial) or an item's column (item multinomial) of the training matrix.
HEAD_KINDS = {"bpr": "pair", "cml": "pair", "bce": "pair", "mse": "pair",
              "user_multinomial": "user", "item_multinomial": "item"}


@dataclass(frozen=True)
class ConCFConfig:
    heads: tuple[str, ...] = OBJECTIVES  # X: one head per objective (the authors' code: these six)
    target: str = "bpr"  # the head kept for inference
    consensus_learning: bool = True  # False: heads trained side by side (ConCF without CL)
    alpha: float = 0.005  # α: weight of L_CL
    warmup_epochs: int = 50  # CL from epoch warmup_epochs + 1 (the authors: 51)
    update_every: int = 10  # p: epochs between consensus generations
    top_n: int = 100  # N: each head's ranking and the consensus length
    num_interesting: int = 50  # K: consensus items ranked in order above the other N − K
    temperature: float = 10.0  # T in exp(−rank/T) and exp(−σ/T)
    queue_size: int = 5  # Q: rankings per head the consistency σ is computed over
    consistency_weight: float = 1.0  # β: weight of the consistency bonus (0: importance only)
    balance: bool = True  # GradNorm weights (False: every w_x = 1)
    gradnorm_tau: float = 0.15  # τ: exponent of the relative inverse training rate
    weight_min: float = 0.5  # clip range of the balancing weights
    weight_max: float = 2.0
    track_heads: bool = True  # log every head's and the consensus' validation metrics at each generation

    def __post_init__(self) -> None:
        unknown = [h for h in self.heads if h not in OBJECTIVES]
        if not self.heads or unknown or len(set(self.heads)) != len(self.heads):
            raise ValueError(f"ConCFConfig.heads={self.heads!r}: give distinct objectives among {OBJECTIVES}")
        if self.target not in self.heads:
            raise ValueError(f"ConCFConfig.target={self.target!r} is not one of heads={self.heads!r}")
        check_positive(self, "update_every", "top_n", "num_interesting", "temperature", "queue_size")
        if self.num_interesting >= self.top_n:
            raise ValueError(f"ConCFConfig.num_interesting={self.num_interesting} must be below top_n={self.top_n}")
        if not 0 < self.weight_min <= 1 <= self.weight_max:
            raise ValueError(f"ConCFConfig weight range [{self.weight_min}, {self.weight_max}] must contain 1")
        if self.alpha < 0 or self.consistency_weight < 0 or self.warmup_epochs < 0:
            raise ValueError("ConCFConfig.alpha, consistency_weight and warmup_epochs must be >= 0")


# --------------------------------------------------------------------------------------------------
# Pure functions (unit-tested by hand)
# --------------------------------------------------------------------------------------------------


def consensus_learning_loss(scores: torch.Tensor, num_interesting: int) -> torch.Tensor:
    """L_CL of one head: ``scores`` (B, N) of the consensus items in consensus order; the first K in
    order above the last N − K (unordered); summed over the batch."""
    return relaxed_ranking_loss(scores[:, :num_interesting], scores[:, num_interesting:])


def consensus_learning_losses(scores: torch.Tensor, num_interesting: int) -> torch.Tensor:
    """(H,) :func:`consensus_learning_loss` of every head at once from ``scores`` (H, B, N): the terms of the
    relaxed ranking loss (:func:`kdrepro.distill.rrd.log_denominators`, row by row) for all heads' rows in one
    pass, summed per head (one set of small kernels per batch instead of one per head)."""
    heads, _, length = scores.shape
    rows = scores.reshape(-1, length)
    interesting, uninteresting = rows[:, :num_interesting], rows[:, num_interesting:]
    return -(interesting - log_denominators(interesting, uninteresting)).view(heads, -1).sum(1)


def consistency_bonus(queue: list[torch.Tensor], temperature: float, num_items: int) -> torch.Tensor:
    """exp(−σ/T) for the items of the newest ranking ``queue[-1]`` (U, N) of items < ``num_items``: σ the
    standard deviation (population) of their positions over every ranking of the queue (oldest first), absent = N."""
    positions = queue_positions(queue, num_items).float()  # (Q, U, N)
    # The population std as its definition: torch's std over the first axis is a strided reduction ~10x slower.
    deviations = positions - positions.mean(dim=0)
    return torch.exp(-(deviations**2).mean(dim=0).sqrt() / temperature)


def consensus_values(bonus: torch.Tensor, temperature: float, consistency_weight: float) -> torch.Tensor:
    """(H, U, N) exp(−r/T) + β·bonus of every listed item, r = 0..N−1 its position in the head's top-N."""
    positions = torch.arange(bonus.shape[-1], dtype=torch.float32, device=bonus.device)
    return torch.exp(-positions / temperature) + consistency_weight * bonus


def consensus_scores(
    rankings: torch.Tensor, bonus: torch.Tensor, num_items: int, temperature: float, consistency_weight: float
) -> torch.Tensor:
    """(U, num_items) s_ui = Σ_x exp(−r^x_ui/T) + β·bonus^x_ui over the heads' top-N ``rankings`` (H, U, N);
    0 for items in no head's top-N. ``bonus`` (H, U, N) aligns with ``rankings``."""
    num_users = rankings.shape[1]
    values = consensus_values(bonus, temperature, consistency_weight)
    scores = torch.zeros(num_users, num_items, device=rankings.device)
    flat = rankings.permute(1, 0, 2).reshape(num_users, -1)
    scores.scatter_add_(1, flat, values.permute(1, 0, 2).reshape(num_users, -1))
    return scores


def consensus_ranking(
    rankings: torch.Tensor, bonus: torch.Tensor, num_items: int, temperature: float, consistency_weight: float,
    top_n: int,
) -> torch.Tensor:
    """(U, top_n) items by decreasing consensus score, ties by increasing item: the first ``top_n`` of a stable
    descending sort of ``consensus_scores(...)``, computed a few users at a time
    (:func:`kdrepro.distill._concf_kernels.consensus_top_n`)."""
    num_users = rankings.shape[1]
    values = consensus_values(bonus, temperature, consistency_weight)
    return consensus_top_n(rankings.permute(1, 0, 2).reshape(num_users, -1),
                           values.permute(1, 0, 2).reshape(num_users, -1), num_items, top_n)


def gradnorm_loss(
    weights: torch.Tensor, grad_norms: torch.Tensor, loss_ratios: torch.Tensor, tau: float
) -> torch.Tensor:
    """Σ_x |w_x g_x − mean(w g) · (L̃_x / mean L̃)^τ| with the target held constant: its gradient reaches
    ``weights`` (H,) only (``grad_norms`` g_x = ‖∇_W L^x‖ and ``loss_ratios`` L̃_x are data)."""
    weighted = weights * grad_norms.detach()
    inverse_rate = loss_ratios.detach() / loss_ratios.detach().mean()
    target = (weighted.detach().mean() * inverse_rate**tau).detach()
    return (weighted - target).abs().sum()


@torch.no_grad()
def renormalize_(weights: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """In place: clip to [low, high], then rescale to sum to the number of weights."""
    weights.clamp_(low, high)
    weights.mul_(len(weights) / weights.sum())
    return weights


def ranking_metrics(ranked: torch.Tensor, split: Split, which: str = "valid") -> dict[str, float]:
    """Mean metrics of ``split``'s held-out ``which`` items over the users holding some, from every user's
    ranked items (U, ≥ max k), as :func:`kdrepro.evaluate.evaluate` computes them from a model's ranking."""
    held_users, held_items = getattr(split, f"{which}_users"), getattr(split, f"{which}_items")
    order = np.argsort(held_users, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(held_users, minlength=split.num_users))])
    users = np.flatnonzero(np.diff(indptr) > 0)
    rows, cols = gather_rows(indptr, held_items[order], users)
    relevant = torch.zeros(len(users), split.num_items, dtype=torch.bool)
    relevant[torch.as_tensor(rows), torch.as_tensor(cols)] = True
    counts = torch.as_tensor(indptr[users + 1] - indptr[users])
    values = per_user_metrics(ranked[torch.as_tensor(users)].cpu(), relevant, PROTOCOL_METRICS[split.protocol],
                              split.ks, counts)
    return {name: float(v.float().mean()) for name, v in values.items()}


# --------------------------------------------------------------------------------------------------
# The consensus as a recommender (for evaluation)
# --------------------------------------------------------------------------------------------------


class ConsensusScorer(Recommender):
    """Scores every item by the heads' consensus (importance part: Σ_x exp(−r^x/T) over each head's top-N).

    ``which`` is the evaluation it serves: ``"test"`` also masks the validation items before the heads rank,
    as ``evaluate`` does for every model. Items outside every head's top-N score 0.
    """

    def __init__(self, model: MultiHeadCF, split: Split, which: str, top_n: int = 100, temperature: float = 10.0,
                 heads: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.model, self.split, self.which = model, split, which
        self.top_n, self.temperature = top_n, temperature
        self.heads = tuple(heads or model.heads)
        self.num_users, self.num_items, self.dim = model.num_users, model.num_items, model.dim

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        ids = users.cpu().numpy()
        rankings = torch.stack([
            torch.cat([ranked for _, ranked in rank_full(self.model.head(h), self.split, self.which,
                                                          top_k=self.top_n, users=ids)])
            for h in self.heads
        ])
        return consensus_scores(rankings, torch.zeros_like(rankings, dtype=torch.float32), self.num_items,
                                self.temperature, 0.0)


def _take(rows: torch.Tensor, index: torch.Tensor, shape: tuple[int, ...] | torch.Size | None = None) -> torch.Tensor:
    """``rows[index]`` (viewed as ``shape`` × width) by ``index_select``, whose backward (one ``index_add``) is
    ~1.5x faster on CPU than advanced indexing's accumulate."""
    taken = rows.index_select(0, index.reshape(-1))
    return taken.view(*(index.shape if shape is None else shape), rows.shape[-1])


@dataclass
class _BatchIds:
    """The ids one batch gathers: pairwise heads' distinct users/items (with the inverse maps, pairs first,
    then the consensus users/items), the multinomial heads' slices and targets, the consensus lists."""

    pair_shape: tuple[int, int]
    users: torch.Tensor | None = None
    user_index: torch.Tensor | None = None
    items: torch.Tensor | None = None
    item_index: torch.Tensor | None = None
    cl_users: torch.Tensor | None = None  # (B_u,) the batch's distinct users, whose consensus lists are learned
    cl_pair_lists: ListPattern | None = None  # their lists over ``items`` (pairwise heads)
    cl_unique_items: torch.Tensor | None = None
    cl_unique_lists: ListPattern | None = None  # over ``cl_unique_items`` (item multinomial)
    cl_all_lists: ListPattern | None = None  # over every item (user multinomial)
    user_chunk: torch.Tensor | None = None
    user_chunk_and_cl: torch.Tensor | None = None
    user_targets: tuple[torch.Tensor, torch.Tensor] | None = None  # (row in chunk, item) of the training ones
    item_chunk: torch.Tensor | None = None
    item_targets: tuple[torch.Tensor, torch.Tensor] | None = None  # (row in chunk, user) of the training ones


# --------------------------------------------------------------------------------------------------
# The training objective of the multi-branch model
# --------------------------------------------------------------------------------------------------


class ConCF(nn.Module):
    """Every head's objective, the balancing and the consensus learning, as ``fit(..., distill=ConCF(...))``
    with ``TrainConfig(loss="none")`` and a :class:`MultiHeadCF` of the same heads as the model.

    ``log`` holds one row per consensus generation: its seconds and (``track_heads``) every head's and the
    consensus' validation metrics at that point; ``weight_log`` the balancing weights per epoch.
    """

    Config = ConCFConfig

    def __init__(self, config: ConCFConfig, split: Split) -> None:
        super().__init__()
        self.config, self.split = config, split
        self.weights = nn.Parameter(torch.ones(len(config.heads)))
        self.register_buffer("initial_losses", torch.full((len(config.heads),), float("nan")), persistent=False)
        self.balanced = config.balance and len(config.heads) > 1
        self.num_users, self.num_items, self.num_pairs = split.num_users, split.num_items, split.num_train
        order = np.argsort(split.train_items, kind="stable")
        self.item_indptr = np.concatenate([[0], np.cumsum(np.bincount(split.train_items, minlength=split.num_items))])
        self.item_users = split.train_users[order]
        self.queues = {h: deque(maxlen=config.queue_size) for h in config.heads}
        self._consensus: torch.Tensor | None = None
        self._sorted_consensus: SortedConsensus | None = None
        self.log: list[dict] = []
        self.weight_log: list[dict] = []
        self._epoch, self._pairs_seen, self._generate_now = 0, 0, False
        self._user_order = torch.arange(split.num_users)
        self._item_order = torch.arange(split.num_items)
        self._grad_sq = torch.zeros(len(config.heads))
        self._grad_weights = torch.ones(len(config.heads))
        self._have_grads = False
        self._gathered: dict[tuple[int, int | None], torch.Tensor] = {}  # this batch's gathers, by (table, ids)

    # Epoch bookkeeping -----------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, generator: torch.Generator) -> None:
        cfg = self.config
        self._epoch, self._pairs_seen = epoch, 0
        self._user_order = torch.randperm(self.num_users, generator=generator)
        self._item_order = torch.randperm(self.num_items, generator=generator)
        wants_consensus = cfg.consensus_learning or cfg.track_heads
        self._generate_now = wants_consensus and (epoch - 1) % cfg.update_every == 0
        self.weight_log.append({"epoch": epoch, **dict(zip(cfg.heads, self.weights.detach().tolist(), strict=True))})

    @property
    def consensus(self) -> torch.Tensor | None:
        """(U, N) every user's consensus list, best first (None before the first generation)."""
        return self._consensus

    @consensus.setter
    def consensus(self, lists: torch.Tensor) -> None:
        self._consensus, self._sorted_consensus = lists, SortedConsensus.of(lists)

    def learning_consensus(self) -> bool:
        return self.config.consensus_learning and self._epoch > self.config.warmup_epochs and self.consensus is not None

    def _slice(self, order: torch.Tensor, batch_pairs: int) -> torch.Tensor:
        """This batch's share of an epoch-long permutation, proportional to the pairs it covers."""
        n = len(order)
        lo = self._pairs_seen * n // self.num_pairs
        hi = min(self._pairs_seen + batch_pairs, self.num_pairs) * n // self.num_pairs
        return order[lo:hi]

    # Consensus generation --------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, model: MultiHeadCF) -> torch.Tensor:
        """Rank every user's top-N with every head, push the rankings into the queues, build the consensus.

        ``log`` gets the seconds of the whole generation, of the heads' ranking and of the consolidation
        (queue positions, consistency, consensus top-N) separately."""
        cfg = self.config
        started = time.perf_counter()
        was_training = model.training
        model.eval()
        rankings, bonuses = [], []
        user_table, item_table = model.user_embedding.weight, model.item_embedding.weight
        for head in cfg.heads:
            users, items = ranking_tables(model.branches[head], user_table, item_table)
            ranked = rank_top_n(users, items, self.split.train_indptr, self.split.train_items, cfg.top_n).cpu()
            self.queues[head].append(ranked)
            rankings.append(ranked)
            bonuses.append(consistency_bonus(list(self.queues[head]), cfg.temperature, self.num_items))
        ranked_at = time.perf_counter()
        consensus = consensus_ranking(torch.stack(rankings), torch.stack(bonuses), self.num_items,
                                      cfg.temperature, cfg.consistency_weight, cfg.top_n)
        model.train(was_training)
        done = time.perf_counter()
        row = {"epoch": self._epoch - 1, "generation_s": done - started, "ranking_s": ranked_at - started,
               "consolidation_s": done - ranked_at}
        if cfg.track_heads:
            row.update(self.validation_row(torch.stack(rankings)))
        self.log.append(row)
        return consensus

    def validation_row(self, rankings: torch.Tensor) -> dict[str, float]:
        """Validation metrics of every head and of the consensus (importance part, as :class:`ConsensusScorer`)
        from the heads' rankings (H, U, N) of this generation (training items masked, as validation masks)."""
        cfg = self.config
        importance_only = consensus_ranking(rankings, torch.zeros(rankings.shape), self.num_items, cfg.temperature,
                                            0.0, cfg.top_n)
        row = {}
        for name, ranked in [*zip(cfg.heads, rankings, strict=True), ("consensus", importance_only)]:
            row.update({f"{name}/{metric}": value for metric, value in ranking_metrics(ranked, self.split).items()})
        return row

    # One batch ---------------------------------------------------------------------------------------
    def _capture(self, index: int):
        def hook(grad: torch.Tensor) -> None:
            flat = grad.detach().reshape(-1)
            self._grad_sq[index] += float(flat.dot(flat))  # ‖g‖² in one pass (no squared copy)
        return hook

    def _gather(self, model: MultiHeadCF, ids: _BatchIds) -> None:
        """Every embedding row set of this batch's heads, one gather per table (``gather_row_sets``): heads
        asking for the same ids share their rows, and each table's gradient is formed once per batch."""
        self._gathered = {}
        user_table, item_table = model.user_embedding.weight, model.item_embedding.weight
        for table, id_sets in ((user_table, (ids.users, ids.user_chunk_and_cl)),
                               (item_table, (ids.items, ids.item_chunk, ids.cl_unique_items))):
            wanted = [s for s in id_sets if s is not None]
            self._gathered[(table.data_ptr(), None)] = table
            for id_set, rows in zip(wanted, gather_row_sets(table, wanted) if wanted else (), strict=True):
                self._gathered[(table.data_ptr(), id(id_set))] = rows

    def _rows(self, table: torch.Tensor, ids: torch.Tensor | None, index: int) -> torch.Tensor:
        """Shared embedding rows ``table[ids]`` (``ids=None``: every row; gathered by :meth:`_gather`) as the
        head's own view: its gradient norm feeds the balancing."""
        shared = self._gathered[(table.data_ptr(), None if ids is None else id(ids))]
        rows = shared.view_as(shared)
        if self.balanced and rows.requires_grad:
            rows.register_hook(self._capture(index))
        return rows

    def _head_loss(self, model: MultiHeadCF, index: int, head: str, ids: _BatchIds
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """L^x_CF of head ``head`` on this batch, and when the consensus is being learned (else None) the head's
        scores (B_u, N) of the batch users' consensus lists, in consensus order (the input of L^x_CL)."""
        branch = model.branches[head]
        user_table, item_table = model.user_embedding.weight, model.item_embedding.weight
        kind = HEAD_KINDS[head]
        learn = ids.cl_users is not None
        if kind == "item":
            user_out = branch(self._rows(user_table, None, index))
            item_out = branch(self._rows(item_table, ids.item_chunk, index))
            loss = sparse_multinomial_loss(branch.score_matrix(item_out, user_out), *ids.item_targets)
            if not learn:
                return loss, None
            cl_item_rows = branch(self._rows(item_table, ids.cl_unique_items, index))
            return loss, listed_scores(_take(user_out, ids.cl_users), cl_item_rows, ids.cl_unique_lists, branch.metric)
        if kind == "user":
            user_out = branch(self._rows(user_table, ids.user_chunk_and_cl, index))
            item_out = branch(self._rows(item_table, None, index))
            chunk = len(ids.user_chunk)
            loss = sparse_multinomial_loss(branch.score_matrix(user_out[:chunk], item_out), *ids.user_targets)
            if not learn:
                return loss, None
            return loss, listed_scores(user_out[chunk:], item_out, ids.cl_all_lists, branch.metric)
        user_out = branch(self._rows(user_table, ids.users, index))
        item_out = branch(self._rows(item_table, ids.items, index))
        pairs = ids.pair_shape
        n_pairs = pairs[0] * pairs[1]
        scores = branch.scores(_take(user_out, ids.user_index[: pairs[0]]),
                               _take(item_out, ids.item_index[:n_pairs], pairs))
        loss = BASE_LOSSES[head](scores[:, 0], scores[:, 1:])
        if not learn:
            return loss, None
        return loss, listed_scores(_take(user_out, ids.user_index[pairs[0]:]), item_out, ids.cl_pair_lists,
                                   branch.metric)

    def _batch_ids(self, batch: Batch, learn_consensus: bool) -> _BatchIds:
        """Every id the heads of this batch gather, made distinct once for all heads."""
        device = batch.users.device
        kinds = {HEAD_KINDS[h] for h in self.config.heads}
        ids = _BatchIds(pair_shape=(len(batch.users), 1 + batch.neg.shape[1]))
        cl_users = distinct(batch.users, self.num_users)[0] if learn_consensus else batch.users[:0]
        lists = None
        if learn_consensus:
            ids.cl_users = cl_users
            lists = self._sorted_consensus.select(cl_users.cpu()).to(device)
        if "pair" in kinds:
            pair_items = torch.cat([batch.pos.unsqueeze(1), batch.neg], dim=1).reshape(-1)
            items = pair_items if lists is None else torch.cat([pair_items, lists.items.reshape(-1)])
            ids.items, ids.item_index = distinct(items, self.num_items)
            ids.users, ids.user_index = distinct(torch.cat([batch.users, cl_users]), self.num_users)
            if lists is not None:
                labels = ids.item_index[len(pair_items):].view(lists.items.shape)
                ids.cl_pair_lists = lists.pattern(labels, len(ids.items))
        if "item" in kinds:
            ids.item_chunk = self._slice(self._item_order, len(batch.users)).to(device)
            ids.item_targets = self._ones(self.item_indptr, self.item_users, ids.item_chunk, device)
            if lists is not None:
                ids.cl_unique_items, labels = distinct(lists.items, self.num_items)
                ids.cl_unique_lists = lists.pattern(labels, len(ids.cl_unique_items))
        if "user" in kinds:
            ids.user_chunk = self._slice(self._user_order, len(batch.users)).to(device)
            ids.user_chunk_and_cl = torch.cat([ids.user_chunk, cl_users])
            if lists is not None:
                ids.cl_all_lists = lists.pattern(lists.items, self.num_items)
            ids.user_targets = self._ones(self.split.train_indptr, self.split.train_items, ids.user_chunk, device)
        return ids

    @staticmethod
    def _ones(indptr: np.ndarray, values: np.ndarray, ids: torch.Tensor, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(row in ``ids``, column) of the ones of the CSR rows ``ids``: a multinomial head's targets."""
        rows, cols = gather_rows(indptr, values, ids.cpu().numpy())
        return torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)

    def forward(self, model: MultiHeadCF, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        if not isinstance(model, MultiHeadCF) or model.heads != cfg.heads:
            raise ValueError(f"ConCF with heads {cfg.heads} needs a MultiHeadCF with the same heads")
        if self._generate_now:
            self._generate_now = False
            self.consensus = self.generate(model)
        ids = self._batch_ids(batch, self.learning_consensus())
        self._gather(model, ids)
        if self.balanced:
            renormalize_(self.weights, cfg.weight_min, cfg.weight_max)
            # Norms captured in the previous backward pass were of w_x·(L^x_CF + α L^x_CL): divide by those w_x.
            previous = (self._grad_sq.sqrt() / self._grad_weights).to(self.weights.device)
            self._grad_sq.zero_()
            self._grad_weights = self.weights.detach().cpu()
        losses, cl_scores = [], []
        for index, head in enumerate(cfg.heads):
            loss, scores = self._head_loss(model, index, head, ids)
            losses.append(loss)
            cl_scores.append(scores)
        self._pairs_seen += len(batch.users)
        weights = self.weights.detach()
        learned = ids.cl_users is not None
        cl_losses = consensus_learning_losses(torch.stack(cl_scores), cfg.num_interesting) if learned else None
        terms = {}
        for index, head in enumerate(cfg.heads):
            terms[head] = weights[index] * losses[index]
            if learned:
                terms[f"cl/{head}"] = weights[index] * cfg.alpha * cl_losses[index]
        if self.balanced:
            current = torch.stack([loss.detach() for loss in losses])
            if torch.isnan(self.initial_losses).any():
                self.initial_losses.copy_(current)
            if self._have_grads:
                terms["balance"] = gradnorm_loss(self.weights, previous, current / self.initial_losses.clamp(min=1e-12),
                                                 cfg.gradnorm_tau)
            self._have_grads = True
        return terms
