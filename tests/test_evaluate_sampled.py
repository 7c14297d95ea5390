"""loo_sampled evaluation of matrix factorization: scored through score_all (one product with every item,
then the candidates' columns) instead of gathering candidate embeddings; the metrics must not change."""

import numpy as np
import torch

from kdrepro.evaluate import evaluate
from kdrepro.models import ModelConfig, build


def test_mf_sampled_metrics_equal_the_hand_computed_ranks(synthetic_splits):
    split = synthetic_splits["loo_sampled"]
    torch.manual_seed(0)
    model = build(ModelConfig("bpr", 16), split)
    with torch.no_grad():
        model.user_embedding.weight.normal_(0, 0.3)
        model.item_embedding.weight.normal_(0, 0.3)
    values = evaluate(model, split, "test", per_user=True)

    users = torch.as_tensor(split.test_users)
    candidates = torch.as_tensor(np.concatenate([split.test_items[:, None], split.negatives[split.test_users]], 1))
    with torch.no_grad():  # the plain definition: <e_u, e_i> for each candidate, no score_all
        scores = (model.user_embedding.weight[users, None, :] * model.item_embedding.weight[candidates]).sum(-1)
    rank = (scores[:, 1:] >= scores[:, :1]).sum(1).numpy()  # negatives at or above the held-out item
    assert 0 < (rank < 5).mean() < 1  # some hits, some misses: the comparison can fail
    for k in split.ks:
        np.testing.assert_array_equal(values[f"HR@{k}"], (rank < k).astype(float))
        ndcg = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
        np.testing.assert_allclose(values[f"NDCG@{k}"], ndcg, rtol=1e-6)


def test_mf_sampled_chunks_do_not_change_the_metrics(synthetic_splits, monkeypatch):
    split = synthetic_splits["loo_sampled"]
    torch.manual_seed(1)
    model = build(ModelConfig("bpr", 8), split)
    whole = evaluate(model, split, "valid")
    monkeypatch.setattr("kdrepro.evaluate.SAMPLED_SCORE_ALL_ELEMENTS", 7 * split.num_items)  # chunks of 7 users
    assert evaluate(model, split, "valid") == whole
