"""Ours next to the papers: student/teacher ratios, variant tables with ranks, ordering agreement, gains, λ grids.

One variant table (:func:`variant_table`) serves DE-RRD's design choices (Table 4, Foursquare only: matched
on base) and TD's ablation and assignment tables (Tables 2 and 4: matched on the dataset too).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from kdrepro.paper import (
    PAPER_BASES,
    PAPER_DATASETS,
    claim_verdicts,
    load_table,
    long_form,
    paper_vs_ours,
    to_paper_names,
)
from kdrepro.runs import TD_ASSIGNMENT_LABELS

VARIANT_COLUMNS = ["base", "metric", "variant", "ours_mean", "ours_std", "n_seeds", "ours_rank", "paper", "paper_rank"]


def student_teacher_ratio(
    comparison: pd.DataFrame, teacher: str = "Teacher", student: str = "Student"
) -> pd.DataFrame:
    """Student / teacher for ours and for the paper, per (dataset, protocol, base, metric).

    ``comparison``: a ``paper.paper_vs_ours`` table. The ratio is the shape claim behind KD (how much a
    10x smaller model loses); it is less sensitive to training length than the absolute numbers.
    """
    keys = [c for c in comparison.columns if c in ("dataset", "protocol", "base", "metric")]
    both = comparison[comparison["method"].isin([teacher, student])]
    wide = both.pivot(index=keys, columns="method", values=["ours_mean", "paper"])
    if ("ours_mean", teacher) not in wide or ("ours_mean", student) not in wide:
        return pd.DataFrame(columns=[*keys, "ours_ratio", "paper_ratio"])
    out = pd.DataFrame(index=wide.index)
    out["ours_ratio"] = wide[("ours_mean", student)] / wide[("ours_mean", teacher)]
    out["paper_ratio"] = wide[("paper", student)] / wide[("paper", teacher)]
    out = out.dropna(subset=["ours_ratio"]).reset_index()
    order = both[keys].drop_duplicates()
    merged = order.merge(out, on=keys, how="left")
    return merged.dropna(subset=["ours_ratio"]).reset_index(drop=True)


def variant_table(results: pd.DataFrame, paper: pd.DataFrame, metrics: Sequence[str], on: Sequence[str]
                  ) -> pd.DataFrame:
    """Our variants (column ``variant``) next to ``paper`` (long form with ``variant, metric, paper`` and the
    other ``on`` columns), with each side's rank per (base, metric) (rank 1 = best).

    Columns: ``base, metric, variant, ours_mean, ours_std, n_seeds, ours_rank, paper, paper_rank``.
    """
    ours = to_paper_names(results[results["metric"].isin(metrics)])
    keys = [k for k in on if k not in ("variant", "metric")] + ["metric", "variant"]
    table = (
        ours.groupby(keys, sort=False)["value"]
        .agg(ours_mean="mean", ours_std=lambda v: v.std(ddof=1) if len(v) > 1 else np.nan, n_seeds="count")
        .reset_index()
    )
    table = table.merge(paper[[*on, "paper"]], on=list(on), how="left")
    group = table.groupby(["base", "metric"], sort=False)
    table["ours_rank"] = group["ours_mean"].rank(ascending=False, method="min").astype(int)
    table["paper_rank"] = group["paper"].rank(ascending=False, method="min")
    return table[VARIANT_COLUMNS]


def design_choice_table(
    results: pd.DataFrame,
    metrics: Sequence[str] = ("HR@5", "NDCG@5", "HR@10", "NDCG@10"),
    paper_table: str = "derrd_table4_design_choices_foursquare",
) -> pd.DataFrame:
    """DE-RRD's Table 4: our variants next to the paper's, matched on base only.

    The paper ran its design-choice study on Foursquare only: its values are a qualitative reference
    (``paper_dataset`` says which data they come from); compare orderings, not values.
    """
    paper = long_form(paper_table).rename(columns={"method": "variant"})
    table = variant_table(results, paper, metrics, on=("base", "variant", "metric"))
    table["paper_dataset"] = "Foursquare" if "foursquare" in paper_table else ""
    return table


def td_paper_variants(paper_table: str) -> pd.DataFrame:
    """TD's Table 2 or 4 in long form: ``dataset, base, variant, metric, paper`` (our variant labels)."""
    table = load_table(paper_table)
    if "assignment" in table:  # Table 4: BPR only, the assignment as the row label
        table = table.rename(columns={"assignment": "variant"}).assign(base="BPR")
        table["variant"] = table["variant"].map(lambda v: TD_ASSIGNMENT_LABELS.get(v, v))
    return long_form(table).rename(columns={"method": "variant"})[["dataset", "base", "variant", "metric", "paper"]]


