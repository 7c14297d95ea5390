"""FitNet, FTD and HTD (Topology Distillation, KDD'21): the method contract and each pure loss by hand."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from kdrepro import data, splits, teachers
from kdrepro.distill.de import DE
from kdrepro.distill.fitnet import FitNet, FitNetConfig, Regressor, hint_regression_loss
from kdrepro.distill.ftd import FTD, FTDConfig, cosine_matrix, topology_loss
from kdrepro.distill.htd import (
    HTD,
    HTDConfig,
    entity_topology_loss,
    group_prototypes,
    group_topology_loss,
    kmeans,
    within_group_tiles,
)
from kdrepro.models import ModelConfig
from kdrepro.models import build as build_model
from kdrepro.train import NegativeSampler, TrainConfig, fit
from kdrepro.types import Batch

STUDENT_DIM = 8
HTD_VARIANTS = [{}, {"variant": "group_only"}, {"variant": "entity_only"}, {"variant": "group_pp"},
                {"assignment": "kmeans"}, {"weighting": "balanced"},
                {"positive_pairs": False, "prototype_grad": True}]
CASES = [(FitNet, {}), (FitNet, {"regressor": "linear"}), (FTD, {}), (FTD, {"topology": "separate"})]
CASES += [(HTD, variant) for variant in HTD_VARIANTS]
IDS = [f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in overrides.items()) or 'default'}"
       for cls, overrides in CASES]
FIT_CASES = [0, 2, 4, 8]  # FitNet, FTD, HTD (adaptive), HTD (K-means)
FIT_OVERRIDES = {HTD: {"num_groups": 8}}  # fewer experts: the same code paths, a quicker two-epoch fit
TERM = {FitNet: "fitnet", FTD: "ftd", HTD: "htd"}


@pytest.fixture(scope="module")
def split():
    return splits.make_split(data.synthetic(), "loo_sampled", 0, num_negatives=99)


@pytest.fixture(scope="module")
def teacher(split):
    result = fit(ModelConfig("bpr", 32), split, TrainConfig(epochs=3, progress=False))
    return teachers.compute_outputs(result.model, split, top_n=20, top_n_users=20)


def make(cls, split, teacher, seed=0, **overrides):
    return cls(dataclasses.replace(cls.Config(), **overrides), teacher, split, STUDENT_DIM, seed)


def make_batch(split, size=256, seed=0):
    generator = torch.Generator().manual_seed(seed)
    users, items = split.train_tensors()
    idx = torch.randperm(len(users), generator=generator)[:size]
    negatives = NegativeSampler(split).sample(1, generator)
    return Batch(users=users[idx], pos=items[idx], neg=negatives[idx], epoch=1)


def explicit_topology_loss(teacher_repr, student_repr):
    difference = cosine_matrix(teacher_repr, teacher_repr) - cosine_matrix(student_repr, student_repr)
    return difference.square().sum()


def student(split, seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig("bpr", STUDENT_DIM), split)


# --------------------------------------------------------------------------------------------------
# The contract, for every method and HTD variant
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "overrides"), CASES, ids=IDS)
def test_terms_are_finite_and_reach_the_student(cls, overrides, split, teacher):
    method = make(cls, split, teacher, **overrides)
    model = student(split)
    method.on_epoch_start(1, torch.Generator().manual_seed(1))
    terms = method(model, make_batch(split))
    assert set(terms) == {TERM[cls]}
    value = terms[TERM[cls]]
    assert value.dim() == 0 and torch.isfinite(value) and value > 0
    value.backward()
    for table in (model.user_embedding.weight, model.item_embedding.weight):
        assert table.grad is not None and table.grad.abs().sum() > 0
    for name, parameter in method.named_parameters():  # regressors, experts, selection networks learn too
        assert parameter.grad is not None, name
    assert set(method.state_dict()) == {name for name, _ in method.named_parameters()}  # no teacher tensors


@pytest.mark.parametrize(("cls", "overrides"), [CASES[i] for i in FIT_CASES], ids=[IDS[i] for i in FIT_CASES])
def test_fit_is_deterministic_and_leaves_the_teacher_untouched(cls, overrides, split, teacher):
    names = ("user_topk", "item_topk", "user_repr", "item_repr")
    before = {name: getattr(teacher, name).clone() for name in names}
    config = TrainConfig(epochs=2, progress=False, patience=0, eval_every=2)
    model = ModelConfig("bpr", STUDENT_DIM)
    overrides = {**overrides, **FIT_OVERRIDES.get(cls, {})}
    runs = [fit(model, split, config, distill=make(cls, split, teacher, **overrides), seed=3) for _ in range(2)]
    first, second = ([{k: v for k, v in h.items() if k != "train_s"} for h in run.history] for run in runs)
    assert first == second
    for key, value in runs[0].model.state_dict().items():
        assert torch.equal(value, runs[1].model.state_dict()[key])
    assert all(math.isfinite(h["loss"]) and f"loss/{TERM[cls]}" in h for h in runs[0].history)
    for name, value in before.items():
        assert torch.equal(getattr(teacher, name), value), f"teacher.{name} was modified"


def test_configs_reject_bad_values():
    with pytest.raises(ValueError):
        FitNetConfig(regressor="conv")
    with pytest.raises(ValueError):
        FTDConfig(topology="bipartite")
    with pytest.raises(ValueError):
        HTDConfig(variant="group_ee")
    with pytest.raises(ValueError):
        HTDConfig(assignment="spectral")
    with pytest.raises(ValueError):
        HTDConfig(gamma=1.5)


# --------------------------------------------------------------------------------------------------
# FitNet
# --------------------------------------------------------------------------------------------------


def test_hint_regression_by_hand():
    teacher_repr = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    regressed = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert hint_regression_loss(teacher_repr, regressed).item() == pytest.approx(1 + 4 + 4)
    assert hint_regression_loss(teacher_repr, teacher_repr).item() == 0


def test_regressor_shapes_and_layers():
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(5, 3, generator=generator)
    linear, mlp = Regressor(3, 7, None, generator), Regressor(3, 7, 4, generator)
    torch.testing.assert_close(linear(h), h @ linear.weights[0] + linear.biases[0])
    expected = torch.relu(h @ mlp.weights[0] + mlp.biases[0]) @ mlp.weights[1] + mlp.biases[1]
    torch.testing.assert_close(mlp(h), expected)


def test_fitnet_weights_items_like_de(split, teacher):
    method = make(FitNet, split, teacher)
    assert method.regressors["user"].weights[0].shape == (STUDENT_DIM, (STUDENT_DIM + 32) // 2)
    batch, model = make_batch(split, size=16), student(split)
    with torch.no_grad():
        users, pos, neg = torch.unique(batch.users), torch.unique(batch.pos), torch.unique(batch.neg)
        items = torch.cat([pos, neg])
        f_user, f_item = method.regressors["user"], method.regressors["item"]
        by_hand = hint_regression_loss(teacher.user_repr[users], f_user(model.user_repr(users)))
        by_hand += 0.5 * hint_regression_loss(teacher.item_repr[items], f_item(model.item_repr(items)))
        assert method(model, batch)["fitnet"].item() == pytest.approx(0.01 * by_hand.item(), rel=1e-5)


# --------------------------------------------------------------------------------------------------
# FTD: the topology loss
# --------------------------------------------------------------------------------------------------


def test_topology_loss_by_hand():
    # Teacher: e1 = (1, 0), e2 = (0, 1), e3 = (1, 1) → cosines 0, 1/√2, 1/√2.
    teacher_repr = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # Student (another width): e1 = (1, 0, 0), e2 = (2, 0, 0), e3 = (0, 0, 3) → cosines 1, 0, 0.
    student_repr = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    r = 1 / math.sqrt(2)
    expected = 2 * ((0 - 1) ** 2 + (r - 0) ** 2 + (r - 0) ** 2)  # off-diagonal pairs count twice; diagonal 0
    assert topology_loss(teacher_repr, student_repr).item() == pytest.approx(expected, rel=1e-6)
    mask = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    assert topology_loss(teacher_repr, student_repr, mask).item() == pytest.approx(2.0, rel=1e-6)
    weights = torch.full((3, 3), 0.5)
    assert topology_loss(teacher_repr, student_repr, weights).item() == pytest.approx(expected / 2, rel=1e-6)


def test_topology_loss_is_zero_for_the_teacher_and_prefers_agreement():
    generator = torch.Generator().manual_seed(0)
    teacher_repr = torch.randn(40, 16, generator=generator)
    assert topology_loss(teacher_repr, teacher_repr).item() == 0
    assert topology_loss(teacher_repr, 3 * teacher_repr).item() == pytest.approx(0, abs=1e-3)  # scale-free
    close = teacher_repr + 0.1 * torch.randn(40, 16, generator=generator)
    far = torch.randn(40, 16, generator=generator)
    assert topology_loss(teacher_repr, close) < topology_loss(teacher_repr, far)


@pytest.mark.parametrize("n", [3, 50, 400])
def test_topology_loss_gram_form_equals_the_explicit_matrices(n):
    generator = torch.Generator().manual_seed(n)
    teacher_repr = torch.randn(n, 24, generator=generator, dtype=torch.float64)
    student_repr = torch.randn(n, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    explicit = explicit_topology_loss(teacher_repr, student_repr)
    gram = topology_loss(teacher_repr, student_repr)
    torch.testing.assert_close(gram, explicit)
    torch.testing.assert_close(*(torch.autograd.grad(loss, student_repr)[0] for loss in (gram, explicit)))


def test_ftd_uses_the_batch_users_and_items_jointly(split, teacher):
    batch, model = make_batch(split, size=32), student(split)
    users = torch.unique(batch.users)
    items = torch.unique(torch.cat([batch.pos, batch.neg.reshape(-1)]))
    with torch.no_grad():
        teacher_repr = torch.cat([teacher.user_repr[users], teacher.item_repr[items]])
        student_repr = torch.cat([model.user_repr(users), model.item_repr(items)])
        joint = explicit_topology_loss(teacher_repr, student_repr)
        n = len(users)
        block = torch.zeros(len(teacher_repr), len(teacher_repr), dtype=torch.bool)
        block[:n, :n] = block[n:, n:] = True
        separate = topology_loss(teacher_repr, student_repr, block)
        got = make(FTD, split, teacher)(model, batch)["ftd"].item()
        assert got == pytest.approx(1e-3 * joint.item(), rel=1e-4)
        got = make(FTD, split, teacher, topology="separate")(model, batch)["ftd"].item()
        assert got == pytest.approx(1e-3 * separate.item(), rel=1e-4)


# --------------------------------------------------------------------------------------------------
# HTD: group- and entity-level topology, assignment
# --------------------------------------------------------------------------------------------------


def test_prototypes_are_group_means():
    representation = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0]])
    prototypes = group_prototypes(representation, torch.tensor([0, 0, 2]), 3)
    torch.testing.assert_close(prototypes, torch.tensor([[2.0, 1.0], [0.0, 0.0], [0.0, 5.0]]))


def test_group_topology_by_hand():
    # Two groups: {e1, e2} and {e3}. Teacher prototypes (1, 1) and (0, 1); student's (1, 0) and (0, 1).
    teacher_repr = torch.tensor([[1.0, 0.0], [1.0, 2.0], [0.0, 1.0]])
    student_repr = torch.tensor([[1.0, 1.0], [1.0, -1.0], [0.0, 1.0]], requires_grad=True)
    groups = torch.tensor([0, 0, 1])
    r2, r5 = 1 / math.sqrt(2), 1 / math.sqrt(5)
    teacher_h = torch.tensor([[r2, 3 * r2 * r5, r2], [0.0, 2 * r5, 1.0]])
    student_h = torch.tensor([[r2, r2, 0.0], [r2, -r2, 1.0]])
    expected = (teacher_h - student_h).square().sum().item()
    loss = group_topology_loss(teacher_repr, student_repr, groups, 2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    pp = group_topology_loss(teacher_repr, student_repr, groups, 2, "prototype_prototype", True)
    assert pp.item() == pytest.approx(2 * (r2 - 0) ** 2, rel=1e-6)
    # Empty groups change nothing (zero prototypes have cosine 0 on both sides).
    with_empty = group_topology_loss(teacher_repr, student_repr, groups, 5)
    assert with_empty.item() == pytest.approx(expected, rel=1e-6)
    # Prototypes without gradient (authors' code): the gradient flows through the entities only.
    (grad,) = torch.autograd.grad(loss, student_repr)
    reference = student_repr.detach().clone().requires_grad_()
    protos = group_prototypes(student_repr.detach(), groups, 2)
    teacher_sim = cosine_matrix(group_prototypes(teacher_repr, groups, 2), teacher_repr)
    (teacher_sim - cosine_matrix(protos, reference)).square().sum().backward()
    torch.testing.assert_close(grad, reference.grad)


def test_entity_topology_by_hand():
    # Group 0 = {e1, e2, e3}, group 1 = {e4}. Teacher cosines in group 0: (e1, e2) 0, (e1, e3), (e2, e3) 1/√2;
    # the student's: (e1, e2) 1, (e1, e3) 0, (e2, e3) 0.
    teacher_repr = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    student_repr = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    groups = torch.tensor([0, 0, 0, 1])
    r2 = 1 / math.sqrt(2)
    # Positive teacher cosines only: (e1, e3), (e2, e3) twice each, plus the zero diagonal; (e1, e2) dropped.
    expected_positive = 2 * ((r2 - 0) ** 2 + (r2 - 0) ** 2)
    expected_all = expected_positive + 2 * (0 - 1) ** 2
    positive = entity_topology_loss(teacher_repr, student_repr, groups, 2)
    assert positive.item() == pytest.approx(expected_positive)
    every = entity_topology_loss(teacher_repr, student_repr, groups, 2, positive_pairs=False)
    assert every.item() == pytest.approx(expected_all)
    assert entity_topology_loss(teacher_repr, teacher_repr, groups, 2).item() == 0


@pytest.mark.parametrize("layout", ["balanced", "skewed", "one_group", "singletons", "mixed_tiles"])
def test_entity_topology_equals_the_masked_full_topology(layout):
    generator = torch.Generator().manual_seed(0)
    n, num_groups = (600, 12) if layout == "mixed_tiles" else (120, 12)
    groups = torch.randint(num_groups, (n,), generator=generator)
    if layout in ("skewed", "mixed_tiles"):  # mixed: a 450-member group gets 128-slot tiles, the rest 32
        groups[: n * 3 // 4] = 4
    if layout == "one_group":
        groups[:] = 7
    if layout == "singletons":
        n, num_groups, groups = 10, 10, torch.randperm(10, generator=generator)
    teacher_repr = torch.randn(n, 16, generator=generator, dtype=torch.float64)
    student_repr = torch.randn(n, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    same = groups[:, None] == groups[None, :]
    for positive in (True, False):
        mask = same & (cosine_matrix(teacher_repr, teacher_repr) > 0) if positive else same
        reference = topology_loss(teacher_repr, student_repr, mask)
        ours = entity_topology_loss(teacher_repr, student_repr, groups, num_groups, positive)
        torch.testing.assert_close(ours, reference)
        gradients = [torch.autograd.grad(loss, student_repr)[0] for loss in (ours, reference)]
        torch.testing.assert_close(*gradients)


def test_within_group_tiles_cover_each_same_group_pair_once():
    groups = torch.tensor([2, 0, 2, 2, 1, 2, 2, 0])
    index, a, b, weight = within_group_tiles(groups, 4, tile=2)
    count = torch.zeros(9, 9)  # slot 8 is padding
    for tile_a, tile_b, w in zip(a.tolist(), b.tolist(), weight.tolist(), strict=True):
        for i in index[tile_a].tolist():
            for j in index[tile_b].tolist():  # the block and its transpose share the weight
                count[i, j] += w / 2
                count[j, i] += w / 2
    same = (groups[:, None] == groups[None, :]).float()
    torch.testing.assert_close(count[:8, :8], same)


def test_kmeans_is_deterministic_given_the_generator():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 6, generator=generator) * 10
    points = centres.repeat_interleave(25, dim=0) + torch.randn(100, 6, generator=generator)
    first, centroids = kmeans(points, 4, torch.Generator().manual_seed(7))
    again, _ = kmeans(points, 4, torch.Generator().manual_seed(7))
    assert torch.equal(first, again)
    # Well-separated blobs: each blob is one cluster, and the centroids are the blob means.
    blobs = first.view(4, 25)
    assert bool((blobs == blobs[:, :1]).all()) and len(set(blobs[:, 0].tolist())) == 4
    torch.testing.assert_close(centroids[blobs[:, 0]], points.view(4, 25, 6).mean(1))


def test_htd_kmeans_groups_are_fixed_and_adaptive_groups_follow_the_gate(split, teacher):
    fixed = make(HTD, split, teacher, assignment="kmeans")
    again = make(HTD, split, teacher, assignment="kmeans")
    assert torch.equal(fixed.group_map("item"), again.group_map("item"))
    assert fixed.group_map("user").shape == (split.num_users,)
    assert int(fixed.group_map("user").max()) < 30
    adaptive = make(HTD, split, teacher)
    assert isinstance(adaptive.de, DE)  # DE's selection networks and experts, reused
    gate = adaptive.de.alpha("user", teacher.user_repr).argmax(1)
    assert torch.equal(adaptive.group_map("user"), gate)


def test_htd_anneals_tau_over_the_run(split, teacher):
    method = make(HTD, split, teacher, anneal_epochs=10)
    assert method.tau == 1.0
    method.on_epoch_start(5, torch.Generator())
    assert method.tau == pytest.approx(1e-5)
    method.on_epoch_start(20, torch.Generator())
    assert method.tau == pytest.approx(1e-10)
    model = student(split)
    method(model, make_batch(split))["htd"].backward()  # one-hot selection: still reaches the student
    assert model.user_embedding.weight.grad.abs().sum() > 0


def test_htd_total_combines_the_terms(split, teacher):
    batch, model = make_batch(split), student(split)
    parts = {}
    for variant in ("full", "group_only", "entity_only"):
        method = make(HTD, split, teacher, variant=variant)
        total = method(model, batch)["htd"].item()
        parts[variant] = (total, {k: v.item() for k, v in method.last_terms.items()})
    total, terms = parts["full"]
    expected = 1e-3 * (0.5 * (terms["group"] + terms["entity"]) + 0.5 * terms["assignment"])
    assert total == pytest.approx(expected)
    assert parts["group_only"][1]["entity"] == 0 and parts["entity_only"][1]["group"] == 0
    assert parts["group_only"][1]["group"] == pytest.approx(terms["group"])
    assert parts["entity_only"][1]["entity"] == pytest.approx(terms["entity"])
    balanced = make(HTD, split, teacher, weighting="balanced")
    value = balanced(model, batch)["htd"].item()
    assert value == pytest.approx(1e-3 * (0.5 * terms["group"] + 0.5 * terms["entity"] + terms["assignment"]))


def test_htd_topology_vanishes_when_the_student_is_the_teacher(split, teacher):
    batch = make_batch(split)

    class Copy(torch.nn.Module):  # a "student" whose representations are the teacher's
        def user_repr(self, users):
            return teacher.user_repr[users]

        def item_repr(self, items):
            return teacher.item_repr[items]

    method = HTD(HTDConfig(), teacher, split, teacher.user_repr.shape[1])
    method(Copy(), batch)
    assert method.last_terms["group"].item() == pytest.approx(0, abs=1e-6)
    assert method.last_terms["entity"].item() == pytest.approx(0, abs=1e-6)
    ftd = FTD(FTDConfig(), teacher, split, teacher.user_repr.shape[1])
    assert ftd(Copy(), batch)["ftd"].item() == pytest.approx(0, abs=1e-6)
