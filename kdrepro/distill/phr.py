"""PHR — Personalized Hint Regression (Kang, Lee, Kweon, Yu, "Personalized knowledge distillation for
recommender system", Knowledge-Based Systems 239, 2022).

Hint regression (FitNet) maps the student's representation h_s(x) to the teacher's h_t(x) with one
bridge shared by every user (or item). DE (:mod:`kdrepro.distill.de`) personalises it coarsely: M
bridges θ_1, …, θ_M and a one-hot selection s^x per entity,

    DE:   θ_x = Σ_m s^x_m θ_m,   s^x one-hot (Gumbel-softmax annealed to τ → 0),

which needs M, τ's schedule and a selection network to be tuned. PHR instead *generates* each entity's
own bridge from what the teacher knows about it. A personalization network P reads the teacher's
representation of x, enriched with the mean teacher representation of x's training neighbours (a user's
items, an item's users), and outputs the parameters of a bias-free linear bridge d_s → d_t:

    e_x = ( h_t(x) + mean_{y ∈ N(x)} h_t(y) ) / 2            (d_t; precomputed once)
    z_x = ReLU(W e_x + c)                                       (H hidden units)
    θ_x = reshape(A z_x + b) = Θ_0 + Σ_{h=1..H} z_{x,h} Θ_h     (d_t × d_s)
    L_PHR = Σ_x ‖h_t(x) − θ_x h_s(x)‖²

The output layer of P is a basis of bridges: its bias b = Θ_0 is a bridge shared by all entities and each
hidden unit adds its own Θ_h in proportion to z_{x,h}. Written with coefficients c_x = (1, z_x), PHR's
bridge θ_x = Σ_j c_{x,j} Θ_j is DE's with the one-hot s^x replaced by continuous, generated coefficients;
DE (with linear bridges) is the special case where c_x is restricted to one-hot vectors over M bridges
(:func:`phr_loss` with one-hot ``coefficients`` is DE's loss with the selected bridge).

The loss covers the distinct users of the batch plus 0.5 × (distinct positive items + distinct negative
items), with separate personalization networks for users and items, as DE; the total is
L_base + λ_PHR L_PHR with λ_PHR = 0.01, DE's value (PHR is claimed to need no tuning).

Architecture (the KBS paper's exact widths were not available here; see METHODS.md §4):
- Input: the paper's figure enriches the teacher representation with its neighbours' by averaging,
  e_x = (h_t(x) + neighbour mean) / 2 (an earlier version of this suite concatenated the two).
  ``enrich=False`` feeds h_t(x) alone (what the third-party HyperKDMA code actually ran).
- Hidden width H: by default (``hidden=None``) HyperKDMA's description of the paper's network,
  H = (d_t + d_t·d_s) / 2 — 2100 at 200 → 20. PHR costs n·(H + 1)·d_s·d_t multiply-adds per pass over n
  entities, unavoidably (each entity's bridge is an (H + 1)-term combination of d_t × d_s matrices): at
  H = 2100 with ~2,600 entities per CiteULike batch that is ~22 GMAC per batch forward, a GPU setting;
  a CPU run passes a smaller H (chapter 02's ``PHR_HIDDEN`` states the one it used and its measured
  epoch cost). With H + 1 ≥ M, PHR's bridge family contains DE's M linear bridges.
- Initialisation: W, c and Θ_0 as ``nn.Linear`` (Θ_0 as a d_s → d_t layer); Θ_{1..H} as ``nn.Linear``
  scaled by ``output_init_scale`` = 0.01, so every bridge starts near the shared Θ_0 (a FitNet-like
  start) and personalisation grows from there, while the hidden layer still receives gradient.

Speed: the bridges are never materialised in training when H + 1 ≤ d_t: θ_x h_s = Σ_j c_{x,j} Θ_j h_s is
one matrix product of the (n, (H + 1)·d_s) outer products c_x ⊗ h_s(x) with the stacked Θ; otherwise the
n bridges are formed by one product and applied with ``bmm``. Both give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from kdrepro.distill.base import DistillLoss, check_choice, check_positive, uniform_init

if TYPE_CHECKING:
    from kdrepro.models import Recommender
    from kdrepro.splits import Split
    from kdrepro.types import Batch, TeacherOutputs

ENTITIES = ("user", "item")


@dataclass(frozen=True)
class PHRConfig:
    lambda_phr: float = 0.01  # λ_PHR (DE's λ_DE: PHR is claimed to need no tuning)
    hidden: int | None = None  # H, hidden width of P; None → (d_t + d_t·d_s) // 2 (HyperKDMA's description)
    enrich: bool = True  # e_x = (h_t(x) + mean of h_t over x's training neighbours) / 2 (False: e_x = h_t(x))
    output_init_scale: float = 0.01  # Θ_1..Θ_H start at this fraction of nn.Linear's init: θ_x ≈ Θ_0 at first
    item_weight: float = 0.5  # weight of the item side: 0.5 × (distinct positives + distinct negatives)

    def __post_init__(self) -> None:
        check_positive(self, "output_init_scale")
        if self.hidden is not None and self.hidden < 1:
            raise ValueError(f"PHRConfig.hidden must be positive or None, got {self.hidden}")


def bridge_outputs(
    student_repr: torch.Tensor, coefficients: torch.Tensor, basis: torch.Tensor
) -> torch.Tensor:
    """f(h_s(x); θ_x) = θ_x h_s(x) with θ_x = Σ_j c_{x,j} Θ_j, for every row x.

    ``student_repr`` (n, d_s), ``coefficients`` (n, J), ``basis`` (J, d_t, d_s) → (n, d_t). When J ≤ d_t
    the n bridges are never formed: the outer products c_x ⊗ h_s(x), (n, J·d_s), times the stacked basis
    (J·d_s, d_t); otherwise the bridges (n, d_t, d_s) are formed by one product and applied with ``bmm``.
    """
    n, num_terms = coefficients.shape
    _, d_t, d_s = basis.shape
    if num_terms <= d_t:
        outer = (coefficients.unsqueeze(2) * student_repr.unsqueeze(1)).reshape(n, num_terms * d_s)
        return outer @ basis.transpose(1, 2).reshape(num_terms * d_s, d_t)
    bridges = (coefficients @ basis.reshape(num_terms, d_t * d_s)).view(n, d_t, d_s)
    return torch.bmm(bridges, student_repr.unsqueeze(2)).squeeze(2)


def phr_loss(
    teacher_repr: torch.Tensor, student_repr: torch.Tensor, coefficients: torch.Tensor, basis: torch.Tensor
) -> torch.Tensor:
    """L_PHR = Σ_x ‖h_t(x) − θ_x h_s(x)‖², θ_x = Σ_j c_{x,j} Θ_j, summed over rows and dimensions.

    ``teacher_repr`` (n, d_t), ``student_repr`` (n, d_s), ``coefficients`` (n, J), ``basis`` (J, d_t, d_s).
    PHR's coefficients are (1, z_x) from the personalization network; DE with linear bridges is the case
    of one-hot coefficients (and no shared term).
    """
    return ((teacher_repr - bridge_outputs(student_repr, coefficients, basis)) ** 2).sum()


def neighbour_means(
    rows: torch.Tensor, cols: torch.Tensor, num_rows: int, col_repr: torch.Tensor
) -> torch.Tensor:
    """(num_rows, d): the mean of ``col_repr`` over each row's columns in the pairs (rows, cols); 0 if none.

    One sparse matrix product D⁻¹ R · col_repr over the (unique) training pairs.
    """
    adjacency = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(len(rows)),
                                        (num_rows, col_repr.shape[0]), check_invariants=True).coalesce()
    degree = torch.bincount(rows, minlength=num_rows).clamp_(min=1).unsqueeze(1)
    return torch.sparse.mm(adjacency, col_repr) / degree


def enrich(own: torch.Tensor, neighbours: torch.Tensor, degree: torch.Tensor) -> torch.Tensor:
    """e_x = (h_t(x) + mean_{y ∈ N(x)} h_t(y)) / 2: the entity's teacher representation averaged with its
    neighbours' mean, (n, d_t) from (n, d_t), (n, d_t) and the (n,) neighbour counts. An entity without
    training neighbours (all its interactions held out) keeps its own representation."""
    return torch.where(degree.unsqueeze(1) > 0, (own + neighbours) / 2, own)


class PersonalizationNetwork(nn.Module):
    """P: e_x ↦ θ_x, an MLP e (d_in) → ReLU (H) → d_t·d_s whose output layer is the bridge basis.

    ``basis`` (H + 1, d_t, d_s) stacks Θ_0 (the output bias: the shared bridge) and Θ_1..Θ_H (the output
    weights, one d_t × d_s bridge per hidden unit), so that θ_x = Σ_j c_{x,j} Θ_j with c_x = (1, z_x).
    """

    def __init__(self, d_in: int, hidden: int, d_t: int, d_s: int, output_init_scale: float,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.weight = uniform_init((d_in, hidden), d_in, generator)
        self.bias = uniform_init((hidden,), d_in, generator)
        shared = uniform_init((1, d_t, d_s), d_s, generator).data  # nn.Linear(d_s, d_t)'s weight
        per_unit = uniform_init((hidden, d_t, d_s), hidden, generator).data * output_init_scale
        self.basis = nn.Parameter(torch.cat([shared, per_unit]))

    def coefficients(self, inputs: torch.Tensor) -> torch.Tensor:
        """c_x = (1, ReLU(W e_x + c)): (n, H + 1) for inputs (n, d_in)."""
        hidden = torch.relu(torch.addmm(self.bias, inputs, self.weight))
        return torch.cat([hidden.new_ones(len(hidden), 1), hidden], dim=1)

    def bridges(self, inputs: torch.Tensor) -> torch.Tensor:
        """θ_x for every row of ``inputs``: (n, d_t, d_s)."""
        num_terms, d_t, d_s = self.basis.shape
        return (self.coefficients(inputs) @ self.basis.reshape(num_terms, d_t * d_s)).view(-1, d_t, d_s)


class PHR(DistillLoss):
    Config = PHRConfig

    def __init__(
        self, config: PHRConfig, teacher: TeacherOutputs, split: Split, student_repr_dim: int, seed: int = 0
    ) -> None:
        super().__init__(seed)
        self.config = config
        d_s, d_t = student_repr_dim, teacher.user_repr.shape[1]
        hidden = config.hidden or (d_t + d_t * d_s) // 2
        user_repr, item_repr = teacher.user_repr.float(), teacher.item_repr.float()
        user_input, item_input = user_repr, item_repr
        if config.enrich:  # (h_t(x) + mean h_t of x's training neighbours) / 2, computed once
            train_users, train_items = split.train_tensors()
            user_input = enrich(user_repr, neighbour_means(train_users, train_items, split.num_users, item_repr),
                                torch.bincount(train_users, minlength=split.num_users))
            item_input = enrich(item_repr, neighbour_means(train_items, train_users, split.num_items, user_repr),
                                torch.bincount(train_items, minlength=split.num_items))
        init = torch.Generator().manual_seed(seed)
        self.networks = nn.ModuleDict({
            entity: PersonalizationNetwork(user_input.shape[1], hidden, d_t, d_s, config.output_init_scale,
                                           init)
            for entity in ENTITIES
        })
        self.register_buffer("user_repr", user_repr, persistent=False)
        self.register_buffer("item_repr", item_repr, persistent=False)
        self.register_buffer("user_input", user_input, persistent=False)
        self.register_buffer("item_input", item_input, persistent=False)

    def side_loss(self, entity: str, ids: torch.Tensor, student_repr: torch.Tensor) -> torch.Tensor:
        """Σ_x ‖h_t(x) − θ_x h_s(x)‖² over the entities ``ids`` of one side."""
        inputs = (self.user_input if entity == "user" else self.item_input).index_select(0, ids)
        teacher_repr = (self.user_repr if entity == "user" else self.item_repr).index_select(0, ids)
        network = self.networks[entity]
        return phr_loss(teacher_repr, student_repr, network.coefficients(inputs), network.basis)

    def forward(self, student: Recommender, batch: Batch) -> dict[str, torch.Tensor]:
        users = torch.unique(batch.users)
        # Positives and negatives count separately, as in DE and the HyperKDMA PHR code (an item may be in both).
        items = torch.cat([torch.unique(batch.pos), torch.unique(batch.neg)])
        user_loss = self.side_loss("user", users, student.user_repr(users))
        item_loss = self.side_loss("item", items, student.item_repr(items))
        return {"phr": self.config.lambda_phr * (user_loss + self.config.item_weight * item_loss)}

    @torch.no_grad()
    def bridges(self, entity: str = "user", ids: torch.Tensor | None = None) -> torch.Tensor:
        """The generated bridges θ_x (n, d_t, d_s) of users (or items; all when ``ids`` is None), on CPU.

        All CiteULike items at 200 → 20 take I × 4000 floats (about 400 MB): pass ``ids`` to look at a few.
        """
        check_choice("entity", entity, ENTITIES)
        inputs = self.user_input if entity == "user" else self.item_input
        if ids is not None:
            inputs = inputs[torch.as_tensor(ids, device=inputs.device)]
        return self.networks[entity].bridges(inputs).cpu()
