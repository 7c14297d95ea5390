"""Analyses of chapters 02 (PHR) and 05 (IR-RRD) on top of :func:`kdrepro.runs.run_kd` results.

- :func:`validation_scores`, :func:`select_on_validation`, :func:`selected_results`, :func:`grid_panels` —
  the PHR paper's comparison with a *grid-searched* DE: every DE configuration is trained, the one with the
  best validation monitor (mean over seeds) is kept, and only its test metrics are reported.
- :func:`bridge_similarity`, :func:`bridge_similarity_plot`, :func:`de_groups` — what PHR's personalization
  network learned: distance between the generated bridges θ_x of user pairs against the similarity of
  their teacher representations, and within vs across DE's expert groups.
- :func:`training_panels`, :func:`curve_summary` — training terms and validation metric per epoch (IR-RRD's
  motivation: ranking distillation alone over-fits a small student; IR regularizes it).
- :func:`per_user_metrics`, :func:`popularity_groups`, :func:`popularity_breakdown`,
  :func:`popularity_plot` — the gains of RRD / IR-RRD over the student by the training popularity of the
  test item.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from kdrepro.evaluate import evaluate
from kdrepro.jobs import decode_ranks
from kdrepro.metrics import PROTOCOL_METRICS, per_user_metrics_from_ranks
from kdrepro.train import DEFAULT_MONITOR

if TYPE_CHECKING:
    from kdrepro.runs import KDResults
    from kdrepro.splits import Split

# Columns of a history frame that describe an epoch, not the fit it belongs to.
_EPOCH_COLUMNS = ("epoch", "loss", "train_s")


def _axes(ax, figsize=(5.5, 3.6)):
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    plt.close(fig)
    return fig, ax


# --------------------------------------------------------------------------------------------------
# Chapter 02: DE grid-searched on validation
# --------------------------------------------------------------------------------------------------


def _monitor_of(results: pd.DataFrame, monitor: str | None) -> str:
    if monitor is not None:
        return monitor
    protocols = results["protocol"].dropna().unique() if "protocol" in results else []
    monitors = {DEFAULT_MONITOR[p] for p in protocols}
    if len(monitors) != 1:
        raise ValueError(f"monitor=None needs results of protocols sharing one default monitor; got {list(protocols)}"
                         f" ({sorted(monitors)}): pass monitor, one of {sorted(set(DEFAULT_MONITOR.values()))}")
    return monitors.pop()


def validation_scores(histories: pd.DataFrame, monitor: str) -> pd.DataFrame:
    """Per fit (every non-epoch column of ``histories``: base, method, swept keys, seed …): the best
    validation ``monitor`` over its epochs — the value ``fit`` selected its best epoch on.

    Returns the fit columns and ``valid``.
    """
    column = f"valid/{monitor}"
    if column not in histories:
        recorded = sorted(c[len("valid/"):] for c in histories.columns if c.startswith("valid/"))
        raise ValueError(f"monitor={monitor!r} was not recorded; choose one of {recorded}")
    keys = [c for c in histories.columns
            if c not in _EPOCH_COLUMNS and not c.startswith(("loss/", "valid/"))]
    scores = histories.groupby(keys, sort=False, dropna=False)[column].max().rename("valid")
    return scores.reset_index()


def select_on_validation(
    results: pd.DataFrame,
    histories: pd.DataFrame,
    grid_keys: Sequence[str],
    monitor: str | None = None,
    by: Sequence[str] = ("protocol", "base"),
) -> pd.DataFrame:
    """The grid search of the PHR paper's DE baseline: per group of ``by`` (those present), each config
    (values of ``grid_keys``) scored by its validation ``monitor`` averaged over seeds; the best is selected.

    ``results``/``histories``: long test results and epoch histories of the grid's fits (as from
    ``run_kd``); a ``by`` column missing from ``histories`` (``protocol``) is taken from ``results``.
    ``monitor=None``: the protocol's default (``train.DEFAULT_MONITOR``, the metric that picked each fit's
    best epoch). Returns one row per (group, config): ``valid_mean, valid_std, n_seeds``, the test value
    of the same metric (``test_mean``, shown, never used to select), ``rank`` (1 = best on validation)
    and ``selected``.
    """
    monitor = _monitor_of(results, monitor)
    missing = [k for k in grid_keys if k not in histories or k not in results]
    if missing:
        raise ValueError(f"grid_keys {missing} are not columns of both results and histories")
    scores = validation_scores(histories, monitor)
    fit_keys = [c for c in scores.columns if c != "valid"]
    by = [c for c in by if c in results]
    extra = [c for c in by if c not in scores]
    if extra:
        labels = results[[*fit_keys, *extra]].drop_duplicates()
        if labels.duplicated(fit_keys).any():
            raise ValueError(f"histories lack {extra}, which tell the fits of results apart: add the column(s)")
        scores = scores.merge(labels, on=fit_keys, how="left")
    config = [*by, *grid_keys]
    table = (scores.groupby(config, sort=False, dropna=False)["valid"]
             .agg(valid_mean="mean", valid_std=lambda v: v.std(ddof=1) if len(v) > 1 else np.nan,
                  n_seeds="count").reset_index())
    test = (results[results["metric"] == monitor].groupby(config, sort=False, dropna=False)["value"].mean()
            .rename("test_mean").reset_index())
    table = table.merge(test, on=config, how="left")
    table.insert(len(config), "monitor", monitor)
    ranks = table.groupby(by, sort=False)["valid_mean"] if by else table["valid_mean"]
    table["rank"] = ranks.rank(ascending=False, method="first").astype(int)
    table["selected"] = table["rank"] == 1
    return table


def selected_results(results: pd.DataFrame, selection: pd.DataFrame) -> pd.DataFrame:
    """The test rows of the configs ``selection`` marks as selected, without the grid columns (so that
    they line up with the other methods' rows of a main table)."""
    chosen = selection[selection["selected"]]
    keys = [c for c in chosen.columns
            if c in results and c not in ("monitor", "valid_mean", "valid_std", "n_seeds", "test_mean")]
    rows = results.merge(chosen[keys], on=keys, how="inner")
    grid = [k for k in keys if k not in ("protocol", "base", "dataset", "method")]
    return rows.drop(columns=grid)


def selected_configs(selection: pd.DataFrame, grid_keys: Sequence[str]) -> dict[str, dict[str, object]]:
    """``{base: {grid key: selected value}}`` from a :func:`select_on_validation` table (one protocol), as
    plain Python numbers, to merge into a chapter's per-base method configs (RD's K and λ in chapter 04)."""
    chosen = selection[selection["selected"]]
    if chosen["base"].duplicated().any():
        raise ValueError("one selected config per base expected: select within one protocol")
    return {row["base"]: {key: row[key].item() if hasattr(row[key], "item") else row[key] for key in grid_keys}
            for _, row in chosen.iterrows()}


def grid_panels(
    selection: pd.DataFrame, index: str, columns: str, value: str = "valid_mean"
) -> dict[str, pd.DataFrame]:
    """``{title: matrix}`` of ``value`` over the grid (rows ``index``, columns ``columns``), one panel per
    protocol and base, for :func:`kdrepro.report.heatmaps`."""
    by = [c for c in ("protocol", "base") if c in selection]
    panels = {}
    for group, rows in selection.groupby(by, sort=False) if by else [((), selection)]:
        label = " · ".join(str(g) for g in (group if isinstance(group, tuple) else (group,)))
        title = f"{label} · {value.replace('_mean', '')} {rows['monitor'].iloc[0]}"
        panels[title] = rows.pivot_table(index=index, columns=columns, values=value, aggfunc="mean")
    return panels


# --------------------------------------------------------------------------------------------------
# Chapter 02: what PHR's personalization network learned
# --------------------------------------------------------------------------------------------------


def sample_pairs(num_entities: int, num_pairs: int, generator: torch.Generator) -> torch.Tensor:
    """(num_pairs, 2) pairs of distinct entities of 0..num_entities − 1, uniform over ordered pairs."""
    if num_entities < 2:
        raise ValueError(f"num_entities must be at least 2 to form pairs, got {num_entities}")
    first = torch.randint(num_entities, (num_pairs,), generator=generator)
    second = torch.randint(num_entities - 1, (num_pairs,), generator=generator)
    second += (second >= first).long()  # skip the first entity: the pair is never (x, x)
    return torch.stack([first, second], dim=1)


def bridge_pair_table(bridges: torch.Tensor, reprs: torch.Tensor, pairs: torch.Tensor) -> pd.DataFrame:
    """Per pair (a, b) of rows: ``teacher_cosine`` = cos(h_t(a), h_t(b)) and ``bridge_distance`` =
    ‖θ_a − θ_b‖_F / mean_x ‖θ_x‖_F (relative to the typical bridge, so that runs compare).

    ``bridges`` (n, d_t, d_s), ``reprs`` (n, d), ``pairs`` (P, 2) row indices.
    """
    flat = bridges.reshape(len(bridges), -1).double()
    unit = torch.nn.functional.normalize(reprs.double(), dim=1)
    scale = flat.norm(dim=1).mean()
    a, b = pairs[:, 0], pairs[:, 1]
    return pd.DataFrame({
        "a": a.numpy(), "b": b.numpy(),
        "teacher_cosine": (unit[a] * unit[b]).sum(1).numpy(),
        "bridge_distance": ((flat[a] - flat[b]).norm(dim=1) / scale).numpy(),
    })


def de_groups(kd: KDResults, selection: pd.DataFrame, base: str, seed: int, method: str = "DE") -> np.ndarray:
    """The expert every user selects at the end of training in the run of the config ``selection``
    marks as selected for ``base`` (and ``kd``'s protocol): DE's user groups, (num_users,)."""
    chosen = selection[selection["selected"] & (selection["base"] == base)]
    if "protocol" in chosen and "protocol" in kd.results:
        chosen = chosen[chosen["protocol"].isin(kd.results["protocol"].unique())]
    if len(chosen) != 1:
        raise ValueError(f"selection has {len(chosen)} selected rows for base={base!r}; expected one")
    grid = [c for c in chosen.columns if c in kd.results and c not in ("protocol", "base", "dataset", "method")]
    keys = {k: chosen[k].iloc[0].item() if hasattr(chosen[k].iloc[0], "item") else chosen[k].iloc[0] for k in grid}
    return np.asarray(kd.find("selections", base, method, seed, **keys).experts[-1])


def bridge_similarity(
    module: torch.nn.Module,
    entity: str = "user",
    num_entities: int = 1000,
    num_pairs: int = 5000,
    groups: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Do entities the teacher sees alike get alike bridges θ_x from PHR's personalization network?

    ``module``: a trained :class:`kdrepro.distill.PHR` (e.g. ``runs.fit_kd_module(...).module``).
    ``num_entities`` sampled users (or items), their bridges from the module's public ``bridges``, their
    teacher representations from its ``user_repr``/``item_repr``; ``num_pairs`` sampled pairs among
    them (:func:`bridge_pair_table`). ``groups``: optional label per entity id (DE's experts,
    :func:`de_groups`) marking pairs of the same group.

    Returns (pairs, summary). Summary: ``pearson``/``spearman`` correlation of bridge distance with teacher
    cosine (negative: alike entities get alike bridges), ``near_far_ratio`` (mean distance of the 10 %
    most alike pairs over that of the 10 % least alike; below 1 likewise), ``spread`` (mean ‖θ_x − θ̄‖ /
    ‖θ̄‖: how far bridges are personalised away from their mean; 0 is one shared bridge, FitNet with a
    linear regressor) and, with ``groups``, the mean distance within and across groups.
    """
    from kdrepro.distill import PHR

    if not isinstance(module, PHR):
        raise TypeError(f"module must be a kdrepro.distill.PHR, got {type(module).__name__}")
    reprs_all = module.user_repr if entity == "user" else module.item_repr
    generator = torch.Generator().manual_seed(seed)
    count = min(num_entities, len(reprs_all))
    ids = torch.randperm(len(reprs_all), generator=generator)[:count].sort().values
    bridges = module.bridges(entity, ids)
    reprs = reprs_all[ids.to(reprs_all.device)].cpu()
    pairs = bridge_pair_table(bridges, reprs, sample_pairs(count, num_pairs, generator))
    pairs["a"], pairs["b"] = ids.numpy()[pairs["a"]], ids.numpy()[pairs["b"]]
    flat = bridges.reshape(count, -1).double()
    mean = flat.mean(0)
    low, high = pairs["teacher_cosine"].quantile([0.1, 0.9])
    summary = {
        "entity": entity, "entities": count, "pairs": len(pairs),
        "pearson": pairs["bridge_distance"].corr(pairs["teacher_cosine"]),
        "spearman": pairs["bridge_distance"].corr(pairs["teacher_cosine"], method="spearman"),
        "near_far_ratio": pairs.loc[pairs["teacher_cosine"] >= high, "bridge_distance"].mean()
        / pairs.loc[pairs["teacher_cosine"] <= low, "bridge_distance"].mean(),
        "spread": float(((flat - mean).norm(dim=1) / mean.norm()).mean()),
    }
    if groups is not None:
        groups = np.asarray(groups)
        pairs["same_group"] = groups[pairs["a"]] == groups[pairs["b"]]
        summary.update({
            "same_group_pairs": int(pairs["same_group"].sum()),
            "same_group_distance": pairs.loc[pairs["same_group"], "bridge_distance"].mean(),
            "other_group_distance": pairs.loc[~pairs["same_group"], "bridge_distance"].mean(),
        })
    return pairs, pd.DataFrame([summary])


def bridge_similarity_plot(pairs: pd.DataFrame, ax=None, bins: int = 10) -> Figure:
    """Bridge distance against the teacher cosine of each sampled pair, with the mean per cosine decile
    (and per same / other DE group when ``pairs`` has ``same_group``)."""
    fig, ax = _axes(ax)
    ax.scatter(pairs["teacher_cosine"], pairs["bridge_distance"], s=3, alpha=0.15, color="grey", label="pairs")
    edges = np.unique(pairs["teacher_cosine"].quantile(np.linspace(0, 1, bins + 1)).to_numpy())
    binned = pairs.assign(bin=pd.cut(pairs["teacher_cosine"], edges, include_lowest=True))
    splits = [("all pairs", binned)]
    if "same_group" in binned:
        splits += [("same DE expert", binned[binned["same_group"]]), ("other DE expert", binned[~binned["same_group"]])]
    for label, rows in splits:
        means = rows.groupby("bin", observed=True)[["teacher_cosine", "bridge_distance"]].mean()
        ax.plot(means["teacher_cosine"], means["bridge_distance"], marker="o", markersize=4, label=label)
    rho = pairs["bridge_distance"].corr(pairs["teacher_cosine"], method="spearman")
    ax.set_xlabel("cosine of the teacher representations")
    ax.set_ylabel("‖θ_a − θ_b‖ / mean ‖θ‖")
    ax.set_title(f"PHR bridges of {len(pairs)} user pairs (Spearman {rho:.2f})", fontsize="medium")
    ax.legend(frameon=False, fontsize="small")
    return fig


# --------------------------------------------------------------------------------------------------
# Chapter 05: curves
# --------------------------------------------------------------------------------------------------


PANELS_PER_ROW = 2


def training_panels(
    histories: pd.DataFrame, columns: Sequence[str], row: str = "base", hue: str = "method",
    log_y: Sequence[str] = (),
) -> Figure:
    """History columns (train loss terms, a validation metric) against the epoch: one panel per column and
    per value of ``row``, one colour per ``hue`` value, the same in every panel (a method keeps its colour
    in the panels of terms it lacks), one line per seed; ``log_y``: the columns drawn on a log scale."""
    import seaborn as sns

    values = list(dict.fromkeys(histories[row])) if row in histories else [None]
    order = list(dict.fromkeys(histories[hue]))
    palette = dict(zip(order, sns.color_palette("deep", len(order)), strict=True))
    # At most PANELS_PER_ROW panels side by side: a page column shows the figure at a readable size.
    width = min(len(columns), PANELS_PER_ROW)
    lines = -(-len(columns) // width)
    fig, axes = plt.subplots(len(values) * lines, width, figsize=(4.4 * width, 3.4 * len(values) * lines),
                             squeeze=False)
    plt.close(fig)
    for i in range(len(values)):
        for j in range(len(columns), lines * width):  # the empty places of a base's last line of panels
            axes[i * lines + j // width][j % width].set_visible(False)
    for i, value in enumerate(values):
        rows = histories if value is None else histories[histories[row] == value]
        for j, column in enumerate(columns):
            ax = axes[i * lines + j // width][j % width]
            data = rows.dropna(subset=[column]) if column in rows else rows.iloc[0:0]
            label = column.replace("valid/", "validation ").replace("loss/", "loss: ")
            ax.set_title(label if value is None else f"{value} · {label}", fontsize="medium")
            if data.empty:
                ax.text(0.5, 0.5, f"no {column} recorded", ha="center", va="center", transform=ax.transAxes)
                continue
            seeds = "seed" if "seed" in data and data["seed"].nunique() > 1 else None
            sns.lineplot(data=data, x="epoch", y=column, hue=hue, hue_order=[m for m in order if m in set(data[hue])],
                         palette=palette, units=seeds, estimator=None if seeds else "mean", marker="o",
                         markersize=3, ax=ax)
            ax.set_ylabel(label)
            if column in log_y:
                ax.set_yscale("log")
            if ax.get_legend() is not None:
                sns.move_legend(ax, "best", frameon=False, fontsize="small", title=None)
    fig.tight_layout()
    return fig


def curve_summary(histories: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per fit: epochs run, the best validation ``metric`` and its epoch, the last validated value and the
    drop from best to last (how far the fit had fallen back when it stopped: over-fitting)."""
    column = f"valid/{metric}"
    if column not in histories:
        raise ValueError(f"metric={metric!r} was not recorded in the histories")
    keys = [c for c in histories.columns if c not in _EPOCH_COLUMNS and not c.startswith(("loss/", "valid/"))]
    rows = histories.dropna(subset=[column])
    best = rows.loc[rows.groupby(keys, sort=False, dropna=False)[column].idxmax()]
    last = rows.groupby(keys, sort=False, dropna=False).tail(1)
    runs = histories.groupby(keys, sort=False, dropna=False)["epoch"].max().rename("epochs_run").reset_index()
    table = runs.merge(best[[*keys, "epoch", column]].rename(columns={"epoch": "best_epoch", column: "best"}), on=keys)
    table = table.merge(last[[*keys, column]].rename(columns={column: "last"}), on=keys)
    table["drop"] = table["best"] - table["last"]
    table.insert(len(keys), "metric", f"valid {metric}")
    return table


# --------------------------------------------------------------------------------------------------
# Chapter 05: gains by item popularity
# --------------------------------------------------------------------------------------------------


def per_user_metrics(kd: KDResults, split: Split, methods: Sequence[str], which: str = "test") -> pd.DataFrame:
    """Per-user ``which`` metrics of every model of ``kd`` whose method is in ``methods`` (main runs, no
    swept keys), with the user's held-out item and its training popularity.

    Leave-one-out protocols only: one held-out item per user, so a user's metrics are that item's.
    Columns: ``base, method, seed, user, item, popularity`` and one per metric.
    """
    users_held = getattr(split, f"{which}_users")
    if len(np.unique(users_held)) != len(users_held):
        raise ValueError(f"per-item breakdowns need one {which} item per user (loo protocols); "
                         f"split.protocol={split.protocol!r} holds out several")
    item_of = np.full(split.num_users, -1)
    item_of[users_held] = getattr(split, f"{which}_items")
    popularity = np.bincount(split.train_items, minlength=split.num_items)
    frames = []
    for base, method, keys, seed in kd.models:  # only the models asked for are loaded (or refitted)
        if method not in methods or keys:
            continue
        encoded = kd.test_ranks.get((base, method, keys, seed)) if which == "test" else None
        if encoded:  # from the ledger: no weights needed
            ranks = torch.from_numpy(decode_ranks(encoded))
            values = {k: v.numpy() for k, v in
                      per_user_metrics_from_ranks(ranks, PROTOCOL_METRICS[split.protocol], split.ks).items()}
            values["user"] = np.unique(users_held)
        else:
            values = evaluate(kd.models[(base, method, keys, seed)], split, which, per_user=True)
        users = values.pop("user")
        frames.append(pd.DataFrame({"base": base, "method": method, "seed": seed, "user": users,
                                    "item": item_of[users], "popularity": popularity[item_of[users]], **values}))
    if not frames:
        raise ValueError(f"no model of methods {list(methods)} in kd.models")
    return pd.concat(frames, ignore_index=True)


def popularity_groups(popularity: np.ndarray, num_groups: int) -> np.ndarray:
    """Group 0..num_groups − 1 of each case by the rank of its popularity (0 = least popular).

    A case's group is ⌊num_groups × (cases strictly less popular) / cases⌋: about equal-size groups, with
    equally popular cases always in the same group (so a group may be larger, and a number may go unused
    when one popularity value spans a whole group). Every case gets exactly one group: a partition.
    """
    if num_groups < 1 or num_groups > len(popularity):
        raise ValueError(f"num_groups must be in 1..{len(popularity)} (the number of cases), got {num_groups}")
    below = np.searchsorted(np.sort(popularity), popularity, side="left")
    return below * num_groups // len(popularity)


def popularity_breakdown(
    per_user: pd.DataFrame, metric: str, num_groups: int = 5, reference: str = "Student"
) -> pd.DataFrame:
    """``metric`` per popularity group of the held-out items, per base and method, and the gain over
    ``reference``.

    Each base's users are grouped once (:func:`popularity_groups` of their items' training popularity),
    so every method is scored on the same users. Per (base, group, method): the popularity range,
    ``users``, the mean over seeds of the group's mean ``metric`` (``std`` over seeds), ``gain`` = mean −
    the reference's mean and ``rel_gain`` = gain / the reference's mean.
    """
    if metric not in per_user:
        raise ValueError(f"metric={metric!r} is not a column of per_user")
    frames = []
    for base, rows in per_user.groupby("base", sort=False):
        cases = rows[["user", "popularity"]].drop_duplicates("user").sort_values("user")
        group_of = pd.Series(popularity_groups(cases["popularity"].to_numpy(), num_groups), index=cases["user"])
        rows = rows.assign(group=group_of.loc[rows["user"]].to_numpy())
        ranges = cases.assign(group=group_of.to_numpy()).groupby("group")["popularity"].agg(
            pop_min="min", pop_max="max", users="count")
        per_seed = rows.groupby(["method", "seed", "group"], sort=False)[metric].mean()
        stats = per_seed.groupby(["method", "group"], sort=False).agg(
            mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else np.nan).reset_index()
        if reference not in set(stats["method"]):
            raise ValueError(f"reference={reference!r} is not a method of per_user: {sorted(set(stats['method']))}")
        ref = stats[stats["method"] == reference].set_index("group")["mean"]
        stats["gain"] = stats["mean"] - ref.loc[stats["group"]].to_numpy()
        stats["rel_gain"] = stats["gain"] / ref.loc[stats["group"]].to_numpy()
        stats = stats.merge(ranges.reset_index(), on="group")
        stats.insert(0, "base", base)
        frames.append(stats)
    table = pd.concat(frames, ignore_index=True)
    table["popularity"] = [f"{a}–{b}" for a, b in zip(table["pop_min"], table["pop_max"], strict=True)]
    table.insert(table.columns.get_loc("method"), "metric", metric)
    order = ["base", "group", "popularity", "pop_min", "pop_max", "users", "metric", "method", "mean", "std",
             "gain", "rel_gain"]
    return table[order].sort_values(["base", "group"], kind="stable").reset_index(drop=True)


def popularity_plot(breakdown: pd.DataFrame, reference: str = "Student", ax=None) -> Figure:
    """Gain over ``reference`` per popularity group, in the metric's units (bars per method; panels per base
    unless ``ax``). Absolute, not relative: a group where the reference scores near 0 would dwarf the rest."""
    bases = list(dict.fromkeys(breakdown["base"]))
    if ax is None:
        fig, axes = plt.subplots(1, len(bases), figsize=(5.5 * len(bases), 3.6), squeeze=False)
        plt.close(fig)
        axes = axes[0]
    else:
        fig, axes = ax.figure, [ax] * len(bases)
    for axis, base in zip(axes, bases, strict=True):
        rows = breakdown[(breakdown["base"] == base) & (breakdown["method"] != reference)]
        methods = list(dict.fromkeys(rows["method"]))
        groups = sorted(rows["group"].unique())
        width = 0.8 / max(len(methods), 1)
        for k, method in enumerate(methods):
            line = rows[rows["method"] == method].set_index("group").loc[groups]
            axis.bar(np.arange(len(groups)) + (k - (len(methods) - 1) / 2) * width, line["gain"], width,
                     label=method)
        labels = rows.drop_duplicates("group").set_index("group").loc[groups, "popularity"]
        axis.set_xticks(np.arange(len(groups)))
        axis.set_xticklabels(labels, fontsize="small")
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_xlabel("training interactions of the test item (group range)")
        axis.set_ylabel(f"{rows['metric'].iloc[0] if len(rows) else ''} minus {reference}'s")
        axis.set_title(str(base), fontsize="medium")
        axis.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


__all__ = [
    "bridge_pair_table", "bridge_similarity", "bridge_similarity_plot", "curve_summary", "de_groups",
    "grid_panels", "per_user_metrics", "popularity_breakdown", "popularity_groups",
    "popularity_plot", "sample_pairs", "select_on_validation", "selected_configs", "selected_results",
    "training_panels", "validation_scores",
]
