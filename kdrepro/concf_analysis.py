"""Chapter 06 (ConCF): the runs, and the tables and figures of the chapter.

- :func:`core_filter`: the authors' one-pass k-core filter (their notebook: 10-core), a chapter parameter.
- :class:`ConCFSetting` / :class:`ConCFRun` / :func:`run`: fits of SingleCF (one head) and ConCF variants
  (heads, with or without consensus learning), every head and the consensus evaluated on the test set at
  the target head's best validation epoch; long-form results and the per-generation validation log.
  Each fit is a job of the task ``concf`` (:mod:`kdrepro.concf_task`, :mod:`kdrepro.jobs`): it runs on the
  configured executor and its ledger entry holds everything the tables read (every head's and the
  consensus' test metrics, the validation log, the balancing weights, the target head's top-K test hits),
  so a complete ledger renders the chapter without weights; the inference timing loads them from the store.
- :func:`complementarity` / :func:`overlap_heatmap`: which test interactions each SingleCF hits in its
  top-K that no other model hits, and the pairwise overlap of the hits.
- :func:`validation_curves`: heads and consensus over training, the warm-up/CL boundary, reference lines;
  :func:`curve_points`: those curves at one epoch beside values read off the authors' curves (for
  :func:`kdrepro.paper.paper_vs_ours` and :func:`~kdrepro.paper.gain_verdicts`);
  :func:`balancing_weights`: the GradNorm weights of one fit over training.
- :func:`inference_cost`: parameters and top-K time of the kept head, SingleCF and all heads (consensus).
- :func:`claim_list`: the paper's claims in the spelling of :func:`kdrepro.paper.claim_verdicts`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from kdrepro import jobs
from kdrepro._io import stable_hash
from kdrepro.concf_task import decode_hits
from kdrepro.data import Interactions
from kdrepro.distill.concf import ConCFConfig, ConsensusScorer
from kdrepro.efficiency import CONTENTION_COLUMN, count_parameters, time_recommend_all
from kdrepro.models.multihead import MultiHeadCF
from kdrepro.splits import Split
from kdrepro.store import Store
from kdrepro.train import TrainConfig

HEAD_LABELS = {"bpr": "BPR", "cml": "CML", "bce": "BCE", "mse": "MSE", "user_multinomial": "Multi (user)",
               "item_multinomial": "Multi (item)"}


def core_filter(dataset: Interactions, min_count: int) -> Interactions:
    """One pass of k-core filtering (the authors' notebook, k = 10): keep the interactions whose user and item
    both have at least ``min_count`` interactions in ``dataset`` (counted once, not iterated to a fixed
    point, so some kept users or items may end below k). Ids re-indexed by first appearance. ``min_count``
    0 or 1 returns ``dataset`` unchanged."""
    if min_count < 0:
        raise ValueError(f"min_count must be >= 0, got {min_count}")
    if min_count <= 1:
        return dataset
    keep = (dataset.user_counts()[dataset.users] >= min_count) & (dataset.item_counts()[dataset.items] >= min_count)
    if not keep.any():
        raise ValueError(f"no interaction of {dataset.name!r} survives a {min_count}-core filter")
    users, items = dataset.users[keep], dataset.items[keep]
    user_ids, new_users = _first_appearance(users)
    item_ids, new_items = _first_appearance(items)
    return Interactions(
        name=f"{dataset.name}-core{min_count}", users=new_users, items=new_items, num_users=len(user_ids),
        num_items=len(item_ids), raw_user_ids=dataset.raw_user_ids[user_ids],
        raw_item_ids=dataset.raw_item_ids[item_ids],
        sha256=stable_hash({"source": dataset.sha256, "one_pass_core": min_count}, 64),
        info={**dataset.info, "one_pass_core": min_count},
    )


def _first_appearance(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(old ids in order of first appearance, new contiguous codes of ``values``)."""
    uniques, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return uniques[order], rank[inverse].astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConCFRun:
    label: str  # "SingleCF bpr", "ConCF", "ConCF w/o CL", …
    heads: tuple[str, ...]
    consensus_learning: bool


def single_runs(objectives: Sequence[str]) -> list[ConCFRun]:
    """SingleCF per objective: the same architecture with that head alone."""
    return [ConCFRun(f"SingleCF {o}", (o,), False) for o in objectives]


def concf_runs(heads: Sequence[str], *, with_cl: bool = True, without_cl: bool = True,
               head_sets: Mapping[str, Sequence[str]] | None = None) -> list[ConCFRun]:
    """ConCF with every head (with and/or without CL) and ConCF on fewer heads (``{label: heads}``)."""
    runs = ([ConCFRun("ConCF", tuple(heads), True)] if with_cl else []) + (
        [ConCFRun("ConCF w/o CL", tuple(heads), False)] if without_cl else [])
    return runs + [ConCFRun(f"ConCF {label}", tuple(chosen), True) for label, chosen in (head_sets or {}).items()]


@dataclass(frozen=True)
class ConCFSetting:
    dataset: str
    split: Split
    seeds: tuple[int, ...]
    train: TrainConfig  # loss must be "none": every objective comes from the ConCF module
    concf: ConCFConfig  # heads/consensus_learning are set per run; the rest (α, T, N, warm-up …) from here
    dim: int = 64
    dropout: float = 0.1
    hits_k: int = 50  # top-K of the test hits each fit records (the complementarity analysis)

    def __post_init__(self) -> None:
        if self.train.loss != "none":
            raise ValueError(f"ConCFSetting.train.loss must be 'none' (the heads own their objectives), "
                             f"got {self.train.loss!r}")


# --------------------------------------------------------------------------------------------------
# Jobs (the task, the code behind the fits, is kdrepro.concf_task)
# --------------------------------------------------------------------------------------------------


def concf_job(setting: ConCFSetting, run: ConCFRun, seed: int, store: Store | None = None) -> jobs.FitJob:
    """The job of ``run`` and ``seed``: the multi-branch model (heads, dim, dropout, target), the run's ConCF
    config, the training config and the seed; its labels name the run for people."""
    target = setting.concf.target if setting.concf.target in run.heads else run.heads[0]
    config = dataclasses.replace(setting.concf, heads=run.heads, target=target,
                                 consensus_learning=run.consensus_learning and len(run.heads) > 1)
    model = {"name": "multihead", "dim": setting.dim, "heads": list(run.heads), "target": target,
             "dropout": setting.dropout}
    params = {"concf": {**dataclasses.asdict(config), "heads": list(run.heads)}, "hits_k": setting.hits_k}
    entry = jobs.split_entry(store or Store(), setting.split)
    labels = {"protocol": setting.split.protocol, "base": f"mlp{setting.dim}", "method": run.label}
    return jobs.FitJob("concf", entry, setting.split.dataset, model, setting.train.to_dict(), seed, labels=labels,
                       task="concf", params=params)


# --------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------


@dataclass
class ConCFFit:
    """One fit from the ledger: ``entry`` (metrics, history, ``extra``); ``model`` loaded from the store when
    first read (fitted when the store lacks it)."""

    run: ConCFRun
    seed: int
    job: jobs.FitJob
    entry: dict
    trained: bool
    store: Store = field(repr=False)

    @functools.cached_property
    def model(self) -> MultiHeadCF:
        return jobs.load_model(self.store, self.job)

    def architecture(self, split: Split) -> MultiHeadCF:
        """A freshly built (seeded) model of this fit's architecture, without its weights: what inference
        costs depends on the architecture only, so timing one needs no fit on this machine."""
        torch.manual_seed(self.seed)
        return jobs.task(self.job.task).build(self.job, split)

    @property
    def extra(self) -> dict:
        return self.entry.get("extra") or {}

    @property
    def hits(self) -> np.ndarray:
        """(n_test,) bool: the target head's top-K hits of the test interactions (from the ledger)."""
        return decode_hits(self.extra["test_hits"], self.extra["num_test"])


@dataclass
class ConCFResults:
    results: pd.DataFrame  # dataset, protocol, base, method, run, head, metric, seed, value (test)
    log: pd.DataFrame  # run, seed, epoch, model, metric, value (validation at each consensus generation)
    fits: list[ConCFFit] = field(default_factory=list)

    def fit_of(self, label: str, seed: int | None = None) -> ConCFFit:
        for item in self.fits:
            if item.run.label == label and (seed is None or item.seed == seed):
                return item
        raise KeyError(f"no fit {label!r} (seed {seed}); have {sorted({f.run.label for f in self.fits})}")


def _test_rows(setting: ConCFSetting, item: ConCFFit) -> list[dict]:
    rows = []
    for head, metrics in item.extra.get("heads", {}).items():
        method = item.run.label if len(item.run.heads) == 1 else f"{item.run.label} {head}"
        rows += [{"dataset": setting.dataset, "protocol": setting.split.protocol, "base": f"mlp{setting.dim}",
                  "method": method, "run": item.run.label, "head": head, "metric": name, "seed": item.seed,
                  "value": value} for name, value in metrics.items()]
    return rows


def _log_rows(item: ConCFFit) -> list[dict]:
    rows = []
    for entry in item.extra.get("log", []):
        for key, value in entry.items():
            if "/" in key:
                model, metric = key.split("/", 1)
                rows.append({"run": item.run.label, "seed": item.seed, "epoch": entry["epoch"], "model": model,
                             "metric": metric, "value": value})
    return rows


def run(setting: ConCFSetting, runs: Sequence[ConCFRun]) -> ConCFResults:
    """Every run × seed as a job (:func:`concf_job`): from the ledger, or fitted through the executor; every
    head (and the consensus) evaluated on the test set by the job. In planning mode the jobs are recorded and
    the results are empty."""
    store = Store()
    cells = {(r, seed): concf_job(setting, r, seed, store) for r in runs for seed in setting.seeds}
    done = jobs.run_jobs(list(cells.values()), store=store)
    fits = [ConCFFit(r, seed, job, done[job.key].entry, done[job.key].trained, store)
            for (r, seed), job in cells.items()]
    trained = sum(item.trained for item in fits)
    print(f"concf: {len(fits)} fits, {len(fits) - trained} from the ledger, {trained} trained now", flush=True)
    results = pd.DataFrame([row for item in fits for row in _test_rows(setting, item)],
                           columns=["dataset", "protocol", "base", "method", "run", "head", "metric", "seed",
                                    "value"])
    log = pd.DataFrame([row for item in fits for row in _log_rows(item)],
                       columns=["run", "seed", "epoch", "model", "metric", "value"])
    return ConCFResults(results, log, fits)


def curve_points(log: pd.DataFrame, lines: Mapping[str, tuple[str, str]], readings: Mapping[str, Sequence[float]],
                 metrics: Sequence[str], epoch: int, dataset: str, base: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Our validation curves at ``epoch`` beside values read off the authors' curves at that epoch, as the two
    long frames :func:`kdrepro.paper.paper_vs_ours` and :func:`~kdrepro.paper.gain_verdicts` compare.

    ``lines``: ``{label: (run, model)}`` as in :func:`validation_curves`; ``readings``: ``{label: [value per
    metric]}``. Returns (ours: dataset, base, method, metric, seed, value — one row per seed whose log has
    ``epoch``; readings: dataset, base, method, metric, paper). A log that does not reach ``epoch`` (a short
    profile) gives no rows of ours: nothing is compared at another epoch.
    """
    rows = []
    for label, (run_label, model) in lines.items():
        chosen = log[(log["run"] == run_label) & (log["model"] == model) & (log["epoch"] == epoch)
                     & log["metric"].isin(metrics)]
        rows += [{"dataset": dataset, "base": base, "method": label, "metric": r.metric, "seed": r.seed,
                  "value": r.value} for r in chosen.itertuples()]
    ours = pd.DataFrame(rows, columns=["dataset", "base", "method", "metric", "seed", "value"])
    read = pd.DataFrame([{"dataset": dataset, "base": base, "method": label, "metric": metric, "paper": value}
                         for label, values in readings.items()
                         for metric, value in zip(metrics, values, strict=True)],
                        columns=["dataset", "base", "method", "metric", "paper"])
    return ours, read


def fit_summary(results: ConCFResults) -> pd.DataFrame:
    """Per fit: best epoch, epochs run, seconds, mean seconds of a consensus generation, from the ledger."""
    rows = []
    for item in results.fits:
        generations = [entry["generation_s"] for entry in item.extra.get("log", [])]
        rows.append({"run": item.run.label, "seed": item.seed, "heads": len(item.run.heads),
                     "best_epoch": item.entry.get("best_epoch"), "epochs": item.entry.get("epochs_run"),
                     "seconds": item.entry.get("seconds"),
                     "generation_s": float(np.mean(generations)) if generations else np.nan,
                     "from_ledger": not item.trained})
    return pd.DataFrame(rows)


def comparison(results: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Mean ± std over seeds per method, one column per metric (rows in the order they were run)."""
    chosen = results[results["metric"].isin(metrics)]
    stats = chosen.groupby(["method", "metric"], sort=False)["value"].agg(["mean", "std"]).reset_index()
    stats["value"] = [f"{m:.4f} ± {s:.4f}" if pd.notna(s) else f"{m:.4f}" for m, s in zip(stats["mean"], stats["std"],
                                                                                           strict=True)]
    table = stats.pivot(index="method", columns="metric", values="value")
    order = list(dict.fromkeys(chosen["method"]))
    return table.loc[order, [m for m in metrics if m in table.columns]].reset_index()


def claim_list(heads: Sequence[str], target: str = "bpr") -> list[str]:
    """The paper's claims: every ConCF head beats its SingleCF; the consensus matches or beats every head
    (hence the best); ConCF's target head beats ConCF without consensus learning's."""
    claims = [f"SingleCF {h} < ConCF {h}" for h in heads]
    claims += [f"ConCF {h} ≤ ConCF consensus" for h in heads]
    return claims + [f"ConCF w/o CL {target} < ConCF {target}"]


# --------------------------------------------------------------------------------------------------
# Complementarity of the SingleCFs
# --------------------------------------------------------------------------------------------------


def complementarity(hits: Mapping[str, np.ndarray]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Of the test interactions each model hits in its top-K (``{model: (n_test,) bool}``,
    :func:`kdrepro.concf_task.test_hits`,
    kept by every fit's ledger entry as :attr:`ConCFFit.hits`): how many no other model hits.

    Returns (per model: hits, unique hits, unique share of its hits, share of all test interactions;
    an "any model" row), and the overlap matrix: row A, column B = |hits(A) ∩ hits(B)| / |hits(A)|.
    """
    if not hits:
        raise ValueError("complementarity needs the hits of at least one model")
    matrix = np.stack(list(hits.values()))  # (models, n_test)
    counts = matrix.sum(0)
    rows = []
    for name, hit in hits.items():
        unique = hit & (counts == 1)
        rows.append({"model": name, "hits": int(hit.sum()), "unique_hits": int(unique.sum()),
                     "unique_share_of_hits": float(unique.sum() / max(hit.sum(), 1)),
                     "hit_share_of_test": float(hit.mean())})
    rows.append({"model": "any model", "hits": int((counts > 0).sum()), "unique_hits": np.nan,
                 "unique_share_of_hits": np.nan, "hit_share_of_test": float((counts > 0).mean())})
    overlap = (matrix[:, None, :] & matrix[None, :, :]).sum(-1) / np.maximum(matrix.sum(1), 1)[:, None]
    names = list(hits)
    return pd.DataFrame(rows), pd.DataFrame(overlap, index=names, columns=names)


def overlap_heatmap(overlap: pd.DataFrame, ax=None) -> Figure:
    """The overlap matrix on one colour scale [0, 1] (row model's hits also hit by the column model)."""
    fig, ax = _axes(ax, (1.2 * len(overlap) + 2.5, 1.0 * len(overlap) + 1.5))
    image = ax.imshow(overlap.to_numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(overlap)), overlap.columns, rotation=35, ha="right")
    ax.set_yticks(range(len(overlap)), overlap.index)
    for (i, j), value in np.ndenumerate(overlap.to_numpy()):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black",
                fontsize="small")
    ax.set_title("share of the row model's test hits also hit by the column model", fontsize="medium")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return fig


def _axes(ax, figsize):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        plt.close(fig)
        return fig, ax
    return ax.figure, ax


# --------------------------------------------------------------------------------------------------
# Curves and inference cost
# --------------------------------------------------------------------------------------------------


def validation_curves(log: pd.DataFrame, lines: Mapping[str, tuple[str, str]], metrics: Sequence[str],
                      warmup_epochs: int, references: Mapping[str, Sequence[float]] | None = None) -> Figure:
    """Validation metrics over training, one panel per metric: each line ``{label: (run, model)}`` (mean over
    seeds), a vertical line at the warm-up / consensus-learning boundary, and dashed horizontal reference
    lines ``{label: [value per metric]}`` in the colour of the line of the same label."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
    plt.close(fig)
    colours = dict(zip(lines, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for ax, metric in zip(axes[0], metrics, strict=True):
        for label, (run_label, model) in lines.items():
            rows = log[(log["run"] == run_label) & (log["model"] == model) & (log["metric"] == metric)]
            if rows.empty:
                continue
            curve = rows.groupby("epoch")["value"].mean()
            ax.plot(curve.index, curve.to_numpy(), marker="o", markersize=3, label=label, color=colours[label])
        for label, values in (references or {}).items():
            value = values[list(metrics).index(metric)]
            ax.axhline(value, linestyle="--", linewidth=1, color=colours.get(label, "grey"),
                       label=f"{label} (authors' curve)")
        ax.axvline(warmup_epochs, color="black", linestyle=":", linewidth=1)
        ax.text(warmup_epochs, ax.get_ylim()[0], " consensus learning →", fontsize="small", va="bottom")
        ax.set_xlabel("epoch")
        ax.set_title(f"validation {metric}", fontsize="medium")
    axes[0][-1].legend(frameon=False, fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def balancing_weights(item: ConCFFit, ax=None) -> Figure:
    """The heads' balancing weights w_x at the start of every epoch of one fit (renormalised to sum to the
    number of heads before each step; flat at 1 without balancing)."""
    weights = pd.DataFrame(item.extra["weight_log"]).set_index("epoch")
    fig, ax = _axes(ax, (6.0, 3.6))
    for head in weights.columns:
        ax.plot(weights.index, weights[head].to_numpy(), label=HEAD_LABELS.get(head, head))
    ax.axvline(item.job.params["concf"]["warmup_epochs"], color="black", linestyle=":", linewidth=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("w (start of epoch)")
    ax.set_title(f"{item.run.label}, seed {item.seed}: balancing weights", fontsize="medium")
    ax.legend(frameon=False, fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def inference_cost(concf: ConCFFit, single: ConCFFit, split: Split, top_n: int = 50, repeats: int = 3,
                   consensus_top_n: int = 100, temperature: float = 10.0) -> pd.DataFrame:
    """Parameters and best-of-``repeats`` seconds to produce every user's top-``top_n`` (training items
    masked), with the cores other processes kept busy meanwhile: ConCF's kept head, SingleCF of the same
    objective, and keeping every head (the consensus).
    Measured on freshly built models of the fits' architectures (:meth:`ConCFFit.architecture`)."""
    model, single_model = concf.architecture(split), single.architecture(split)
    scorer = ConsensusScorer(model, split, "valid", consensus_top_n, temperature)
    rows = []
    timed = [("ConCF, kept head", model.target_parameters(), model),
             (f"{single.run.label}", count_parameters(single_model), single_model),
             (f"ConCF, all {len(model.heads)} heads (consensus)", count_parameters(model), scorer)]
    for name, parameters, recommender in timed:
        timing = time_recommend_all(recommender, split, top_n, repeats=repeats)
        rows.append((name, parameters, timing.seconds, timing.other_cores_busy))
    table = pd.DataFrame(rows, columns=["model", "parameters", f"top{top_n}_all_users_s", CONTENTION_COLUMN])
    table["parameters_vs_singlecf"] = table["parameters"] / table["parameters"].iloc[1]
    return table
