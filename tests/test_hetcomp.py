"""HetComp (ensemble, DKC, AKT losses) and DCD: each pure function against a hand computation, the modules'
states and samples, and fit with the KD loss only."""

from __future__ import annotations

import math

import pytest
import torch

from kdrepro import teachers
from kdrepro.distill import build
from kdrepro.distill.dcd import DCDConfig, capped_ranks, dcd_samples, discrepancy_weights
from kdrepro.distill.hetcomp import (
    HetComp,
    HetCompConfig,
    TeacherTrajectories,
    construct_knowledge,
    detailed_loss,
    ensemble_outputs,
    ensemble_topk,
    ndcg_distance,
    overall_loss,
    set_above_loss,
)
from kdrepro.models import ModelConfig
from kdrepro.models import build as build_model
from kdrepro.train import TrainConfig, fit
from kdrepro.types import Batch

N = 60  # length of the synthetic teachers' rankings


def test_ensemble_topk_by_hand():
    # Two teachers, one user, 5 items, T = 1: importance = Σ exp(−rank).
    lists = torch.tensor([[[3, 1, 0]], [[1, 4, 3]]])
    items, importance = ensemble_topk(lists, 3, 1.0, num_items=5)
    expected = {3: 1 + math.exp(-2), 1: math.exp(-1) + 1, 0: math.exp(-2), 4: math.exp(-1)}
    best = sorted(expected, key=expected.get, reverse=True)[:3]
    assert items[0].tolist() == best  # 1 (1.368) > 3 (1.135) > 4 (0.368)
    assert importance[0].tolist() == pytest.approx([expected[i] for i in best])
    with pytest.raises(ValueError, match="fewer than top_k"):
        ensemble_topk(lists, 4, 1.0, num_items=5)


def test_ndcg_distance_by_hand():
    """The authors' gains: position t of the student's list gains 2^exp(−t/T) − 1 when the teacher lists it."""
    student = torch.tensor([[7, 8], [8, 7], [1, 2]])
    teacher = torch.tensor([[8, 9], [8, 7], [3, 4]])
    first, second = 2**1 - 1, (2 ** math.exp(-1 / 10) - 1) / math.log2(3)  # T = 10
    expected = [1 - second / (first + second), 0.0, 1.0]  # user 0: only its second item is the teacher's
    assert ndcg_distance(student, teacher).tolist() == pytest.approx(expected)
    sharp = 2 ** math.exp(-1 / 2) - 1  # T = 2: the second position weighs less
    assert ndcg_distance(student[:1], teacher[:1], 2.0).item() == pytest.approx(1 - (sharp / math.log2(3)) /
                                                                                 (1 + sharp / math.log2(3)))


def test_construct_knowledge_moves_when_the_student_closes_in_on_the_next_checkpoint_or_drifts_away():
    state = torch.tensor([[0, 0, 0, 1, 3, 2, 0]])
    recorded = torch.tensor([[0.60, 0.60, 0.60, 0.50, 0.1, 0.0, 0.3]])
    distance = torch.tensor([[0.50, 0.59, 0.70, 0.0, 0.0, 0.0, 0.3]])
    # 0.60/0.50 = 1.2 > 1.05 moves; 0.60/0.59 = 1.017 in [1, 1.05] stays; 0.60/0.70 < 1 moves (drifted away);
    # distance 0 moves (ratio ∞); the last checkpoint stays; 0/0 stays (NaN, as NumPy's); equal stays.
    moved = construct_knowledge(state, recorded, distance, 1.05, last=3)
    assert moved.tolist() == [[True, False, True, True, False, False, False]]
    # Below 1 (from the 10th construction at α = 1.05, decay 0.995) every ratio moves, equal ones too.
    assert construct_knowledge(state, recorded, distance, 1.05 * 0.995**10, last=3)[0, [1, 6]].all()


def test_set_above_by_hand():
    top, rest = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, -1.0]])
    rest_mass = math.exp(0) + math.exp(-1)
    expected = -((1 - math.log(math.e + rest_mass)) + (2 - math.log(math.e**2 + rest_mass)))
    assert float(set_above_loss(top, rest)) == pytest.approx(expected)
    assert float(overall_loss(top[:, :1], top[:, 1:], rest)) == pytest.approx(float(set_above_loss(top, rest)))


def _plackett_luce_by_hand(listed: list[float], below: list[float]) -> float:
    """−Σ_k [ s_k − log( Σ_{i ≥ k} e^{s_i} + Σ_j e^{b_j} ) ], one position at a time."""
    return -sum(listed[k] - math.log(sum(math.exp(x) for x in listed[k:]) + sum(math.exp(b) for b in below))
                for k in range(len(listed)))


