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

import html
import math
import os
import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from kdrepro._io import atomic_write, write_json
from kdrepro.efficiency import CONTENTION_COLUMN, IDLE_OTHER_CORES

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
    """The figure as PNG, with :func:`describe_figure`'s text as its ``Description`` (the page's alt text)."""
    meta = {"Description": describe_figure(fig)}
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata=meta))


def _panel_description(ax) -> str:
    """What one axes shows: its title, what is plotted against what (or the grid of a heatmap), its series."""
    xlabel, ylabel, title = ax.get_xlabel(), ax.get_ylabel(), ax.get_title()
    if not ax.axison or not (ax.lines or ax.collections or ax.images or ax.patches):  # only a message
        words = " ".join(" ".join(text.get_text().split()) for text in ax.texts)
        return f"{title}: {words}" if title else words
    grid = any(type(c).__name__ == "QuadMesh" for c in ax.collections) or bool(ax.images)
    if grid:
        what = f"heatmap over {ylabel or 'rows'} × {xlabel or 'columns'}"
    else:
        logs = [axis for axis, scale in (("x", ax.get_xscale()), ("y", ax.get_yscale())) if scale == "log"]
        scales = [f"{axis} on a log scale" for axis in logs]
        what = f"{ylabel or 'value'} against {xlabel or 'x'}" + (f" ({', '.join(scales)})" if scales else "")
    legend = ax.get_legend()
    names = [text.get_text() for text in legend.get_texts()] if legend is not None else []
    if not names:
        names = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    series = f"; series: {', '.join(dict.fromkeys(names))}" if names else ""
    return (f"{title}: " if title else "") + what + series


def describe_figure(fig: Figure) -> str:
    """A figure in words, from what it draws (for alt text): per panel its title, what is plotted against
    what — or the grid of a heatmap — and its series (legend entries); colour bars left out."""
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    parts = [_panel_description(ax) for ax in panels]
    if len(parts) == 1:
        return parts[0]
    return f"{len(parts)} panels. " + " ".join(f"({i}) {part}." for i, part in enumerate(parts, 1))


_PNG = b"\x89PNG\r\n\x1a\n"


def figure_description(path: str | os.PathLike) -> str | None:
    """The ``Description`` that :func:`write_figure` stored in a PNG (its tEXt or iTXt chunk), or None."""
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    pos = len(_PNG) if data.startswith(_PNG) else len(data)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        key, _, rest = body.partition(b"\0")
        if key == b"Description" and kind == b"tEXt":
            return rest.decode("latin-1")
        if key == b"Description" and kind == b"iTXt" and rest[:1] == b"\0":  # uncompressed international text
            return rest[2:].split(b"\0", 2)[-1].decode("utf-8")
        pos += 12 + length
    return None


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

    def figure(self, name: str, fig: Figure | NotRun) -> Figure | NotRun:
        """Save ``fig`` as ``figures/<name>.png`` and return it for display (a :class:`NotRun` is shown only)."""
        if isinstance(fig, NotRun):
            return fig
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


def _is_string(column: pd.Series) -> bool:
    return pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)


# A number written as text: "0.43 ± 0.01", "5 / 5 / 10", "12 %", "0.4346 (1)", "+0.0873" (not "02_name").
_NUMBER_TEXT = re.compile(r"^[-+−]?\d[\d.,]*(e[-+]?\d+)?\s*(±|/|%|\(|$)")


def _is_text(column: pd.Series) -> bool:
    """A column of words (left-aligned), not of numbers written as text such as "0.43 ± 0.01"."""
    if not _is_string(column):
        return False
    values = [str(v) for v in column.dropna() if str(v).strip()]
    return not all(_NUMBER_TEXT.match(v) for v in values)


LONG_TEXT = 24  # characters: a column of longer values may wrap (short words and numbers never do)
TRANSPOSE_ROWS, TRANSPOSE_COLUMNS = 5, 10  # a table this short and wider than this is shown turned


def _breakable(value: Any) -> str:
    """A text cell as HTML that may wrap after its underscores (``05_item_side_ranking``) too."""
    return html.escape(str(value)).replace("_", "_<wbr>")


