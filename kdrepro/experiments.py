"""Small building blocks the chapter notebooks call, so that each cell stays 1–3 library calls.

- :func:`splits_for` — the splits of one dataset under several protocols (one split seed).
- :func:`dataset_statistics`, :func:`count_quantiles` — the dataset against the papers' table.
- :func:`protocol_summary`, :func:`protocol_example` — what each protocol holds out and ranks against.
- :func:`run_grid` — models × roles (teacher/student dims) × protocols × seeds through the train-once
  cache, returning long-form results, histories and a per-fit summary.
- :func:`run_kd` — distilled students (chapters 01 and 04): a :class:`KDSetting` (split, bases, seeds,
  dims, method configs) × a list of :class:`KDRun` built by :func:`method_runs`, :func:`size_runs`,
  :func:`sweep_runs` or :func:`design_runs`; distilled students have a train-once cache of their own.
- :func:`design_choice_table`, :func:`ordering_agreement`,
  :func:`efficiency_table`, :func:`lambda_grid`, :func:`selection_map`, :func:`selection_summary` —
  the DE-RRD paper's tables and figures from those results.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from kdrepro.data import Interactions
from kdrepro.efficiency import count_parameters
from kdrepro.models import ModelConfig
from kdrepro.paper import PAPER_DATASETS, load_table
from kdrepro.runs import TD_ASSIGNMENT_LABELS, KDResults, Selection
from kdrepro.splits import Split
from kdrepro.train import resolve_device

PROTOCOL_NOTES = {
    "loo_sampled": (
        "DE-RRD, IR-RRD (and the PHR re-run)",
        "1 valid + 1 test item per user",
        "the held-out item + sampled unobserved items",
    ),
    "loo_full": (
        "TD, PHR",
        "1 valid + 1 test item per user",
        "every item not in training (valid excluded at test)",
    ),
    "holdout": (
        "ConCF, HetComp",
        "20% valid + 20% test per user",
        "every item not in training (valid excluded at test)",
    ),
}


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


def dataset_statistics(
    dataset: Interactions, loo_split: Split | None = None, paper_table: str = "derrd_datasets"
) -> pd.DataFrame:
    """Our dataset next to the papers' statistics table, with the papers' way of counting.

    The papers print users and items as max id + 1 of their code (one more than there are) and, as
    interactions, the training pairs left after leave-one-out; ``loo_split`` gives ours.
    Columns: ``quantity, paper, ours, ours_as_paper_counts, note``.
    """
    paper_name = PAPER_DATASETS.get(dataset.name.lower())
    table = load_table(paper_table)
    row = table[table["dataset"] == paper_name]
    paper = row.iloc[0].to_dict() if len(row) else {}
    sparsity_key = "sparsity" if "sparsity" in paper else "density"
    train = loo_split.num_train if loo_split is not None else np.nan

    def percent(value) -> float:
        return float(str(value).rstrip("%")) if value not in (None, "") and not pd.isna(value) else np.nan

    paper_sparsity = percent(paper.get(sparsity_key, np.nan))
    if sparsity_key == "density" and not np.isnan(paper_sparsity):
        paper_sparsity = 100 - paper_sparsity
    cells = dataset.num_users * dataset.num_items
    rows = [
        (
            "users",
            paper.get("users", np.nan),
            dataset.num_users,
            dataset.num_users + 1,
            "the papers count max id + 1",
        ),
        (
            "items",
            paper.get("items", np.nan),
            dataset.num_items,
            dataset.num_items + 1,
            "the papers count max id + 1",
        ),
        (
            "interactions",
            paper.get("interactions", np.nan),
            dataset.num_interactions,
            train,
            "the papers print the training pairs after leave-one-out (2 held out per user)",
        ),
        (
            "sparsity %",
            paper_sparsity,
            100 * (1 - dataset.num_interactions / cells),
            100 * (1 - train / cells),
            "1 - interactions / (users x items), on the training pairs as the papers",
        ),
    ]
    frame = pd.DataFrame(rows, columns=["quantity", "paper", "ours", "ours_as_paper_counts", "note"])
    for column in ("paper", "ours", "ours_as_paper_counts"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["matches_paper"] = np.where(
        frame["paper"].isna(),
        None,
        np.isclose(frame["ours_as_paper_counts"].round(2), frame["paper"], rtol=0, atol=0.005),
    )
    frame.attrs["source"] = table.attrs.get("source")
    return frame


def count_quantiles(
    dataset: Interactions, quantiles: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
) -> pd.DataFrame:
    """Quantiles of interactions per user and per item (one row per side)."""
    rows = []
    for side, counts in (("users", dataset.user_counts()), ("items", dataset.item_counts())):
        values = np.quantile(counts, quantiles)
        rows.append(
            {
                "side": side,
                "mean": float(counts.mean()),
                **{f"q{int(round(q * 100))}": float(v) for q, v in zip(quantiles, values, strict=True)},
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# Protocols
# --------------------------------------------------------------------------------------------------


def _per_user(users: np.ndarray, num_users: int) -> np.ndarray:
    return np.bincount(users, minlength=num_users)


def _candidates_per_test_user(split: Split) -> np.ndarray:
    test_users = np.unique(split.test_users)
    if split.protocol == "loo_sampled":
        return np.full(len(test_users), 1 + split.negatives.shape[1])
    excluded = _per_user(split.train_users, split.num_users) + _per_user(split.valid_users, split.num_users)
    return split.num_items - excluded[test_users]


def protocol_summary(splits: Mapping[str, Split]) -> pd.DataFrame:
    """One row per protocol: split sizes, candidates per test user, metrics (who uses it: PROTOCOL_NOTES)."""
    from kdrepro.metrics import PROTOCOL_METRICS

    rows = []
    for protocol, split in splits.items():
        candidates = _candidates_per_test_user(split)
        rows.append(
            {
                "protocol": protocol,
                "train pairs": split.num_train,
                "valid pairs": len(split.valid_users),
                "test pairs": len(split.test_users),
                "test users": len(np.unique(split.test_users)),
                "candidates per test user (mean)": float(candidates.mean()) if len(candidates) else np.nan,
                "metrics": ", ".join(
                    f"{m}@{{{','.join(map(str, split.ks))}}}" for m in PROTOCOL_METRICS[protocol]
                ),
            }
        )
    return pd.DataFrame(rows)


def protocol_example(splits: Mapping[str, Split], user: int = 0, show: int = 8) -> pd.DataFrame:
    """One user's training, validation and test items, and the candidates its test item competes with.

    ``show`` item ids are listed per cell (followed by "…" when there are more).
    """

    def listing(items: np.ndarray) -> str:
        items = np.sort(np.asarray(items))
        text = ", ".join(str(int(i)) for i in items[:show])
        return text + (", …" if len(items) > show else "")

    rows = []
    for protocol, split in splits.items():
        if not 0 <= user < split.num_users:
            raise ValueError(f"user {user} is not in 0..{split.num_users - 1}")
        train = split.train_items[split.train_users == user]
        valid = split.valid_items[split.valid_users == user]
        test = split.test_items[split.test_users == user]
        if split.protocol == "loo_sampled":
            candidates = np.concatenate([test, split.negatives[user]])
            how = f"its test item + {split.negatives.shape[1]} sampled items it never interacted with"
        else:
            mask = np.ones(split.num_items, dtype=bool)
            mask[train] = False
            mask[valid] = False
            candidates = np.flatnonzero(mask)
            how = "every item outside its training and validation items"
        rows += [
            {
                "protocol": protocol,
                "part": "train",
                "n": len(train),
                "items": listing(train),
                "how": "fitted on",
            },
            {
                "protocol": protocol,
                "part": "valid",
                "n": len(valid),
                "items": listing(valid),
                "how": "selects the best epoch",
            },
            {"protocol": protocol, "part": "test", "n": len(test), "items": listing(test), "how": "reported"},
            {
                "protocol": protocol,
                "part": "test candidates",
                "n": len(candidates),
                "items": listing(candidates),
                "how": how,
            },
        ]
    return pd.DataFrame(rows)


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


# --------------------------------------------------------------------------------------------------
# Chapter 01 and 04 tables: design choices, orderings, efficiency, λ grid, expert selection
# --------------------------------------------------------------------------------------------------


def design_choice_table(
    results: pd.DataFrame,
    metrics: Sequence[str] = ("HR@5", "NDCG@5", "HR@10", "NDCG@10"),
    paper_table: str = "derrd_table4_design_choices_foursquare",
) -> pd.DataFrame:
    """Our variants (column ``variant``) next to the paper's, with each side's rank per (base, metric).

    The paper ran its design-choice study on Foursquare only: its values are a qualitative reference
    (``paper_dataset`` says which data they come from); compare orderings, not values.
    Columns: ``base, metric, variant, ours_mean, ours_std, n_seeds, ours_rank, paper, paper_rank,
    paper_dataset`` (rank 1 = best).
    """
    from kdrepro.paper import long_form, to_paper_names

    ours = to_paper_names(results[results["metric"].isin(metrics)])
    table = (
        ours.groupby(["base", "metric", "variant"], sort=False)["value"]
        .agg(ours_mean="mean", ours_std=lambda v: v.std(ddof=1) if len(v) > 1 else np.nan, n_seeds="count")
        .reset_index()
    )
    paper = long_form(paper_table).rename(columns={"method": "variant"})[["base", "variant", "metric", "paper"]]
    table = table.merge(paper, on=["base", "variant", "metric"], how="left")
    group = table.groupby(["base", "metric"], sort=False)
    table["ours_rank"] = group["ours_mean"].rank(ascending=False, method="min").astype(int)
    table["paper_rank"] = group["paper"].rank(ascending=False, method="min")
    table["paper_dataset"] = "Foursquare" if "foursquare" in paper_table else ""
    return table[["base", "metric", "variant", "ours_mean", "ours_std", "n_seeds", "ours_rank", "paper",
                  "paper_rank", "paper_dataset"]]


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
    size), best of ``repeats`` on ``device``. The paper's seconds come from the authors' hardware: compare
    how time scales with φ, not the values.
    """
    from kdrepro.efficiency import time_recommend_all
    from kdrepro.models import build as build_model
    from kdrepro.paper import PAPER_BASES, PAPER_DATASETS, load_table

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
            match = paper[(paper["dataset"] == dataset) & (paper["base"] == PAPER_BASES.get(base, base))
                          & np.isclose(paper["phi"], phi)]
            rows.append({
                "base": base, "phi": float(phi), "dim": dim,
                "parameters_millions": count_parameters(model) / 1e6,
                "paper_parameters_millions": match["params_millions"].iloc[0] if len(match) else np.nan,
                "seconds_all_users": time_recommend_all(model, split, top_n, repeats=repeats),
                "paper_seconds_all_users": match["seconds_all_users"].iloc[0] if len(match) else np.nan,
                f"{method} {metric}": value, "ratio_to_teacher": value / teacher_value,
                "paper_ratio_to_teacher": match["hr5_ratio_to_teacher"].iloc[0] if len(match) else np.nan,
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
    from kdrepro.paper import PAPER_BASES, PAPER_DATASETS, load_table

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


# --------------------------------------------------------------------------------------------------
# Chapter 03: Topology Distillation (TD, KDD'21) tables
# --------------------------------------------------------------------------------------------------

def td_paper_variants(paper_table: str) -> pd.DataFrame:
    """TD's Table 2 or 4 in long form: ``dataset, base, variant, metric, paper`` (our variant labels)."""
    from kdrepro.paper import long_form

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
    """Our TD variants (column ``variant``) next to the paper's values on the same dataset, with each
    side's rank per (base, metric) (1 = best).

    Columns: ``base, metric, variant, ours_mean, ours_std, n_seeds, ours_rank, paper, paper_rank``.
    """
    from kdrepro.paper import to_paper_names

    ours = to_paper_names(results[results["metric"].isin(metrics)])
    table = (
        ours.groupby(["dataset", "base", "metric", "variant"], sort=False)["value"]
        .agg(ours_mean="mean", ours_std=lambda v: v.std(ddof=1) if len(v) > 1 else np.nan, n_seeds="count")
        .reset_index()
    )
    table = table.merge(td_paper_variants(paper_table), on=["dataset", "base", "variant", "metric"], how="left")
    group = table.groupby(["base", "metric"], sort=False)
    table["ours_rank"] = group["ours_mean"].rank(ascending=False, method="min").astype(int)
    table["paper_rank"] = group["paper"].rank(ascending=False, method="min")
    return table[["base", "metric", "variant", "ours_mean", "ours_std", "n_seeds", "ours_rank", "paper",
                  "paper_rank"]]


def td_gains(
    results: pd.DataFrame,
    method: str = "HTD",
    over: Sequence[str] = ("DE", "Student"),
    paper_table: str = "td_table1_main",
) -> pd.DataFrame:
    """``method``'s relative gain over each of ``over``, (m − o) / o in %, ours (means over seeds) and
    the paper's (from its Table 1 values, as its "improvement" rows are computed), per base and metric."""
    from kdrepro.paper import long_form, to_paper_names

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
    size), phi, dim, parameters, seed (0), metric ("seconds"), value``.
    """
    from kdrepro.efficiency import time_recommend_all
    from kdrepro.models import build as build_model

    rows = []
    for base in bases:
        for phi in phis:
            dim = max(1, round(phi * teacher_dims[base]))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # weights do not matter for timing; a fixed draw keeps runs alike
                model = build_model(ModelConfig(base, dim), split).to(resolve_device(device))
            rows.append({"base": base, "method": "Student", "phi": float(phi), "dim": dim,
                         "parameters": count_parameters(model), "seed": 0, "metric": "seconds",
                         "value": time_recommend_all(model, split, top_n, repeats=repeats)})
    return pd.DataFrame(rows)
