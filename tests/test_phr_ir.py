"""PHR (personalized hint regression) and IR (item-side relaxed ranking), alone and as IR-RRD."""

from __future__ import annotations

import math

import pytest
import torch

from kdrepro import data, splits, teachers
from kdrepro.distill import Combined
from kdrepro.distill.ir import IR, IRConfig, item_side_scores
from kdrepro.distill.phr import PHR, PHRConfig, bridge_outputs, enrich, neighbour_means, phr_loss
from kdrepro.distill.rrd import RRD, RRDConfig
from kdrepro.models import ModelConfig
from kdrepro.models import build as build_model
from kdrepro.sampling import PairSet
from kdrepro.train import NegativeSampler, TrainConfig, fit
from kdrepro.types import Batch

TOP_N = 50  # the test teacher's ranking length, both sides
STUDENT_DIM = 8
TEACHER_DIM = 32
SPECS = ["phr", "ir", "rrd+ir"]
TEACHER_FIELDS = ("user_topk", "item_topk", "user_repr", "item_repr")


@pytest.fixture(scope="module")
def split():
    return splits.make_split(data.synthetic(), "loo_sampled", 0, num_negatives=99)


@pytest.fixture(scope="module")
def teacher(split):
    result = fit(ModelConfig("bpr", TEACHER_DIM), split, TrainConfig(epochs=3, progress=False))
    return teachers.compute_outputs(result.model, split, top_n=TOP_N, top_n_users=TOP_N)


def make(spec, split, teacher, seed=0, **overrides):
    """Defaults except the ranking lengths, which the small teacher caps at TOP_N."""
    def one(name):
        if name == "phr":
            return PHR(PHRConfig(**overrides.get("phr", {})), teacher, split, STUDENT_DIM, seed)
        if name == "ir":
            return IR(IRConfig(top_n=TOP_N, rrd_top_n=TOP_N, **overrides.get("ir", {})), teacher, split,
                      STUDENT_DIM, seed)
        return RRD(RRDConfig(top_n=TOP_N, **overrides.get("rrd", {})), teacher, split, STUDENT_DIM, seed)

    methods = {name: one(name) for name in spec.split("+")}
    if "rrd" in methods and "ir" in methods:  # as distill.build does for IR-RRD
        methods["ir"].share_user_side(methods["rrd"])
    return methods[spec] if len(methods) == 1 else Combined(list(methods.values()))


def make_batch(split, size=256, seed=0):
    generator = torch.Generator().manual_seed(seed)
    users, items = split.train_tensors()
    idx = torch.randperm(len(users), generator=generator)[:size]
    negatives = NegativeSampler(split).sample(1, generator)
    return Batch(users=users[idx], pos=items[idx], neg=negatives[idx], epoch=1)


def student(split, seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig("bpr", STUDENT_DIM), split)


# --------------------------------------------------------------------------------------------------
# The contract, for PHR, IR and IR-RRD
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
def test_terms_are_finite_scalars_and_reach_the_student(spec, split, teacher):
    method = make(spec, split, teacher)
    model = student(split)
    method.on_epoch_start(1, torch.Generator().manual_seed(1))
    terms = method(model, make_batch(split))
    assert set(terms) == set(spec.split("+"))
    for value in terms.values():
        assert value.dim() == 0 and torch.isfinite(value) and value > 0
    sum(terms.values()).backward()
    for table in (model.user_embedding.weight, model.item_embedding.weight):
        assert table.grad is not None and table.grad.abs().sum() > 0
    for name, parameter in method.named_parameters():  # PHR's personalization networks learn too
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("spec", SPECS)
def test_fit_is_deterministic_and_leaves_the_teacher_untouched(spec, split, teacher):
    before = {name: getattr(teacher, name).clone() for name in TEACHER_FIELDS}
    config = TrainConfig(epochs=2, progress=False, patience=0)
    runs = [fit(ModelConfig("bpr", STUDENT_DIM), split, config, distill=make(spec, split, teacher), seed=3)
            for _ in range(2)]
    first, second = ([{k: v for k, v in h.items() if k != "train_s"} for h in run.history] for run in runs)
    assert first == second
    for key, value in runs[0].model.state_dict().items():
        assert torch.equal(value, runs[1].model.state_dict()[key])
    assert all(math.isfinite(h["loss"]) for h in runs[0].history)
    for name in spec.split("+"):
        assert f"loss/{name}" in runs[0].history[-1]
    for name, value in before.items():
        assert torch.equal(getattr(teacher, name), value), f"teacher.{name} was modified"