def _label(column: Any) -> str:
    """A column name as a header that wraps at its words: ``paper_parameters_millions`` → "paper parameters
    millions" (the CSV keeps the name)."""
    return str(column).replace("_", " ")


def show_table(table: pd.DataFrame, precision: int = 4):
    """A display version of ``table`` that fits a page 1,400 px wide; the table itself is the CSV.

    Numbers to ``precision`` decimals (whole counts without), never wrapped; text left-aligned and wrapped
    when the table needs the room (also after underscores); headers in words. A text column holding the
    same value on every row (of two or more) goes to the caption ("dataset: CiteULike · base: mlp64"); a
    table of at most TRANSPOSE_ROWS rows and more than TRANSPOSE_COLUMNS columns is shown turned, one row
    per column. No index column. A timing table's :data:`~kdrepro.efficiency.CONTENTION_COLUMN` also
    puts in the caption whether its seconds were measured on an otherwise idle machine (:func:`timing_caption`).
    """
    timing = timing_caption(table)
    constant = [
        c for c in table.columns if len(table) >= 2 and _is_text(table[c]) and table[c].nunique(dropna=False) == 1
    ]
    if len(constant) == len(table.columns):
        constant = []
    caption = " · ".join([f"{_label(c)}: {table[c].iloc[0]}" for c in constant] + ([timing] if timing else []))
    table = table.drop(columns=constant)
    formats: dict[Any, Any] = {}
    for c in table.columns:
        if pd.api.types.is_bool_dtype(table[c]):
            continue
        if pd.api.types.is_integer_dtype(table[c]):
            formats[c] = "{:,}".format
        elif pd.api.types.is_float_dtype(table[c]):
            formats[c] = _number_formatter(precision)
    words = [c for c in table.columns if _is_text(table[c])]
    wrapping = [
        c for c in table.columns
        if c in words or (_is_string(table[c]) and table[c].astype(str).str.len().max() > LONG_TEXT)
    ]
    for c in wrapping:
        formats[c] = _breakable
    if len(table) <= TRANSPOSE_ROWS and len(table.columns) > TRANSPOSE_COLUMNS:
        return _turned(table, formats, caption)
    styles = {
        c: [{"selector": "td", "props": ("text-align: left;" if c in words else "")
             + ("" if c in wrapping else "white-space: nowrap;")}]
        + ([{"selector": "th", "props": "text-align: left;"}] if c in words else [])
        for c in table.columns
    }
    styler = table.style.format(formats, na_rep="–").format_index(_label, axis=1).set_table_styles(styles)
    if caption:
        styler = styler.set_caption(html.escape(caption))
    return styler.hide(axis="index")


def timing_caption(table: pd.DataFrame) -> str:
    """How clean a timing table's seconds are, from its :data:`~kdrepro.efficiency.CONTENTION_COLUMN`
    (the cores other processes kept busy while each row was timed); "" without that column or a reading."""
    if CONTENTION_COLUMN not in table or not table[CONTENTION_COLUMN].notna().any():
        return ""
    busiest = float(table[CONTENTION_COLUMN].max())
    if busiest < IDLE_OTHER_CORES:
        return f"timed on an otherwise idle machine (other processes: at most {busiest:.2f} cores)"
    return (f"⚠ timed while other processes kept up to {busiest:.2f} cores busy: these seconds are inflated; "
            "rerun on an idle machine before comparing them")


def _turned(table: pd.DataFrame, formats: Mapping[Any, Any], caption: str):
    """``table`` with its columns as rows: one column per row of ``table``, headed by its first text column
    when that names every row once (``teacher``: MF, CML …), else by the row's number."""
    heads = next((c for c in table.columns if _is_text(table[c]) and table[c].is_unique), None)
    names = [str(v) for v in table[heads]] if heads is not None else [f"row {i + 1}" for i in range(len(table))]

    def cell(column: Any, value: Any) -> str:
        if pd.api.types.is_scalar(value) and pd.isna(value):
            return "–"
        shown = formats.get(column, str)(value)
        return shown if column in formats and formats[column] is _breakable else html.escape(shown)

    rows = [[_label(c), *(cell(c, v) for v in table[c])] for c in table.columns if c != heads]
    turned = pd.DataFrame(rows, columns=["", *names])
    styler = turned.style.set_table_styles({"": [{"selector": "td", "props": "text-align: left; font-weight: 600;"}]})
    if caption:
        styler = styler.set_caption(html.escape(caption))
    return styler.hide(axis="index")


