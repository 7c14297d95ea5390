"""Training cost of a distillation method: seconds of one ``fit`` epoch of a BPR student with it.

Used by ``python -m kdrepro.benchmark`` (``rrd_epoch_s``, ``de_epoch_s``). On a 2-core CPU the authors'
code took 6–9 s per epoch with RRD and 39–45 s with DE on CiteULike (student dim 20, teacher 200).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdrepro.distill import build
from kdrepro.models import ModelConfig
from kdrepro.train import TrainConfig, fit

if TYPE_CHECKING:
    from kdrepro.splits import Split
    from kdrepro.types import TeacherOutputs


def epoch_seconds(
    method: str,
    split: Split,
    teacher_outputs: TeacherOutputs,
    *,
    repeats: int = 2,
    student_dim: int = 20,
    device: str = "cpu",
    seed: int = 0,
    **configs: object,
) -> float:
    """The best of ``repeats`` training epochs after a first one (which pays one-off allocations).

    ``method`` is a registry spec ("rrd", "de", "de+rrd", …) or "" for the student without distillation;
    ``configs`` are per-method overrides as for :func:`kdrepro.distill.build`. The time is ``fit``'s
    ``train_s``: the epoch's sampling, forward and backward passes and optimiser steps, no validation.
    DE's cost depends on τ: near τ = 1 every expert runs on every entity; once the Gumbel-softmax is
    one-hot, one expert per entity does (``de={"anneal_epochs": 1}`` times that regime from epoch 1).
    """
    distill = build(method, teacher_outputs, split, student_dim, seed=seed, **configs) if method else None
    config = TrainConfig(epochs=repeats + 1, eval_every=10**6, patience=0, device=device, progress=False)
    result = fit(ModelConfig("bpr", student_dim), split, config, distill=distill, seed=seed)
    return min(h["train_s"] for h in result.history[1:])
