"""The dataset and the protocols against the papers: statistics, count quantiles, what each protocol holds out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from kdrepro.data import Interactions
from kdrepro.metrics import PROTOCOL_METRICS
from kdrepro.paper import PAPER_DATASETS, load_table
from kdrepro.splits import Split

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
