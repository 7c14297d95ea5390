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

Three kinds of verdict, all three in every paper-vs-ours table of a chapter:

- **cells** (:func:`paper_vs_ours`): each value within ±5 % of the paper's (above);
- **gains** (:func:`gain_verdicts`): each KD method's relative gain over the undistilled student —
  reproduced when it has the paper's sign and lies within ±50 % of the paper's gain, or within 2 standard
  errors over seeds of it; partially with the same sign otherwise; not with the opposite sign;
- **claims** (:func:`claim_verdicts`, claims read by :func:`parse_claims`): each pairwise ordering claim
  ("Student < RD ≈ CD < RRD", "DE ≤ PHR") on the means over seeds and seed by seed — reproduced when it
  holds on the means and on every seed, partially when on the means or on at least half of the seeds.

``metrics.json`` schema: a chapter calls :func:`verdicts` once per paper table it checks and saves
:func:`chapter_verdicts` of the blocks at the top level of ``metrics.json`` (chapter 08, the README table
and the "results at a glance" header read it)::

    "verdicts": {
        "cells":  {"reproduced": int, "partially": int, "not": int},   # summed over the chapter's tables
        "gains":  {"reproduced": int, "partially": int, "not": int},
        "claims": {"reproduced": int, "partially": int, "not": int},
        "tables": {"<paper table name>": {"cells": {...}, "gains": {...}, "claims": {...}}, ...}},
    "misses": [{"kind": "cell" | "gain" | "claim", "table": "<paper table name>",
                "verdict": "partially" | "not", "what": "BPR FTD Recall@50",
                "why": "ours 0.2014 vs paper 0.2624 (-23.2 %), outside ±5 %; ..."}, ...]

"no paper value" rows are not counted (a run on synthetic data has zero counts). The tables themselves are
saved beside it as ``tables/<name>.csv`` by the chapter's recorder.
"""

from __future__ import annotations

import itertools
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


# --------------------------------------------------------------------------------------------------
# Gains over the undistilled student, ordering claims over seeds, and the metrics.json verdict block
# --------------------------------------------------------------------------------------------------

GAIN_COLUMNS = ("dataset", "base", "method", "metric", "paper_gain", "ours_gain", "ours_gain_se", "n_seeds",
                "verdict")
_CLAIM_OPS = {"<": "<", "≈": "≈", "~": "≈", "≤": "≤", "<=": "≤"}
_CHAIN = re.compile(r"\s*(<=|≤|<|≈|~)\s*")


def gain_verdicts(
    ours: pd.DataFrame,
    paper_table: pd.DataFrame | str | Mapping[str, pd.DataFrame | str],
    reference: str = "Student",
    band: float = 0.5,
    standard_errors: float = 2.0,
    exclude: tuple[str, ...] = ("Teacher",),
) -> pd.DataFrame:
    """Each method's relative gain over ``reference`` (the undistilled student), ours against the paper's.

    Gain = (method − reference) / reference. Ours is the mean over seeds of the per-seed gains (method and
    reference of the same seed), with its standard error (std / √n; NaN with one seed). Verdicts:

    - ``reproduced``: the same sign as the paper's gain and within ±``band`` (relative) of it, or within
      ``standard_errors`` standard errors of it;
    - ``partially``: the same sign, outside both bands;
    - ``not``: the opposite sign (or no gain where the paper has one);
    - ``no paper value``: the paper lacks the method's or the reference's value.

    A ±5 % band on values cannot tell KD from no KD when the student alone is within 5 % of the KD rows;
    the gain can. ``ours`` and ``paper_table`` as in :func:`paper_vs_ours` (a ``protocol`` column and a
    ``{protocol: table}`` mapping are accepted).
    """
    if isinstance(paper_table, Mapping):
        parts = [gain_verdicts(ours[ours["protocol"] == p], t, reference, band, standard_errors, exclude)
                 for p, t in paper_table.items() if "protocol" in ours and (ours["protocol"] == p).any()]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(GAIN_COLUMNS))
    ours = to_paper_names(ours)
    extra = [c for c in ours.columns if c not in (*KEYS, "seed", "value")]
    group_keys = ["dataset", *extra, "base", "metric"]
    paper = to_paper_names(long_form(paper_table))
    join = [k for k in KEYS if k in paper.columns]
    paper = paper.dropna(subset=["paper"]).drop_duplicates(subset=join).set_index(join)["paper"]
    rows = []
    for labels, frame in ours.groupby(group_keys, sort=False, dropna=False):
        labels = dict(zip(group_keys, labels, strict=True))
        per_seed = frame.pivot_table(index="seed", columns="method", values="value", aggfunc="mean")
        if reference not in per_seed:
            continue
        for method in per_seed.columns:
            if method == reference or method in exclude:
                continue
            paired = per_seed[[reference, method]].dropna()
            gains = ((paired[method] - paired[reference]) / paired[reference]).to_numpy()
            key = tuple(method if k == "method" else labels[k] for k in join)
            ref_key = tuple(reference if k == "method" else labels[k] for k in join)
            paper_value, paper_ref = paper.get(key, np.nan), paper.get(ref_key, np.nan)
            paper_gain = (paper_value - paper_ref) / paper_ref if paper_ref else np.nan
            ours_gain = float(gains.mean()) if len(gains) else np.nan
            se = float(gains.std(ddof=1) / np.sqrt(len(gains))) if len(gains) > 1 else np.nan
            rows.append({**labels, "method": method, "paper_gain": paper_gain, "ours_gain": ours_gain,
                         "ours_gain_se": se, "n_seeds": len(gains),
                         "verdict": _gain_verdict(paper_gain, ours_gain, se, band, standard_errors)})
    columns = ["dataset", *extra, *[c for c in GAIN_COLUMNS if c != "dataset"]]
    return pd.DataFrame(rows, columns=columns)


def _gain_verdict(paper_gain: float, ours_gain: float, se: float, band: float, standard_errors: float) -> str:
    if pd.isna(paper_gain) or pd.isna(ours_gain):
        return "no paper value"
    within_band = np.sign(ours_gain) == np.sign(paper_gain) and abs(ours_gain - paper_gain) <= band * abs(paper_gain)
    within_se = not pd.isna(se) and abs(ours_gain - paper_gain) <= standard_errors * se
    if within_band or within_se:
        return "reproduced"
    return "partially" if np.sign(ours_gain) == np.sign(paper_gain) != 0 else "not"


def parse_claims(text: str | list[str] | tuple[str, ...]) -> list[tuple[str, str, str]]:
    """Pairwise claims (a, op, b) of an ordering chain or a list of claims, the one parser of the suite.

    ``"Student < RD ≈ CD < RRD"`` → (Student, <, RD), (Student, <, CD), (RD, ≈, CD), (RD, <, RRD),
    (CD, <, RRD): ``<`` (b beats a) separates groups, every member of a group claimed below every member
    of the next; ``≈`` (or ``~``) joins methods claimed about equal; ``≤`` (or ``<=``): b matches or beats
    a. A list gives the claims of each of its strings.
    """
    if not isinstance(text, str):
        return [claim for item in text for claim in parse_claims(item)]
    parts = _CHAIN.split(text.strip())
    names, ops = parts[0::2], [_CLAIM_OPS[op] for op in parts[1::2]]
    if not ops or any(not n.strip() for n in names):
        raise ValueError(f"cannot read the claim {text!r}; write e.g. 'A < B ≈ C' (C and B beat A, B ≈ C) "
                         "or 'A ≤ B' (B matches or beats A)")
    groups, links = [[names[0].strip()]], []
    for op, name in zip(ops, names[1:], strict=True):
        if op == "≈":
            groups[-1].append(name.strip())
        else:
            groups.append([name.strip()])
            links.append(op)
    claims = []
    for index, group in enumerate(groups):
        if index:
            claims += [(a, links[index - 1], b) for a in groups[index - 1] for b in group]
        claims += [(a, "≈", b) for a, b in itertools.combinations(group, 2)]
    return claims


def claim_holds(a: np.ndarray | float, op: str, b: np.ndarray | float, tolerance: float) -> np.ndarray:
    """``a < b``: b above a; ``a ≤ b``: b ≥ a (1 − tolerance); ``a ≈ b``: |b − a| ≤ tolerance · max(|a|, |b|)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if op == "<":
        return b > a
    if op == "≤":
        return b >= a * (1 - tolerance)
    return np.abs(b - a) <= tolerance * np.maximum(np.abs(a), np.abs(b))


