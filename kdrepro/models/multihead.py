"""The multi-branch recommender of ConCF (Kang et al., WWW'22): shared embeddings, one branch per objective.

Users and items share one embedding table each (``dim``, the authors' 64). Every branch ``h`` owns a bottom
MLP ``dim → dim/2 (ReLU, dropout) → dim/4`` (64 → 32 → 16) applied to user and item embeddings alike, and
scores a pair by its head's geometry:

- inner-product heads (BPR, BCE, MSE, user and item multinomial): s_h(u, i) = <f_h(e_u), f_h(e_i)>;
- the metric head (CML): s_h(u, i) = −‖f̄_h(e_u) − f̄_h(e_i)‖², where f̄ projects each output into the unit
  ball (x / max(1, ‖x‖)). CML projects its embedding tables after every step; here the branch output is the
  metric space, so the projection is applied in the forward pass.

The model follows the :class:`Recommender` contract through its **target** head: ``score``/``score_all``
score with that branch only, which is the model kept for inference (ConCF's claim: no extra inference cost).
``head(name)`` is a Recommender view of any other branch (sharing the parameters) for evaluation. A model
with one branch is SingleCF: the same architecture trained with a single objective.
"""

from __future__ import annotations

import torch
from torch import nn

from kdrepro.models.base import Recommender, init_embedding, pairwise_dot

OBJECTIVES = ("bpr", "cml", "bce", "mse", "user_multinomial", "item_multinomial")
METRIC_OBJECTIVES = frozenset({"cml"})  # heads scored by negative squared distance


