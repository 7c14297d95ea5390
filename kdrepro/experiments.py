"""Small building blocks the chapter notebooks call, so that each cell stays 1–3 library calls.

- :func:`splits_for` — the splits of one dataset under several protocols (one split seed).
- :func:`dataset_statistics`, :func:`count_quantiles` — the dataset against the papers' table.
- :func:`protocol_summary`, :func:`protocol_example` — what each protocol holds out and ranks against.
- :func:`run_grid` — models × roles (teacher/student dims) × protocols × seeds through the train-once
  cache, returning long-form results, histories and a per-fit summary.
- :func:`run_kd` — distilled students (chapters 01 and 04): a :class:`KDSetting` (split, bases, seeds,
  dims, method configs) × a list of :class:`KDRun` built by :func:`method_runs`, :func:`size_runs`,
  :func:`sweep_runs` or :func:`design_runs`; distilled students have a train-once cache of their own.
- :func:`design_choice_table`, :func:`ordering_agreement`, :func:`ordering_claims`,
  :func:`efficiency_table`, :func:`lambda_grid`, :func:`selection_map`, :func:`selection_summary` —
  the DE-RRD paper's tables and figures from those results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

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


# --------------------------------------------------------------------------------------------------
# Distillation runs (chapter 01: DE; chapter 04: RD, CD, RRD, DE-RRD)
# --------------------------------------------------------------------------------------------------

# The papers' method labels → registry specs of kdrepro.distill (DE-RRD is the sum of DE and RRD,
# IR-RRD of RRD and IR, TD's "FTD+DE" of FTD and DE).
KD_SPECS = {
    "RD": "rd", "CD": "cd", "DE": "de", "RRD": "rrd", "DE-RRD": "de+rrd",
    "FitNet": "fitnet", "FTD": "ftd", "HTD": "htd", "FTD+DE": "ftd+de",
    "PHR": "phr", "IR": "ir", "IR-RRD": "rrd+ir",
}
NO_KD = ("Teacher", "Student")

# DE-RRD's Table 4, by the paper's labels: config overrides of DE (a–c) and of RRD (d, e). "(b)" is
# one expert as wide as all M experts together (about their number of parameters), see KDRun.
DE_DESIGN_CHOICES: dict[str, dict[str, object]] = {
    "DE": {},
    "(a) Attention": {"selection": "attention"},
    "(b) One expert (large)": {"num_experts": 1},
    "(c) One expert (small)": {"num_experts": 1},
}
RRD_DESIGN_CHOICES: dict[str, dict[str, object]] = {
    "RRD": {},
    "(d) Full ranking": {"ranking": "full"},
    "(e) Interesting ranking": {"ranking": "interesting_only"},
    "RRD top-K (no sampling)": {"sampling": "none"},
}
# TD's Table 2 (ablation) and Table 4 (group assignment), by the paper's labels: overrides of HTD.
HTD_DESIGN_CHOICES: dict[str, dict[str, object]] = {
    "HTD": {},
    "Group only": {"variant": "group_only"},
    "Entity only": {"variant": "entity_only"},
    "Group (P,P)": {"variant": "group_pp"},
    "K-means assignment": {"assignment": "kmeans"},
}
_DESIGN_TABLES = {"DE": DE_DESIGN_CHOICES, "RRD": RRD_DESIGN_CHOICES, "HTD": HTD_DESIGN_CHOICES}

# Files whose code decides a distilled student (part of its cache key).
_KD_CODE = ("distill", "models", "train.py", "objectives.py", "evaluate.py", "metrics.py", "teachers.py")


@dataclass(frozen=True)
class KDRun:
    """One kind of model to train for every base model and seed of a :class:`KDSetting`.

    - ``method``: ``"Teacher"``, ``"Student"`` (no distillation) or a label of :data:`KD_SPECS`.
    - ``overrides``: ``{method name: {config field: value}}`` on top of the setting's configs, e.g.
      ``{"rrd": {"ranking": "full"}}``.
    - ``phi``: student size as a fraction of the teacher's (``None``: the setting's student dims).
    - ``match_experts``: DE's single expert gets the hidden width of all M experts of the setting's DE
      config together (Table 4 (b), "one large expert").
    - ``keys``: extra columns that label this run's rows (``variant``, a swept value, ``phi`` …).
    """

    method: str
    overrides: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    phi: float | None = None
    match_experts: bool = False
    keys: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in NO_KD and self.method not in KD_SPECS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {[*NO_KD, *KD_SPECS]}")


@dataclass(frozen=True)
class KDSetting:
    """What every run of a distillation chapter shares.

    ``configs``: per-method config overrides (``{"de": {...}, "rrd": {...}}``) for every base model, or
    ``{base: {method: {...}}}`` per base model. ``top_n``/``top_n_users``: length of the teacher's cached
    rankings (RRD's N must not exceed ``top_n``). Teachers and students without distillation are trained
    exactly as in chapter 00 (:func:`run_grid`), so they load from its cache; the teacher of seed ``s``
    teaches the students of seed ``s``. ``teacher_train_config``: how the teachers are trained when it
    differs from the students' ``train_config`` (TD's students run a fixed 101 epochs while the teacher
    keeps chapter 00's early-stopped protocol); ``None``: the same.
    """

    split: Split
    bases: Sequence[str]
    seeds: Sequence[int]
    train_config: TrainConfig
    teacher_dims: Mapping[str, int]
    student_dims: Mapping[str, int]
    configs: Mapping[str, Mapping] = field(default_factory=dict)
    top_n: int = 500
    top_n_users: int = 500
    cache_dir: str | os.PathLike | None = None
    teacher_train_config: TrainConfig | None = None

    def method_configs(self, base: str) -> dict[str, dict]:
        """``{method name: overrides}`` of this setting for ``base``."""
        from kdrepro.distill import METHODS

        if self.configs and all(k in METHODS for k in self.configs):
            return {k: dict(v) for k, v in self.configs.items()}
        return {k: dict(v) for k, v in self.configs.get(base, {}).items()}


@dataclass
class Selection:
    """Which expert every user selects (argmax of DE's selection network) after the listed epochs."""

    epochs: np.ndarray  # (R,) epochs of training done when recorded (0: at initialisation)
    experts: np.ndarray  # (R, num_users) expert index per user


@dataclass
class KDResults:
    """Results of :func:`run_kd` (one row per fit and metric; ``keys`` of the runs as extra columns).

    - ``results``: ``dataset, protocol, base, method, <keys>, seed, metric, value`` (test metrics).
    - ``histories``: one row per epoch and fit.
    - ``fits``: one row per fit (dim, #parameters of the student and of the method, best epoch,
      seconds, seconds per training epoch, whether it came from the cache).
    - ``models``: ``{(base, method, keys, seed): trained model}``; ``keys`` a tuple of (name, value).
    - ``selections``: the same keys → :class:`Selection`, for the runs with DE.
    - ``outputs``: ``{(base, seed): TeacherOutputs}`` of the teachers used.
    """

    results: pd.DataFrame
    histories: pd.DataFrame
    fits: pd.DataFrame
    models: dict = field(default_factory=dict, repr=False)
    selections: dict = field(default_factory=dict, repr=False)
    outputs: dict = field(default_factory=dict, repr=False)

    def find(self, store: str, base: str, method: str, seed: int | None = None, **keys):
        """The entry of ``models``/``selections`` for (base, method, seed, keys); first seed by default."""
        table = getattr(self, store)
        wanted = tuple(sorted(keys.items()))
        for (b, m, k, s), value in table.items():
            if b == base and m == method and tuple(sorted(k)) == wanted and (seed is None or s == seed):
                return value
        raise KeyError(f"no {store} entry for base={base!r}, method={method!r}, seed={seed}, keys={keys}")


def method_runs(methods: Sequence[str]) -> list[KDRun]:
    """One :class:`KDRun` per method label (``"Teacher"``, ``"Student"``, ``"DE"``, ``"DE-RRD"`` …)."""
    return [KDRun(m) for m in methods]


def size_runs(methods: Sequence[str], phis: Sequence[float]) -> list[KDRun]:
    """Every method at every student size φ (student dim = round(φ × teacher dim)); key ``phi``."""
    return [KDRun(m, phi=float(p), keys={"phi": float(p)}) for p in phis for m in methods]


def sweep_runs(method: str, grid: Mapping[str, Sequence]) -> list[KDRun]:
    """``method`` over the product of config values, e.g. ``{"de.lambda_de": [...], "rrd.lambda_rrd": [...]}``.

    Each swept field becomes a key column named after the field (``lambda_de``).
    """
    names = list(grid)
    runs = []
    for values in itertools.product(*(grid[n] for n in names)):
        overrides = _field_overrides(names, values)  # checks the names first
        keys = {name.split(".", 1)[1]: value for name, value in zip(names, values, strict=True)}
        runs.append(KDRun(method, overrides=overrides, keys=keys))
    return runs


def _field_overrides(names: Sequence[str], values: Sequence) -> dict[str, dict]:
    """``["de.lambda_de", …]`` and their values → ``{"de": {"lambda_de": value}, …}``."""
    overrides: dict[str, dict] = {}
    for name, value in zip(names, values, strict=True):
        if "." not in name:
            raise ValueError(f"sweep field {name!r} must read 'method.field', e.g. 'de.lambda_de'")
        method_name, field_name = name.split(".", 1)
        overrides.setdefault(method_name, {})[field_name] = value
    return overrides


def design_runs(method: str, variants: Sequence[str]) -> list[KDRun]:
    """DE-RRD's Table 4 variants of ``"DE"`` or ``"RRD"`` by the paper's labels; key ``variant``.

    Labels: the keys of :data:`DE_DESIGN_CHOICES` / :data:`RRD_DESIGN_CHOICES`.
    """
    choices = _DESIGN_TABLES[method]
    unknown = [v for v in variants if v not in choices]
    if unknown:
        raise ValueError(f"unknown {method} variants {unknown}; choose from {list(choices)}")
    name = KD_SPECS[method]
    return [
        KDRun(method, overrides={name: choices[v]}, match_experts=v == "(b) One expert (large)",
              keys={"variant": v})
        for v in variants
    ]


def _kd_code_digest() -> str:
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for entry in _KD_CODE:
        path = root / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(root).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _default_expert_hidden(student_repr: int, teacher_repr: int) -> int:
    """DE's default expert width (as in kdrepro.distill.de): (d_s + d_t) // 2, d_s // 2 when equal."""
    return student_repr // 2 if student_repr == teacher_repr else (student_repr + teacher_repr) // 2


def _recorded(epoch: int) -> bool:
    """The epochs after which a selection map is kept: every one up to 20, every 5th to 100, then every 10th."""
    return epoch <= 20 or (epoch <= 100 and epoch % 5 == 0) or epoch % 10 == 0


class SelectionLog(torch.nn.Module):
    """Wraps a distillation module that contains DE and records which expert each user selects.

    At the start of epoch ``e`` (so after ``e - 1`` epochs of training) it stores
    ``DE.selection_map("user")`` when ``e - 1`` is a recorded epoch (:func:`_recorded`); ``finish``
    adds the state after the last epoch. Everything else is passed through to the wrapped module.
    """

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        from kdrepro.distill import DE

        self.inner = inner
        found = [m for m in inner.modules() if isinstance(m, DE)]
        if not found:
            raise ValueError("SelectionLog needs a distillation module that contains DE")
        self._de = found  # a list, so that DE is not registered twice
        self.epochs: list[int] = []
        self.maps: list[np.ndarray] = []

    def forward(self, student, batch):
        return self.inner(student, batch)

    def record(self, epoch: int) -> None:
        if not self.epochs or self.epochs[-1] != epoch:
            self.epochs.append(epoch)
            self.maps.append(self._de[0].selection_map("user").numpy().astype(np.int16))

    def on_epoch_start(self, epoch: int, generator: torch.Generator) -> None:
        if _recorded(epoch - 1):
            self.record(epoch - 1)
        self.inner.on_epoch_start(epoch, generator)

    def finish(self, epochs_run: int) -> Selection:
        self.record(epochs_run)
        return Selection(np.asarray(self.epochs), np.stack(self.maps))


def _load_kd(path: Path, model_config: ModelConfig, split: Split, device) -> tuple:
    from kdrepro.models import build as build_model

    model = build_model(model_config, split)
    model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    model.to(device)
    metrics = json.loads((path / "metrics.json").read_text())
    history = json.loads((path / "history.json").read_text())
    selection = None
    if (path / "selection.npz").exists():
        with np.load(path / "selection.npz", allow_pickle=False) as npz:
            selection = Selection(npz["epochs"], npz["experts"])
    return model, metrics, history, selection


def _save_kd(path: Path, result, selection: Selection | None, config: dict) -> None:
    from kdrepro._io import atomic_write, write_json

    metrics = {"test": result.test, "valid": result.valid, "best_epoch": result.best_epoch,
               "seconds": result.seconds, "kd_parameters": config.pop("kd_parameters")}
    write_json(path / "config.json", config)
    write_json(path / "history.json", result.history)
    write_json(path / "metrics.json", metrics)
    if selection is not None:

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, epochs=selection.epochs, experts=selection.experts)

        atomic_write(path / "selection.npz", write)
    state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    atomic_write(path / "model.pt", lambda tmp: torch.save(state, tmp))


@dataclass(frozen=True)
class _KDJob:
    """What decides one distilled student: its model, training and method configs, and the cache entry."""

    spec: str
    model_config: ModelConfig
    train_config: TrainConfig
    configs: dict
    described: dict  # hashed into the cache key (and saved as the entry's config.json)
    student_repr: int

    def path(self, root: Path, split: Split) -> Path:
        from kdrepro._io import stable_hash

        name = f"{split.dataset}-{self.model_config.name}-d{self.model_config.dim}-{self.spec.replace('+', '_')}"
        return root / f"{name}-{stable_hash(self.described)}"


def _kd_job(setting: KDSetting, run: KDRun, base: str, dim: int, seed: int, teacher, outputs, digest: str) -> _KDJob:
    """The merged method configs of ``run`` (chapter ← run overrides) and the description its cache key hashes."""
    from kdrepro.distill import make_config, parse
    from kdrepro.models import build as build_model

    split = setting.split
    spec = KD_SPECS[run.method]
    model_config = ModelConfig(base, dim)
    train_config = train_config_for(base, setting.train_config)
    chapter = setting.method_configs(base)
    student_repr = build_model(model_config, split).repr_dim
    configs = {}
    for name in parse(spec):
        merged = {**chapter.get(name, {}), **run.overrides.get(name, {})}
        if name == "de" and run.match_experts:
            chapter_experts = make_config("de", chapter.get("de", {})).num_experts
            width = merged.get("expert_hidden") or _default_expert_hidden(student_repr, outputs.user_repr.shape[1])
            merged["expert_hidden"] = chapter_experts * width
        configs[name] = make_config(name, merged)
    relevant = {k: v for k, v in train_config.to_dict().items() if k not in ("progress", "device")}
    described = {
        "split": split.key, "model": model_config.to_dict(), "train": relevant, "seed": seed, "spec": spec,
        "configs": {n: dataclasses.asdict(c) for n, c in configs.items()},
        "teacher": teacher.path.name, "top_n": [setting.top_n, setting.top_n_users], "code": digest,
    }
    return _KDJob(spec, model_config, train_config, configs, described, student_repr)


def _cache_folder(setting: KDSetting, name: str) -> Path:
    from kdrepro._io import cache_root

    return (Path(setting.cache_dir).parent if setting.cache_dir else cache_root()) / name


def _student_dim(setting: KDSetting, run: KDRun, base: str) -> int:
    """φ × the teacher's dim when the run sets φ; else the teacher's dim for "Teacher", the student's otherwise."""
    if run.phi is not None:
        return max(1, round(run.phi * setting.teacher_dims[base]))
    return setting.teacher_dims[base] if run.method == "Teacher" else setting.student_dims[base]


def _fit_kd(setting: KDSetting, run: KDRun, base: str, dim: int, seed: int, teacher, outputs, digest: str):
    """Train (or load from the cache) one distilled student; returns (model, metrics, history, selection, cached)."""
    from kdrepro.distill import build
    from kdrepro.train import fit

    split = setting.split
    job = _kd_job(setting, run, base, dim, seed, teacher, outputs, digest)
    path = job.path(_cache_folder(setting, "students"), split)
    device = resolve_device(job.train_config.device)
    if (path / "model.pt").exists():
        return (*_load_kd(path, job.model_config, split, device), True)
    distill = build(job.spec, outputs, split, job.student_repr, seed=seed, **job.configs)
    kd_parameters = count_parameters(distill)
    log = SelectionLog(distill) if "de" in job.configs else None
    result = fit(job.model_config, split, job.train_config, distill=log or distill, seed=seed)
    selection = log.finish(len(result.history)) if log is not None else None
    _save_kd(path, result, selection, {**job.described, "kd_parameters": kd_parameters})
    metrics = {"test": result.test, "valid": result.valid, "best_epoch": result.best_epoch,
               "seconds": result.seconds, "kd_parameters": kd_parameters}
    return result.model, metrics, result.history, selection, False


def run_kd(setting: KDSetting, runs: Sequence[KDRun]) -> KDResults:
    """Train (or load from the caches) every base model × seed × run of ``runs``.

    Teachers and students without distillation go through :func:`kdrepro.teachers.get` (chapter 00's
    train-once cache); distilled students through a cache of their own (``<cache>/students``), keyed by
    the split, model, training and method configs, seed, teacher and the source of the training code,
    so that a chapter that repeats a run (a sweep passing through the main setting) loads it. Runs with
    DE record the expert each user selects over training (:class:`SelectionLog`).
    """
    split = setting.split
    digest = _kd_code_digest()
    jobs = [(b, s, r) for b in setting.bases for s in setting.seeds for r in runs]
    results, histories, fits = [], [], []
    models, selections, outputs_by, teachers_by = {}, {}, {}, {}
    for number, (base, seed, run) in enumerate(jobs, start=1):
        started = time.time()
        train_config = train_config_for(base, setting.train_config)
        if (base, seed) not in teachers_by:
            teacher_config = ModelConfig(base, setting.teacher_dims[base])
            teacher_train = train_config_for(base, setting.teacher_train_config or setting.train_config)
            teachers_by[(base, seed)] = teachers.get(teacher_config, split, teacher_train, seed,
                                                     cache_dir=setting.cache_dir)
        teacher = teachers_by[(base, seed)]
        dim = _student_dim(setting, run, base)
        selection, kd_parameters = None, 0
        if run.method in NO_KD:
            fitted = teacher if run.method == "Teacher" and dim == setting.teacher_dims[base] else teachers.get(
                ModelConfig(base, dim), split, train_config, seed, cache_dir=setting.cache_dir
            )
            model, metrics, history = fitted.model, fitted.metrics, fitted.history
            cached = (fitted.path / "model.pt").stat().st_mtime < started
        else:
            if (base, seed) not in outputs_by:
                outputs_by[(base, seed)] = teacher.outputs(setting.top_n, setting.top_n_users)
            model, metrics, history, selection, cached = _fit_kd(
                setting, run, base, dim, seed, teacher, outputs_by[(base, seed)], digest
            )
            kd_parameters = metrics.get("kd_parameters", 0)
        keys = {"dataset": split.dataset, "protocol": split.protocol, "base": base, "method": run.method,
                **run.keys, "seed": seed}
        label = " ".join([f"{base}-{dim}", run.method, *(f"{k}={v}" for k, v in run.keys.items())])
        how = "loaded from cache" if cached else f"trained in {time.time() - started:.1f} s"
        shown = "HR@5" if "HR@5" in metrics["test"] else DEFAULT_MONITOR[split.protocol]
        print(f"[{number}/{len(jobs)}] {label} seed {seed}: {how}, "
              f"best epoch {metrics['best_epoch']}, test {shown} {metrics['test'].get(shown, float('nan')):.4f}",
              flush=True)
        results.append(long_results(metrics["test"], **keys))
        histories.append(history_frame(history, **{k: v for k, v in keys.items() if k not in ("dataset", "protocol")}))
        train_seconds = [h["train_s"] for h in history if "train_s" in h]
        fits.append({**{k: v for k, v in keys.items() if k not in ("dataset", "protocol")}, "dim": dim,
                     "parameters": count_parameters(model), "kd_parameters": kd_parameters,
                     "best_epoch": metrics["best_epoch"], "epochs_run": len(history),
                     "seconds": float(metrics["seconds"]),
                     "epoch_s": float(np.mean(train_seconds)) if train_seconds else np.nan, "from_cache": cached})
        store_key = (base, run.method, tuple(run.keys.items()), seed)
        models[store_key] = model
        if selection is not None:
            selections[store_key] = selection
    return KDResults(
        results=pd.concat(results, ignore_index=True) if results else pd.DataFrame(),
        histories=pd.concat(histories, ignore_index=True) if histories else pd.DataFrame(),
        fits=pd.DataFrame(fits),
        models=models,
        selections=selections,
        outputs=outputs_by,
    )


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


def parse_ordering(chain: str) -> list[tuple[str, str, str]]:
    """``"Student < RD ≈ CD < RRD"`` → pairwise claims [(Student, <, RD), (Student, <, CD), (RD, ≈, CD), …].

    ``<`` separates groups (every member of a group is claimed below every member of the next);
    ``≈`` (or ``~``) joins methods claimed about equal.
    """
    groups = [[m.strip() for m in re.split(r"[≈~]", part)] for part in chain.split("<")]
    if any(not m for g in groups for m in g):
        raise ValueError(f"cannot read the ordering {chain!r}")
    claims = []
    for index, group in enumerate(groups):
        if index:
            claims += [(a, "<", b) for a in groups[index - 1] for b in group]
        claims += [(a, "≈", b) for a, b in itertools.combinations(group, 2)]
    return claims


def ordering_claims(
    results: pd.DataFrame,
    chain: str,
    metrics: Sequence[str] = ("HR@5", "NDCG@5"),
    paper_table: str = "derrd_table2_main_phi0.1",
    tolerance: float = 0.02,
) -> pd.DataFrame:
    """Each pairwise claim of the ordering ``chain`` checked on our means and on the paper's values.

    ``a < b`` holds when the mean of ``a`` is below that of ``b``; ``a ≈ b`` when they differ by at most
    ``tolerance`` relative to the larger. Columns: ``base, metric, claim, ours_a, ours_b, ours_rel_diff,
    ours_holds, paper_a, paper_b, paper_holds`` (``rel_diff`` = (b − a) / max(a, b)).
    """
    from kdrepro.paper import long_form, to_paper_names

    ours = to_paper_names(results)
    means = ours.groupby(["dataset", "base", "method", "metric"], sort=False)["value"].mean()
    paper = to_paper_names(long_form(paper_table)).set_index(["dataset", "base", "method", "metric"])["paper"]

    def holds(a: float, op: str, b: float) -> bool | None:
        if pd.isna(a) or pd.isna(b):
            return None
        return bool(a < b) if op == "<" else bool(abs(b - a) <= tolerance * max(abs(a), abs(b)))

    rows = []
    for (dataset, base), _ in means.groupby(level=["dataset", "base"], sort=False):
        for metric in metrics:
            for a, op, b in parse_ordering(chain):
                ours_a = means.get((dataset, base, a, metric), np.nan)
                ours_b = means.get((dataset, base, b, metric), np.nan)
                paper_a = paper.get((dataset, base, a, metric), np.nan)
                paper_b = paper.get((dataset, base, b, metric), np.nan)
                rows.append({
                    "base": base, "metric": metric, "claim": f"{a} {op} {b}",
                    "ours_a": ours_a, "ours_b": ours_b,
                    "ours_rel_diff": (ours_b - ours_a) / max(ours_a, ours_b) if ours_a > 0 or ours_b > 0 else np.nan,
                    "ours_holds": holds(ours_a, op, ours_b),
                    "paper_a": paper_a, "paper_b": paper_b, "paper_holds": holds(paper_a, op, paper_b),
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
# Chapters 02 and 05
# --------------------------------------------------------------------------------------------------


def tied_sweep_runs(method: str, fields: Sequence[str], values: Sequence, key: str) -> list[KDRun]:
    """``method`` with several config fields set to one value at a time, e.g. IR's K and L together.

    ``fields`` read ``method.field`` (``["ir.num_interesting", "ir.num_uninteresting"]``); each value of
    ``values`` becomes one run, labelled by the key column ``key``.
    """
    if not fields or any("." not in name for name in fields):
        raise ValueError(f"fields {list(fields)} must be a non-empty list of 'method.field' names")
    return [KDRun(method, overrides=_field_overrides(fields, [value] * len(fields)), keys={key: value})
            for value in values]


@dataclass
class KDModuleFit:
    """A distilled student with its trained distillation module (PHR's personalization networks, DE's
    experts), which :func:`run_kd` does not keep: ``metrics`` as run_kd's (test, valid, best epoch …)."""

    model: torch.nn.Module
    module: torch.nn.Module
    metrics: dict
    history: list[dict]
    cached: bool


def fit_kd_module(setting: KDSetting, run: KDRun, base: str, seed: int) -> KDModuleFit:
    """Train (or load) the distilled student of ``run`` for ``base`` and ``seed``, keeping its module.

    The inputs are :func:`run_kd`'s (teacher, cached outputs, merged configs, seeds), so on CPU the student
    is bit-identical to run_kd's row of the same run. Student and module parameters are cached under
    ``<cache>/kd_modules``, keyed like the students' cache (split, model, training, configs, seed,
    teacher, training code).
    """
    from kdrepro._io import atomic_write
    from kdrepro.distill import build
    from kdrepro.train import fit

    if run.method in NO_KD or run.match_experts:
        raise ValueError(f"run {run.method!r} (match_experts={run.match_experts}) has no module to keep; "
                         f"pass a KDRun of {list(KD_SPECS)} without match_experts")
    split = setting.split
    teacher = teachers.get(ModelConfig(base, setting.teacher_dims[base]), split,
                           train_config_for(base, setting.train_config), seed, cache_dir=setting.cache_dir)
    outputs = teacher.outputs(setting.top_n, setting.top_n_users)
    job = _kd_job(setting, run, base, _student_dim(setting, run, base), seed, teacher, outputs, _kd_code_digest())
    path = job.path(_cache_folder(setting, "kd_modules"), split)
    module = build(job.spec, outputs, split, job.student_repr, seed=seed, **job.configs)
    device = resolve_device(job.train_config.device)
    if (path / "module.pt").exists():
        model, metrics, history, _ = _load_kd(path, job.model_config, split, device)
        module.load_state_dict(torch.load(path / "module.pt", map_location="cpu", weights_only=True))
        return KDModuleFit(model, module.to(device), metrics, history, True)
    result = fit(job.model_config, split, job.train_config, distill=module, seed=seed)
    _save_kd(path, result, None, {**job.described, "kd_parameters": count_parameters(module)})
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    atomic_write(path / "module.pt", lambda tmp: torch.save(state, tmp))  # written last: marks a complete entry
    metrics = {"test": result.test, "valid": result.valid, "best_epoch": result.best_epoch,
               "seconds": result.seconds, "kd_parameters": count_parameters(module)}
    return KDModuleFit(result.model, module, metrics, result.history, False)


# --------------------------------------------------------------------------------------------------
# Chapter 03: Topology Distillation (TD, KDD'21) tables
# --------------------------------------------------------------------------------------------------

# TD's Table 4 labels → ours (the adaptive assignment is HTD itself).
TD_ASSIGNMENT_LABELS = {"K-means": "K-means assignment", "DE-style (adaptive, end-to-end)": "HTD"}


def td_variant_runs(labels: Sequence[str]) -> list[KDRun]:
    """TD's Table 2 / Table 4 rows by the paper's labels, key ``variant``: methods of :data:`KD_SPECS`
    (``"FTD"``, ``"FTD+DE"``) as they are, the rest HTD variants of :data:`HTD_DESIGN_CHOICES`."""
    unknown = [v for v in labels if v not in KD_SPECS and v not in HTD_DESIGN_CHOICES]
    if unknown:
        raise ValueError(f"unknown TD variants {unknown}; choose from "
                         f"{sorted({'FTD', 'FTD+DE', *HTD_DESIGN_CHOICES})}")
    return [KDRun(v, keys={"variant": v}) if v in KD_SPECS and v != "HTD" else design_runs("HTD", [v])[0]
            for v in labels]


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
