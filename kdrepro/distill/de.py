"""DE — Distillation Experts (Kang et al., "DE-RRD: A Knowledge Distillation Framework for Recommender
System", CIKM'20, Eq. 3–6).

M experts E_m (MLP d_s → (d_s + d_t)/2 → d_t, ReLU) map the student's representation h_s(x) towards the
teacher's h_t(x). A selection network reads the teacher's representation and gives α^x = softmax(W h_t(x)
+ b); one expert is chosen per entity by a Gumbel-softmax relaxation

    s^x = softmax((log(α^x + 1e-10) + g) / τ),   g ~ Gumbel(0, 1),   τ = τ_end^(epoch / anneal_epochs),

so τ anneals from 1 towards τ_end = 1e-10 and s^x becomes one-hot. The loss is

    L_DE = Σ_x ‖h_t(x) − Σ_m s^x_m E_m(h_s(x))‖²,

over the distinct users of the batch plus 0.5 × (distinct positive items + distinct negative items), with
separate experts and selection networks for users and items (authors' code); total L_base + λ_DE L_DE.

Design-choice variants (Table 4): ``selection="attention"`` uses α^x itself (a softmax mixture, no
sampling); ``num_experts=1`` with ``expert_hidden`` gives "one small expert" (default width) or "one
large expert" (e.g. ``expert_hidden = 30 × 110`` to match the parameters of 30 experts).

Speed: the mixture only evaluates the (entity, expert) pairs with a non-zero weight. Once τ is small the
Gumbel-softmax underflows to exact zeros, so this is exact (a zero weight contributes nothing to the value
nor to any gradient) and the cost falls from M experts per entity to about one. With the default schedule
(M = 30, 1000 annealing epochs) every expert still runs on every entity up to epoch ~130 (τ ≈ 0.05), as in
the authors' code; about 15 do at epoch 150, 2–3 at epoch 200 and one from epoch ~300 on. The kernels are
in :mod:`kdrepro.distill._kernels`. Two approximations are config options, off by default (exact fp32):
``precision="bf16"`` (the dense phase's products in bfloat16) and ``min_weight=ε`` (experts with s^x_m < ε
skipped, which reaches the one-expert regime earlier).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from kdrepro.distill._kernels import DENSE_FROM, NEGLIGIBLE_WEIGHT, bf16_supported, dense_mixture, sparse_mixture
from kdrepro.distill.base import DistillLoss, check_choice, check_positive, gumbel_noise, uniform_init

if TYPE_CHECKING:
    from kdrepro.models import Recommender
    from kdrepro.splits import Split
    from kdrepro.types import Batch, TeacherOutputs

SELECTIONS = ("gumbel", "attention")
PRECISIONS = ("fp32", "bf16")
ENTITIES = ("user", "item")


@dataclass(frozen=True)
class DEConfig:
    lambda_de: float = 0.01  # λ_DE
    num_experts: int = 30  # M
    expert_hidden: int | None = None  # hidden width of each E_m; None → (d_s + d_t) // 2
    selection: str = "gumbel"  # "gumbel": s = Gumbel-softmax(log α / τ) (paper); "attention": s = α
    tau_end: float = 1e-10  # τ after annealing; τ_epoch = tau_end ** min(epoch / anneal_epochs, 1)
    anneal_epochs: int = 1000  # epochs over which τ goes from 1 to tau_end (authors: the maximum epochs)
    item_weight: float = 0.5  # weight of the item side: 0.5 × (distinct positives + distinct negatives)
    # Speed options (approximations; the defaults are exact, see ExpertBank):
    precision: str = "fp32"  # dense expert products: "fp32" (exact) | "bf16" (where the device has it)
    min_weight: float = 0.0  # ε: experts whose selection weight s^x_m < ε are skipped (0: none)

    def __post_init__(self) -> None:
        check_choice("DEConfig.selection", self.selection, SELECTIONS)
        check_choice("DEConfig.precision", self.precision, PRECISIONS)
        if not 0.0 <= self.min_weight < 1.0:
            raise ValueError(f"DEConfig.min_weight must lie in [0, 1), got {self.min_weight}")
        check_positive(self, "num_experts", "tau_end", "anneal_epochs")
        if self.expert_hidden is not None and self.expert_hidden < 1:
            raise ValueError(f"DEConfig.expert_hidden must be positive or None, got {self.expert_hidden}")


def de_loss(teacher_repr: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Σ_x ‖h_t(x) − Σ_m s^x_m E_m(h_s(x))‖²: both (n, d_t); summed over entities and dimensions."""
    return ((teacher_repr - reconstruction) ** 2).sum()