_VALUE_COLUMNS = {"method", "metric", "paper", "ours_mean", "ours_std", "n_seeds", "rel_delta", "verdict"}
VERDICT_MARKS = {"reproduced": "✓", "partially": "≈", "not": "✗", "no paper value": ""}
MAX_METRICS_PER_TABLE = 4  # three columns each: a table stays readable at 1,400 px


class Tables:
    """Several HTML tables shown as one output (side by side where they fit)."""

    def __init__(self, parts: list, note: str = "") -> None:
        self.parts, self.note = parts, note

    def to_html(self) -> str:
        note = f"<p class='table-note'>{self.note}</p>" if self.note else ""
        inner = "".join(f"<div>{part.to_html()}</div>" for part in self.parts)
        return f"{note}<div class='tables'>{inner}</div>"

    def _repr_html_(self) -> str:
        return self.to_html()


class NotRun:
    """Shown instead of a table or figure that would have fewer than two points to compare."""

    def __init__(self, what: str) -> None:
        self.what = what

    def to_html(self) -> str:
        return f"<p class='not-run'><b>Not run in this profile:</b> {self.what}</p>"

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        return f"Not run in this profile: {self.what}"


def _key_columns(table: pd.DataFrame) -> list[str]:
    """Row keys of a paper-vs-ours table: every column that is not a value, a verdict or a gain."""
    return [
        c
        for c in table.columns
        if c not in _VALUE_COLUMNS and not str(c).startswith(("ours", "paper", "gain", "rel_")) and "verdict" not in c
    ]


def _ours_cell(mean: float, std: float, precision: int) -> str:
    if pd.isna(mean):
        return "–"
    spread = "" if pd.isna(std) else f"<br><small>± {std:.{precision}f}</small>"
    return f"{mean:.{precision}f}{spread}"


def _metric_groups(metrics: list[str]) -> list[list[str]]:
    """Metrics in tables of at most MAX_METRICS_PER_TABLE: one table per cut-off when there are more."""
    if len(metrics) <= MAX_METRICS_PER_TABLE:
        return [metrics]
    by_cutoff: dict[str, list[str]] = {}
    for metric in metrics:
        by_cutoff.setdefault(metric.partition("@")[2], []).append(metric)
    groups = list(by_cutoff.values())
    return [g[i : i + MAX_METRICS_PER_TABLE] for g in groups for i in range(0, len(g), MAX_METRICS_PER_TABLE)]


def paper_vs_ours_view(table: pd.DataFrame, precision: int = 4, caption: str = ""):
    """Display version of a ``paper.paper_vs_ours`` table: one row per method, metrics as columns.

    Per metric three columns — ours (mean, ± std over seeds below it), the paper's value, and Δ relative to
    the paper with the verdict (✓ reproduced, ≈ partially, ✗ not; coloured). Keys constant over the table
    (dataset, protocol …) go to the caption; a table with more than four metrics is split by cut-off, and
    one table is made per remaining key group (e.g. per protocol). The long table itself is the CSV.
    """
    if table.empty:
        return NotRun("no paper-vs-ours values")
    keys = _key_columns(table)
    constant = [k for k in keys if table[k].nunique(dropna=False) == 1]
    varying = [k for k in keys if k not in constant]
    shared = " · ".join(str(table[k].iloc[0]) for k in constant)
    outer = [k for k in varying if k in ("dataset", "protocol", "probe")]
    inner = [k for k in varying if k not in outer]
    parts = []
    groups = table.groupby(outer, sort=False, dropna=False) if outer else [((), table)]
    for labels, frame in groups:
        labels = labels if isinstance(labels, tuple) else (labels,)
        metrics = list(dict.fromkeys(frame["metric"]))
        for chunk in _metric_groups(metrics):
            parts.append(_paper_vs_ours_part(frame, inner, chunk, precision, " · ".join(map(str, (shared, *labels)))))
    note = (
        (f"{caption} — " if caption else "")
        + "ours: mean over seeds (± std below); Δ relative to the paper; ✓ reproduced, ≈ partially, ✗ not"
    )
    return Tables(parts, note)


