"""Small building blocks the chapter notebooks call, so that each cell stays 1–3 library calls.

- :func:`splits_for` — the splits of one dataset under several protocols (one split seed).
- :func:`dataset_statistics`, :func:`count_quantiles` — the dataset against the papers' table.
- :func:`protocol_summary`, :func:`protocol_example` — what each protocol holds out and ranks against.
- :func:`run_grid` — models × roles (teacher/student dims) × protocols × seeds through the train-once
  cache, returning long-form results, histories and a per-fit summary.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from kdrepro import teachers
from kdrepro.data import Interactions
from kdrepro.efficiency import count_parameters
from kdrepro.models import ModelConfig
from kdrepro.paper import PAPER_DATASETS, load_table
from kdrepro.report import history_frame, long_results
from kdrepro.splits import Split, get_split
from kdrepro.train import DEFAULT_MONITOR, TrainConfig, resolve_device

# The base objective each model is trained with (the papers' choices).
BASE_LOSS = {"bpr": "bpr", "mf": "bpr", "neumf": "bce", "lightgcn": "bpr", "cml": "cml"}

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


def environment(device: str = "auto") -> dict:
    """Where this notebook runs: resolved device, its name, torch version and CPU threads."""
    resolved = resolve_device(device)
    return {
        "device": str(resolved),
        "device_name": torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def setup(device: str = "auto", threads: int = 0) -> dict:
    """Use ``threads`` CPU threads in torch (0 keeps torch's default) and describe the environment.

    One thread is much faster for tiny models (the smoke profile) and on a busy machine.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    return environment(device)


def splits_for(
    dataset: Interactions, protocols: Sequence[str], split_seed: int = 0, num_negatives: int = 499
) -> dict[str, Split]:
    """``{protocol: split}`` for every protocol (cached on disk; fixed by ``split_seed``)."""
    return {p: get_split(dataset, p, split_seed, num_negatives=num_negatives) for p in protocols}


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


# --------------------------------------------------------------------------------------------------
# Teachers and students without KD
# --------------------------------------------------------------------------------------------------


def train_config_for(model: str, base: TrainConfig) -> TrainConfig:
    """``base`` with the model's own objective (BPR for MF/LightGCN, BCE for NeuMF, hinge for CML)."""
    return replace(base, loss=BASE_LOSS.get(model, base.loss))


@dataclass
class Grid:
    """Results of :func:`run_grid`.

    - ``results``: long form ``dataset, protocol, base, method, seed, metric, value`` (test metrics).
    - ``histories``: one row per epoch and fit (``protocol, base, method, seed, epoch, loss, valid/…``).
    - ``fits``: one row per fit (dim, best epoch, epochs run, seconds, #parameters, loaded from cache).
    - ``models``: ``{(protocol, base, method, seed): trained model}``.
    """

    results: pd.DataFrame
    histories: pd.DataFrame
    fits: pd.DataFrame
    models: dict = field(default_factory=dict, repr=False)


def run_grid(
    splits: Mapping[str, Split],
    protocols: Sequence[str],
    models: Sequence[str],
    dims: Mapping[str, Mapping[str, int]],
    seeds: Sequence[int],
    train_config: TrainConfig,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> Grid:
    """Train (or load from the train-once cache) every protocol × model × role × seed.

    ``dims`` maps a role (the ``method`` label, e.g. ``"Teacher"``, ``"Student"``) to ``{model: dim}``.
    Each model is trained with its own objective (:data:`BASE_LOSS`). Fits go through
    :func:`kdrepro.teachers.get`, so a chapter that needs the same teacher or student loads it.
    """
    jobs = [(p, m, role, s) for p in protocols for m in models for role in dims for s in seeds]
    unknown = [p for p in protocols if p not in splits]
    if unknown:
        raise ValueError(f"no split for protocols {unknown}; splits has {sorted(splits)}")
    results, histories, fits, trained = [], [], [], {}
    for number, (protocol, model, role, seed) in enumerate(jobs, start=1):
        split = splits[protocol]
        model_config = ModelConfig(model, dims[role][model])
        started = time.time()
        fitted = teachers.get(
            model_config, split, train_config_for(model, train_config), seed, cache_dir=cache_dir
        )
        cached = (fitted.path / "model.pt").stat().st_mtime < started
        keys = {"dataset": split.dataset, "protocol": protocol, "base": model, "method": role, "seed": seed}
        monitor = (
            DEFAULT_MONITOR.get(protocol)
            if DEFAULT_MONITOR.get(protocol) in fitted.metrics["valid"]
            else None
        )
        how = "loaded from cache" if cached else f"trained in {time.time() - started:.1f} s"
        print(
            f"[{number}/{len(jobs)}] {protocol} {model}-{model_config.dim} {role} seed {seed}: {how}, "
            f"best epoch {fitted.metrics['best_epoch']}"
            + (f", valid {monitor} {fitted.metrics['valid'][monitor]:.4f}" if monitor else ""),
            flush=True,
        )
        results.append(long_results(fitted.metrics["test"], **keys))
        histories.append(history_frame(fitted.history, **{k: v for k, v in keys.items() if k != "dataset"}))
        fits.append(
            {
                **{k: v for k, v in keys.items() if k != "dataset"},
                "dim": model_config.dim,
                "parameters": count_parameters(fitted.model),
                "best_epoch": fitted.metrics["best_epoch"],
                "epochs_run": len(fitted.history),
                "seconds": float(fitted.metrics["seconds"]),
                "from_cache": cached,
            }
        )
        trained[(protocol, model, role, seed)] = fitted.model
    return Grid(
        results=pd.concat(results, ignore_index=True) if results else pd.DataFrame(),
        histories=pd.concat(histories, ignore_index=True) if histories else pd.DataFrame(),
        fits=pd.DataFrame(fits),
        models=trained,
    )


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