def claim_verdicts(
    ours: pd.DataFrame,
    claims: str | list[str] | tuple[str, ...],
    metrics: list[str] | tuple[str, ...],
    paper_table: pd.DataFrame | str | None = None,
    tolerance: float = 0.02,
    by: tuple[str, ...] = ("protocol", "base"),
) -> pd.DataFrame:
    """Each pairwise claim on the means over seeds and seed by seed, with a verdict.

    Per (``by`` groups present, metric, claim): both means, ``rel_diff`` = (b − a) / a, ``per_seed_diff``
    (b − a seed by seed: the teacher of seed s teaches both students of seed s, so they are paired), ``holds``
    on the means, ``seeds_agree`` of ``n_seeds`` (seeds on which it holds), and, given
    ``paper_table``, whether the paper's own values satisfy it (``paper_holds``). Verdicts:
    ``reproduced`` — holds on the means and on every seed; ``partially`` — holds on the means or on at least
    half of the seeds, not both on all; ``not`` — otherwise.
    """
    parsed = parse_claims(claims)
    ours = to_paper_names(ours)
    by = [c for c in by if c in ours]
    paper = None
    if paper_table is not None:
        paper = to_paper_names(long_form(paper_table)).drop_duplicates(subset=list(KEYS)).set_index(list(KEYS))["paper"]
    rows = []
    groups = ours.groupby(["dataset", *by], sort=False) if by else ours.groupby(["dataset"], sort=False)
    for group, frame in groups:
        labels = dict(zip(["dataset", *by], group if isinstance(group, tuple) else (group,), strict=True))
        for metric in metrics:
            values = frame[frame["metric"] == metric].pivot_table(index="seed", columns="method", values="value",
                                                                  aggfunc="mean")
            for a, op, b in parsed:
                if a not in values or b not in values:
                    continue
                paired = values[[a, b]].dropna()
                agree = claim_holds(paired[a].to_numpy(), op, paired[b].to_numpy(), tolerance)
                a_mean, b_mean = float(values[a].mean()), float(values[b].mean())
                holds = bool(claim_holds(a_mean, op, b_mean, tolerance))
                paper_holds = None
                if paper is not None:
                    base = labels.get("base")
                    pa, pb = (paper.get((labels["dataset"], base, m, metric), np.nan) for m in (a, b))
                    paper_holds = None if pd.isna(pa) or pd.isna(pb) else bool(claim_holds(pa, op, pb, tolerance))
                n, k = len(paired), int(agree.sum())
                verdict = ("reproduced" if holds and n and k == n else
                           "partially" if holds or (n and 2 * k >= n) else "not")
                rows.append({**labels, "metric": metric, "claim": f"{a} {op} {b}", "a_mean": a_mean,
                             "b_mean": b_mean, "rel_diff": (b_mean - a_mean) / a_mean if a_mean else np.nan,
                             "per_seed_diff": ", ".join(f"{d:+.4f}" for d in paired[b] - paired[a]),
                             "holds": holds, "seeds_agree": k, "n_seeds": n, "paper_holds": paper_holds,
                             "verdict": verdict})
    return pd.DataFrame(rows)


