"""Distillation methods: the registry contract for every method, and each pure loss by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdrepro import teachers
from kdrepro.distill import CONFIGS, METHODS, Combined, build
from kdrepro.distill.cd import discrepancy_log_weights, estimate_rank, soft_label_bce
from kdrepro.distill.de import ExpertBank, de_loss, expert_selection
from kdrepro.distill.rd import (
    RD,
    RDConfig,
    discrepancy_weights,
    hybrid_weights,
    position_weights,
    ranking_distillation_loss,
)
from kdrepro.distill.rrd import relaxed_ranking_loss
from kdrepro.models import ModelConfig
from kdrepro.models import build as build_model
from kdrepro.sampling import PairSet, sample_outside
from kdrepro.train import NegativeSampler, TrainConfig, fit
from kdrepro.types import Batch

SPECS = [*METHODS, "de+rrd", "rrd+ir"]
TOP_N = 50  # the test teacher's ranking length
# Methods reading the teacher's ranking use its 50 entries; other defaults already fit the small data.
SMALL = {name: {field: TOP_N for field in ("top_n", "rrd_top_n") if field in config.__dataclass_fields__}
         for name, config in CONFIGS.items() if "top_n" in config.__dataclass_fields__}
STUDENT_DIM = 8


@pytest.fixture(scope="module")
def split(synthetic_splits):
    return synthetic_splits["loo_sampled"]


@pytest.fixture(scope="module")
def teacher(split):
    result = fit(ModelConfig("bpr", 32), split, TrainConfig(epochs=3, progress=False))
    return teachers.compute_outputs(result.model, split, top_n=TOP_N, top_n_users=TOP_N)


def make(spec, split, teacher, seed=0, **overrides):
    configs = {name: {**SMALL.get(name, {}), **overrides.get(name, {})} for name in spec.split("+")}
    return build(spec, teacher, split, STUDENT_DIM, seed=seed, **configs)


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
# The contract, for every registered method and the DE-RRD sum
# --------------------------------------------------------------------------------------------------


def test_registry_names_and_configs():
    assert set(CONFIGS) == set(METHODS) >= {"de", "rrd", "rd", "cd"}
    for name, method in METHODS.items():
        assert CONFIGS[name] is method.Config


@pytest.mark.parametrize("spec", SPECS)
def test_terms_are_finite_scalars_and_reach_the_student(spec, split, teacher):
    method = make(spec, split, teacher)
    model = student(split)
    method.on_epoch_start(1, torch.Generator().manual_seed(1))
    terms = method(model, make_batch(split))
    assert set(terms) == set(spec.split("+"))
    for value in terms.values():
        assert value.dim() == 0 and torch.isfinite(value)
    sum(terms.values()).backward()
    for table in (model.user_embedding.weight, model.item_embedding.weight):
        assert table.grad is not None and table.grad.abs().sum() > 0
    for parameter in method.parameters():  # DE's experts and selection networks learn too
        assert parameter.grad is not None


@pytest.mark.parametrize("spec", SPECS)
def test_fit_is_deterministic_and_leaves_the_teacher_untouched(spec, split, teacher):
    fields = ("user_topk", "item_topk", "user_repr", "item_repr")
    before = {name: getattr(teacher, name).clone() for name in fields}
    config = TrainConfig(epochs=2, eval_every=2, progress=False, patience=0)
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


def test_build_rejects_bad_specs(split, teacher):
    with pytest.raises(ValueError, match="unknown method"):
        build("de+xyz", teacher, split, STUDENT_DIM)
    with pytest.raises(ValueError, match="twice"):
        build("rrd+rrd", teacher, split, STUDENT_DIM, rrd={"top_n": TOP_N})
    with pytest.raises(ValueError, match="does not include"):
        build("de", teacher, split, STUDENT_DIM, rrd={"top_n": TOP_N})
    with pytest.raises(ValueError, match="top-500"):
        build("rrd", teacher, split, STUDENT_DIM)  # the default N = 500 exceeds the teacher's 50
    with pytest.raises(TypeError):
        build("rrd", teacher, split, STUDENT_DIM, rrd=CONFIGS["de"]())
    with pytest.raises(ValueError):
        CONFIGS["rrd"](sampling="random")


def test_build_applies_overrides_and_config_objects(split, teacher):
    combined = build("de+rrd", teacher, split, STUDENT_DIM, de={"num_experts": 3},
                     rrd=CONFIGS["rrd"](top_n=TOP_N, sampling="none"))
    assert isinstance(combined, Combined)
    de, rrd = combined
    assert de.config.num_experts == 3 and de.config.lambda_de == 0.01
    assert rrd.config.sampling == "none" and rrd.config.top_n == TOP_N


def test_combined_forwards_epoch_starts(split, teacher):
    combined = make("de+rrd", split, teacher)
    de, rrd = combined
    before = rrd.samples.clone()
    combined.on_epoch_start(500, torch.Generator().manual_seed(5))
    assert de.tau == pytest.approx(de.config.tau_end ** 0.5)
    assert not torch.equal(rrd.samples, before)


# --------------------------------------------------------------------------------------------------
# RRD
# --------------------------------------------------------------------------------------------------


def test_relaxed_ranking_loss_by_hand():
    a, b, c = 1.0, 0.5, -0.3  # two interesting items (in the teacher's order) and one uninteresting
    ea, eb, ec = math.exp(a), math.exp(b), math.exp(c)
    expected = -((a - math.log(ea + eb + ec)) + (b - math.log(eb + ec)))
    loss = relaxed_ranking_loss(torch.tensor([[a, b]]), torch.tensor([[c]]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Without uninteresting items the last position contributes nothing.
    only = relaxed_ranking_loss(torch.tensor([[a, b]]), torch.empty(1, 0))
    assert only.item() == pytest.approx(math.log(ea + eb) - a, rel=1e-6)
    # A sum over the batch, not a mean.
    twice = relaxed_ranking_loss(torch.tensor([[a, b], [a, b]]), torch.tensor([[c], [c]]))
    assert twice.item() == pytest.approx(2 * expected, rel=1e-6)


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e3, 1e5])
def test_relaxed_ranking_loss_is_stable(scale):
    generator = torch.Generator().manual_seed(0)
    interesting = torch.randn(16, 7, generator=generator, dtype=torch.float64) * scale
    uninteresting = torch.randn(16, 5, generator=generator, dtype=torch.float64) * scale
    for others in (uninteresting, uninteresting[:, :0]):
        tail = torch.logcumsumexp(interesting.flip(1), dim=1).flip(1)
        reference = -(interesting - torch.logaddexp(tail, torch.logsumexp(others, dim=1, keepdim=True))).sum()
        loss = relaxed_ranking_loss(interesting.float(), others.float())
        assert torch.isfinite(loss)
        assert loss.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-3)
    # Scores 1000 nats apart: the ordered case costs ~0, the reversed one ~1000.
    none = torch.empty(1, 0)
    assert relaxed_ranking_loss(torch.tensor([[1000.0, 0.0]]), none).item() == pytest.approx(0, abs=1e-6)
    assert relaxed_ranking_loss(torch.tensor([[0.0, 1000.0]]), none).item() == pytest.approx(1000)


def test_relaxed_ranking_loss_prefers_the_teacher_order():
    agree = relaxed_ranking_loss(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[-1.0, -2.0]]))
    disagree = relaxed_ranking_loss(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[-1.0, -2.0]]))
    below = relaxed_ranking_loss(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[5.0, 4.0]]))
    assert agree < disagree and agree < below


def test_relaxed_ranking_loss_gradient_matches_reference():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(4, 6, generator=generator, requires_grad=True)
    relaxed_ranking_loss(scores[:, :4], scores[:, 4:]).backward()
    reference = scores.detach().clone().requires_grad_()
    tail = torch.logcumsumexp(reference[:, :4].flip(1), dim=1).flip(1)
    denominator = torch.logaddexp(tail, torch.logsumexp(reference[:, 4:], dim=1, keepdim=True))
    (-(reference[:, :4] - denominator).sum()).backward()
    torch.testing.assert_close(scores.grad, reference.grad)


def rrd_samples(split, teacher, seed, **config):
    method = make("rrd", split, teacher, rrd={"num_interesting": 10, "num_uninteresting": 12, **config})
    method.on_epoch_start(1, torch.Generator().manual_seed(seed))
    return method


def test_rrd_sampling_is_deterministic_and_respects_constraints(split, teacher):
    first, again, other = (rrd_samples(split, teacher, seed) for seed in (7, 7, 8))
    assert torch.equal(first.samples, again.samples)
    assert not torch.equal(first.samples, other.samples)
    samples, k = first.samples, first.config.num_interesting
    assert samples.shape == (split.num_users, k + 12)
    # Interesting items: members of the user's teacher top-N, in the teacher's order.
    topk = teacher.user_topk[:, :TOP_N]
    hit = samples[:, :k].unsqueeze(2) == topk.unsqueeze(1)  # (U, K, N)
    assert bool(hit.any(2).all())
    positions = hit.int().argmax(2)
    assert bool((positions[:, 1:] > positions[:, :-1]).all())
    # Uninteresting items: outside the user's training items and the teacher's top-N.
    users = torch.arange(split.num_users).unsqueeze(1).expand(-1, 12)
    train_users, train_items = split.train_tensors()
    observed = PairSet(train_users, train_items, split.num_users, split.num_items)
    assert not bool(observed.contains(users, samples[:, k:]).any())
    assert not bool((samples[:, k:].unsqueeze(2) == topk.unsqueeze(1)).any())


def test_rrd_sampling_prefers_top_ranks(split, teacher):
    method = rrd_samples(split, teacher, 0)
    hit = method.samples[:, :10].unsqueeze(2) == teacher.user_topk[:, :TOP_N].unsqueeze(1)
    positions = hit.int().argmax(2).float()
    assert positions.mean() < (TOP_N - 1) / 2  # uniform sampling would average the middle rank


def test_rrd_variants(split, teacher):
    direct = rrd_samples(split, teacher, 0, sampling="none")
    assert torch.equal(direct.samples[:, :10], teacher.user_topk[:, :10])
    only = rrd_samples(split, teacher, 0, ranking="interesting_only")
    assert only.samples.shape == (split.num_users, 10)
    full = rrd_samples(split, teacher, 0, ranking="full")
    batch, model = make_batch(split), student(split)
    for method in (direct, only, full):
        assert torch.isfinite(method(model, batch)["rrd"])


# --------------------------------------------------------------------------------------------------
# DE
# --------------------------------------------------------------------------------------------------


def test_de_loss_by_hand():
    teacher_repr = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    reconstruction = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert de_loss(teacher_repr, reconstruction).item() == pytest.approx(1 + 4 + 4)
    assert de_loss(teacher_repr, teacher_repr).item() == 0


def test_expert_selection():
    alpha = torch.tensor([[0.7, 0.2, 0.1]])
    assert torch.equal(expert_selection(alpha, 1.0, None), alpha)  # attention: α itself
    noise = torch.tensor([[0.0, 2.0, 0.0]])
    soft = expert_selection(alpha, 1.0, noise)
    torch.testing.assert_close(soft, torch.softmax(torch.log(alpha + 1e-10) + noise, dim=1))
    hard = expert_selection(alpha, 1e-6, noise)  # log 0.2 + 2 > log 0.7: expert 1 wins
    assert torch.equal(hard, torch.tensor([[0.0, 1.0, 0.0]]))


@pytest.mark.parametrize("kind", ["dense", "sparse", "one_hot", "skewed"])
def test_expert_bank_equals_the_plain_mixture(kind):
    generator = torch.Generator().manual_seed(0)
    rows, experts = 40, 6
    bank = ExpertBank(experts, (5, 7, 9), generator)
    logits = torch.randn(rows, experts, generator=generator)
    if kind == "sparse":
        logits = logits * 200  # a sharp softmax: most weights underflow to exact zeros
    if kind in ("one_hot", "skewed"):
        chosen = torch.randint(experts, (rows,), generator=generator)
        if kind == "skewed":
            chosen[: rows * 3 // 4] = 2
        logits = F.one_hot(chosen, experts).float() * 1e3
    logits.requires_grad_()
    h = torch.randn(rows, 5, generator=generator, requires_grad=True)
    target = torch.randn(rows, 9, generator=generator)

    def mixture_and_gradients(mix):
        # Through the softmax, as in DE: a zero weight passes no gradient whatever its expert's output.
        selection = torch.softmax(logits, dim=1)
        mixed = mix(h, selection)
        return mixed, torch.autograd.grad(de_loss(target, mixed), [h, logits, *bank.parameters()])

    def plain(h, selection):
        return sum(selection[:, m : m + 1] * bank.expert(m, h) for m in range(experts))

    ours, ours_grads = mixture_and_gradients(bank)
    reference, reference_grads = mixture_and_gradients(plain)
    if kind != "dense":
        assert (torch.softmax(logits, dim=1) == 0).float().mean() > 0.5  # the sparse path is the one tested
    torch.testing.assert_close(ours, reference)
    for mine, theirs in zip(ours_grads, reference_grads, strict=True):
        torch.testing.assert_close(mine, theirs)


def test_de_anneals_tau_and_maps_selection(split, teacher):
    method = make("de", split, teacher, de={"anneal_epochs": 10, "num_experts": 5})
    assert method.tau == 1.0
    method.on_epoch_start(5, torch.Generator())
    assert method.tau == pytest.approx(1e-5)
    method.on_epoch_start(20, torch.Generator())
    assert method.tau == pytest.approx(1e-10)
    user_map, item_map = method.selection_map("user"), method.selection_map("item")
    assert user_map.shape == (split.num_users,) and item_map.shape == (split.num_items,)
    assert int(user_map.min()) >= 0 and int(user_map.max()) < 5
    # Annealed, the selection is one-hot and the loss still reaches the student.
    model = student(split)
    method(model, make_batch(split))["de"].backward()
    assert model.user_embedding.weight.grad.abs().sum() > 0


def test_de_agrees_lower_than_random():
    generator = torch.Generator().manual_seed(0)
    teacher_repr, other = torch.randn(2, 10, 4, generator=generator)
    assert de_loss(teacher_repr, teacher_repr) < de_loss(teacher_repr, other)


@pytest.mark.parametrize("variant", [{"selection": "attention"}, {"num_experts": 1},
                                     {"num_experts": 1, "expert_hidden": 64}])
def test_de_design_variants(variant, split, teacher):
    method = make("de", split, teacher, de=variant)
    assert torch.isfinite(method(student(split), make_batch(split))["de"])
    if "expert_hidden" in variant:
        assert method.experts["user"].w1.shape == (1, STUDENT_DIM, 64)


# --------------------------------------------------------------------------------------------------
# RD
# --------------------------------------------------------------------------------------------------


def test_rd_by_hand():
    weights = position_weights(3, 1.0)
    expected = torch.tensor([math.exp(-1), math.exp(-2), math.exp(-3)])
    torch.testing.assert_close(weights, expected / expected.sum())
    assert ranking_distillation_loss(torch.zeros(2, 3), weights).item() == pytest.approx(2 * math.log(2))
    scores = torch.tensor([[1.0, -2.0, 0.5]])
    pairs = zip(weights.tolist(), scores[0].tolist(), strict=True)
    by_hand = -sum(w * math.log(1 / (1 + math.exp(-s))) for w, s in pairs)
    assert ranking_distillation_loss(scores, weights).item() == pytest.approx(by_hand, rel=1e-6)
    assert ranking_distillation_loss(torch.full((1, 3), 5.0), weights) < ranking_distillation_loss(
        torch.full((1, 3), -5.0), weights)


def test_rd_dynamic_weight_by_hand():
    # Teacher places r_t = 0, 1, 2; the student's estimated places 5, 1, 0; mu = 0.5:
    # w^b = tanh(max(0.5 * (5, 0, -2), 0)) = (tanh 2.5, 0, 0).
    discrepancy = discrepancy_weights(torch.tensor([[5.0, 1.0, 0.0]]), 0.5)
    torch.testing.assert_close(discrepancy, torch.tensor([[math.tanh(2.5), 0.0, 0.0]]))
    position = position_weights(3, 1.0)
    # Hybrid: w^a w^b normalised per user; one positive entry takes all the weight; an all-zero row stays 0.
    hybrid = hybrid_weights(position, torch.tensor([[math.tanh(2.5), 0.0, 0.0], [0.0, 0.0, 0.0],
                                                    [0.5, 0.5, 0.0]]))
    a = position.tolist()
    torch.testing.assert_close(hybrid, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0],
                                                     [a[0] / (a[0] + a[1]), a[1] / (a[0] + a[1]), 0.0]]))


def test_rd_pairwise_loss_by_hand():
    weights = torch.tensor([[0.7, 0.3]])
    top, negative = torch.tensor([[2.0, 0.5]]), torch.tensor([[1.0, 1.5]])
    by_hand = -(0.7 * math.log(1 / (1 + math.exp(-1.0))) + 0.3 * math.log(1 / (1 + math.exp(1.0))))
    assert ranking_distillation_loss(top, weights, negative).item() == pytest.approx(by_hand, rel=1e-6)
    # Shifting every score of a user by the same amount leaves the pairwise term unchanged (BPR's invariance).
    assert ranking_distillation_loss(top + 3, weights, negative + 3).item() == pytest.approx(by_hand, rel=1e-6)


def test_rd_uses_position_weights_before_the_start_epoch_and_the_hybrid_after(split, teacher):
    method = RD(RDConfig(num_topk=5, dynamic_start_epoch=3, rank_samples=50, discrepancy_scale=0.2), teacher,
                split, STUDENT_DIM)
    model, users = student(split), torch.arange(6)
    scores = model.score(users, method.teacher_topk[users]).detach()
    early = method.batch_weights(model, users, scores, epoch=2)
    torch.testing.assert_close(early, position_weights(5, 1.0).expand(6, 5))
    method.generator = torch.Generator().manual_seed(11)
    late = method.batch_weights(model, users, scores, epoch=3)
    # By hand from the same draws: the share of sampled items above each top-K item, times I, vs r_t.
    sampled = torch.randint(split.num_items, (6, 50), generator=torch.Generator().manual_seed(11))
    sampled_scores = model.score(users, sampled).detach()
    ranks = (sampled_scores.unsqueeze(1) > scores.unsqueeze(2)).sum(2).float() * split.num_items / 50
    dynamic = torch.tanh((0.2 * (ranks - torch.arange(5.0))).clamp(min=0))
    expected = position_weights(5, 1.0) * dynamic
    expected = expected / expected.sum(1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    torch.testing.assert_close(late, expected)


def test_rd_pairwise_negatives_avoid_training_and_top_k_items(split, teacher):
    method = RD(RDConfig(num_topk=5), teacher, split, STUDENT_DIM)
    train_users, train_items = split.train_tensors()
    users = torch.arange(split.num_users)
    drawn = sample_outside(method.excluded, users, 5, torch.Generator().manual_seed(0))
    observed = PairSet(train_users, train_items, split.num_users, split.num_items)
    assert not bool(observed.contains(users.unsqueeze(1).expand(-1, 5), drawn).any())
    assert not bool((drawn.unsqueeze(2) == method.teacher_topk.unsqueeze(1)).any())


# --------------------------------------------------------------------------------------------------
# CD
# --------------------------------------------------------------------------------------------------


def test_soft_label_bce_by_hand():
    scores, labels = torch.tensor([[0.0, 2.0]]), torch.tensor([[0.3, 0.9]])
    sig = 1 / (1 + math.exp(-2.0))
    by_hand = math.log(2) - (0.9 * math.log(sig) + 0.1 * math.log(1 - sig))
    assert soft_label_bce(scores, labels, torch.ones(1, 2)).item() == pytest.approx(by_hand, rel=1e-6)
    assert soft_label_bce(scores, labels, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(math.log(2))
    # Lowest where the student's probabilities equal the teacher's soft labels.
    agree = soft_label_bce(torch.logit(labels), labels, torch.ones(1, 2))
    assert agree < soft_label_bce(torch.logit(labels) + 0.5, labels, torch.ones(1, 2))


def test_cd_rank_estimate_and_sampling_weights():
    probes = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    rank = estimate_rank(torch.tensor([[0.5, 3.0, -1.0]]), probes, num_items=400)
    torch.testing.assert_close(rank, torch.tensor([[300.0, 0.0, 400.0]]))
    config = CONFIGS["cd"](discrepancy_sharpness=0.1, rank_temperature=10.0)
    log_weights = discrepancy_log_weights(torch.tensor([[5.0, 0.0, 50.0]]), config)
    assert log_weights[0, 1] == -math.inf  # the student ranks it above the teacher: never sampled
    assert log_weights[0, 0].item() == pytest.approx(math.log(math.tanh(0.5)) - 0.1)


def test_cd_soft_labels_are_the_teachers_predictions(split, teacher):
    method = make("cd", split, teacher, cd={"label_temperature": 2.0})
    expected = torch.sigmoid(teacher.user_topk_scores[:, :TOP_N] / 2.0)
    torch.testing.assert_close(method.labels, expected)


def test_cd_samples_only_where_the_student_lags(split, teacher):
    method = make("cd", split, teacher)
    model, users = student(split), torch.arange(20)
    positions, sampled = method.sample(model, users)
    assert positions.shape == (20, method.config.num_samples)
    assert int(positions.min()) >= 0 and int(positions.max()) < TOP_N
    assert bool(sampled.any())