def test_detailed_loss_ranks_each_list_above_everything_outside_it():
    """The authors' rank_loss: PL(observed | top[K/2:] ∪ rest) + ½ [PL(top[:K/2] | top[K/2:] ∪ rest)
    + PL(top[:K/10] | top[K/10:] ∪ rest)], computed position by position."""
    generator = torch.Generator().manual_seed(0)
    observed, top = torch.randn(2, 3, generator=generator), torch.randn(2, 20, generator=generator)
    rest = torch.randn(2, 5, generator=generator)
    expected = 0.0
    for o, t, r in zip(observed.tolist(), top.tolist(), rest.tolist(), strict=True):
        expected += _plackett_luce_by_hand(o, t[10:] + r)
        expected += 0.5 * (_plackett_luce_by_hand(t[:10], t[10:] + r) + _plackett_luce_by_hand(t[:2], t[2:] + r))
    assert float(detailed_loss(observed, top, rest)) == pytest.approx(expected, rel=1e-6)
    # The rest of the catalogue counts: a rest scored above the lists costs more than one scored below.
    assert float(detailed_loss(observed, top, rest + 5)) > float(detailed_loss(observed, top, rest - 5))
    # The lists cost least when the student scores them in the ensemble's order.
    ordered = torch.sort(top, dim=1, descending=True).values
    assert float(detailed_loss(observed, ordered, rest)) < float(detailed_loss(observed, ordered.flip(1), rest))


@pytest.fixture(scope="module")
def split(synthetic_splits):
    return synthetic_splits["holdout"]