def expert_selection(alpha: torch.Tensor, tau: float, noise: torch.Tensor | None) -> torch.Tensor:
    """The selection weights s (n, M) from the selection network's α (n, M).

    With Gumbel ``noise`` (n, M): softmax((log(α + 1e-10) + g) / τ); without: α itself (attention).
    """
    if noise is None:
        return alpha
    return torch.softmax((torch.log(alpha + 1e-10) + noise) / tau, dim=1)


class ExpertBank(nn.Module):
    """M two-layer experts E_m(h) = W2_m ReLU(W1_m h + b1_m) + b2_m, stored as stacked tensors.

    ``forward(h, selection)`` returns Σ_m s_m E_m(h) per row. While most weights are non-zero (τ near 1,
    or attention) every expert runs on every row (:func:`~kdrepro.distill._kernels.dense_mixture`); once the
    selection is sparse only the (row, expert) pairs with a non-zero weight are evaluated
    (:func:`~kdrepro.distill._kernels.sparse_mixture`). Both are exact: a zero weight contributes nothing to
    the value nor to any gradient; weights below 2^-64 count as zero (``NEGLIGIBLE_WEIGHT``: no float32 sum
    changes, and no subnormal number reaches the products). Two approximations are options, off by default:

    - ``precision="bf16"``: the dense mixture's products in bfloat16 with fp32 accumulation, on devices with
      native bfloat16 products (others keep float32);
    - ``min_weight=ε > 0``: weights below ε are set to 0 (those experts are skipped). A dropped expert's
      term is s_m E_m(h) with s_m < ε, so the output and every gradient move by O(ε) per dropped pair.
    """

    def __init__(
        self,
        num_experts: int,
        dims: tuple[int, int, int],
        generator: torch.Generator,
        precision: str = "fp32",
        min_weight: float = 0.0,
    ) -> None:
        super().__init__()
        check_choice("precision", precision, PRECISIONS)
        d_in, hidden, d_out = dims
        self.w1 = uniform_init((num_experts, d_in, hidden), d_in, generator)
        self.b1 = uniform_init((num_experts, hidden), d_in, generator)
        self.w2 = uniform_init((num_experts, hidden, d_out), hidden, generator)
        self.b2 = uniform_init((num_experts, d_out), hidden, generator)
        self.precision, self.min_weight = precision, min_weight

    def expert(self, m: int, h: torch.Tensor) -> torch.Tensor:
        """E_m(h) for every row of ``h`` (the plain definition; used to check ``forward``)."""
        return torch.relu(h @ self.w1[m] + self.b1[m]) @ self.w2[m] + self.b2[m]

    def forward(self, h: torch.Tensor, selection: torch.Tensor) -> torch.Tensor:
        # Weights below NEGLIGIBLE_WEIGHT change no float32 sum but would put subnormal numbers in the products.
        selection = selection * (selection.detach() >= max(self.min_weight, NEGLIGIBLE_WEIGHT))
        weights = (self.w1, self.b1, self.w2, self.b2)
        dtype = torch.bfloat16 if self.precision == "bf16" and bf16_supported(h.device) else torch.float32
        if int(torch.count_nonzero(selection.detach())) >= DENSE_FROM[dtype] * selection.numel():
            return dense_mixture(h, selection, *weights, dtype)
        return sparse_mixture(h, selection, *weights)


