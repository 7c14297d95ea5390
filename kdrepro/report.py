"""Tables, figures and saved results of a chapter notebook (no model code here).

- :class:`RunRecorder` — what a notebook shows is what it saves: ``recorder.show(name, table)`` writes
  ``tables/<name>.csv`` and returns the table for display, ``recorder.figure(name, fig)`` writes
  ``figures/<name>.png``, ``recorder.save(metrics, config)`` writes ``metrics.json`` and ``config.json``.
  :func:`save_run` does the same in one call. Every write is atomic.
- Long-form results: one row per (…keys, metric, seed, value); :func:`long_results` builds them from
  fit results, :func:`summarize` / :func:`mean_std_table` turn them into mean ± std tables.
- Figures: functions that take ``ax=None`` and return the matplotlib figure (closed for pyplot, so a
  notebook displays it exactly once, as the cell's value).

``metrics.json`` layout, read by ``run_all.py`` and the notebook tests: ``{"headline": {name: number in
[0, 1] or text}, "results": [long-form rows], ...}``; the index page shows the headline.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from kdrepro._io import atomic_write, write_json

VERDICT_COLOURS = {
    "reproduced": "#d4edda",
    "partially": "#fff3cd",
    "not": "#f8d7da",
    "no paper value": "#e2e3e5",
}


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------


def _to_jsonable(obj: Any) -> Any:
    """numpy scalars / arrays, paths and NaN → plain JSON values (NaN and inf become None)."""
    if isinstance(obj, Mapping):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, bool | int | float | str) or obj is None:
        return obj
    return str(obj)


def write_table(path: str | os.PathLike, table: pd.DataFrame) -> Path:
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))


def write_figure(path: str | os.PathLike, fig: Figure, dpi: int = 120) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))


def _data_of(table: Any) -> pd.DataFrame:
    """The DataFrame behind a table or a pandas Styler."""
    return table.data if hasattr(table, "data") and isinstance(table.data, pd.DataFrame) else table


def save_run(
    results_dir: str | os.PathLike,
    metrics: Mapping,
    config: Mapping,
    tables: Mapping[str, pd.DataFrame] | None = None,
    figures: Mapping[str, Figure] | None = None,
) -> Path:
    """Write ``metrics.json``, ``config.json``, ``tables/<name>.csv`` and ``figures/<name>.png``."""
    folder = Path(results_dir)
    for name, table in (tables or {}).items():
        write_table(folder / "tables" / f"{name}.csv", _data_of(table))
    for name, fig in (figures or {}).items():
        write_figure(folder / "figures" / f"{name}.png", fig)
    write_json(folder / "config.json", _to_jsonable(dict(config)))
    write_json(folder / "metrics.json", _to_jsonable(dict(metrics)))
    return folder


class RunRecorder:
    """Collects a notebook's tables and figures as it shows them, and saves the run at the end."""

    def __init__(self, results_dir: str | os.PathLike) -> None:
        self.results_dir = Path(results_dir)
        self.tables: dict[str, Path] = {}
        self.figures: dict[str, Path] = {}

    def show(self, name: str, table: pd.DataFrame, view: Any = None):
        """Save ``table`` as ``tables/<name>.csv``; return ``view`` (a formatted version) or the table."""
        self.tables[name] = write_table(self.results_dir / "tables" / f"{name}.csv", _data_of(table))
        return table if view is None else view

    def show_summary(
        self,
        name: str,
        results: pd.DataFrame,
        index: list[str],
        columns: str | list[str] = "metric",
        precision: int = 4,
    ):
        """Save the numeric mean/std/n summary of long ``results``; return mean ± std for display."""
        cols = [columns] if isinstance(columns, str) else list(columns)
        self.show(name, summarize(results, [*index, *cols]))
        return show_table(mean_std_table(results, index, columns, precision))

    def figure(self, name: str, fig: Figure) -> Figure:
        """Save ``fig`` as ``figures/<name>.png`` and return it for display."""
        self.figures[name] = write_figure(self.results_dir / "figures" / f"{name}.png", fig)
        return fig

    def save(self, metrics: Mapping, config: Mapping) -> None:
        """Write ``metrics.json`` and ``config.json`` (with the list of saved tables and figures)."""
        files = {"tables": sorted(self.tables), "figures": sorted(self.figures)}
        save_run(self.results_dir, {**metrics, "files": files}, config)


