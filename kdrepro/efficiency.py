"""Efficiency measurements: parameter counts, time to recommend for all users, and how busy the machine was.

A timing taken while other processes use the cores is inflated (a campaign's fits beside a render made
chapter 04's top-50 times 1.8–2.1× slower), so every timing carries :class:`CPUContention`'s reading of the
cores other processes kept busy meanwhile, and the tables show it beside their seconds.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import psutil
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


#: The column of the timing tables that holds :attr:`Timing.other_cores_busy`.
CONTENTION_COLUMN = "other_cores_busy"
#: Other processes' load (cores) under which a timing counts as taken on an idle machine: a shell, the
#: render's driver and the kernel's own helpers together stay below it.
IDLE_OTHER_CORES = 0.2


def machine_busy_seconds() -> float:
    """CPU seconds every process of the machine has spent busy since boot: psutil's system CPU times less
    idle and I/O wait (Linux's guest times are inside its user times already, so left out)."""
    times = psutil.cpu_times()._asdict()
    idle = {"idle", "iowait", "guest", "guest_nice"}
    return float(sum(v for k, v in times.items() if k not in idle))


class CPUContention:
    """``with CPUContention() as c: ...`` then ``c.other_cores``: the cores other processes kept busy, on
    average, while the block ran — the machine's busy CPU seconds (:func:`machine_busy_seconds`) less this
    process's (every thread), over the wall seconds. System CPU times tick every 10 ms or so: a block
    shorter than about a second reads coarsely."""

    def __init__(self) -> None:
        self.other_cores = math.nan

    def __enter__(self) -> CPUContention:
        self._start = (time.perf_counter(), time.process_time(), machine_busy_seconds())
        return self

    def __exit__(self, *exc_info: object) -> None:
        wall, own, busy = (time.perf_counter(), time.process_time(), machine_busy_seconds())
        elapsed = wall - self._start[0]
        others = (busy - self._start[2]) - (own - self._start[1])
        self.other_cores = max(0.0, others / elapsed) if elapsed > 0 else math.nan


@dataclass(frozen=True)
class Timing:
    """A best-of-repeats time and the cores other processes kept busy while it was measured."""

    seconds: float
    other_cores_busy: float


@torch.no_grad()
def time_recommend_all(
    model: nn.Module, split: Split, top_n: int = 50, *, batch_size: int = 1024, repeats: int = 3
) -> Timing:
    """Best-of-``repeats`` wall seconds to produce top-``top_n`` lists (training items masked) for all users,
    with the cores other processes kept busy over all passes (:class:`CPUContention`).

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

    with CPUContention() as contention:
        one_pass()
        seconds = min(one_pass() for _ in range(repeats))
    return Timing(seconds, contention.other_cores)
