"""Plain data types shared by training and distillation (imports nothing of kdrepro).

- :class:`Batch`: what :func:`kdrepro.train.fit` hands to a distillation module each step.
- :class:`TeacherOutputs`: everything a student may learn from its teacher (the teacher model itself
  never reaches a distillation loss). Saving and verifying them is :mod:`kdrepro.store`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch


@dataclass
class Batch:
    """One training batch: ``users`` (B,), ``pos`` (B,), ``neg`` (B, num_negatives)."""

    users: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor
    epoch: int


@dataclass(frozen=True, eq=False)
class TeacherOutputs:
    """What a teacher hands to its students (all on CPU; methods move what they need).

    - ``user_topk`` (U, N): items ranked best first by the teacher, training items excluded.
    - ``user_topk_scores`` (U, N): the teacher's scores of those items (CD's soft labels).
    - ``item_topk`` (I, N_u): users ranked best first for each item, training users excluded.
    - ``user_repr`` (U, d_t), ``item_repr`` (I, d_t): the representations latent KD regresses to.
    """

    user_topk: torch.Tensor
    user_topk_scores: torch.Tensor
    item_topk: torch.Tensor
    user_repr: torch.Tensor
    item_repr: torch.Tensor

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name).numpy() for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> TeacherOutputs:
        missing = [f.name for f in fields(cls) if f.name not in arrays]
        if missing:
            raise ValueError(f"teacher outputs lack the arrays {missing}")
        return cls(**{f.name: torch.from_numpy(np.asarray(arrays[f.name])) for f in fields(cls)})