@pytest.mark.parametrize("spec", SPECS)
def test_teacher_tensors_are_not_checkpointed(spec, split, teacher):
    method = make(spec, split, teacher)
    assert set(method.state_dict()) == {name for name, _ in method.named_parameters()}


# --------------------------------------------------------------------------------------------------
# PHR
# --------------------------------------------------------------------------------------------------


def test_phr_loss_by_hand():
    # Two entities, d_t = 2, d_s = 1; bridges θ_x = Θ_0 + z_x Θ_1 with Θ_0 = (1, 0)ᵀ, Θ_1 = (0, 1)ᵀ.
    basis = torch.tensor([[[1.0], [0.0]], [[0.0], [1.0]]])  # (J=2, d_t=2, d_s=1)
    coefficients = torch.tensor([[1.0, 2.0], [1.0, 0.0]])  # (1, z_x)
    student_repr = torch.tensor([[3.0], [-1.0]])
    teacher_repr = torch.tensor([[3.0, 5.0], [0.0, 0.0]])
    # θ_1 h_s(1) = (3, 6): error (0, −1) → 1;  θ_2 h_s(2) = (−1, 0): error (1, 0) → 1.
    assert phr_loss(teacher_repr, student_repr, coefficients, basis).item() == pytest.approx(2.0)
    exact = torch.tensor([[3.0, 6.0], [-1.0, 0.0]])
    assert phr_loss(exact, student_repr, coefficients, basis).item() == 0


def test_phr_with_one_hot_coefficients_is_de_with_linear_bridges():
    generator = torch.Generator().manual_seed(0)
    bridges = torch.randn(4, 6, 3, generator=generator)  # M = 4 bridges d_s = 3 → d_t = 6
    student_repr = torch.randn(10, 3, generator=generator)
    teacher_repr = torch.randn(10, 6, generator=generator)
    chosen = torch.randint(4, (10,), generator=generator)
    selection = torch.nn.functional.one_hot(chosen, 4).float()
    de_style = ((teacher_repr - torch.einsum("nts,ns->nt", bridges[chosen], student_repr)) ** 2).sum()
    torch.testing.assert_close(phr_loss(teacher_repr, student_repr, selection, bridges), de_style)


@pytest.mark.parametrize("num_terms", [3, 9])  # J ≤ d_t: outer-product path; J > d_t: formed bridges
def test_bridge_outputs_equal_the_explicit_bridges(num_terms):
    generator = torch.Generator().manual_seed(1)
    student_repr = torch.randn(7, 4, generator=generator, requires_grad=True)
    coefficients = torch.randn(7, num_terms, generator=generator, requires_grad=True)
    basis = torch.randn(num_terms, 5, 4, generator=generator, requires_grad=True)
    target = torch.randn(7, 5, generator=generator)

    def explicit(h, c, b):
        return torch.einsum("nj,jts,ns->nt", c, b, h)

    ours = bridge_outputs(student_repr, coefficients, basis)
    reference = explicit(student_repr, coefficients, basis)
    torch.testing.assert_close(ours, reference)
    inputs = [student_repr, coefficients, basis]
    grads = torch.autograd.grad(((ours - target) ** 2).sum(), inputs)
    reference_grads = torch.autograd.grad(((reference - target) ** 2).sum(), inputs)
    for mine, theirs in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(mine, theirs)


