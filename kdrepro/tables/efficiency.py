"""Efficiency: parameters and the time to recommend to every user, per student size (DE-RRD Table 3, TD Fig. 4).

Parameters and time depend only on the architecture: both are measured on freshly built models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from kdrepro.efficiency import CONTENTION_COLUMN, count_parameters, time_recommend_all
from kdrepro.models import ModelConfig
from kdrepro.models import build as build_model
from kdrepro.paper import PAPER_BASES, PAPER_DATASETS, load_table
from kdrepro.splits import Split
from kdrepro.train import resolve_device


def efficiency_table(
    results: pd.DataFrame,
    split: Split,
    teacher_dims: Mapping[str, int],
    phis: Sequence[float],
    method: str = "DE-RRD",
    metric: str = "HR@5",
    paper_table: str = "derrd_table3_efficiency",
    top_n: int = 50,
    repeats: int = 3,
    device: str = "auto",
) -> pd.DataFrame:
    """DE-RRD's Table 3: per base model and student size φ, #parameters, the time to recommend top-``top_n``
    items to every user, and ``method``'s ``metric`` as a fraction of the teacher's.

    ``results``: long form with the ``"Teacher"`` rows and ``method`` rows keyed by ``phi``
    (:func:`size_runs`); a φ without such rows gets no ratio. Parameters and time depend only on the
    architecture, so they are measured on a freshly built model of each size (φ = 1 is the teacher's
    size), best of ``repeats`` on ``device``, with the cores other processes kept busy meanwhile. The
    paper's seconds come from the authors' hardware: compare how time scales with φ, not the values.
    """
    paper = load_table(paper_table)
    dataset = PAPER_DATASETS.get(split.dataset.lower(), split.dataset)
    rows_metric = results[results["metric"] == metric]
    rows = []
    for base in teacher_dims:
        if not (results["base"] == base).any():
            continue
        of_base = rows_metric[rows_metric["base"] == base]
        teacher_value = of_base[of_base["method"] == "Teacher"]["value"].mean()
        ours = of_base[of_base["method"] == method]
        for phi in phis:
            dim = max(1, round(phi * teacher_dims[base]))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = build_model(ModelConfig(base, dim), split).to(resolve_device(device))
            value = ours[np.isclose(ours["phi"], phi)]["value"].mean() if "phi" in ours else np.nan
            timing = time_recommend_all(model, split, top_n, repeats=repeats)
            match = paper[(paper["dataset"] == dataset) & (paper["base"] == PAPER_BASES.get(base, base))
                          & np.isclose(paper["phi"], phi)]
            rows.append({
                "base": base, "phi": float(phi), "dim": dim,
                "parameters_millions": count_parameters(model) / 1e6,
                "paper_parameters_millions": match["params_millions"].iloc[0] if len(match) else np.nan,
                "seconds_all_users": timing.seconds,
                "paper_seconds_all_users": match["seconds_all_users"].iloc[0] if len(match) else np.nan,
                CONTENTION_COLUMN: timing.other_cores_busy,
                f"{method} {metric}": value, "ratio_to_teacher": value / teacher_value,
                "paper_ratio_to_teacher": match["hr5_ratio_to_teacher"].iloc[0] if len(match) else np.nan,
            })
    return pd.DataFrame(rows)


def inference_times(
    split: Split,
    bases: Sequence[str],
    teacher_dims: Mapping[str, int],
    phis: Sequence[float],
    top_n: int = 50,
    repeats: int = 3,
    device: str = "auto",
) -> pd.DataFrame:
    """TD's Fig. 4: per base model of ``bases`` and student size φ, the wall seconds to recommend top-``top_n`` items to
    every user (best of ``repeats``; training items masked) and the number of parameters.

    Time depends only on the architecture, so it is measured on a freshly built model of each size.
    Long form for :func:`kdrepro.report.sweep_plot`: ``base, method ("Student"; φ = 1 is the teacher's
    size), phi, dim, parameters, seed (0), metric ("seconds"), value, other_cores_busy`` (what other
    processes used meanwhile, :data:`kdrepro.efficiency.CONTENTION_COLUMN`).
    """

    rows = []
    for base in bases:
        for phi in phis:
            dim = max(1, round(phi * teacher_dims[base]))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # weights do not matter for timing; a fixed draw keeps runs alike
                model = build_model(ModelConfig(base, dim), split).to(resolve_device(device))
            timing = time_recommend_all(model, split, top_n, repeats=repeats)
            rows.append({"base": base, "method": "Student", "phi": float(phi), "dim": dim,
                         "parameters": count_parameters(model), "seed": 0, "metric": "seconds",
                         "value": timing.seconds, CONTENTION_COLUMN: timing.other_cores_busy})
    return pd.DataFrame(rows)