def parameters_from(namespace: Mapping[str, Any]) -> dict:
    """The notebook's parameters: the UPPER_CASE names of ``namespace`` bound to plain literals."""
    literal = (bool, int, float, str, list, dict, tuple, type(None))
    return {
        k: v for k, v in namespace.items() if k.isupper() and not k.startswith("_") and isinstance(v, literal)
    }


# --------------------------------------------------------------------------------------------------
# Long-form results
# --------------------------------------------------------------------------------------------------


def _test_metrics(result: Any) -> Mapping[str, float]:
    if isinstance(result, Mapping):
        return result.get("test", result)
    if hasattr(result, "test"):
        return result.test
    if hasattr(result, "metrics"):
        return result.metrics["test"]
    raise TypeError(f"cannot read test metrics from {type(result).__name__}")


_FAMILY_ORDER = {"HR": 0, "Recall": 1, "MRR": 2, "NDCG": 3}


def metric_sort_key(name: str) -> tuple:
    """Order metrics as the papers' tables do: by cut-off, then HR/Recall, MRR, NDCG."""
    family, _, k = name.partition("@")
    return (int(k) if k.isdigit() else 10**9, _FAMILY_ORDER.get(family, 99), family)


def long_results(result: Any, **keys: Any) -> pd.DataFrame:
    """Rows ``(**keys, metric, value)`` of one result's test metrics, in :func:`metric_sort_key` order.

    ``result``: a ``FitResult`` (``.test``), a ``Teacher`` (``.metrics["test"]``) or a metric dict.
    Typical keys: ``dataset, base, method, seed`` (and ``protocol``).
    """
    metrics = _test_metrics(result)
    names = sorted(metrics, key=metric_sort_key)
    return pd.DataFrame([{**keys, "metric": name, "value": float(metrics[name])} for name in names])


def history_frame(history: Iterable[Mapping], **keys: Any) -> pd.DataFrame:
    """One row per epoch of a training history (``FitResult.history``), with ``keys`` as columns."""
    frame = pd.DataFrame(list(history))
    for name, value in reversed(list(keys.items())):
        frame.insert(0, name, value)
    return frame


