"""Tag retrieval on frozen item representations (kdrepro.downstream; TD's Table 3): labels, the split,
Recall@k by hand, probes on representations whose answer is known, determinism, the paper join."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
from torch import nn

from kdrepro import downstream
from kdrepro.downstream import ProbeConfig, item_labels, probe_recall, recall_at_k, split_items

FAST = ProbeConfig(hidden=16, epochs=20, batch_size=256, lr=0.1, k=1)


class FrozenItems(nn.Module):
    """A stand-in recommender: item representations given as a table."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone())
        self.num_items = table.shape[0]

    def item_repr(self, items: torch.Tensor) -> torch.Tensor:
        return self.table[items]


def one_label_per_item(num_items: int, num_labels: int) -> torch.Tensor:
    labels = torch.zeros(num_items, num_labels, dtype=torch.bool)
    labels[torch.arange(num_items), torch.arange(num_items) % num_labels] = True
    return labels


def test_synthetic_labels_are_the_item_groups(synthetic_data):
    labels = item_labels(synthetic_data, min_items=1)
    assert labels.matrix.shape == (synthetic_data.num_items, int(synthetic_data.item_groups.max()) + 1)
    assert labels.matrix.sum(1).eq(1).all()  # one pseudo-tag per item
    assert labels.matrix.float().argmax(1).tolist() == list(synthetic_data.item_groups)
    assert "synthetic" in labels.kind and labels.dataset == "synthetic"
    assert labels.summary()["labelled items"].iloc[0] == synthetic_data.num_items


def test_label_filter_and_errors(synthetic_data):
    sizes = torch.bincount(torch.as_tensor(synthetic_data.item_groups))
    threshold = int(sizes.max())  # only the largest groups survive
    labels = item_labels(synthetic_data, min_items=threshold)
    assert labels.matrix.shape[1] == int((sizes >= threshold).sum())
    assert len(labels.labelled) == int(sizes[sizes >= threshold].sum())
    with pytest.raises(ValueError, match="min_items"):
        item_labels(synthetic_data, min_items=0)
    with pytest.raises(ValueError, match="no item labels"):
        item_labels(dataclasses.replace(synthetic_data, item_groups=None))


def test_split_items_is_a_partition_and_deterministic():
    items = torch.arange(100)
    train, test = split_items(items, 0.2, torch.Generator().manual_seed(3))
    assert len(test) == 20 and len(train) == 80
    assert sorted(torch.cat([train, test]).tolist()) == list(range(100))
    again = split_items(items, 0.2, torch.Generator().manual_seed(3))
    assert torch.equal(train, again[0]) and torch.equal(test, again[1])


def test_recall_at_k_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.1, 0.2, 0.3, 0.4]])
    targets = torch.tensor([[True, False, False, True], [True, False, False, False]])
    # row 0: top-2 = {0, 2}, tags {0, 3} → 1/2; row 1: top-2 = {3, 2}, tags {0} → 0
    assert recall_at_k(scores, targets, 2).tolist() == [0.5, 0.0]
    assert recall_at_k(scores, targets, 4).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("probe", downstream.PROBES)
def test_probe_on_separable_representations_is_perfect(probe):
    labels = one_label_per_item(240, 4)
    features = labels.float() * 3 + 0.05 * torch.randn(240, 4, generator=torch.Generator().manual_seed(0))
    assert probe_recall(features, labels, probe, FAST, seed=0) == 1.0


def test_probe_on_noise_is_near_chance_and_deterministic():
    labels = one_label_per_item(400, 4)
    noise = torch.randn(400, 8, generator=torch.Generator().manual_seed(1))
    value = probe_recall(noise, labels, "linear", FAST, seed=0)
    assert value < 0.5  # chance: 1/4
    assert probe_recall(noise, labels, "linear", FAST, seed=0) == value
    with pytest.raises(ValueError, match="probe="):
        probe_recall(noise, labels, "kernel", FAST, seed=0)


def test_tag_retrieval_long_form_and_paper_join():
    labels = one_label_per_item(120, 3)
    item_labels_ = downstream.ItemLabels(labels, ["a", "b", "c"], "test", "citeulike-t")
    generator = torch.Generator().manual_seed(0)
    good = FrozenItems(labels.float() * 3 + 0.05 * torch.randn(120, 3, generator=generator))
    noise = FrozenItems(torch.randn(120, 3, generator=generator))
    models = {("bpr", "Teacher", (), 0): good, ("bpr", "Student", (), 0): noise,
              ("bpr", "HTD", (("phi", 0.5),), 0): good}  # a size run: skipped
    results = downstream.tag_retrieval(models, item_labels_, ["Teacher", "Student", "HTD"], probe_seeds=[0, 1],
                                       config=FAST)
    assert len(results) == 2 * 2 * 2  # methods × probes × probe seeds
    assert set(results["metric"]) == {"Recall@1"}
    teacher = results[results["method"] == "Teacher"]["value"]
    assert teacher.eq(1.0).all() and results[results["method"] == "Student"]["value"].mean() < 1.0
    # As Recall@10 the rows join the paper's Table 3 (BPR, both probes).
    as_10 = results.assign(metric="Recall@10")
    table = downstream.paper_comparison(as_10)
    assert set(table["probe"]) == {"linear", "non-linear"}
    row = table[(table["method"] == "Teacher") & (table["probe"] == "linear")].iloc[0]
    assert row["paper"] == pytest.approx(0.3121) and row["verdict"] in ("reproduced", "partially", "not")
    assert row["n_seeds"] == 2 and row["base"] == "BPR"


def test_paper_table():
    table = downstream.paper_table()
    assert set(table["probe"]) == set(downstream.PROBES) and set(table["base"]) == {"BPR", "LightGCN"}
    assert table["paper_std"].between(0, 0.01).all()


def test_tag_retrieval_needs_a_model():
    with pytest.raises(ValueError, match="no trained model"):
        downstream.tag_retrieval({}, downstream.ItemLabels(torch.ones(2, 1, dtype=torch.bool), ["a"], "t", "x"),
                                 ["HTD"])


@pytest.mark.realdata
def test_citeulike_tags(citeulike, data_dir):
    labels = item_labels(citeulike, min_items=100, data_dir=data_dir)
    summary = labels.summary().iloc[0]
    assert labels.matrix.shape[0] == citeulike.num_items
    assert summary["labels"] == len(labels.names) > 100
    assert summary["labelled items"] > 0.9 * citeulike.num_items
    assert isinstance(labels.summary(), pd.DataFrame)
