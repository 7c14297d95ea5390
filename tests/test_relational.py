"""The relational gap between teacher and student (kdrepro.relational; TD's Fig. 8): neighbour sets,
KL by hand, invariances, the long-form table and its plot."""

from __future__ import annotations

import math

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from kdrepro import relational
from kdrepro.relational import neighbour_sets, relational_kl, sample_anchors


class Frozen(nn.Module):
    """A stand-in recommender with fixed user and item representations."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor) -> None:
        super().__init__()
        self.users, self.items = nn.Parameter(users), nn.Parameter(items)
        self.num_users, self.num_items = len(users), len(items)

    def user_repr(self, ids: torch.Tensor) -> torch.Tensor:
        return self.users[ids]

    def item_repr(self, ids: torch.Tensor) -> torch.Tensor:
        return self.items[ids]


def test_anchors():
    generator = torch.Generator().manual_seed(0)
    assert sample_anchors(5, 10, generator).tolist() == [0, 1, 2, 3, 4]
    drawn = sample_anchors(100, 10, generator)
    assert len(set(drawn.tolist())) == 10 and drawn.max() < 100
    with pytest.raises(ValueError, match="num_anchors"):
        sample_anchors(5, 0, generator)


def test_neighbour_sets_by_hand():
    # Points on the unit circle at angles 0, 10, 20, 90, 180 degrees: anchor 0's nearest are 1 then 2.
    angles = torch.tensor([0.0, 10.0, 20.0, 90.0, 180.0]) * math.pi / 180
    points = torch.stack([angles.cos(), angles.sin()], 1)
    sets = neighbour_sets(points, torch.tensor([0, 4]), 2, torch.Generator().manual_seed(0), batch_size=1)
    assert sets["top"][0].tolist() == [1, 2]
    assert sets["top"][1].tolist() == [3, 2]  # 180°: nearest 90° then 20°
    for row, anchor in zip(sets["random"].tolist(), [0, 4], strict=True):
        assert anchor not in row and len(set(row)) == 2
    with pytest.raises(ValueError, match="k must be"):
        neighbour_sets(points, torch.tensor([0]), 5, torch.Generator())


def test_kl_is_zero_for_the_teacher_and_its_rotations():
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(50, 8, generator=generator)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=generator))
    anchors = torch.arange(50)
    candidates = neighbour_sets(teacher, anchors, 10, generator)["top"]
    assert relational_kl(teacher, teacher, anchors, candidates).abs().max() < 1e-12
    assert relational_kl(teacher, 3 * teacher @ rotation, anchors, candidates).abs().max() < 1e-10
    other = torch.randn(50, 4, generator=generator)  # another dimension is fine
    assert (relational_kl(teacher, other, anchors, candidates) > 0).all()


def test_kl_by_hand():
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # cos(0,1) = 1, cos(0,2) = 0
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # cos(0,1) = 0, cos(0,2) = 0
    kl = relational_kl(teacher, student, torch.tensor([0]), torch.tensor([[1, 2]]), temperature=1.0)
    p = torch.tensor([math.e, 1.0], dtype=torch.float64) / (math.e + 1)  # teacher softmax of (1, 0); student uniform
    expected = float((p * (p / 0.5).log()).sum())
    assert kl.item() == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="temperature"):
        relational_kl(teacher, student, torch.tensor([0]), torch.tensor([[1, 2]]), temperature=0.0)


def test_relational_gap_table_and_plot():
    generator = torch.Generator().manual_seed(0)
    users, items = torch.randn(40, 6, generator=generator), torch.randn(60, 6, generator=generator)
    models = {
        ("bpr", "Teacher", (), 0): Frozen(users, items),
        ("bpr", "Student", (), 0): Frozen(torch.randn(40, 3, generator=generator),
                                          torch.randn(60, 3, generator=generator)),
        ("bpr", "HTD", (), 0): Frozen(users * 2, items * 2),  # the teacher's geometry: KL 0
        ("bpr", "HTD", (("phi", 0.5),), 0): Frozen(users, items),  # a size run: skipped
    }
    table = relational.relational_gap(models, ["Student", "HTD"], k=10, num_anchors=20)
    assert len(table) == 2 * 2 * 2  # methods × sides × sets
    assert set(table["set"]) == {"top", "random"} and set(table["side"]) == {"user", "item"}
    assert table[table["method"] == "HTD"]["kl_mean"].abs().max() < 1e-10
    assert (table[table["method"] == "Student"]["kl_mean"] > 0).all()
    again = relational.relational_gap(models, ["Student", "HTD"], k=10, num_anchors=20)
    assert table.equals(again)
    assert isinstance(relational.relational_plot(table), Figure)
    with pytest.raises(ValueError, match="sides"):
        relational.relational_gap(models, ["HTD"], sides=["tag"])
