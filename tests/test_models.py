import pytest
import torch

from kdrepro.efficiency import count_parameters, time_recommend_all
from kdrepro.models import MODELS, ModelConfig, build
from kdrepro.train import PLAN_FILE_ENV


@pytest.mark.parametrize("name", ["bpr", "neumf", "lightgcn", "cml"])
def test_recommender_contract(name, synthetic_splits):
    split = synthetic_splits["loo_full"]
    torch.manual_seed(0)
    model = build(ModelConfig(name, 8), split)
    users = torch.tensor([0, 1, 2])
    items = torch.tensor([5, 6, 7])
    pair = model.score(users, items)
    many = model.score(users, torch.stack([items, items + 1], dim=1))
    full = model.score_all(users)
    assert pair.shape == (3,) and many.shape == (3, 2) and full.shape == (3, split.num_items)
    torch.testing.assert_close(full[torch.arange(3), items], pair, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(many[:, 0], pair, rtol=1e-4, atol=1e-5)
    assert model.user_repr(users).shape == (3, model.repr_dim)
    assert model.item_repr(items).shape == (3, model.repr_dim)
    pair.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_parameter_counts_match_the_papers_table3():
    """DE-RRD Table 3 (CiteULike, +1 counting): BPR 6.08M at dim 200, NeuMF 15.33M at dim 250."""

    class Shape:
        num_users, num_items = 5220, 25182

    bpr = MODELS["bpr"](Shape.num_users, Shape.num_items, 200)
    neumf = MODELS["neumf"](Shape.num_users, Shape.num_items, 250)
    assert count_parameters(bpr) / 1e6 == pytest.approx(6.08, abs=0.01)
    assert count_parameters(neumf) / 1e6 == pytest.approx(15.33, rel=0.01)
    assert count_parameters(MODELS["bpr"](5220, 25182, 20)) / 1e6 == pytest.approx(0.61, abs=0.01)


def test_cml_constrain_projects_into_the_unit_ball(synthetic_splits):
    model = build(ModelConfig("cml", 4), synthetic_splits["loo_full"])
    with torch.no_grad():
        model.user_embedding.weight.mul_(10)
    model.constrain()
    assert model.user_embedding.weight.norm(dim=1).max() <= 1 + 1e-6


def test_unknown_model(synthetic_splits):
    with pytest.raises(ValueError, match="unknown model 'svd'"):
        build(ModelConfig("svd", 4), synthetic_splits["loo_full"])


def test_embedding_lookup_matches_nn_embedding():
    """The index_select lookup gives nn.Embedding's rows and gradients, for flat and (B, C) ids."""
    from kdrepro.models.base import Embedding

    torch.manual_seed(0)
    reference = torch.nn.Embedding(50, 6)
    fast = Embedding(50, 6)
    fast.load_state_dict(reference.state_dict())
    ids = torch.randint(50, (7, 9))
    upstream = torch.randn(7, 9, 6)
    (reference(ids) * upstream).sum().backward()
    (fast(ids) * upstream).sum().backward()
    assert torch.equal(fast(ids), reference(ids)) and fast(ids[0]).shape == (9, 6)
    torch.testing.assert_close(fast.weight.grad, reference.weight.grad)


@pytest.mark.parametrize("candidates", [3, 2048])  # below and above ELEMENTWISE_DOT_MAX
def test_pairwise_dot_both_paths_equal_bmm(candidates):
    from kdrepro.models.base import ELEMENTWISE_DOT_MAX, pairwise_dot

    torch.manual_seed(0)
    users = torch.randn(4, 600, requires_grad=True)
    items = torch.randn(4, candidates, 600, requires_grad=True)
    assert (items.numel() <= ELEMENTWISE_DOT_MAX) == (candidates == 3)
    reference = torch.bmm(items, users.unsqueeze(-1)).squeeze(-1)
    grads = torch.autograd.grad(reference.square().sum(), (users, items))
    scores = pairwise_dot(users, items)
    torch.testing.assert_close(scores, reference, rtol=1e-5, atol=1e-4)
    for got, want in zip(torch.autograd.grad(scores.square().sum(), (users, items)), grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


def test_timing_is_measured_but_refused_while_a_chapter_is_planned(synthetic_splits, monkeypatch, tmp_path):
    split = synthetic_splits["holdout"]
    model = build(ModelConfig("bpr", 4), split)
    timing = time_recommend_all(model, split, 10, repeats=1)
    assert timing.seconds > 0 and timing.other_cores_busy >= 0
    monkeypatch.setenv(PLAN_FILE_ENV, str(tmp_path / "plan.jsonl"))
    with pytest.raises(RuntimeError, match="planning mode"):
        time_recommend_all(model, split, 10, repeats=1)