def test_enrich_averages_own_and_neighbour_mean_by_hand():
    own = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    neighbours = torch.tensor([[0.0, 4.0], [0.0, 0.0]])  # entity 1 has no training neighbours
    enriched = enrich(own, neighbours, torch.tensor([3, 0]))
    torch.testing.assert_close(enriched, torch.tensor([[1.0, 2.0], [1.0, 1.0]]))


def test_neighbour_means():
    rows, cols = torch.tensor([0, 0, 2]), torch.tensor([1, 2, 0])
    col_repr = torch.tensor([[1.0, 0.0], [2.0, 4.0], [0.0, 2.0]])
    means = neighbour_means(rows, cols, 3, col_repr)
    torch.testing.assert_close(means, torch.tensor([[1.0, 3.0], [0.0, 0.0], [1.0, 0.0]]))


def test_phr_lower_when_the_student_agrees(split, teacher):
    method = make("phr", split, teacher)
    users = torch.arange(50)
    network = method.networks["user"]
    coefficients = network.coefficients(method.user_input[users])
    basis = network.basis.detach()
    # A student whose bridged representation is the teacher's: least squares through each user's bridge.
    bridges = method.bridges("user", users)
    fitted = torch.linalg.lstsq(bridges, method.user_repr[users].unsqueeze(2)).solution.squeeze(2)
    random = torch.randn(50, STUDENT_DIM, generator=torch.Generator().manual_seed(0))
    teacher_repr = method.user_repr[users]
    agree = phr_loss(teacher_repr, fitted, coefficients.detach(), basis)
    assert agree < phr_loss(teacher_repr, random, coefficients.detach(), basis)


def test_phr_architecture_and_bridges(split, teacher):
    method = make("phr", split, teacher, phr={"hidden": 5})
    network = method.networks["item"]
    assert network.weight.shape == (TEACHER_DIM, 5)  # enriched input: (h_t + neighbour mean) / 2
    assert network.basis.shape == (6, TEACHER_DIM, STUDENT_DIM)  # Θ_0 and one bridge per hidden unit
    # The input of each item: its teacher representation averaged with the mean of its training users'.
    train_users, train_items = split.train_tensors()
    item = int(train_items[0])
    expected = (teacher.item_repr[item] + teacher.user_repr[train_users[train_items == item]].mean(0)) / 2
    torch.testing.assert_close(method.item_input[item], expected)
    # Bridges start near the shared Θ_0 (small-initialised output weights) but differ per entity.
    bridges = method.bridges("item", torch.arange(20))
    assert bridges.shape == (20, TEACHER_DIM, STUDENT_DIM)
    shared = network.basis[0].detach()
    spread = (bridges - shared).norm(dim=(1, 2))
    assert bool((spread < 0.1 * shared.norm()).all()) and spread.std() > 0
    # The module's loss equals the pure loss over the materialised bridges.
    model, users = student(split), torch.arange(30)
    theta = method.bridges("user", users)
    reconstruction = torch.bmm(theta, model.user_repr(users).unsqueeze(2)).squeeze(2)
    by_bridges = ((method.user_repr[users] - reconstruction) ** 2).sum()
    torch.testing.assert_close(method.side_loss("user", users, model.user_repr(users)), by_bridges)
    # By default (hidden=None) HyperKDMA's width (d_t + d_t·d_s) / 2; without enrichment the input is h_t.
    default_hidden = (TEACHER_DIM + TEACHER_DIM * STUDENT_DIM) // 2
    assert PHRConfig().hidden is None
    assert make("phr", split, teacher).networks["user"].basis.shape[0] == default_hidden + 1
    plain = make("phr", split, teacher, phr={"enrich": False, "hidden": 7})
    torch.testing.assert_close(plain.user_input, teacher.user_repr.float())
    assert plain.networks["user"].weight.shape == (TEACHER_DIM, 7)
    with pytest.raises(ValueError):
        PHRConfig(hidden=0)