class DE(DistillLoss):
    Config = DEConfig

    def __init__(
        self, config: DEConfig, teacher: TeacherOutputs, split: Split, student_repr_dim: int, seed: int = 0
    ) -> None:
        super().__init__(seed)
        self.config = config
        d_s, d_t = student_repr_dim, teacher.user_repr.shape[1]
        # The authors' code narrows the hidden layer to d_s / 2 when student and teacher widths match.
        default_hidden = d_s // 2 if d_s == d_t else (d_s + d_t) // 2
        dims = (d_s, config.expert_hidden or default_hidden, d_t)
        init = torch.Generator().manual_seed(seed)
        self.experts = nn.ModuleDict({
            e: ExpertBank(config.num_experts, dims, init, config.precision, config.min_weight) for e in ENTITIES
        })
        # The selection networks Linear(d_t → M) + softmax, one per side.
        m = config.num_experts
        self.gate_weight = nn.ParameterDict({e: uniform_init((d_t, m), d_t, init) for e in ENTITIES})
        self.gate_bias = nn.ParameterDict({e: uniform_init((m,), d_t, init) for e in ENTITIES})
        self.register_buffer("user_repr", teacher.user_repr, persistent=False)
        self.register_buffer("item_repr", teacher.item_repr, persistent=False)
        self.tau = 1.0

    def alpha(self, entity: str, teacher_repr: torch.Tensor) -> torch.Tensor:
        """The selection network's distribution α^x (n, M) over experts."""
        return torch.softmax(teacher_repr @ self.gate_weight[entity] + self.gate_bias[entity], dim=1)

    def on_epoch_start(self, epoch: int, generator: torch.Generator) -> None:
        super().on_epoch_start(epoch, generator)
        self.tau = self.config.tau_end ** min(epoch / self.config.anneal_epochs, 1.0)

    def side_loss(self, entity: str, ids: torch.Tensor, student_repr: torch.Tensor) -> torch.Tensor:
        """Σ_x ‖h_t(x) − Σ_m s^x_m E_m(h_s(x))‖² over the entities ``ids``, with fresh Gumbel noise."""
        # index_select, not advanced indexing: the same rows, 2x faster on CPU for these (n, 200) gathers.
        teacher_repr = (self.user_repr if entity == "user" else self.item_repr).index_select(0, ids)
        return de_loss(teacher_repr, self.mix(entity, self.alpha(entity, teacher_repr), student_repr))

    def mix(self, entity: str, alpha: torch.Tensor, student_repr: torch.Tensor) -> torch.Tensor:
        """Σ_m s^x_m E_m(h_s(x)) given the selection network's α^x (rows of ``student_repr``)."""
        noise = None
        if self.config.selection == "gumbel":
            noise = gumbel_noise(tuple(alpha.shape), self.generator).to(alpha.device)
        return self.experts[entity](student_repr, expert_selection(alpha, self.tau, noise))

    def forward(self, student: Recommender, batch: Batch) -> dict[str, torch.Tensor]:
        users = torch.unique(batch.users)
        # Positives and negatives count separately, as in the authors' code (an item may be in both).
        items = torch.cat([torch.unique(batch.pos), torch.unique(batch.neg)])
        user_loss = self.side_loss("user", users, student.user_repr(users))
        item_loss = self.side_loss("item", items, student.item_repr(items))
        return {"de": self.config.lambda_de * (user_loss + self.config.item_weight * item_loss)}

    @torch.no_grad()
    def selection_map(self, entity: str = "user") -> torch.Tensor:
        """The expert each user (or item) is assigned to now: argmax_m α^x_m, a CPU (U,) or (I,) tensor."""
        check_choice("entity", entity, ENTITIES)
        teacher_repr = self.user_repr if entity == "user" else self.item_repr
        return self.alpha(entity, teacher_repr).argmax(dim=1).cpu()
