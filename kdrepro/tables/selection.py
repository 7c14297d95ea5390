"""DE's expert selection over training (DE-RRD Fig. 6): which expert users pick, how settled and how alike."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from kdrepro.runs import KDResults, Selection


def selection_map(
    kd: KDResults,
    base: str,
    method: str = "DE",
    epochs: Sequence[int] | None = None,
    num_users: int = 100,
    seed: int | None = None,
    sample_seed: int = 0,
    **keys,
) -> pd.DataFrame:
    """The expert each of ``num_users`` sampled users selects after each of ``epochs`` (Fig. 6).

    Rows: users, ordered by their final expert (then by earlier ones), so that converged groups form
    bands; columns: epochs of training done (each requested epoch is replaced by the nearest recorded one;
    the last recorded epoch is always included). Values: expert indices.
    """
    selection: Selection = kd.find("selections", base, method, seed, **keys)
    recorded = selection.epochs
    wanted = list(recorded) if epochs is None else [e for e in epochs if e <= recorded[-1]] + [int(recorded[-1])]
    picks = list(dict.fromkeys(int(np.abs(recorded - e).argmin()) for e in wanted))
    rng = np.random.default_rng(sample_seed)
    users = np.sort(rng.choice(selection.experts.shape[1], size=min(num_users, selection.experts.shape[1]),
                               replace=False))
    frame = pd.DataFrame(selection.experts[picks][:, users].T, index=users, columns=[int(recorded[p]) for p in picks])
    frame.index.name = "user"
    frame.columns.name = "epoch"
    return frame.sort_values(list(frame.columns[::-1]))


def selection_summary(
    kd: KDResults, base: str, method: str = "DE", seed: int | None = None, **keys
) -> pd.DataFrame:
    """Per recorded epoch, over all users: experts in use, the share of users whose expert changed since
    the previous record, the normalised entropy of expert usage (1 = every expert used equally), and how
    alike the users sharing an expert are — the mean cosine similarity of their teacher representations,
    next to that of all user pairs."""
    selection: Selection = kd.find("selections", base, method, seed, **keys)
    first_seed = seed if seed is not None else next(s for (b, m, k, s) in kd.selections if b == base and m == method)
    reprs = kd.outputs[(base, first_seed)].user_repr.double()
    unit = torch.nn.functional.normalize(reprs, dim=1)
    n = len(unit)
    all_pairs = float((unit.sum(0).pow(2).sum() - n) / (n * (n - 1)))
    num_experts = int(selection.experts.max()) + 1
    rows, previous = [], None
    for epoch, experts in zip(selection.epochs, selection.experts, strict=True):
        experts = torch.as_tensor(experts.astype(np.int64))
        counts = torch.bincount(experts, minlength=num_experts).double()
        sums = torch.zeros(num_experts, unit.shape[1], dtype=torch.float64).index_add_(0, experts, unit)
        pairs = (counts * (counts - 1)).sum()
        within = float((sums.pow(2).sum(1) - counts).sum() / pairs) if pairs > 0 else np.nan
        share = counts[counts > 0] / n
        entropy = float(-(share * share.log()).sum() / np.log(num_experts)) if num_experts > 1 else np.nan
        rows.append({
            "epoch": int(epoch), "experts_used": int((counts > 0).sum()),
            "changed": float((experts != previous).double().mean()) if previous is not None else np.nan,
            "usage_entropy": entropy, "within_expert_cosine": within, "all_pairs_cosine": all_pairs,
        })
        previous = experts
    return pd.DataFrame(rows)