def _counts(table: pd.DataFrame | None) -> dict[str, int]:
    verdicts = table["verdict"] if table is not None and len(table) else pd.Series(dtype=object)
    return {v: int((verdicts == v).sum()) for v in ("reproduced", "partially", "not")}


def _fmt(value: float) -> str:
    return "nan" if pd.isna(value) else f"{100 * value:+.1f} %"


def _miss(kind: str, table: str, verdict: str, what: str, why: str) -> dict[str, str]:
    return {"kind": kind, "table": table, "verdict": verdict, "what": what, "why": why}


def verdicts(
    cells: pd.DataFrame | None = None,
    gains: pd.DataFrame | None = None,
    claims: pd.DataFrame | None = None,
    table: str = "",
    tolerance: float = 0.05,
) -> dict:
    """One paper table's verdict block: counts of the three kinds and a one-line reason per miss.

    ``cells``: a :func:`paper_vs_ours` table; ``gains``: :func:`gain_verdicts`; ``claims``:
    :func:`claim_verdicts`; ``table``: the paper table they check (named in every miss). Combine a
    chapter's blocks with :func:`chapter_verdicts` (the schema is in this module's docstring).
    """
    misses = []
    # A section narrowed to nothing comparable (e.g. one variant of an ablation) gives an empty table.
    cells, gains, claims = (None if t is None or not len(t) else t for t in (cells, gains, claims))
    if cells is not None:
        for _, row in cells[cells["verdict"].isin(["partially", "not"])].iterrows():
            order = "the ordering holds" if row["verdict"] == "partially" else "the ordering differs too"
            misses.append(_miss("cell", table, row["verdict"], f"{row['base']} {row['method']} {row['metric']}",
                                f"ours {row['ours_mean']:.4f} vs paper {row['paper']:.4f} ({_fmt(row['rel_delta'])}), "
                                f"outside ±{100 * tolerance:.0f} %; {order}"))
    if gains is not None:
        for _, row in gains[gains["verdict"].isin(["partially", "not"])].iterrows():
            why = "opposite sign" if row["verdict"] == "not" else "same sign, outside ±50 % and 2 SE"
            misses.append(_miss("gain", table, row["verdict"], f"{row['base']} {row['method']} over the student, "
                                f"{row['metric']}", f"gain ours {_fmt(row['ours_gain'])} vs paper "
                                f"{_fmt(row['paper_gain'])}: {why}"))
    if claims is not None:
        for _, row in claims[claims["verdict"].isin(["partially", "not"])].iterrows():
            misses.append(_miss("claim", table, row["verdict"], f"{row.get('base', '')} {row['claim']} on "
                                f"{row['metric']}".strip(), f"{'holds' if row['holds'] else 'fails'} on the means "
                                f"({_fmt(row['rel_diff'])}), on {row['seeds_agree']} of {row['n_seeds']} seeds"))
    return {"table": table, "cells": _counts(cells), "gains": _counts(gains), "claims": _counts(claims),
            "misses": misses}


def chapter_verdicts(*blocks: dict) -> dict:
    """``{"verdicts": {...}, "misses": [...]}`` for a chapter's ``metrics.json`` from its tables' blocks:
    the counts summed over the tables, each table's own counts under ``"tables"``, every miss listed.
    Pass it to ``report.run_metrics(results, headline, **chapter_verdicts(...))``."""
    kinds = ("cells", "gains", "claims")
    total = {kind: {v: sum(b[kind][v] for b in blocks) for v in ("reproduced", "partially", "not")} for kind in kinds}
    tables = {b["table"]: {kind: b[kind] for kind in kinds} for b in blocks}
    return {"verdicts": {**total, "tables": tables}, "misses": [m for b in blocks for m in b["misses"]]}
