import pytest
import torch

from kdrepro.efficiency import count_parameters
from kdrepro.models import MODELS, ModelConfig, build


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
