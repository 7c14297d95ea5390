"""Downstream tasks on frozen representations: tag retrieval on CiteULike items (Topology Distillation,
Kang et al., KDD'21, Table 3).

The paper asks whether the knowledge a student receives makes its *representations* more useful beyond
recommendation: it trains a linear and a non-linear probe on frozen item representations (teacher,
student, DE, HTD) to retrieve each CiteULike paper's tags, and reports Recall@10 (mean ± std). The
paper does not publish the probe's protocol (tag filter, split, probe width, loss, epochs), so this
module fixes one and every number it produces is for that protocol only:

- **Labels** (:func:`item_labels`): the citeulike-t tags carried by at least ``min_items`` items (the
  long tail of tags used once or twice cannot be learnt from any representation and would only add
  noise); items without such a tag are left out. On the synthetic data of the smoke profile, which has
  no tags, each item's generating preference group is its one pseudo-tag (``ItemLabels.kind`` says so).
- **Split**: per *probe seed*, a random ``test_share`` of the labelled items is held out (explicit
  generator); the representation model is never retrained.
- **Probe** (:class:`ProbeConfig`): the inputs are z-scored with the training items' mean and std (so
  that teachers and students of any scale get the same optimiser settings); ``"linear"`` is one affine
  map to tag logits, ``"non-linear"`` an MLP with one hidden ReLU layer of ``hidden`` units. Both are
  trained with Adam for a fixed number of epochs on the softmax cross-entropy against the item's tags
  as a uniform distribution (the usual multi-label ranking loss: it scores tags against each other, as
  retrieval needs).
- **Metric**: each test item's tags are ranked by the probe's logits; Recall@k = |top-k ∩ tags| / |tags|,
  averaged over test items.

Everything is batched tensor code (no loop over items or tags); a probe on 20,000 items takes seconds
on a CPU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from kdrepro.data import Interactions, load_citeulike_tags

PROBES = ("linear", "non-linear")


@dataclass(frozen=True)
class ItemLabels:
    """Items × labels, with what the labels are.

    - ``matrix``: (num_items, num_labels) bool; an item may carry several labels or none.
    - ``names``: one name per label column.
    - ``kind``: a human-readable description (real tags, or the synthetic pseudo-tags).
    - ``dataset``: the dataset's name (the join key with the paper's table).
    """

    matrix: torch.Tensor
    names: list[str]
    kind: str
    dataset: str

    @property
    def labelled(self) -> torch.Tensor:
        """Ids of the items with at least one label."""
        return torch.nonzero(self.matrix.any(dim=1)).squeeze(1)

    def summary(self) -> pd.DataFrame:
        """One row: labels, labelled items, labels per labelled item, what they are."""
        labelled = self.matrix[self.labelled]
        return pd.DataFrame([{
            "dataset": self.dataset, "labels": len(self.names), "items": int(self.matrix.shape[0]),
            "labelled items": int(labelled.shape[0]),
            "labels per labelled item": float(labelled.sum(1).double().mean()) if len(labelled) else np.nan,
            "kind": self.kind,
        }])


def item_labels(dataset: Interactions, min_items: int = 100, data_dir: str | None = None) -> ItemLabels:
    """The labels of ``dataset``'s items for the tag-retrieval probe.

    ``citeulike-t``: its tags (``tag-item.dat``, ``tags.dat``) carried by at least ``min_items`` items.
    ``synthetic``: each item's generating preference group as its single pseudo-tag (the synthetic data
    has no tags; ``min_items`` applies the same way).
    """
    if min_items < 1:
        raise ValueError(f"min_items must be at least 1, got {min_items}")
    if dataset.name == "citeulike-t":
        items, tags, names = load_citeulike_tags(dataset, data_dir)
        kind = f"CiteULike tags carried by at least {min_items} items"
    elif dataset.item_groups is not None:
        items = np.arange(dataset.num_items)
        tags = np.asarray(dataset.item_groups, dtype=np.int64)
        names = [f"group {g}" for g in range(int(tags.max()) + 1)]
        kind = (f"synthetic pseudo-tags: each item's generating preference group "
                f"(groups with at least {min_items} items)")
    else:
        raise ValueError(f"dataset {dataset.name!r} has no item labels; item_labels supports 'citeulike-t' "
                         "and datasets with item_groups ('synthetic')")
    counts = np.bincount(tags, minlength=len(names))
    keep = np.flatnonzero(counts >= min_items)
    column = np.full(len(names), -1, dtype=np.int64)
    column[keep] = np.arange(len(keep))
    kept = column[tags] >= 0
    matrix = torch.zeros(dataset.num_items, len(keep), dtype=torch.bool)
    matrix[torch.as_tensor(items[kept]), torch.as_tensor(column[tags[kept]])] = True
    return ItemLabels(matrix, [names[i] for i in keep], kind, dataset.name)


@dataclass(frozen=True)
class ProbeConfig:
    """How a probe is trained and scored (this suite's protocol; the paper's is not published)."""

    hidden: int = 128  # width of the non-linear probe's hidden layer
    epochs: int = 10  # passes over the training items (fixed; no early stopping)
    batch_size: int = 1024  # training items per Adam step
    lr: float = 0.01  # Adam learning rate
    weight_decay: float = 1e-5  # Adam L2
    test_share: float = 0.2  # share of the labelled items held out per probe seed
    k: int = 10  # Recall@k

    def __post_init__(self) -> None:
        for name in ("hidden", "epochs", "batch_size", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"ProbeConfig.{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.test_share < 1:
            raise ValueError(f"ProbeConfig.test_share must be in (0, 1), got {self.test_share}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"ProbeConfig.lr must be positive and weight_decay non-negative, got "
                             f"{self.lr}, {self.weight_decay}")


def split_items(
    items: torch.Tensor, test_share: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``items`` shuffled by ``generator`` and cut into (train, test); test gets round(share × n), ≥ 1."""
    order = items[torch.randperm(len(items), generator=generator)]
    num_test = min(max(1, round(test_share * len(items))), len(items) - 1)
    return order[num_test:], order[:num_test]


