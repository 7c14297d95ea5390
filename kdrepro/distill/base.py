"""The contract every knowledge-distillation method follows, and helpers they share.

A method is built from its frozen config and the teacher's cached outputs (never the teacher model),
and plugs into :func:`kdrepro.train.fit` as ``distill``: each batch ``fit`` calls
``method(student, batch)`` and adds the returned terms to the student's base loss; at each epoch start
it calls ``method.on_epoch_start(epoch, generator)``. Trainable parameters of a method (DE's experts)
are optimised together with the student by the same Adam.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kdrepro.models import Recommender
from kdrepro.types import Batch, TeacherOutputs


class DistillLoss(nn.Module):
    """Base class of the distillation methods.

    - ``__init__(config, teacher, split, student_repr_dim, seed=0)``: every method takes the same
      arguments so that the registry can build any of them; ``seed`` fixes the initialisation of the
      method's own parameters (DE) and its sampling before ``fit`` hands over its generator.
    - ``forward(student, batch)`` → ``{name: term}``: named scalar terms, each already multiplied by
      its λ and summed (not averaged) over the batch, as in the authors' code.
    - ``on_epoch_start(epoch, generator)``: per-epoch sampling or annealing; ``epoch`` counts from 1
      as in ``fit``, and every random draw uses ``generator``.

    Teacher tensors are registered as non-persistent buffers: ``.to(device)`` moves them with the
    method, and they never enter a checkpoint.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, student: Recommender, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, generator: torch.Generator) -> None:
        """Adopt ``fit``'s generator so that one seed fixes the whole run."""
        self.generator = generator


def unique_in_batch(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct users, positive items and negative items of a batch (each sorted)."""
    return torch.unique(batch.users), torch.unique(batch.pos), torch.unique(batch.neg)


def uniform_init(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> nn.Parameter:
    """U(−1/√fan_in, 1/√fan_in), the default initialisation of ``nn.Linear``, from an explicit generator."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter((torch.rand(shape, generator=generator) * 2 - 1) * bound)


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Standard Gumbel draws −log(−log U) on the CPU (U kept away from 0 so that no draw is infinite)."""
    uniform = torch.rand(shape, generator=generator).clamp_(min=1e-20)
    return uniform.log_().neg_().log_().neg_()  # in place: no temporaries as large as the draws


def gumbel_top_k(log_weights: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Per row, ``k`` column indices drawn without replacement with P ∝ exp(log_weights).

    The Gumbel top-k trick: the ``k`` largest of log-weight + Gumbel noise are a sample without
    replacement. Returned in order of decreasing key (not sorted by column).
    """
    keys = gumbel_noise(tuple(log_weights.shape), generator).to(log_weights.device).add_(log_weights)
    return keys.topk(k, dim=1).indices


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; choose one of {choices}")


def check_positive(config: object, *names: str) -> None:
    for name in names:
        if getattr(config, name) <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be positive, got {getattr(config, name)}")


def teacher_topk(teacher: TeacherOutputs, n: int, who: str) -> torch.Tensor:
    """The first ``n`` columns of the teacher's per-user ranking, or a clear error when it is shorter."""
    available = teacher.user_topk.shape[1]
    if n > available:
        raise ValueError(
            f"{who} needs the teacher's top-{n} items per user, but the teacher outputs hold only "
            f"{available}; compute them with top_n >= {n} or lower {who}'s top_n."
        )
    return teacher.user_topk[:, :n]
