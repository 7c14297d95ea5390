"""Speed kernels of ConCF's consensus generation (:mod:`kdrepro.distill.concf`), each beside the plain
formulation that ``tests/test_concf.py`` compares it against.

**Every head ranks every user's top-N** (N = 100) among the items outside the user's training set. The plain
formulation is :func:`kdrepro.evaluate.rank_full` on the head's view: per block of users it passes the *whole
item table* through the head's branch again, allocates the block's (users × items) scores and keeps
``torch.topk`` of each row. Here:

- :func:`ranking_tables`: each branch transforms the user and item tables once per generation. The metric
  head (CML, s = −‖ū − ī‖²) ranks a user's items by 2ū·ī − ‖ī‖², which differs from s by ‖ū‖², constant per
  user: appending a 1 to ū and −‖ī‖² to 2ī makes its ranking one matrix product as well (same order up to
  float rounding).
- :func:`rank_top_n`: small blocks of users scored into one reused buffer (a fresh (block × items) tensor per
  block costs page faults, and a block that fits in cache is read back by ``topk`` from there), training
  items masked through flat indices computed once, ``torch.topk`` per row. The scores are the head's up to
  float rounding, so the rankings are the plain formulation's except where two scores differ by a rounding.

``torch.topk`` is then most of the cost (its partial sort reads every score once); a top-k over the best
column segments (exact, fewer elements sorted) measured no faster on one CPU thread, so it is not used.
"""

from __future__ import annotations

import numpy as np
import torch

from kdrepro.evaluate import NonFiniteScoresError

RANKING_BLOCK = 32  # users per product-and-top-N block: 32 × 25,181 fp32 scores (3 MB) stay in cache
CONSOLIDATION_CHUNK = 32  # users per position table / consensus buffer (reused, cache-sized)


