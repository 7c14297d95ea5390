"""How much of the teacher's relational knowledge a student holds (Topology Distillation, Kang et al.,
KDD'21, Fig. 8).

For an anchor entity x and a set C_x of other entities of the same kind, each model defines a
distribution over C_x from its representation similarities,

    p_x(c) = softmax_{c ∈ C_x}( cos(h(x), h(c)) / T ),

and the gap between teacher and student is KL(p^t_x ‖ p^s_x), averaged over anchors. Two kinds of C_x:
the ``k`` entities most similar to x *by the teacher* (the neighbourhood that topology distillation
is meant to preserve) and ``k`` entities drawn uniformly at random (the global structure). The paper
shows the KL for both sets and every method; it does not state how similarities become distributions,
so the cosine-softmax with temperature ``T`` is this suite's choice (cosine is the similarity FTD/HTD
match; ``T`` sharpens distributions over cosines in [−1, 1], which are near-uniform at T = 1).

Everything is batched over anchors (no Python loop over entities); anchors are a sample drawn by an
explicit generator (all entities when ``num_anchors`` is at least their number).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

SETS = ("top", "random")
SIDES = ("user", "item")


def sample_anchors(num_entities: int, num_anchors: int, generator: torch.Generator) -> torch.Tensor:
    """``num_anchors`` distinct entity ids drawn uniformly (all of them, in order, when there are fewer)."""
    if num_anchors < 1:
        raise ValueError(f"num_anchors must be at least 1, got {num_anchors}")
    if num_anchors >= num_entities:
        return torch.arange(num_entities)
    return torch.randperm(num_entities, generator=generator)[:num_anchors].sort().values


def neighbour_sets(
    teacher_repr: torch.Tensor,
    anchors: torch.Tensor,
    k: int,
    generator: torch.Generator,
    batch_size: int = 1024,
) -> dict[str, torch.Tensor]:
    """Per anchor, ``k`` other entities: ``"top"`` — the most cosine-similar by the teacher;
    ``"random"`` — uniform without replacement. Both exclude the anchor; (A, k) int64 each.

    Random sets are drawn as the top-k of uniform keys (sampling without replacement, batched).
    """
    n = teacher_repr.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in 1..{n - 1} (entities other than the anchor), got {k}")
    unit = F.normalize(teacher_repr.float(), dim=1)
    top, random = [], []
    for chunk in anchors.split(batch_size):
        rows = torch.arange(len(chunk))
        similar = unit[chunk] @ unit.T
        similar[rows, chunk] = -torch.inf  # never the anchor itself
        top.append(similar.topk(k, dim=1).indices)
        keys = torch.rand(len(chunk), n, generator=generator)
        keys[rows, chunk] = -1.0
        random.append(keys.topk(k, dim=1).indices)
    return {"top": torch.cat(top), "random": torch.cat(random)}


def similarity_distribution(
    representation: torch.Tensor, anchors: torch.Tensor, candidates: torch.Tensor, temperature: float
) -> torch.Tensor:
    """log p_x over each anchor's candidates: log-softmax of cos(h(x), h(c)) / T, shape (A, k)."""
    unit = F.normalize(representation.double(), dim=1)
    cosine = torch.einsum("ad,akd->ak", unit[anchors], unit[candidates])
    return F.log_softmax(cosine / temperature, dim=1)