def _paper_vs_ours_part(frame: pd.DataFrame, keys: list[str], metrics: list[str], precision: int, caption: str):
    rows = frame[frame["metric"].isin(metrics)]
    index = [*keys, "method"]
    order = rows[index].drop_duplicates()
    cells: dict[tuple, dict] = {}
    verdicts: dict[tuple, str] = {}
    for row in rows.to_dict("records"):
        at = tuple(row[k] for k in index)
        line = cells.setdefault(at, {})
        metric = row["metric"]
        mark = VERDICT_MARKS.get(row["verdict"], "")
        line[(metric, "ours")] = _ours_cell(row["ours_mean"], row.get("ours_std", np.nan), precision)
        line[(metric, "paper")] = "–" if pd.isna(row["paper"]) else f"{row['paper']:.{precision}f}"
        line[(metric, "Δ")] = "" if pd.isna(row["rel_delta"]) else f"{100 * row['rel_delta']:+.1f} % {mark}"
        verdicts[(*at, metric)] = row["verdict"]
    columns = pd.MultiIndex.from_product([metrics, ["ours", "paper", "Δ"]])
    body = pd.DataFrame(
        [cells[tuple(r)] for r in order.itertuples(index=False)],
        index=pd.MultiIndex.from_frame(order) if len(index) > 1 else pd.Index(order[index[0]]),
    ).reindex(columns=columns).fillna("")

    def colour(column: pd.Series) -> list[str]:
        metric, part = column.name
        if part != "Δ":
            return ["border-left: 2px solid #8c959f" if part == "ours" else ""] * len(column)
        keys_of = [idx if isinstance(idx, tuple) else (idx,) for idx in column.index]
        return [
            f"background-color: {VERDICT_COLOURS.get(verdicts.get((*k, metric)), '')}" for k in keys_of
        ]

    styler = body.style.apply(colour, axis=0).set_caption(caption)
    if len(index) == 1:
        styler = styler.hide(axis="index", names=True)  # the method names speak for themselves
    return (
        styler
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


_HISTORY_PREFIXES = {"valid": "validation", "test": "test", "loss": "loss", "train": "training"}


def axis_label(column: str) -> str:
    """A history column as words: ``valid/NDCG@10`` → "validation NDCG@10", ``loss/rrd`` → "loss: rrd"."""
    prefix, sep, rest = column.partition("/")
    if not sep:
        return column.replace("_", " ")
    words = _HISTORY_PREFIXES.get(prefix, prefix)
    return f"{words}: {rest}" if prefix == "loss" else f"{words} {rest}"


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
    ax.set_ylabel(axis_label(metric))
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


SWEEP_LABELS = {
    "phi": "student size φ (student dim / teacher dim)",
    "lambda_de": "λ_DE",
    "lambda_rrd": "λ_RRD",
    "lambda_ir": "λ_IR",
    "num_experts": "number of experts M",
    "num_interesting": "interesting items K",
    "ir_users": "users sampled per item",
}


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
    points = results[x].dropna().nunique() if x in results else 0
    if points < 2:
        return NotRun(f"a sweep over {x} needs at least 2 values; this run has {points}")
    xs = sorted(results[x].dropna().unique())
    if not log_x and all(isinstance(v, int | float | np.number) and v > 0 for v in xs):
        gaps = np.diff(xs) / (xs[-1] - xs[0])
        log_x = bool(len(gaps) and gaps.min() < 0.08 and xs[-1] / xs[0] >= 8)  # crowded ticks: log scale
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
            ax.set_xlabel(SWEEP_LABELS.get(x, x.replace("_", " ")))
            ax.set_ylabel(metric if metric == "seconds" else f"test {metric}")
            ax.set_title(metric if value is None else f"{value} · {metric}")
            ax.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


def heatmaps(panels: Mapping[str, pd.DataFrame], fmt: str = ".4f", cmap: str = "viridis") -> Figure | NotRun:
    """One annotated heatmap per matrix of ``panels`` (``{title: DataFrame}``).

    Panels of one metric (every title ends with the same word, e.g. "bpr · HR@5", "neumf · HR@5") are
    compared with each other: one colour scale and one colour bar for all. Panels of different metrics
    keep a scale (and a colour bar) each. Row and column labels are the matrices' index and columns.
    Fewer than two cells in every panel: :class:`NotRun`.
    """
    if not panels or all(matrix.size < 2 for matrix in panels.values()):
        sizes = ", ".join(f"{m.shape[0]}×{m.shape[1]}" for m in panels.values()) or "none"
        return NotRun(f"a grid needs at least 2 cells; this run has {sizes}")
    shared = len({str(title).split()[-1] for title in panels}) == 1
    values = np.concatenate([m.to_numpy(dtype=float).ravel() for m in panels.values()])
    count = len(panels)
    fig, axes = plt.subplots(1, count, figsize=(4.4 * count + 0.8, 3.8), squeeze=False)
    plt.close(fig)
    for ax, (title, matrix) in zip(axes[0], panels.items(), strict=False):
        if matrix.size < 2:  # one cell is no grid: say so in its place, draw the panels beside it
            ax.axis("off")
            ax.set_title(title, fontsize="medium")
            ax.text(0.5, 0.5, f"not run in this profile:\n{matrix.size} cell", ha="center", va="center",
                    transform=ax.transAxes, color="#59636e")
            continue
        labels = matrix.copy()
        labels.index = [f"{v:g}" if isinstance(v, int | float | np.number) else str(v) for v in matrix.index]
        labels.columns = [f"{v:g}" if isinstance(v, int | float | np.number) else str(v) for v in matrix.columns]
        scale = {"vmin": np.nanmin(values), "vmax": np.nanmax(values)} if shared else {}
        sns.heatmap(labels.astype(float), annot=True, fmt=fmt, cmap=cmap, cbar=not shared, ax=ax,
                    annot_kws={"fontsize": "small"}, **scale)
        ax.set_ylabel(SWEEP_LABELS.get(str(matrix.index.name), matrix.index.name or ""))
        ax.set_xlabel(SWEEP_LABELS.get(str(matrix.columns.name), matrix.columns.name or ""))
        ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    drawn = [ax for ax in axes[0] if ax.collections]
    if shared and drawn:
        bar = fig.colorbar(drawn[0].collections[0], ax=list(axes[0]), fraction=0.03, pad=0.02)
        bar.set_label("one scale for all panels")
    return fig


def _expert_colours(count: int):
    from matplotlib.colors import ListedColormap

    colours = [*plt.get_cmap("tab20").colors, *plt.get_cmap("tab20b").colors, *plt.get_cmap("tab20c").colors]
    if count > len(colours):
        colours = [plt.get_cmap("hsv")(i / count) for i in range(count)]
    return ListedColormap(colours[:count])


def selection_map_plot(frame: pd.DataFrame, num_experts: int | None = None, ax=None) -> Figure:
    """The expert each user (rows) selects after each epoch (columns): one colour per expert (Fig. 6).

    ``frame``: from ``tables.selection.selection_map`` (users sorted by their final expert, so that groups of
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
    """Two panels from ``tables.selection.selection_summary``: how settled the selection is (share of users
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
    """Display version of ``tables.compare.design_choice_table``: one row per (base, variant); per metric our
    mean ± std and the paper's value, each followed by its rank among the variants (1 = best)."""
    variants = table.groupby("base")["variant"].nunique().max() if len(table) else 0
    if variants < 2:
        return NotRun(f"a comparison of design choices needs at least 2 variants; this run has {variants}")
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
