"""The papers' published numbers, and paper-vs-ours tables with a verdict per value.

The published tables ship with the package as CSV files (``kdrepro/paper_data/``; their sources are
named in ``SOURCES.md`` there and in :data:`SOURCES`). ``load_table(name)`` reads one as printed;
``long_form`` melts one into rows of (dataset, base, method, metric, paper); ``paper_vs_ours`` puts our
per-seed results next to them::

    ours = report.long_results(...)           # dataset, base, method, metric, seed, value
    table = paper_vs_ours(ours, "td_table1_main")

Verdicts, per (dataset, base, method, metric):

- ``reproduced``: our mean is within ``tolerance`` (relative) of the paper's value;
- ``partially``: it is not, but the ordering of this method against every other method of the same
  (dataset, base, metric) that both sides report is the paper's (e.g. the teacher still beats the
  student, the KD method still beats the student);
- ``not``: neither (also when there is no other method to compare the ordering with);
- ``no paper value``: the paper does not report this value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources

import numpy as np
import pandas as pd

KEYS = ("dataset", "base", "method", "metric")
COLUMNS = (
    "dataset",
    "base",
    "method",
    "metric",
    "paper",
    "ours_mean",
    "ours_std",
    "n_seeds",
    "rel_delta",
    "verdict",
)
VERDICTS = ("reproduced", "partially", "not", "no paper value")

# Our names → the papers' spelling (the join key of paper-vs-ours tables).
PAPER_DATASETS = {"citeulike-t": "CiteULike", "citeulike": "CiteULike", "foursquare": "Foursquare"}
PAPER_BASES = {"bpr": "BPR", "mf": "BPR", "neumf": "NeuMF", "lightgcn": "LightGCN", "cml": "CML"}

# The table holding each protocol's main results (teacher, student and KD methods at φ = 0.1).
PROTOCOL_TABLES = {"loo_sampled": "derrd_table2_main_phi0.1", "loo_full": "td_table1_main"}

DERRD = "Kang et al., DE-RRD: A Knowledge Distillation Framework for Recommender System, CIKM 2020"
TD = "Kang et al., Topology Distillation for Recommender System, KDD 2021"
SOURCES = {
    "derrd_datasets": f"{DERRD}, Table 1 (dataset statistics)",
    "derrd_table2_main_phi0.1": f"{DERRD}, Table 2 (main results, phi = 0.1, LOO with 499 sampled negatives)",
    "derrd_table3_efficiency": f"{DERRD}, Table 3 (efficiency)",
    "derrd_table4_design_choices_foursquare": f"{DERRD}, Table 4 (design choices, Foursquare)",
    "derrd_table5_lambda_grid_foursquare_hr5": f"{DERRD}, Table 5 (lambda grid, Foursquare, H@5)",
    "td_datasets": f"{TD}, dataset statistics",
    "td_table1_main": f"{TD}, Table 1 (main results, phi = 0.1, LOO full ranking)",
    "td_table2_ablation": f"{TD}, Table 2 (ablation)",
    "td_table3_downstream": f"{TD}, Table 3 (downstream tasks)",
    "td_table4_group_assignment_bpr": f"{TD}, Table 4 (group assignment, BPR)",
    "phr_rerun_hyperkdma_table2_citeulike": (
        "HyperKDMA manuscript (github.com/hieunm44/hyperkdma), Table 2: "
        "a third-party re-run, not the PHR paper"
    ),
}

_METRIC = re.compile(r"^(?:(?P<prefix>[A-Za-z]+)_)?(?P<metric>[A-Za-z]+@\d+)$")


def available() -> list[str]:
    """Names of the packaged tables (file names without ``.csv``)."""
    folder = resources.files("kdrepro") / "paper_data"
    return sorted(entry.name[:-4] for entry in folder.iterdir() if entry.name.endswith(".csv"))


def load_table(name: str) -> pd.DataFrame:
    """A packaged table as printed in its paper (``name`` with or without ``.csv``)."""
    stem = name[:-4] if name.endswith(".csv") else name
    path = resources.files("kdrepro") / "paper_data" / f"{stem}.csv"
    if not path.is_file():
        raise KeyError(f"no paper table {stem!r}; available: {available()}")
    with path.open("rb") as handle:
        table = pd.read_csv(handle)
    table.attrs["source"] = SOURCES.get(stem, "see kdrepro/paper_data/SOURCES.md")
    table.attrs["name"] = stem
    return table


def to_paper_names(frame: pd.DataFrame) -> pd.DataFrame:
    """Our dataset/base names (``citeulike-t``, ``bpr``) in the papers' spelling (``CiteULike``, ``BPR``)."""
    out = frame.copy()
    if "dataset" in out:
        out["dataset"] = out["dataset"].map(lambda v: PAPER_DATASETS.get(str(v).lower(), v))
    if "base" in out:
        out["base"] = out["base"].map(lambda v: PAPER_BASES.get(str(v).lower(), v))
    return out