def ranking_tables(branch, user_table: torch.Tensor, item_table: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(users, items) outputs of ``branch`` (a :class:`kdrepro.models.multihead.Branch` in eval mode) whose
    products rank each user's items as the head's scores do."""
    users, items = branch(user_table), branch(item_table)
    if not branch.metric:
        return users, items
    ones = torch.ones(len(users), 1, dtype=users.dtype, device=users.device)
    return torch.cat([users, ones], dim=1), torch.cat([2 * items, -(items**2).sum(1, keepdim=True)], dim=1)


@torch.no_grad()
def rank_top_n(users: torch.Tensor, items: torch.Tensor, train_indptr: np.ndarray, train_items: np.ndarray,
               top_n: int, block: int = RANKING_BLOCK) -> torch.Tensor:
    """(U, top_n) every user's best items by ``users @ items.T`` (tables of :func:`ranking_tables`), each
    user's training items (CSR ``train_indptr``/``train_items``) excluded."""
    if not (torch.isfinite(users).all() and torch.isfinite(items).all()):
        raise NonFiniteScoresError("a ConCF head gives non-finite outputs (consensus generation); a divergent fit")
    num_users, num_items = len(users), len(items)
    device = users.device
    # Flat position (user · num_items + item) of every training pair, in user order (CSR order).
    owners = np.repeat(np.arange(num_users, dtype=np.int64), np.diff(train_indptr))
    masked = torch.as_tensor(owners * num_items + train_items, device=device)
    items_t = items.T.contiguous()
    buffer = torch.empty(min(block, num_users), num_items, dtype=users.dtype, device=device)
    out = torch.empty(num_users, top_n, dtype=torch.long, device=device)
    for lo in range(0, num_users, block):
        hi = min(lo + block, num_users)
        scores = torch.mm(users[lo:hi], items_t, out=buffer[: hi - lo])
        pairs = masked[int(train_indptr[lo]) : int(train_indptr[hi])] - lo * num_items
        scores.view(-1).index_fill_(0, pairs, -torch.inf)
        out[lo:hi] = scores.topk(top_n, dim=1).indices
    return out


# --------------------------------------------------------------------------------------------------
# Consolidation: queue positions and the consensus top-N
# --------------------------------------------------------------------------------------------------


def positions_in(ranking: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Plain formulation: (U, M) position of each of ``items`` (U, M) in ``ranking`` (U, N) of the same user;
    N when absent (a sort and a binary search per user)."""
    sorted_ids, order = ranking.sort(dim=1)
    slot = torch.searchsorted(sorted_ids, items).clamp(max=ranking.shape[1] - 1)
    found = sorted_ids.gather(1, slot) == items
    return torch.where(found, order.gather(1, slot), torch.full_like(items, ranking.shape[1]))


def queue_positions(queue: list[torch.Tensor], num_items: int, chunk: int = CONSOLIDATION_CHUNK) -> torch.Tensor:
    """(Q, U, N) :func:`positions_in` of the newest ranking's items in every ranking of ``queue`` (each (U, N),
    distinct items per row): a (chunk × num_items) position table per ranking, written at that ranking's N
    items, read at the newest one's, reset at the N items (no sort, no search)."""
    current = queue[-1]
    num_users, top_n = current.shape
    positions = torch.empty(len(queue), num_users, top_n, dtype=current.dtype, device=current.device)
    table = torch.full((min(chunk, num_users), num_items), top_n, dtype=current.dtype, device=current.device)
    ranks = torch.arange(top_n, dtype=current.dtype, device=current.device).expand(len(table), top_n)
    for lo in range(0, num_users, chunk):
        hi = min(lo + chunk, num_users)
        rows, newest = table[: hi - lo], current[lo:hi]
        for index, ranking in enumerate(queue):
            past = ranking[lo:hi]
            rows.scatter_(1, past, ranks[: hi - lo])
            positions[index, lo:hi] = rows.gather(1, newest)
            rows.scatter_(1, past, top_n)
    return positions


def consensus_top_n(items: torch.Tensor, values: torch.Tensor, num_items: int, top_n: int,
                    chunk: int = CONSOLIDATION_CHUNK) -> torch.Tensor:
    """(U, top_n) items by decreasing Σ ``values`` (U, M) over each user's listed ``items`` (U, M): the
    consensus scores of :func:`kdrepro.distill.concf.consensus_scores` summed into a zeroed (chunk × num_items)
    buffer, ``topk``, and the touched entries zeroed again. The same sums in the same order and the same
    ``topk`` as the plain formulation (one zeroed (U × num_items) matrix), so the same ranking, ties included."""
    num_users = len(items)
    buffer = torch.zeros(min(chunk, num_users), num_items, dtype=values.dtype, device=values.device)
    out = torch.empty(num_users, top_n, dtype=torch.long, device=items.device)
    for lo in range(0, num_users, chunk):
        hi = min(lo + chunk, num_users)
        rows, listed = buffer[: hi - lo], items[lo:hi]
        rows.scatter_add_(1, listed, values[lo:hi])
        out[lo:hi] = rows.topk(top_n, dim=1).indices
        rows.scatter_(1, listed, 0.0)
    return out


# --------------------------------------------------------------------------------------------------
# Training step: distinct ids, the multinomial heads' loss on sparse targets
# --------------------------------------------------------------------------------------------------


def distinct(ids: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(ids, return_inverse=True)`` for ids in [0, size), by marking a (size,) table instead of
    sorting: (sorted distinct ids, position of each id among them)."""
    present = torch.zeros(size, dtype=torch.bool, device=ids.device)
    present[ids] = True
    slot = torch.cumsum(present, dim=0) - 1
    return present.nonzero().squeeze(1), slot[ids]


def sparse_multinomial_loss(scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """:func:`kdrepro.objectives.multinomial_loss` of ``scores`` (B, n) with 0/1 targets given by their ones at
    distinct (``rows``, ``cols``): −Σ_b Σ_i y_bi log softmax(s_b)_i = Σ_b n_b · logsumexp(s_b) − Σ_{y_bi=1} s_bi
    (n_b the ones in row b), with the gradient n_b · softmax(s_b) − y_b written in place into one (B, n) tensor.
    No dense target matrix and no (B, n) log-softmax is formed (equal to the dense form up to float rounding)."""
    return _SparseMultinomial.apply(scores, rows, cols)


class _SparseMultinomial(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        listed = rows * scores.shape[1] + cols
        ones_per_row = torch.bincount(rows, minlength=len(scores)).to(scores.dtype)
        log_normalizers = torch.logsumexp(scores, dim=1)
        ctx.save_for_backward(scores, log_normalizers, ones_per_row, listed)
        return (ones_per_row * log_normalizers).sum() - scores.reshape(-1).index_select(0, listed).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        scores, log_normalizers, ones_per_row, listed = ctx.saved_tensors
        grad_scores = (scores - log_normalizers.unsqueeze(1)).exp_().mul_((ones_per_row * grad).unsqueeze(1))
        grad_scores.view(-1).index_add_(0, listed, (-grad).expand(len(listed)))
        return grad_scores, None, None


def listed_scores(users: torch.Tensor, item_rows: torch.Tensor, index: torch.Tensor, metric: bool) -> torch.Tensor:
    """(B, C) a head's scores of users (B, d) (branch outputs) against their listed items, ``item_rows[index]``
    with ``index`` (B, C) into the branch outputs ``item_rows`` (R, d): what
    :meth:`kdrepro.models.multihead.Branch.scores` gives on the gathered (B, C, d) items.

    The dot products are one batched product (no (B, C, d) temporary forward, one backward), ~2x faster on CPU
    than a multiply-and-sum at ConCF's consensus lists (B ≈ 750 users × C = 100). The metric head's
    −‖ū − ī‖² = 2ū·ī − ‖ī‖² − ‖ū‖², with ‖ī‖² computed once per distinct item (equal up to float rounding)."""
    items = item_rows.index_select(0, index.reshape(-1)).view(*index.shape, item_rows.shape[1])
    dots = torch.bmm(items, users.unsqueeze(2)).squeeze(2)
    if not metric:
        return dots
    item_norms = (item_rows**2).sum(1).index_select(0, index.reshape(-1)).view(index.shape)
    return 2 * dots - item_norms - (users**2).sum(1, keepdim=True)
