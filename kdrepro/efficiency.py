"""Efficiency measurements: parameter counts and time to recommend for all users."""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from kdrepro.evaluate import rank_full
from kdrepro.splits import Split
from kdrepro.train import PLAN_FILE_ENV


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars (embedding tables included)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_recommend_all(
    model: nn.Module, split: Split, top_n: int = 50, *, batch_size: int = 1024, repeats: int = 3
) -> float:
    """Best-of-``repeats`` wall seconds to produce top-``top_n`` lists (training items masked) for all users.

    Runs on the model's current device (CPU or CUDA); one untimed warm-up pass first. Refused while a
    chapter is executed to enumerate its fits (``--plan``): a timing fits nothing, and NeuMF's lists for all
    users take minutes.
    """
    if os.environ.get(PLAN_FILE_ENV):
        raise RuntimeError(f"planning mode ({PLAN_FILE_ENV} is set): fits are enumerated, timings not measured")
    device = next(model.parameters()).device
    model.eval()

    def one_pass() -> float:
        _synchronize(device)
        start = time.perf_counter()
        for _ in rank_full(model, split, "train", top_k=top_n, batch_size=batch_size):
            pass
        _synchronize(device)
        return time.perf_counter() - start

    one_pass()
    return min(one_pass() for _ in range(repeats))