def recall_at_k(scores: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """Per row: |top-k of ``scores`` ∩ ``targets``| / |targets| (rows without targets: NaN).

    ``scores`` (n, L) float, ``targets`` (n, L) bool.
    """
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    hits = targets.gather(1, top).sum(1).double()
    return hits / targets.sum(1).double()


def _layer(d_in: int, d_out: int, generator: torch.Generator) -> nn.Linear:
    """nn.Linear with PyTorch's default U(±1/√d_in) initialisation drawn from ``generator``."""
    layer = nn.Linear(d_in, d_out)
    bound = 1 / math.sqrt(d_in)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(d_out, d_in, generator=generator) * 2 * bound - bound)
        layer.bias.copy_(torch.rand(d_out, generator=generator) * 2 * bound - bound)
    return layer


def build_probe(probe: str, d_in: int, num_labels: int, hidden: int, generator: torch.Generator) -> nn.Module:
    """``"linear"``: x ↦ Wx + b; ``"non-linear"``: x ↦ W₂ ReLU(W₁x + b₁) + b₂."""
    if probe == "linear":
        return _layer(d_in, num_labels, generator)
    if probe == "non-linear":
        return nn.Sequential(_layer(d_in, hidden, generator), nn.ReLU(), _layer(hidden, num_labels, generator))
    raise ValueError(f"probe={probe!r}; choose one of {PROBES}")


def probe_recall(
    features: torch.Tensor,
    labels: torch.Tensor,
    probe: str,
    config: ProbeConfig,
    seed: int,
) -> float:
    """Train one probe on frozen ``features`` and return the test Recall@k.

    ``features`` (num_items, d) and ``labels`` (num_items, L) bool for the same items; items without a
    label are ignored. ``seed`` draws the train/test split, the initialisation and the batch order, so
    every representation probed with the same seed gets the same split.
    """
    if features.shape[0] != labels.shape[0]:
        raise ValueError(f"features has {features.shape[0]} rows but labels {labels.shape[0]}")
    generator = torch.Generator().manual_seed(seed)
    labelled = torch.nonzero(labels.any(dim=1)).squeeze(1)
    if len(labelled) < 2:
        raise ValueError("labels must mark at least two items")
    train, test = split_items(labelled, config.test_share, generator)
    x = features.detach().float().cpu()
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-8)
    x = (x - mean) / std  # z-scored on the training items: one optimiser setting for every scale
    targets = labels.float()
    targets = targets / targets.sum(1, keepdim=True).clamp_min(1)  # tags as a uniform distribution
    model = build_probe(probe, x.shape[1], labels.shape[1], config.hidden, generator)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    model.train()
    for _ in range(config.epochs):
        order = train[torch.randperm(len(train), generator=generator)]
        for batch in order.split(config.batch_size):
            loss = -(targets[batch] * F.log_softmax(model(x[batch]), dim=1)).sum(1).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        return float(recall_at_k(model(x[test]), labels[test], config.k).mean())