def relational_kl(
    teacher_repr: torch.Tensor,
    student_repr: torch.Tensor,
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    temperature: float = 0.1,
) -> torch.Tensor:
    """KL(p^t_x ‖ p^s_x) per anchor (A,), over each anchor's ``candidates`` (A, k).

    Zero when the student's similarities equal the teacher's (e.g. the student is the teacher, or any
    rotation or positive rescaling of it); the dimensions of the two representations may differ.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_p = similarity_distribution(teacher_repr, anchors, candidates, temperature)
    log_q = similarity_distribution(student_repr, anchors, candidates, temperature)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


@torch.no_grad()
def _representations(model: torch.nn.Module, side: str) -> torch.Tensor:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    if side == "user":
        reprs = model.user_repr(torch.arange(model.num_users, device=device))
    else:
        reprs = model.item_repr(torch.arange(model.num_items, device=device))
    model.train(was_training)
    return reprs.float().cpu()


def relational_gap(
    models: Mapping[tuple, torch.nn.Module],
    methods: Sequence[str],
    k: int = 100,
    num_anchors: int = 2000,
    temperature: float = 0.1,
    sides: Sequence[str] = SIDES,
    seed: int = 0,
) -> pd.DataFrame:
    """The relational gap of every trained model of ``methods`` to the teacher of its base and seed.

    ``models``: ``{(base, method, keys, seed): model}`` as :class:`kdrepro.runs.KDResults.models`,
    holding each (base, seed)'s ``"Teacher"`` (runs with extra keys are skipped). The anchors and both
    candidate sets are drawn once per (base, seed, side) with a generator seeded by ``seed`` and shared by
    every method, so methods are compared on the same entities. Returns long form ``base, method, seed,
    side, set, k, kl_mean, kl_median, anchors`` (``set``: ``"top"`` or ``"random"``).
    """
    bad = [s for s in sides if s not in SIDES]
    if bad:
        raise ValueError(f"unknown sides {bad}; choose from {SIDES}")
    # Keys first: only the models used are loaded (KDResults.models loads, or refits, on access).
    teachers = {(b, s): models[(b, meth, keys, s)] for (b, meth, keys, s) in models if meth == "Teacher" and not keys}
    rows = []
    for (base, run_seed), teacher in teachers.items():
        for side in sides:
            teacher_repr = _representations(teacher, side)
            generator = torch.Generator().manual_seed(seed)
            anchors = sample_anchors(len(teacher_repr), num_anchors, generator)
            sets = neighbour_sets(teacher_repr, anchors, k, generator)
            for b, method, keys, s in models:
                if (b, s) != (base, run_seed) or method not in methods or keys:
                    continue
                student_repr = _representations(models[(b, method, keys, s)], side)
                for name, candidates in sets.items():
                    kl = relational_kl(teacher_repr, student_repr, anchors, candidates, temperature)
                    rows.append({"base": base, "method": method, "seed": run_seed, "side": side, "set": name,
                                 "k": k, "kl_mean": float(kl.mean()), "kl_median": float(kl.median()),
                                 "anchors": len(anchors)})
    if not rows:
        raise ValueError(f"no trained model of methods {list(methods)} next to a 'Teacher' in models")
    order = {m: i for i, m in enumerate(methods)}
    frame = pd.DataFrame(rows)
    frame["_order"] = frame["method"].map(order)
    return frame.sort_values(["base", "side", "set", "_order", "seed"], kind="stable").drop(
        columns="_order").reset_index(drop=True)


def relational_plot(table: pd.DataFrame, ax=None) -> Figure:
    """Bars of the mean KL (error bars: std over run seeds) per method, one group per candidate set;
    one panel per (base, side) — or everything on ``ax`` when given (then pass one base and side)."""
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(zip(table["base"], table["side"], strict=True)))
    if ax is None:
        fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.4), squeeze=False)
        axes = list(axes[0])
        plt.close(fig)  # shown once, as the cell's value
    else:
        fig, axes = ax.figure, [ax] * len(panels)
    methods = list(dict.fromkeys(table["method"]))
    colours = plt.get_cmap("tab10")
    width = 0.8 / max(len(methods), 1)
    for axis, (base, side) in zip(axes, panels, strict=True):
        data = table[(table["base"] == base) & (table["side"] == side)]
        stats = data.groupby(["set", "method"], sort=False)["kl_mean"].agg(["mean", "std"])
        sets = [s for s in SETS if s in set(data["set"])]
        for j, method in enumerate(methods):
            means = [stats["mean"].get((s, method), np.nan) for s in sets]
            stds = [stats["std"].get((s, method), np.nan) for s in sets]
            positions = np.arange(len(sets)) + (j - (len(methods) - 1) / 2) * width
            axis.bar(positions, means, width, yerr=np.nan_to_num(stds), capsize=2, label=method, color=colours(j))
        k = int(data["k"].iloc[0]) if len(data) else 0
        axis.set_xticks(np.arange(len(sets)))
        axis.set_xticklabels([f"{k} most similar (teacher)" if s == "top" else f"{k} random" for s in sets])
        axis.set_ylabel("KL(teacher ‖ model)")
        axis.set_title(f"{base} · {side}s")
        axis.set_ylim(0, axis.get_ylim()[1] * 1.3)  # head room for the legend
    axes[0].legend(frameon=False, fontsize="small", ncols=min(len(methods), 3), loc="upper left")
    fig.tight_layout()
    return fig