def summarize(results: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, std (ddof = 1; NaN for one seed) and count of ``value`` per group, in first-seen order."""
    grouped = results.groupby(by, sort=False, dropna=False)["value"]
    out = grouped.agg(mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else np.nan, n="count")
    return out.reset_index()


def format_mean_std(mean: float, std: float, precision: int = 4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{precision}f}"
    return f"{mean:.{precision}f} ± {std:.{precision}f}"


def mean_std_table(
    results: pd.DataFrame, index: list[str], columns: str | list[str] = "metric", precision: int = 4
) -> pd.DataFrame:
    """Wide table of "mean ± std" strings: ``index`` columns as rows, one column per value of ``columns``.

    ``columns`` may name several columns (e.g. ``["base", "method"]``): their values are joined by a space.
    Rows and columns keep their first-seen order; empty cells are "".
    """
    cols = [columns] if isinstance(columns, str) else list(columns)
    summary = summarize(results, [*index, *cols])
    pairs = zip(summary["mean"], summary["std"], strict=True)
    summary["cell"] = [format_mean_std(m, s, precision) for m, s in pairs]
    summary["_column"] = summary[cols].astype(str).agg(" ".join, axis=1)
    order = list(dict.fromkeys(summary["_column"]))
    rows = summary[index].drop_duplicates()
    wide = summary.pivot(index=index, columns="_column", values="cell").reindex(columns=order)
    wide = wide.reindex(pd.MultiIndex.from_frame(rows) if len(index) > 1 else rows[index[0]])
    wide.columns.name = None
    return wide.fillna("").reset_index()


def _number_formatter(precision: int):
    def fmt(value) -> str:
        value = float(value)
        if value.is_integer() and abs(value) >= 10:
            return f"{value:,.0f}"  # counts: 25,181 rather than 25,181.0000
        return f"{value:,.{precision}f}"

    return fmt


def _is_text(column: pd.Series) -> bool:
    """A column of words (left-aligned), not of numbers written as text such as "0.43 ± 0.01"."""
    if not (pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)):
        return False
    values = [str(v) for v in column.dropna() if str(v).strip()]
    return not all(re.match(r"^[-+]?\d", v) for v in values)


def show_table(table: pd.DataFrame, precision: int = 4):
    """A display version of ``table``: numbers to ``precision`` decimals (whole counts without), text
    left-aligned, no index column, cells not wrapped."""
    formats = {}
    for c in table.columns:
        if pd.api.types.is_bool_dtype(table[c]):
            continue
        if pd.api.types.is_integer_dtype(table[c]):
            formats[c] = "{:,}"
        elif pd.api.types.is_float_dtype(table[c]):
            formats[c] = _number_formatter(precision)
    text = [c for c in table.columns if _is_text(table[c])]
    styler = table.style.format(formats, na_rep="–")
    if text:
        styler = styler.set_properties(subset=text, **{"text-align": "left"})
    return styler.hide(axis="index").set_table_styles([{"selector": "td", "props": "white-space: nowrap;"}])


def paper_vs_ours_view(table: pd.DataFrame, precision: int = 4):
    """Display version of a ``paper.paper_vs_ours`` table, one row per (…, base, metric).

    For every method: the paper's value, ours as mean ± std, Δ relative to the paper, and the verdict
    (coloured). The long table itself (the CSV) has one row per method and metric.
    """
    view = table.copy()
    pairs = zip(view["ours_mean"], view["ours_std"], strict=True)
    view["ours"] = [format_mean_std(m, s, precision) for m, s in pairs]
    view["paper"] = ["–" if pd.isna(v) else f"{v:.{precision}f}" for v in view["paper"]]
    view["Δ"] = ["" if pd.isna(d) else f"{100 * d:+.1f}%" for d in view["rel_delta"]]
    keys = [
        c
        for c in view.columns
        if c
        not in (
            "method",
            "paper",
            "ours_mean",
            "ours_std",
            "n_seeds",
            "rel_delta",
            "verdict",
            "ours",
            "Δ",
            "metric",
        )
    ]
    keys.append("metric")
    methods = list(dict.fromkeys(view["method"]))
    wide = view.pivot(index=keys, columns="method", values=["paper", "ours", "Δ", "verdict"])
    wide = wide.swaplevel(0, 1, axis=1).reindex(
        columns=pd.MultiIndex.from_product([methods, ["paper", "ours", "Δ", "verdict"]])
    )
    order = view[keys].drop_duplicates()
    wide = wide.reindex(pd.MultiIndex.from_frame(order)).fillna("").reset_index()

    def colour(value: str) -> str:
        return f"background-color: {VERDICT_COLOURS[value]}" if value in VERDICT_COLOURS else ""

    verdict_cols = [c for c in wide.columns if isinstance(c, tuple) and c[1] == "verdict"]
    text_cols = [c for c in wide.columns if c[0] in keys and c[0] != "metric"]
    return (
        wide.style.map(colour, subset=verdict_cols)
        .set_properties(subset=text_cols, **{"text-align": "left"})
        .hide(axis="index")
        .set_table_styles([{"selector": "td", "props": "white-space: nowrap;"}])
    )


def headline_metrics(
    results: pd.DataFrame,
    picks: Mapping[str, str],
    keys: tuple[str, ...] = ("base", "method"),
    comparison: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Mean test values for the index page: ``picks`` maps a protocol to the metric to show for it.

    Returns ``{"<protocol> <base> <method> <metric>": mean}`` over seeds; with ``comparison`` (a
    ``paper.paper_vs_ours`` table) also ``"verdicts vs paper"``: a count per verdict, as text.
    """
    out: dict[str, Any] = {}
    for protocol, metric in picks.items():
        rows = results[(results["protocol"] == protocol) & (results["metric"] == metric)]
        for group, values in rows.groupby(list(keys), sort=False):
            label = " ".join(str(g) for g in (group if isinstance(group, tuple) else (group,)))
            out[f"{protocol} {label} {metric}"] = float(values["value"].mean())
    if comparison is not None:
        counts = comparison["verdict"].value_counts()
        out["verdicts vs paper"] = " · ".join(f"{int(n)} {v}" for v, n in counts.items())
    return out


def run_metrics(results: pd.DataFrame, headline: Mapping[str, Any], **extra: Any) -> dict:
    """The ``metrics.json`` payload: the headline, every long-form result row, and any extra entries."""
    return {"headline": dict(headline), "results": results.to_dict(orient="records"), **extra}


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def _axes(ax, figsize=(5.5, 3.6)):
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    plt.close(fig)  # displayed as the cell's value only, never twice
    return fig, ax


def interaction_histogram(counts: np.ndarray, ax=None, *, label: str = "users", log: bool = True):
    """Histogram of interactions per user (or item), log-scaled x by default; returns the figure."""
    fig, ax = _axes(ax)
    counts = np.asarray(counts)
    counts = counts[counts > 0] if log else counts
    sns.histplot(x=counts, ax=ax, log_scale=log, bins=40, color="#4c72b0", element="step")
    ax.set_xlabel(f"interactions per {label[:-1] if label.endswith('s') else label}")
    ax.set_ylabel(f"number of {label}")
    ax.axvline(
        np.median(counts), color="black", linestyle="--", linewidth=1, label=f"median {np.median(counts):g}"
    )
    ax.legend(frameon=False)
    return fig


def interaction_distributions(data) -> Figure:
    """Two panels: interactions per user and per item of an ``Interactions`` dataset."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    plt.close(fig)
    interaction_histogram(data.user_counts(), axes[0], label="users")
    interaction_histogram(data.item_counts(), axes[1], label="items")
    axes[0].set_title(f"{data.name}: users")
    axes[1].set_title(f"{data.name}: items")
    fig.tight_layout()
    return fig


def training_curves(
    histories: pd.DataFrame,
    metric: str,
    ax=None,
    *,
    hue: str = "base",
    style: str | None = "method",
    units: str | None = "seed",
    log_y: bool = False,
):
    """``metric`` (a history column such as ``valid/NDCG@10`` or ``loss``) against the epoch.

    ``histories``: rows of :func:`history_frame`; rows without the metric are skipped. One line per
    ``hue`` × ``style`` (× ``units``, drawn individually); returns the figure.
    """
    fig, ax = _axes(ax)
    rows = histories.dropna(subset=[metric]) if metric in histories else histories.iloc[0:0]
    if rows.empty:
        ax.text(0.5, 0.5, f"no {metric} recorded", ha="center", va="center", transform=ax.transAxes)
        return fig
    use_units = units if units and units in rows and rows[units].nunique() > 1 else None
    sns.lineplot(
        data=rows,
        x="epoch",
        y=metric,
        hue=hue if hue in rows else None,
        style=style if style and style in rows else None,
        units=use_units,
        estimator=None if use_units else "mean",
        marker="o",
        markersize=3,
        ax=ax,
    )
    ax.set_ylabel(metric)
    if log_y:
        ax.set_yscale("log")
    if ax.get_legend() is not None:
        sns.move_legend(ax, "best", frameon=False, fontsize="small")
    return fig


def training_curves_by(histories: pd.DataFrame, metric: str, col: str = "protocol", **kwargs) -> Figure:
    """One :func:`training_curves` panel per value of ``col`` (e.g. per protocol)."""
    values = list(dict.fromkeys(histories[col])) if col in histories else [None]
    fig, axes = plt.subplots(1, len(values), figsize=(5.5 * len(values), 3.8), squeeze=False)
    plt.close(fig)
    for ax, value in zip(axes[0], values, strict=True):
        rows = histories if value is None else histories[histories[col] == value]
        training_curves(rows, metric, ax, **kwargs)
        if value is not None:
            ax.set_title(f"{col} = {value}")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# Figures of the distillation chapters: sweeps, heatmaps, expert-selection maps
# --------------------------------------------------------------------------------------------------


def sweep_plot(
    results: pd.DataFrame,
    x: str,
    metrics: Iterable[str] = ("HR@5", "NDCG@5"),
    *,
    hue: str = "method",
    row: str = "base",
    reference: pd.DataFrame | None = None,
    log_x: bool = False,
) -> Figure:
    """Mean test ``metrics`` (error bars: std over seeds) against the swept column ``x``.

    One panel per (``row`` value, metric), one line per ``hue`` value. ``reference``: long-form results
    without ``x`` (the teacher, the student without KD) drawn as dashed horizontal lines at their mean.
    """
    metrics = list(metrics)
    rows = list(dict.fromkeys(results[row])) if row in results else [None]
    fig, axes = plt.subplots(len(rows), len(metrics), figsize=(4.8 * len(metrics), 3.4 * len(rows)), squeeze=False)
    plt.close(fig)
    palette = dict(zip(dict.fromkeys(results[hue]), sns.color_palette("deep"), strict=False))
    for i, value in enumerate(rows):
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            data = results[(results["metric"] == metric) & ((results[row] == value) if value is not None else True)]
            stats = data.groupby([hue, x], sort=False)["value"].agg(["mean", "std"]).reset_index()
            for name, line in stats.groupby(hue, sort=False):
                line = line.sort_values(x)
                ax.errorbar(line[x], line["mean"], yerr=line["std"].fillna(0), marker="o", markersize=4,
                            capsize=3, label=str(name), color=palette.get(name))
            if reference is not None and len(reference):
                ref = reference[(reference["metric"] == metric)
                                & ((reference[row] == value) if value is not None else True)]
                styles = iter(["--", ":", "-."] * 3)
                for name, mean in ref.groupby(hue, sort=False)["value"].mean().items():
                    ax.axhline(mean, linestyle=next(styles), color="grey", linewidth=1.2, label=f"{name}")
            if log_x:
                ax.set_xscale("log")
            ticks = sorted(dict.fromkeys(data[x].dropna()))
            if ticks:
                ax.set_xticks(ticks)
                ax.set_xticklabels([f"{t:g}" if isinstance(t, int | float | np.number) else str(t) for t in ticks])
                ax.minorticks_off()
            ax.set_xlabel(x)
            ax.set_ylabel(f"test {metric}")
            ax.set_title(metric if value is None else f"{value} · {metric}")
            ax.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


def heatmaps(panels: Mapping[str, pd.DataFrame], fmt: str = ".4f", cmap: str = "viridis") -> Figure:
    """One annotated heatmap per matrix of ``panels`` (``{title: DataFrame}``), each on its own colour scale.

    Row and column labels are the matrices' index and columns (numbers printed with ``:g``).
    """
    count = max(len(panels), 1)
    fig, axes = plt.subplots(1, count, figsize=(4.6 * count, 3.8), squeeze=False)
    plt.close(fig)
    for ax, (title, matrix) in zip(axes[0], panels.items(), strict=False):
        labels = matrix.copy()
        labels.index = [f"{v:g}" if isinstance(v, int | float | np.number) else str(v) for v in matrix.index]
        labels.columns = [f"{v:g}" if isinstance(v, int | float | np.number) else str(v) for v in matrix.columns]
        sns.heatmap(labels.astype(float), annot=True, fmt=fmt, cmap=cmap, cbar=False, ax=ax,
                    annot_kws={"fontsize": "small"})
        ax.set_ylabel(matrix.index.name or "")
        ax.set_xlabel(matrix.columns.name or "")
        ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    return fig


def _expert_colours(count: int):
    from matplotlib.colors import ListedColormap

    colours = [*plt.get_cmap("tab20").colors, *plt.get_cmap("tab20b").colors, *plt.get_cmap("tab20c").colors]
    if count > len(colours):
        colours = [plt.get_cmap("hsv")(i / count) for i in range(count)]
    return ListedColormap(colours[:count])


def selection_map_plot(frame: pd.DataFrame, num_experts: int | None = None, ax=None) -> Figure:
    """The expert each user (rows) selects after each epoch (columns): one colour per expert (Fig. 6).

    ``frame``: from ``experiments.selection_map`` (users sorted by their final expert, so that groups of
    users sharing an expert form bands once the selection has settled).
    """
    fig, ax = _axes(ax, figsize=(max(4.0, 0.7 * frame.shape[1] + 2.5), 5.0))
    count = num_experts or int(np.nanmax(frame.to_numpy())) + 1
    image = ax.imshow(frame.to_numpy(), aspect="auto", interpolation="nearest", cmap=_expert_colours(count),
                      vmin=-0.5, vmax=count - 0.5)
    ax.set_xticks(range(frame.shape[1]))
    ax.set_xticklabels([str(c) for c in frame.columns])
    ax.set_yticks([])
    ax.set_xlabel("epochs of training")
    ax.set_ylabel(f"{len(frame)} sampled users (sorted by final expert)")
    bar = fig.colorbar(image, ax=ax, fraction=0.05)
    bar.locator = plt.MaxNLocator(integer=True)
    bar.update_ticks()
    bar.set_label("selected expert")
    return fig


def selection_dynamics(summary: pd.DataFrame) -> Figure:
    """Two panels from ``experiments.selection_summary``: how settled the selection is (share of users
    that changed expert, usage entropy) and how alike the users sharing an expert are (cosine of their
    teacher representations, against all user pairs)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    plt.close(fig)
    for column, label in (("changed", "users that changed expert"), ("usage_entropy", "usage entropy (normalised)")):
        axes[0].plot(summary["epoch"], summary[column], marker="o", markersize=3, label=label)
    axes[0].set_xlabel("epochs of training")
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].legend(frameon=False, fontsize="small")
    for column, label in (("within_expert_cosine", "users sharing an expert"), ("all_pairs_cosine", "all user pairs")):
        axes[1].plot(summary["epoch"], summary[column], marker="o", markersize=3, label=label)
    axes[1].set_xlabel("epochs of training")
    axes[1].set_ylabel("mean cosine of teacher representations")
    axes[1].legend(frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


def ranked_view(table: pd.DataFrame, precision: int = 4):
    """Display version of ``experiments.design_choice_table``: one row per (base, variant); per metric our
    mean ± std and the paper's value, each followed by its rank among the variants (1 = best)."""
    view = table.copy()
    view["ours"] = [
        f"{format_mean_std(m, s, precision)} ({int(r)})"
        for m, s, r in zip(view["ours_mean"], view["ours_std"], view["ours_rank"], strict=True)
    ]
    source = next((d for d in view.get("paper_dataset", []) if isinstance(d, str) and d), "")
    paper_label = f"paper ({source})" if source else "paper"
    view[paper_label] = [
        "–" if pd.isna(p) else f"{p:.{precision}f} ({int(r)})"
        for p, r in zip(view["paper"], view["paper_rank"], strict=True)
    ]
    metrics = list(dict.fromkeys(view["metric"]))
    order = view[["base", "variant"]].drop_duplicates()
    wide = view.pivot(index=["base", "variant"], columns="metric", values=["ours", paper_label])
    wide = wide.swaplevel(0, 1, axis=1).reindex(columns=pd.MultiIndex.from_product([metrics, ["ours", paper_label]]))
    wide = wide.reindex(pd.MultiIndex.from_frame(order)).fillna("").reset_index()
    text = [c for c in wide.columns if c[0] in ("base", "variant")]
    return (
        wide.style.set_properties(subset=text, **{"text-align": "left"})
        .hide(axis="index")
        .set_table_styles([{"selector": "td", "props": "white-space: nowrap;"}])
    )