# --------------------------------------------------------------------------------------------------
# IR
# --------------------------------------------------------------------------------------------------


def ir_samples(split, teacher, seed, **config):
    method = make("ir", split, teacher, ir={"num_interesting": 10, "num_uninteresting": 12, **config})
    method.on_epoch_start(1, torch.Generator().manual_seed(seed))
    return method


def test_ir_sampling_is_deterministic_and_respects_constraints(split, teacher):
    first, again, other = (ir_samples(split, teacher, seed) for seed in (7, 7, 8))
    assert torch.equal(first.samples, again.samples)
    assert not torch.equal(first.samples, other.samples)
    samples, k = first.samples, first.config.num_interesting
    assert samples.shape == (split.num_items, k + 12)
    # Interesting users: members of the item's teacher top-N users, in the teacher's order.
    topk = teacher.item_topk[:, :TOP_N]
    hit = samples[:, :k].unsqueeze(2) == topk.unsqueeze(1)  # (I, K, N)
    assert bool(hit.any(2).all())
    positions = hit.int().argmax(2)
    assert bool((positions[:, 1:] > positions[:, :-1]).all())
    assert positions.float().mean() < (TOP_N - 1) / 2  # ranked sampling favours the top
    # Uninteresting users: outside the item's training users and its teacher top-N users.
    items = torch.arange(split.num_items).unsqueeze(1).expand(-1, 12)
    train_users, train_items = split.train_tensors()
    observed = PairSet(train_users, train_items, split.num_users, split.num_items)
    assert not bool(observed.contains(samples[:, k:], items).any())
    assert not bool((samples[:, k:].unsqueeze(2) == topk.unsqueeze(1)).any())
    # sampling="none": the teacher's top-K users directly.
    direct = ir_samples(split, teacher, 0, sampling="none")
    assert torch.equal(direct.samples[:, :10], topk[:, :10])


def test_ir_covers_the_items_of_the_batch_users_rrd_sets(split, teacher):
    """By hand: users 0 and 2 in the batch, their RRD sets {4, 1 | 9, 4} and {7, 3 | 1, 8}: I_B = {1, 3, 4, 7,
    8, 9}; the batch's own positives (5) and negatives (6) are not in it unless a set holds them."""
    method = make("ir", split, teacher, ir={"rrd_num_interesting": 2, "rrd_num_uninteresting": 2})
    assert method.user_sets.samples.shape == (split.num_users, 4)
    method.user_sets.samples[0] = torch.tensor([4, 1, 9, 4])
    method.user_sets.samples[2] = torch.tensor([7, 3, 1, 8])
    batch = Batch(users=torch.tensor([2, 0, 2]), pos=torch.tensor([5, 5, 5]), neg=torch.tensor([[6], [6], [6]]),
                  epoch=1)
    assert method.batch_items(batch).tolist() == [1, 3, 4, 7, 8, 9]


def test_ir_loss_by_hand_on_its_item_set(split, teacher):
    method, model, batch = make("ir", split, teacher), student(split), make_batch(split)
    rrd_sets = method.user_sets.samples[torch.unique(batch.users)]
    items = torch.unique(rrd_sets)
    assert torch.equal(method.batch_items(batch), items)
    pos_neg = torch.unique(torch.cat([batch.pos, batch.neg.reshape(-1)]))
    assert len(items) > len(pos_neg)  # the authors' set is the larger one
    users = method.samples[items]
    scores = item_side_scores(model, items, users).detach()
    assert scores.shape == users.shape
    torch.testing.assert_close(scores[3, 5], model.score(users[3, 5:6], items[3:4])[0])
    k = method.config.num_interesting
    by_hand = -sum(
        float(scores[j, i] - torch.logsumexp(torch.cat([scores[j, i:k], scores[j, k:]]), 0))
        for j in range(len(items)) for i in range(k)
    )
    assert method(model, batch)["ir"].item() == pytest.approx(method.config.lambda_ir * by_hand, rel=1e-4)