def relu_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout(ReLU(x)) in training: each entry kept with probability 1 − ``p`` and scaled by 1/(1 − p), as
    ``nn.Dropout(p)(nn.ReLU()(x))``, with the same distribution but not the same random draws.

    ``nn.Dropout`` draws a float per entry through a Bernoulli sampler, then multiplies by a float mask (~15 ns
    per entry on one CPU thread: at ConCF's ~2.8 M hidden entries per batch, an eighth of the step). Here an
    entry is kept when a 31-bit random integer is below round((1 − p)·2³¹) (a keep probability within 2⁻³¹
    of 1 − p), two integers per 64-bit draw of the default generator (so the seed fixes the masks); the
    comparison is integer arithmetic giving an all-ones/all-zeros word, and-ed with the float's bits (no
    boolean or float mask, whose dtype conversions cost more than the draws). The backward pass reads the
    mask from the output (an entry is nonzero exactly when kept and x > 0), so nothing else is saved."""
    if p == 0.0:
        return torch.relu(x)
    if x.dtype != torch.float32:
        raise ValueError(f"relu_dropout masks float32 bits; got {x.dtype}")
    return _ReluDropout.apply(x, p)


class _ReluDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        words = torch.empty((x.numel() + 1) // 2, dtype=torch.int64, device=x.device).random_(-(2**63), None)
        draws = words.view(torch.int32)[: x.numel()].view(x.shape)
        # (draw >> 1) is uniform on [−2³⁰, 2³⁰); minus the threshold it is negative (kept) with probability
        # 1 − p, and >> 31 turns it into −1 (all bits set) when kept, 0 when dropped: no int32 overflow.
        keep = draws.bitwise_right_shift_(1).sub_(round((1.0 - p) * 2**31) - 2**30).bitwise_right_shift_(31)
        scale = 1.0 / (1.0 - p)
        out = x.clamp_min(0.0).mul_(scale)
        out.view(torch.int32).bitwise_and_(keep)  # dropped entries' bits cleared: +0.0
        ctx.save_for_backward(out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (out,) = ctx.saved_tensors
        # the gradient where the output is positive (kept and x > 0), times 1/(1 − p)
        return torch.ops.aten.threshold_backward(grad, out, 0.0).mul_(ctx.scale), None


def project_unit_ball(x: torch.Tensor) -> torch.Tensor:
    """Each row divided by max(1, its norm): rows inside the unit ball are left unchanged."""
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1.0)


class Branch(nn.Module):
    """One head's bottom MLP ``dim → hidden (ReLU, dropout) → out``; ``metric`` adds the unit-ball projection.
    ``mlp`` holds the layers (its parameter names are those of stored models); in training the ReLU and the
    dropout run as one :func:`relu_dropout`."""

    def __init__(self, dim: int, hidden: int, out: int, dropout: float, metric: bool) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out))
        self.metric = metric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, _, dropout, second = self.mlp
        if dropout.training:
            out = second(relu_dropout(first(x), dropout.p))
        else:
            out = self.mlp(x)
        return project_unit_ball(out) if self.metric else out

    def scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Branch outputs of users (B, d) against items (B, d) or (B, C, d) → (B,) or (B, C)."""
        if not self.metric:
            return pairwise_dot(users, items)
        if items.dim() == 3:
            users = users.unsqueeze(1)
        return -((users - items) ** 2).sum(-1)

    def score_matrix(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Every row output (R, d) against every column output (C, d) → (R, C)."""
        dot = rows @ cols.T
        if not self.metric:
            return dot
        return -((rows**2).sum(1, keepdim=True) - 2 * dot + (cols**2).sum(1)[None, :])


class MultiHeadCF(Recommender):
    """Shared embeddings + one :class:`Branch` per objective in ``heads``; ``target`` is the kept head."""

    def __init__(
        self,
        num_users: int,
        num_items: int,
        heads: tuple[str, ...],
        *,
        dim: int = 64,
        target: str | None = None,
        dropout: float = 0.1,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        unknown = [h for h in heads if h not in OBJECTIVES]
        if not heads or unknown or len(set(heads)) != len(heads):
            raise ValueError(f"heads={heads!r}: give distinct objectives among {OBJECTIVES}")
        target = heads[0] if target is None else target
        if target not in heads:
            raise ValueError(f"target head {target!r} is not one of heads={heads!r}")
        if dim < 4:
            raise ValueError(f"dim must be at least 4 (the branches are dim → dim/2 → dim/4), got {dim}")
        self.num_users, self.num_items, self.dim = num_users, num_items, dim
        self.heads, self.target = tuple(heads), target
        self.user_embedding = init_embedding(num_users, dim, std=init_std)
        self.item_embedding = init_embedding(num_items, dim, std=init_std)
        self.branches = nn.ModuleDict(
            {h: Branch(dim, dim // 2, dim // 4, dropout, h in METRIC_OBJECTIVES) for h in heads}
        )

    @property
    def repr_dim(self) -> int:
        return self.dim // 4

    # Any head -------------------------------------------------------------------------------------
    def head_scores(self, head: str, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Head ``head``'s scores of users (B,) with items (B,) or (B, C)."""
        branch = self.branches[head]
        return branch.scores(branch(self.user_embedding(users)), branch(self.item_embedding(items)))

    def head_score_all(self, head: str, users: torch.Tensor) -> torch.Tensor:
        """(B, num_items) scores of head ``head``."""
        branch = self.branches[head]
        return branch.score_matrix(branch(self.user_embedding(users)), branch(self.item_embedding.weight))

    def head(self, name: str) -> HeadView:
        """A :class:`Recommender` that scores with head ``name`` (parameters shared with this model)."""
        if name not in self.branches:
            raise ValueError(f"no head {name!r}; this model has {self.heads}")
        return HeadView(self, name)

    def target_parameters(self) -> int:
        """Scalars kept for inference: the embeddings and the target branch."""
        kept = [self.user_embedding.weight, self.item_embedding.weight, *self.branches[self.target].parameters()]
        return sum(p.numel() for p in kept)

    # The Recommender contract: the target head --------------------------------------------------------
    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.head_scores(self.target, users, items)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.head_score_all(self.target, users)

    def user_repr(self, users: torch.Tensor) -> torch.Tensor:
        return self.branches[self.target](self.user_embedding(users))

    def item_repr(self, items: torch.Tensor) -> torch.Tensor:
        return self.branches[self.target](self.item_embedding(items))


class HeadView(Recommender):
    """One head of a :class:`MultiHeadCF` as a Recommender (for ``evaluate`` and ranking)."""

    def __init__(self, model: MultiHeadCF, head: str) -> None:
        super().__init__()
        self.model, self.head = model, head
        self.num_users, self.num_items, self.dim = model.num_users, model.num_items, model.dim

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.model.head_scores(self.head, users, items)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.model.head_score_all(self.head, users)

    def user_repr(self, users: torch.Tensor) -> torch.Tensor:
        return self.model.branches[self.head](self.model.user_embedding(users))

    def item_repr(self, items: torch.Tensor) -> torch.Tensor:
        return self.model.branches[self.head](self.model.item_embedding(items))