@torch.no_grad()
def item_representation(model: nn.Module) -> torch.Tensor:
    """Every item's representation (the layer latent KD distills), as a CPU tensor."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    reprs = model.item_repr(torch.arange(model.num_items, device=device)).float().cpu()
    model.train(was_training)
    return reprs


def tag_retrieval(
    models: Mapping[tuple, nn.Module],
    labels: ItemLabels,
    methods: Sequence[str],
    probes: Sequence[str] = PROBES,
    probe_seeds: Sequence[int] = (0, 1, 2),
    config: ProbeConfig = ProbeConfig(),
) -> pd.DataFrame:
    """Probe the frozen item representations of every trained model of ``methods``.

    ``models``: ``{(base, method, keys, seed): model}`` as :class:`kdrepro.runs.KDResults.models`
    (runs with extra keys — sizes, variants — are skipped). Returns long form ``dataset, base, method,
    probe, seed, probe_seed, metric, value`` (``metric`` = ``Recall@k``; ``seed`` the model's run seed).
    """
    unknown = [p for p in probes if p not in PROBES]
    if unknown:
        raise ValueError(f"unknown probes {unknown}; choose from {PROBES}")
    rows = []
    for base, method, keys, seed in models:  # keys first: only the models used are loaded
        if method not in methods or keys:
            continue
        features = item_representation(models[(base, method, keys, seed)])
        for probe in probes:
            for probe_seed in probe_seeds:
                rows.append({
                    "dataset": labels.dataset, "base": base, "method": method, "probe": probe, "seed": seed,
                    "probe_seed": probe_seed, "metric": f"Recall@{config.k}",
                    "value": probe_recall(features, labels.matrix, probe, config, probe_seed),
                })
    if not rows:
        raise ValueError(f"no trained model of methods {list(methods)} without extra keys in models")
    order = {m: i for i, m in enumerate(methods)}
    frame = pd.DataFrame(rows)
    return frame.sort_values(["base", "probe", "method"], key=lambda c: c.map(order) if c.name == "method" else c,
                             kind="stable").reset_index(drop=True)


def paper_table(table: str = "td_table3_downstream") -> pd.DataFrame:
    """The paper's tag-retrieval Recall@10 in long form: ``dataset, base, method, probe, metric, paper,
    paper_std`` (CiteULike; the region-classification columns, Foursquare, are left out)."""
    from kdrepro.paper import load_table

    printed = load_table(table)
    return pd.DataFrame({
        "dataset": "CiteULike", "base": printed["base"], "method": printed["method"], "probe": printed["probe"],
        "metric": "Recall@10", "paper": printed["tag_retrieval_Recall@10_mean"],
        "paper_std": printed["tag_retrieval_Recall@10_std"],
    })


def paper_comparison(results: pd.DataFrame, tolerance: float = 0.05) -> pd.DataFrame:
    """Our tag retrieval (:func:`tag_retrieval`) next to the paper's Table 3, with a verdict per value.

    One row per (dataset, base, probe, method, metric); ``ours_mean``/``ours_std``/``n_seeds`` pool every
    (run seed, probe seed) pair (the paper's own std is in :func:`paper_table`). Verdicts as
    :func:`kdrepro.paper.paper_vs_ours`, orderings compared among the methods of the same probe.
    """
    from kdrepro.paper import paper_vs_ours

    # The probe goes into the metric name: paper_vs_ours joins and orders on (dataset, base, method, metric).
    def tagged(frame: pd.DataFrame) -> pd.Series:
        return frame["metric"] + " · " + frame["probe"]

    ours = results.assign(metric=tagged(results), seed=results["seed"].astype(str) + "/" +
                          results["probe_seed"].astype(str)).drop(columns=["probe", "probe_seed"])
    theirs = paper_table()
    long = theirs.assign(metric=tagged(theirs))[["dataset", "base", "method", "metric", "paper"]]
    table = paper_vs_ours(ours, long, tolerance)
    split = table["metric"].str.split(" · ", n=1, expand=True)
    table.insert(table.columns.get_loc("method"), "probe", split[1])
    table["metric"] = split[0]
    table.attrs["tolerance"] = tolerance
    return table
