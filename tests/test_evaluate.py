import numpy as np
import pytest
import torch

from kdrepro.evaluate import evaluate, rank_full
from kdrepro.models import Recommender


class Oracle(Recommender):
    """Scores each user's held-out test items highest, then validation items, then the rest by id."""

    def __init__(self, split, boost_valid=True):
        super().__init__()
        self.num_users, self.num_items, self.dim = split.num_users, split.num_items, 1
        table = torch.zeros(split.num_users, split.num_items)
        table[split.train_users, split.train_items] = 100.0  # must be masked by evaluation
        if boost_valid:
            table[split.valid_users, split.valid_items] = 50.0
        table[split.test_users, split.test_items] = 10.0
        self.table = torch.nn.Parameter(table)

    def score(self, users, items):
        if items.dim() == 2:
            return self.table[users.unsqueeze(1), items]
        return self.table[users, items]

    def score_all(self, users):
        return self.table[users].clone()


@pytest.mark.parametrize("protocol", ["loo_sampled", "loo_full", "holdout"])
def test_oracle_scores_one_and_training_items_are_masked(synthetic_splits, protocol):
    split = synthetic_splits[protocol]
    metrics = evaluate(Oracle(split), split, "test")
    assert metrics and all(v == pytest.approx(1.0) for v in metrics.values())


def test_validation_items_are_masked_at_test_time(synthetic_splits):
    split = synthetic_splits["loo_full"]
    model = Oracle(split)
    for batch, ranked in rank_full(model, split, "test", top_k=10):
        valid = set(zip(split.valid_users.tolist(), split.valid_items.tolist(), strict=True))
        for row, user in enumerate(batch):
            assert not any((int(user), int(i)) in valid for i in ranked[row].tolist())


def test_ties_are_pessimistic_under_sampled_protocol(synthetic_splits):
    split = synthetic_splits["loo_sampled"]

    class Constant(Oracle):
        def score(self, users, items):
            return torch.zeros(items.shape)

    metrics = evaluate(Constant(split), split, "test")
    assert metrics["HR@20"] == 0.0


def test_per_user_values(synthetic_splits):
    split = synthetic_splits["loo_full"]
    values = evaluate(Oracle(split), split, "valid", per_user=True)
    assert np.array_equal(np.sort(values["user"]), np.arange(split.num_users))
    assert values["Recall@10"].shape == (split.num_users,)
