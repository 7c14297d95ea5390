"""FitNet — hint regression (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR'15), as the
latent-knowledge baseline of DE-RRD (CIKM'20), PHR (KBS'22) and Topology Distillation (KDD'21).

One regressor f per side maps the student's representation into the teacher's space and the student is
pulled towards the teacher's representation (the "hint"):

    L_FitNet = Σ_x ‖h_t(x) − f(h_s(x))‖²,

over the distinct users of the batch plus ``item_weight`` × (distinct positive items + distinct negative
items), the entity sets of DE; total L_base + λ L_FitNet with λ = 0.01 (DE's λ_DE, the papers' FitNet
baselines are tuned around it). f is linear (W h + b) or an MLP d_s → (d_s + d_t)/2 → d_t with ReLU, the
architecture of one DE expert; with ``regressor="mlp"`` FitNet equals DE with a single expert.
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

REGRESSORS = ("linear", "mlp")


@dataclass(frozen=True)
class FitNetConfig:
    lambda_fitnet: float = 0.01  # λ
    regressor: str = "mlp"  # f: "linear" (W h + b) or "mlp" (d_s → hidden → d_t, ReLU)
    hidden: int | None = None  # hidden width of the MLP; None → (d_s + d_t) // 2
    item_weight: float = 0.5  # weight of the item side: 0.5 × (distinct positives + distinct negatives)

    def __post_init__(self) -> None:
        check_choice("FitNetConfig.regressor", self.regressor, REGRESSORS)
        check_positive(self, "lambda_fitnet")
        if self.hidden is not None and self.hidden < 1:
            raise ValueError(f"FitNetConfig.hidden must be positive or None, got {self.hidden}")


def hint_regression_loss(teacher_repr: torch.Tensor, regressed: torch.Tensor) -> torch.Tensor:
    """Σ_x ‖h_t(x) − f(h_s(x))‖²: both (n, d_t); summed over entities and dimensions."""
    return (teacher_repr - regressed).square().sum()


class Regressor(nn.Module):
    """f: ``h W + b`` (``hidden=None``) or ``ReLU(h W1 + b1) W2 + b2``, initialised from ``generator``."""

    def __init__(self, d_in: int, d_out: int, hidden: int | None, generator: torch.Generator) -> None:
        super().__init__()
        widths = [d_in, d_out] if hidden is None else [d_in, hidden, d_out]
        layers = list(zip(widths[:-1], widths[1:], strict=True))
        self.weights = nn.ParameterList(uniform_init((a, b), a, generator) for a, b in layers)
        self.biases = nn.ParameterList(uniform_init((b,), a, generator) for a, b in layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.addmm(bias, torch.relu(h) if layer else h, weight)
        return h


class FitNet(DistillLoss):
    Config = FitNetConfig

    def __init__(
        self,
        config: FitNetConfig,
        teacher: TeacherOutputs,
        split: Split,
        student_repr_dim: int,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.config = config
        d_s, d_t = student_repr_dim, teacher.user_repr.shape[1]
        hidden = None if config.regressor == "linear" else config.hidden or (d_s + d_t) // 2
        init = torch.Generator().manual_seed(seed)
        self.regressors = nn.ModuleDict({e: Regressor(d_s, d_t, hidden, init) for e in ("user", "item")})
        self.register_buffer("user_repr", teacher.user_repr, persistent=False)
        self.register_buffer("item_repr", teacher.item_repr, persistent=False)

    def forward(self, student: Recommender, batch: Batch) -> dict[str, torch.Tensor]:
        users = torch.unique(batch.users)
        # Positives and negatives count separately, as DE does (an item may be in both).
        items = torch.cat([torch.unique(batch.pos), torch.unique(batch.neg)])
        regressors = self.regressors
        user_loss = hint_regression_loss(self.user_repr[users], regressors["user"](student.user_repr(users)))
        item_loss = hint_regression_loss(self.item_repr[items], regressors["item"](student.item_repr(items)))
        return {"fitnet": self.config.lambda_fitnet * (user_loss + self.config.item_weight * item_loss)}