def td_variant_table(
    results: pd.DataFrame,
    paper_table: str = "td_table2_ablation",
    metrics: Sequence[str] = ("Recall@50", "NDCG@50"),
) -> pd.DataFrame:
    """TD's Tables 2 and 4: our variants next to the paper's values on the same dataset."""
    return variant_table(results, td_paper_variants(paper_table), metrics, on=("dataset", "base", "variant", "metric"))


def td_variant_verdicts(
    results: pd.DataFrame,
    paper_table: str,
    claims: Sequence[str],
    metrics: Sequence[str] = ("Recall@50", "NDCG@50"),
    tolerance: float = 0.05,
    claim_tolerance: float = 0.02,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """TD's Tables 2 and 4 with the suite's verdicts, each variant standing in for a method: the cells
    (:func:`kdrepro.paper.paper_vs_ours`, ±``tolerance``) and the paper's claims about its variants
    (:func:`kdrepro.paper.claim_verdicts`, e.g. ``"Group only < HTD"``) over seeds. No gains: these tables
    have no undistilled student."""
    ours = _variants_as_methods(results, metrics)
    theirs = td_paper_variants(paper_table).rename(columns={"variant": "method"})
    cells = paper_vs_ours(ours, theirs, tolerance)
    return cells, claim_verdicts(ours, list(claims), list(metrics), paper_table=theirs, tolerance=claim_tolerance)


def variant_claims(
    results: pd.DataFrame, claims: Sequence[str], metrics: Sequence[str], tolerance: float = 0.02
) -> pd.DataFrame:
    """A paper's claims about its design variants (``"(a) Attention < DE"``) checked on our variant runs over
    seeds (:func:`kdrepro.paper.claim_verdicts`), each variant standing in for a method. For DE-RRD's Table 4,
    whose values are Foursquare's: the claims are checked on our data, the values are not compared."""
    return claim_verdicts(_variants_as_methods(results, metrics), list(claims), list(metrics), tolerance=tolerance)


def _variants_as_methods(results: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    ours = results[results["metric"].isin(metrics)]
    return ours.assign(method=ours["variant"]).drop(columns="variant")


def ordering_agreement(table: pd.DataFrame) -> pd.DataFrame:
    """Per (base, metric) of a :func:`design_choice_table`: how far our ordering of the variants is the paper's.

    ``concordant``: the share of variant pairs that both sides order the same way (1 = same order);
    ``best_ours`` / ``best_paper``: the top variant on each side.
    """
    rows = []
    for (base, metric), group in table.dropna(subset=["paper"]).groupby(["base", "metric"], sort=False):
        pairs = list(itertools.combinations(range(len(group)), 2))
        ours, paper = group["ours_mean"].to_numpy(), group["paper"].to_numpy()
        same = [np.sign(ours[i] - ours[j]) == np.sign(paper[i] - paper[j]) for i, j in pairs]
        rows.append({
            "base": base, "metric": metric, "variants": len(group), "pairs": len(pairs),
            "concordant": float(np.mean(same)) if same else np.nan,
            "best_ours": group.loc[group["ours_mean"].idxmax(), "variant"],
            "best_paper": group.loc[group["paper"].idxmax(), "variant"],
        })
    return pd.DataFrame(rows)


def lambda_grid(
    results: pd.DataFrame,
    metric: str = "HR@5",
    paper_table: str | None = "derrd_table5_lambda_grid_foursquare_hr5",
    index: str = "lambda_de",
    columns: str = "lambda_rrd",
) -> dict[str, pd.DataFrame]:
    """Mean ``metric`` over seeds as λ_DE × λ_RRD matrices: ours per base, and the paper's (Foursquare).

    Returns ``{panel title: matrix}`` (rows ``index``, columns ``columns``), for
    :func:`kdrepro.report.heatmaps`.
    """
    panels = {}
    rows = results[results["metric"] == metric]
    paper = load_table(paper_table) if paper_table else None
    for base in dict.fromkeys(rows["base"]):
        mine = rows[rows["base"] == base].pivot_table(index=index, columns=columns, values="value", aggfunc="mean")
        dataset = PAPER_DATASETS.get(str(rows["dataset"].iloc[0]).lower(), rows["dataset"].iloc[0])
        panels[f"ours: {dataset}, {PAPER_BASES.get(base, base)}, {metric}"] = mine
        if paper is not None and metric in paper:
            theirs = paper[paper["base"] == PAPER_BASES.get(base, base)].astype({index: float, columns: float})
            if len(theirs):
                panels[f"paper: Foursquare, {PAPER_BASES.get(base, base)}, {metric}"] = theirs.pivot_table(
                    index=index, columns=columns, values=metric, aggfunc="mean")
    return panels


def td_gains(
    results: pd.DataFrame,
    method: str = "HTD",
    over: Sequence[str] = ("DE", "Student"),
    paper_table: str = "td_table1_main",
) -> pd.DataFrame:
    """``method``'s relative gain over each of ``over``, (m − o) / o in %, ours (means over seeds) and
    the paper's (from its Table 1 values, as its "improvement" rows are computed), per base and metric."""
    ours = to_paper_names(results).groupby(["dataset", "base", "method", "metric"], sort=False)["value"].mean()
    paper = long_form(paper_table).set_index(["dataset", "base", "method", "metric"])["paper"]
    rows = []
    for (dataset, base, name, metric), value in ours.items():
        if name != method:
            continue
        for other in over:
            mine, theirs = ours.get((dataset, base, other, metric), np.nan), paper.get((dataset, base, other, metric))
            top = paper.get((dataset, base, method, metric))
            rows.append({
                "base": base, "metric": metric, "gain": f"{method} over {other}",
                "ours_%": 100 * (value - mine) / mine if mine else np.nan,
                "paper_%": 100 * (top - theirs) / theirs if top is not None and theirs else np.nan,
            })
    return pd.DataFrame(rows)


SCHEDULE_COLUMNS = ["base", "method", "metric", "paper", "ours_capped", "rel_capped", "ours_longer", "rel_longer",
                    "gain_capped", "gain_longer", "best_epoch_capped", "best_epoch_longer", "epochs_run_longer",
                    "n_seeds"]


def schedule_table(capped: pd.DataFrame, longer: pd.DataFrame, capped_fits: pd.DataFrame,
                   longer_fits: pd.DataFrame, metrics: Sequence[str], paper_table: str,
                   student: str = "Student") -> pd.DataFrame:
    """The same methods under two training schedules beside the paper: ``capped`` (a fixed number of epochs,
    TD's) and ``longer`` (trained until validation stops improving).

    ``capped``/``longer``: long test results (``dataset, base, method, seed, metric, value``); only the
    (base, method) runs and seeds ``longer`` has are read from ``capped``. ``*_fits``: fit records (``base,
    method, seed, best_epoch, epochs_run``). Per base, method and metric: the paper's value, ours under each schedule
    (mean over those seeds) and its relative distance to the paper (``rel_*``), the relative gain over
    ``student`` under the same schedule (``gain_*``, NaN without a student row), and the mean best epoch
    (and epochs run, ``longer``).
    """
    if longer.empty:
        return pd.DataFrame(columns=SCHEDULE_COLUMNS)
    seeds, runs = set(longer["seed"]), set(zip(longer["base"], longer["method"], strict=True))
    keys = ["dataset", "base", "method", "metric"]

    def ran_longer(frame: pd.DataFrame) -> pd.Series:
        pairs = pd.Series(list(zip(frame["base"], frame["method"], strict=True)), index=frame.index)
        return frame["seed"].isin(seeds) & pairs.isin(runs)

    def means(results: pd.DataFrame) -> pd.Series:
        chosen = results[ran_longer(results) & results["metric"].isin(metrics)]
        return to_paper_names(chosen).groupby(keys, sort=False)["value"].mean()

    def epochs(fits: pd.DataFrame) -> pd.DataFrame:
        return to_paper_names(fits[ran_longer(fits)]).groupby(["base", "method"])[["best_epoch", "epochs_run"]].mean()

    ours = pd.DataFrame({"ours_capped": means(capped), "ours_longer": means(longer)}).reset_index()
    ours = ours.merge(long_form(paper_table)[[*keys, "paper"]], on=keys, how="left")
    cell = ["dataset", "base", "metric"]
    alone = ours.loc[ours["method"] == student, [*cell, "ours_capped", "ours_longer"]]
    ours = ours.merge(alone, on=cell, how="left", suffixes=("", "_student"))
    for schedule in ("capped", "longer"):
        ours[f"rel_{schedule}"] = (ours[f"ours_{schedule}"] - ours["paper"]) / ours["paper"]
        reference = ours[f"ours_{schedule}_student"]
        ours[f"gain_{schedule}"] = ((ours[f"ours_{schedule}"] - reference) / reference).where(ours["method"] != student)
    capped_epochs, longer_epochs = epochs(capped_fits), epochs(longer_fits)
    ours = ours.join(capped_epochs[["best_epoch"]].add_suffix("_capped"), on=["base", "method"])
    ours = ours.join(longer_epochs.add_suffix("_longer"), on=["base", "method"])
    ours["n_seeds"] = len(seeds)
    return ours[SCHEDULE_COLUMNS]


def fidelity_table(exact: pd.DataFrame, fast: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """The fast path against the exact one, per base, method and metric (issue 12's fidelity guard).

    ``exact``/``fast``: long test results (``base, method, seed, metric, value``) of the same methods and
    seeds. ``exact_se`` is the exact runs' standard error over seeds (std / √n); ``verdict``: "within 1 SE"
    when the fast mean lies within one exact standard error of the exact mean (no verdict from one seed).
    """
    keys = ["base", "method", "metric"]

    def stats(frame: pd.DataFrame) -> pd.DataFrame:
        chosen = frame[frame["metric"].isin(metrics)]
        return chosen.groupby(keys, sort=False)["value"].agg(["mean", "std", "count"])

    table = stats(exact).add_suffix("_exact").join(stats(fast).add_suffix("_fast"), how="inner").reset_index()
    table["exact_se"] = table["std_exact"] / np.sqrt(table["count_exact"])
    table["difference"] = table["mean_fast"] - table["mean_exact"]
    inside = table["difference"].abs() <= table["exact_se"]
    table["verdict"] = np.where(table["count_exact"] < 2, "no standard error (one seed)",
                                np.where(inside, "within 1 SE", "outside 1 SE"))
    return table.rename(columns={"mean_exact": "exact_mean", "mean_fast": "fast_mean", "count_exact": "n_seeds"})[
        [*keys, "exact_mean", "exact_se", "fast_mean", "difference", "verdict", "n_seeds"]]


def fidelity_fit_times(exact_fits: pd.DataFrame, fast_fits: pd.DataFrame, precision: str = "bf16") -> pd.DataFrame:
    """Mean fit and epoch seconds of the exact runs ("fp32") and the fast ones, per base, method and precision.

    ``exact_fits`` / ``fast_fits``: fit records (``base, method, seconds, epoch_s``, one row per seed) of the
    same methods; the fast ones carry their ``precision`` column (else ``precision`` is assumed).
    """
    fast = fast_fits if "precision" in fast_fits else fast_fits.assign(precision=precision)
    both = pd.concat([exact_fits.assign(precision="fp32"), fast])
    return both.groupby(["base", "method", "precision"], sort=False)[["seconds", "epoch_s"]].mean().reset_index()
