import math

import numpy as np
import pytest
import torch

from kdrepro.metrics import hit_at_k, mrr_at_k, ndcg_at_k, recall_at_k


def _relevant(num_items, *sets):
    mask = torch.zeros(len(sets), num_items, dtype=torch.bool)
    for row, items in enumerate(sets):
        mask[row, list(items)] = True
    return mask


def test_perfect_ranking_scores_one():
    ranked = torch.tensor([[3, 1, 0, 2, 4]])
    relevant = _relevant(5, {3, 1})
    for fn in (hit_at_k, recall_at_k, ndcg_at_k, mrr_at_k):
        assert fn(ranked, relevant, 2).item() == pytest.approx(1.0)


def test_no_hit_scores_zero():
    ranked = torch.tensor([[0, 1, 2, 3, 4]])
    relevant = _relevant(5, {4})
    for fn in (hit_at_k, recall_at_k, ndcg_at_k, mrr_at_k):
        assert fn(ranked, relevant, 3).item() == 0.0


def test_hit_at_rank_two():
    ranked = torch.tensor([[0, 4, 1, 2, 3]])
    relevant = _relevant(5, {4})
    assert ndcg_at_k(ranked, relevant, 5).item() == pytest.approx(1 / math.log2(3))
    assert mrr_at_k(ranked, relevant, 5).item() == pytest.approx(0.5)
    assert hit_at_k(ranked, relevant, 1).item() == 0.0
    assert hit_at_k(ranked, relevant, 2).item() == 1.0


def test_recall_and_ndcg_with_several_relevant_items():
    ranked = torch.tensor([[0, 1, 2, 3]])
    relevant = _relevant(4, {1, 3, 2})
    assert recall_at_k(ranked, relevant, 2).item() == pytest.approx(1 / 3)
    ideal = 1 + 1 / math.log2(3)
    assert ndcg_at_k(ranked, relevant, 2).item() == pytest.approx((1 / math.log2(3)) / ideal)


def test_k_larger_than_ranking_is_an_error():
    with pytest.raises(ValueError, match="fewer than k=5"):
        hit_at_k(torch.tensor([[0, 1]]), _relevant(3, {0}), 5)


def test_agrees_with_trec_eval_on_random_rankings():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = np.random.default_rng(0)
    num_users, num_items, k = 50, 40, 10
    scores = rng.random((num_users, num_items))
    relevant = rng.random((num_users, num_items)) < 0.1
    relevant[np.arange(num_users), rng.integers(num_items, size=num_users)] = True
    ranked = torch.from_numpy(np.argsort(-scores, axis=1).copy())
    mask = torch.from_numpy(relevant)
    qrels = {str(u): {str(i): 1 for i in np.flatnonzero(relevant[u])} for u in range(num_users)}
    run = {str(u): {str(i): float(scores[u, i]) for i in range(num_items)} for u in range(num_users)}
    measures = {f"ndcg_cut.{k}", f"recall.{k}", "recip_rank"}
    ref = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    ours_ndcg = ndcg_at_k(ranked, mask, k).numpy()
    ours_recall = recall_at_k(ranked, mask, k).numpy()
    ours_mrr = mrr_at_k(ranked, mask, num_items).numpy()
    for u in range(num_users):
        assert ours_ndcg[u] == pytest.approx(ref[str(u)][f"ndcg_cut_{k}"], abs=1e-5)
        assert ours_recall[u] == pytest.approx(ref[str(u)][f"recall_{k}"], abs=1e-6)
        assert ours_mrr[u] == pytest.approx(ref[str(u)]["recip_rank"], abs=1e-6)


def test_known_relevant_counts_give_the_same_values():
    rng = np.random.default_rng(1)
    relevant = torch.from_numpy(rng.random((20, 30)) < 0.2)
    ranked = torch.from_numpy(np.argsort(rng.random((20, 30)), axis=1).copy())
    counts = relevant.sum(1)
    torch.testing.assert_close(recall_at_k(ranked, relevant, 5, counts), recall_at_k(ranked, relevant, 5))
    torch.testing.assert_close(ndcg_at_k(ranked, relevant, 5, counts), ndcg_at_k(ranked, relevant, 5))