@pytest.fixture(scope="module")
def trajectories(split):
    """Three teachers × three checkpoints: random rankings outside each user's training items."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 3, split.num_users, split.num_items, generator=generator)
    scores[:, :, torch.from_numpy(split.train_users), torch.from_numpy(split.train_items)] = -1
    rankings = scores.topk(N, dim=3).indices.int()
    item_scores = torch.rand(3, split.num_items, split.num_users, generator=generator)
    item_scores[:, torch.from_numpy(split.train_items), torch.from_numpy(split.train_users)] = -1
    return TeacherTrajectories(names=("a", "b", "c"), rankings=rankings,
                               item_rankings=item_scores.topk(N, dim=2).indices.int(),
                               epochs=torch.tensor([[1, 2, 3]] * 3))


def small(**overrides):
    return HetCompConfig(top_n=N, num_rest=20, ndcg_k=20, **overrides)


def test_hetcomp_starts_at_the_first_checkpoints_and_samples_outside_training(split, trajectories):
    method = HetComp(small(), trajectories, split, 8)
    assert method.state.eq(0).all() and not method.detailed.any()
    expected, _ = ensemble_topk(trajectories.rankings[:, 0], N, 10.0, split.num_items)
    assert torch.equal(method.ensemble, expected)
    samples = method.sample(torch.Generator().manual_seed(1))
    observed, rest = samples[:, :10], samples[:, 10:]
    train = set((split.train_users * split.num_items + split.train_items).tolist())
    users = torch.arange(split.num_users)[:, None]
    assert set((users * split.num_items + observed).flatten().tolist()) <= train
    assert not set((users * split.num_items + rest).flatten().tolist()) & train
    assert not (rest.unsqueeze(2) == method.ensemble.unsqueeze(1)).any()
    converged = HetComp(small(construction="converged"), trajectories, split, 8)
    assert converged.state.eq(2).all() and converged.detailed.all()


def test_dkc_records_first_then_moves_the_teachers_the_student_has_closed_in_on(split, trajectories, monkeypatch):
    method = HetComp(small(), trajectories, split, 8)
    half = split.num_users // 2
    following, after = trajectories.rankings[0, 1].long(), trajectories.rankings[0, 2].long()
    lists = trajectories.rankings[:, 1, :, :20].long()
    # Construction 1: the student shares teacher a's next checkpoint's top-10 for every user: recorded, no move.
    shared = torch.cat([following[:, :10], trajectories.rankings[0, 0, :, 40:50].long()], dim=1)
    monkeypatch.setattr(method, "student_topk", lambda student: shared)
    method.construct(None)
    assert method.state.eq(0).all() and method.threshold == pytest.approx(1.05 * 0.995)
    recorded = torch.stack([ndcg_distance(shared, lists[t]) for t in range(3)])
    assert torch.allclose(method.recorded, recorded)
    # Construction 2: for the first half the student's top-20 is a's next checkpoint (distance 0: moves, and the
    # distance to checkpoint 2 is recorded); for the rest its list is unchanged (ratio 1: stays).
    student_top = shared.clone()
    student_top[:half] = following[:half, :20]
    monkeypatch.setattr(method, "student_topk", lambda student: student_top)
    method.construct(None)
    distance = torch.stack([ndcg_distance(student_top, lists[t]) for t in range(3)])
    expected = construct_knowledge(torch.zeros_like(method.state), recorded, distance, 1.05 * 0.995**2, 2)
    assert torch.equal(method.state, expected.long())
    assert method.state[0, :half].eq(1).all() and method.state[0, half:].eq(0).all()
    moved_to = ndcg_distance(student_top[:half], after[:half, :20])  # the distance to checkpoint 2, recorded
    assert method.recorded[0, :half].tolist() == pytest.approx(moved_to.tolist())
    assert torch.equal(method.recorded[0, half:], recorded[0, half:])
    ensemble, _ = ensemble_topk(method.current_lists(), N, 10.0, split.num_items)
    assert torch.equal(method.ensemble, ensemble)


def test_akt_switches_for_every_user_once_each_teacher_s_mean_checkpoint_rounds_to_the_last(split, trajectories):
    method = HetComp(small(), trajectories, split, 8)
    assert split.num_users == 200
    method.state[:] = 2
    method.state[0, :3] = 1  # three users of 200 short: teacher a's mean 1.985 rounds below the last checkpoint
    method._rebuild()
    assert not method.switched and not method.detailed.any()
    method.state[0, :3] = 2
    method.state[1, :2] = 1  # two users short for teacher b alone (mean 1.99): still no switch
    method._rebuild()
    assert not method.switched
    method.state[1, :2] = 2
    method._rebuild()
    assert method.switched and method.detailed.all()


def test_fixed_schedule_walks_every_trajectory_and_akt_switches_at_its_end(split, trajectories):
    method = HetComp(small(construction="fixed"), trajectories, split, 8)
    method.construct(None)
    assert method.state.eq(1).all() and not method.detailed.any()
    method.construct(None)
    assert method.state.eq(2).all() and method.detailed.all()
    method.construct(None)
    assert method.state.eq(2).all()
    assert HetComp(small(transfer="detailed"), trajectories, split, 8).detailed.all()


def test_constructions_happen_every_period_from_the_first(split, trajectories):
    method = HetComp(small(construction="fixed", period=2), trajectories, split, 8)
    for epoch in range(1, 6):
        method.prepare(None, epoch)
    assert [row["epoch"] for row in method.dynamics if row["teacher"] == "a"] == [0, 2, 4]
    assert method.state.eq(2).all()
    shares = [row for row in method.dynamics if row["teacher"] == "b"]
    assert [(r["v0"], r["v1"], r["v2"]) for r in shares] == [(1, 0, 0), (0, 1, 0), (0, 0, 1)]


def test_hetcomp_trains_a_student_on_the_kd_loss_only(split, trajectories):
    config = TrainConfig(epochs=4, eval_every=2, patience=0, progress=False, loss="none", device="cpu")
    runs = [fit(ModelConfig("bpr", 6), split, config, seed=2,
                distill=build("hetcomp", trajectories, split, 6, hetcomp=small(period=1)))
            for _ in range(2)]
    assert [h["loss"] for h in runs[0].history] == [h["loss"] for h in runs[1].history]
    assert set(runs[0].history[0]) >= {"loss/hetcomp"} and "loss/base" not in runs[0].history[0]
    assert all(math.isfinite(h["loss"]) for h in runs[0].history)


def test_ensemble_outputs_cover_both_sides(split, trajectories):
    outputs = ensemble_outputs(trajectories, top_k=30, top_k_users=20)
    assert outputs.user_topk.shape == (split.num_users, 30) and outputs.item_topk.shape == (split.num_items, 20)
    expected, _ = ensemble_topk(trajectories.rankings[:, -1], 30, 10.0, split.num_items)
    assert torch.equal(outputs.user_topk, expected)


# ------------------------------------------------------------------------------------------------------
# DCD
# ------------------------------------------------------------------------------------------------------


def test_discrepancy_weights_by_hand():
    under, over = discrepancy_weights(torch.tensor([[0, 30, 0]]), temperature=10.0)
    # Teacher ranks 0, 1, 2: d = 0, 29, −2.
    assert under.tolist()[0] == pytest.approx([1e-5, math.tanh(2.9), 1e-5])
    assert over.tolist()[0] == pytest.approx([1e-5, 1e-5, math.tanh(0.2)])


def test_capped_ranks_skip_excluded_entries():
    scores = torch.tensor([[-torch.inf, 0.1, 0.5, 0.7, 0.3], [0.9, 0.8, 0.7, 0.6, 0.5]])
    # Row 0: column 0 is a training item; ranks among the rest are 3 → 0, 2 → 1, 4 → 2, 1 → 3 (the cap).
    ranks = capped_ranks(scores, torch.tensor([[2, 1, 3], [4, 0, 2]]), cap=3)
    assert ranks.tolist() == [[1, 3, 0], [3, 0, 2]]


def test_dcd_samples_keep_under_estimated_items_in_teacher_order():
    teacher_top = torch.arange(100, 110)[None].repeat(4, 1)
    ranks = torch.tensor([[40, 45, 2, 3, 0, 1, 9, 50, 60, 70]] * 4)
    samples = dcd_samples(teacher_top, ranks, DCDConfig(top_n=10, num_samples=3), torch.Generator().manual_seed(0))
    under, over = samples[:, :3], samples[:, 3:]
    assert torch.equal(under, under.sort(dim=1).values)
    # d = r_S − r_T: 100, 101, 106, 107, 108, 109 are under-estimated (d > 0); 102, 103 exact (weight 1e-5 on
    # both sides); 104, 105 over-estimated.
    assert set(under.flatten().tolist()) <= {100, 101, 106, 107, 108, 109}
    assert {104, 105} <= set(over.flatten().tolist())


def test_dcd_both_sides_reach_the_student(split, trajectories):
    teacher = ensemble_outputs(trajectories, top_k=N, top_k_users=N)
    users, items = split.train_tensors()
    batch = Batch(users=users[:128], pos=items[:128], neg=torch.randint(split.num_items, (128, 1)), epoch=1)
    grads = {}
    for item_side in (False, True):
        method = build("dcd", teacher, split, 8, dcd={"top_n": N, "item_side": item_side})
        torch.manual_seed(0)
        student = build_model(ModelConfig("bpr", 8), split)
        method.on_epoch_start(1, torch.Generator().manual_seed(0))
        terms = method(student, batch)
        assert set(terms) == {"dcd"} and torch.isfinite(terms["dcd"])
        terms["dcd"].backward()
        grads[item_side] = student.item_embedding.weight.grad.clone()
    assert not torch.equal(grads[False], grads[True])  # the item side adds gradient


def test_dcd_student_ranks_match_a_full_sort(split, trajectories):
    teacher = ensemble_outputs(trajectories, top_k=N, top_k_users=N)
    method = build("dcd", teacher, split, 8, dcd={"top_n": N, "temperature": 1000.0})  # cap beyond every rank
    torch.manual_seed(0)
    student = build_model(ModelConfig("bpr", 8), split)
    ranks = method.student_ranks(student, "users")
    scores = student.score_all(torch.arange(split.num_users)).detach()
    scores[torch.from_numpy(split.train_users), torch.from_numpy(split.train_items)] = -torch.inf
    full = scores.argsort(dim=1, descending=True).argsort(dim=1)  # rank of every item
    assert torch.equal(ranks, full.gather(1, method.user_top))


def test_hetcomp_reads_a_single_teachers_outputs(split):
    result = fit(ModelConfig("bpr", 16), split, TrainConfig(epochs=1, progress=False, device="cpu"))
    outputs = teachers.compute_outputs(result.model, split, top_n=N, top_n_users=N)
    method = build("hetcomp", outputs, split, 8, hetcomp=small())
    assert method.state.shape == (1, split.num_users) and method.detailed.all()  # one checkpoint: converged


def test_forward_is_the_phase_loss_of_each_distinct_user(split, trajectories):
    """The module's term equals λ₁·overall on the users still walking and λ₂·detailed on the converged ones."""
    method = HetComp(small(construction="fixed"), trajectories, split, 8)
    method.construct(None)
    method.construct(None)  # every teacher converged ...
    half = split.num_users // 2
    method.detailed[:half] = False  # ... but the first half of the users still in the overall phase
    torch.manual_seed(0)
    model = build_model(ModelConfig("bpr", 8), split)
    users, items = split.train_tensors()
    idx = torch.arange(0, len(users), len(users) // 60)[:60]  # pairs of users across the whole range
    idx = torch.cat([idx, idx])  # each user twice: the loss counts distinct users once
    batch = Batch(users=users[idx], pos=items[idx], neg=items[idx, None], epoch=1)
    term = method(model, batch)["hetcomp"]
    distinct = torch.unique(batch.users)
    first, second = distinct[distinct < half], distinct[distinct >= half]
    observed, rest = method.samples[:, :10], method.samples[:, 10:]
    expected = 0.01 * overall_loss(model.score(first, observed[first]), model.score(first, method.ensemble[first]),
                                   model.score(first, rest[first]))
    expected = expected + 0.005 * detailed_loss(model.score(second, observed[second]),
                                                model.score(second, method.ensemble[second]),
                                                model.score(second, rest[second]))
    assert len(first) and len(second)
    assert float(term.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