def test_ir_alone_and_ir_rrd_cover_the_same_item_sets(split, teacher):
    """IR alone draws its user-side sets first, as RRD does in IR-RRD: one seed, one set of items."""
    alone, combined = make("ir", split, teacher), make("rrd+ir", split, teacher)
    alone.on_epoch_start(1, torch.Generator().manual_seed(3))
    combined.on_epoch_start(1, torch.Generator().manual_seed(3))
    rrd, ir = combined
    assert ir.user_sets is rrd and not ir.owns_user_sets
    assert torch.equal(alone.user_sets.samples, rrd.samples)
    assert torch.equal(alone.samples, ir.samples)
    batch = make_batch(split)
    assert torch.equal(alone.batch_items(batch), ir.batch_items(batch))


def test_item_side_scores_mirror_equals_the_flat_fallback(split):
    model = student(split)  # MF offers score_users, the mirror of score
    items = torch.tensor([0, 5, 7])
    users = torch.randint(split.num_users, (3, 4), generator=torch.Generator().manual_seed(0))
    assert hasattr(model, "score_users")
    flat = model.score(users.reshape(-1), items.repeat_interleave(4)).view(3, 4)
    torch.testing.assert_close(item_side_scores(model, items, users), flat)

    class FlatOnly:  # a model without the mirror goes through ``score``
        score = model.score

    torch.testing.assert_close(item_side_scores(FlatOnly(), items, users), flat)


class TableStudent:
    """A stand-in student whose score of (user, item) is a fixed per-user table (enough for one item)."""

    def __init__(self, table):
        self.table = table

    def score(self, users, items):
        return self.table[users]


def test_ir_lower_when_the_student_agrees(split, teacher):
    method = make("ir", split, teacher)
    k, num_other = method.config.num_interesting, method.config.num_uninteresting
    item = 3
    item_users = method.samples[item]
    method.user_sets.samples[0] = item  # user 0's RRD sets hold only this item: I_B = {item}
    single = Batch(users=torch.tensor([0]), pos=torch.tensor([item]), neg=torch.tensor([[item]]), epoch=1)

    def loss(interesting, uninteresting):
        table = torch.zeros(split.num_users)
        table[item_users[:k]] = interesting
        table[item_users[k:]] = uninteresting
        return method(TableStudent(table), single)["ir"]

    ranked = 10.0 - torch.arange(k, dtype=torch.float32)  # the teacher's order, best first
    agree = loss(ranked, torch.full((num_other,), -10.0))
    assert agree < loss(ranked.flip(0), torch.full((num_other,), -10.0))  # interesting users reversed
    assert agree < loss(ranked - 30, torch.full((num_other,), 0.0))  # uninteresting users on top


def test_ir_rejects_a_short_teacher_ranking(split, teacher):
    with pytest.raises(ValueError, match="top-500"):
        IR(IRConfig(), teacher, split, STUDENT_DIM)
    with pytest.raises(ValueError):
        IRConfig(num_interesting=30, top_n=20)
    with pytest.raises(ValueError):
        IRConfig(sampling="uniform")


def test_ir_rrd_is_the_sum_of_rrd_and_ir(split, teacher):
    combined = make("rrd+ir", split, teacher)
    rrd, ir = make("rrd", split, teacher), make("ir", split, teacher)
    ir.share_user_side(rrd)
    # The same draws: the combination samples RRD's items first, then IR's users, from one generator.
    combined.on_epoch_start(1, torch.Generator().manual_seed(4))
    shared = torch.Generator().manual_seed(4)
    rrd.on_epoch_start(1, shared)
    ir.on_epoch_start(1, shared)
    model, batch = student(split), make_batch(split)
    terms = combined(model, batch)
    assert set(terms) == {"rrd", "ir"}
    torch.testing.assert_close(terms["rrd"], rrd(model, batch)["rrd"])
    torch.testing.assert_close(terms["ir"], ir(model, batch)["ir"])