def long_form(table: pd.DataFrame | str) -> pd.DataFrame:
    """Melt a printed table into rows of (identifier columns…, metric, paper).

    Metric columns are those named like ``HR@5`` (or ``citeulike_Recall@50``, whose prefix becomes the
    ``dataset``); a ``variant`` column is read as ``method``; a ``source`` column is dropped. Missing
    values stay as NaN rows (no paper value).
    """
    frame = load_table(table) if isinstance(table, str) else table
    if {"metric", "paper"} <= set(frame.columns):
        return frame.copy()
    frame = frame.drop(columns=[c for c in ("source",) if c in frame]).rename(columns={"variant": "method"})
    metric_cols = [c for c in frame.columns if _METRIC.match(str(c))]
    if not metric_cols:
        raise ValueError(f"no metric columns (named like 'HR@5') in {list(frame.columns)}")
    ids = [c for c in frame.columns if c not in metric_cols]
    melted = frame.melt(id_vars=ids, value_vars=metric_cols, var_name="metric", value_name="paper")
    parts = melted["metric"].str.extract(_METRIC)
    if parts["prefix"].notna().any():
        prefix = parts["prefix"].map(
            lambda v: PAPER_DATASETS.get(str(v).lower(), v) if isinstance(v, str) else v
        )
        melted["dataset"] = prefix.where(parts["prefix"].notna(), melted.get("dataset"))
        melted["metric"] = parts["metric"]
    melted["paper"] = pd.to_numeric(melted["paper"], errors="coerce")
    return melted


def _verdicts(table: pd.DataFrame, group_keys: list[str], tolerance: float) -> pd.Series:
    verdict = pd.Series("not", index=table.index, dtype=object)
    verdict[table["paper"].isna()] = "no paper value"
    within = table["rel_delta"].abs() <= tolerance
    verdict[within & table["paper"].notna()] = "reproduced"
    for _, group in table.groupby(group_keys, dropna=False, sort=False):
        both = group[group["paper"].notna() & group["ours_mean"].notna()]
        for idx, row in both.iterrows():
            if verdict[idx] != "not":
                continue
            others = both.drop(index=idx)
            others = others[others["paper"] != row["paper"]]  # a tie in the paper orders nothing
            if others.empty:
                continue
            paper_sign = np.sign(row["paper"] - others["paper"].to_numpy())
            ours_sign = np.sign(row["ours_mean"] - others["ours_mean"].to_numpy())
            if np.array_equal(paper_sign, ours_sign):
                verdict[idx] = "partially"
    return verdict


def paper_vs_ours(
    ours: pd.DataFrame,
    paper_table: pd.DataFrame | str | Mapping[str, pd.DataFrame | str],
    tolerance: float = 0.05,
) -> pd.DataFrame:
    """Our per-seed results next to the paper's values, one row per (dataset, base, method, metric).

    ``ours``: long form with columns ``dataset, base, method, metric, seed, value`` (our names such as
    ``citeulike-t``/``bpr`` are mapped to the papers'). Any further column (e.g. ``protocol``) is kept
    as an extra key, placed after ``dataset``. ``paper_table``: a packaged table's name, a printed
    (wide) or long table, or ``{protocol: table}`` when ``ours`` has a ``protocol`` column (each
    protocol is compared with its own paper table; see :data:`PROTOCOL_TABLES`).

    Returns the columns ``dataset, base, method, metric, paper, ours_mean, ours_std, n_seeds,
    rel_delta, verdict``; ``rel_delta = (ours_mean - paper) / paper``; ``ours_std`` uses ddof = 1
    (NaN with one seed). Rows of the paper that we did not run are left out.
    """
    missing = {"dataset", "base", "method", "metric", "value"} - set(ours.columns)
    if missing:
        raise ValueError(
            f"ours lacks the columns {sorted(missing)}; expected long form {KEYS + ('seed', 'value')}"
        )
    if isinstance(paper_table, Mapping):
        if "protocol" not in ours:
            raise ValueError("a {protocol: table} mapping needs a 'protocol' column in ours")
        parts = [
            paper_vs_ours(ours[ours["protocol"] == protocol], table, tolerance)
            for protocol, table in paper_table.items()
            if (ours["protocol"] == protocol).any()
        ]
        unmatched = ours[~ours["protocol"].isin(list(paper_table))]
        if not unmatched.empty:
            parts.append(paper_vs_ours(unmatched, pd.DataFrame(columns=[*KEYS, "paper"]), tolerance))
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(COLUMNS))

    ours = to_paper_names(ours)
    extra = [c for c in ours.columns if c not in (*KEYS, "seed", "value")]
    keys = ["dataset", *extra, "base", "method", "metric"]
    stats = (
        ours.groupby(keys, dropna=False, sort=False)["value"]
        .agg(ours_mean="mean", ours_std=lambda v: v.std(ddof=1) if len(v) > 1 else np.nan, n_seeds="count")
        .reset_index()
    )
    paper = long_form(paper_table)
    paper = to_paper_names(paper)
    join = [k for k in KEYS if k in paper.columns]
    paper = paper[[*join, "paper"]].drop_duplicates(subset=join)
    table = stats.merge(paper, on=join, how="left")
    table["n_seeds"] = table["n_seeds"].astype(int)
    table["rel_delta"] = (table["ours_mean"] - table["paper"]) / table["paper"]
    table["verdict"] = _verdicts(table, ["dataset", *extra, "base", "metric"], tolerance)
    columns = ["dataset", *extra, *[c for c in COLUMNS if c != "dataset"]]
    table = table[columns]
    table.attrs["tolerance"] = tolerance
    return table


def verdict_counts(table: pd.DataFrame) -> dict[str, int]:
    """How many rows got each verdict (every verdict listed, zeros included)."""
    counts = table["verdict"].value_counts()
    return {v: int(counts.get(v, 0)) for v in VERDICTS}
