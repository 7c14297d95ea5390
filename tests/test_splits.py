import numpy as np
import pytest

from kdrepro import splits
from kdrepro.store import Store


def _pairs(users, items, num_items):
    return set((users * num_items + items).tolist())


@pytest.mark.parametrize("protocol", splits.PROTOCOLS)
def test_split_partitions_the_interactions(synthetic_data, synthetic_splits, protocol):
    s = synthetic_splits[protocol]
    n = synthetic_data.num_items
    train = _pairs(s.train_users, s.train_items, n)
    valid = _pairs(s.valid_users, s.valid_items, n)
    test = _pairs(s.test_users, s.test_items, n)
    assert not (train & valid) and not (train & test) and not (valid & test)
    assert train | valid | test == _pairs(synthetic_data.users, synthetic_data.items, n)
    assert np.all(np.diff(s.train_users) >= 0)  # sorted by user (CSR)


@pytest.mark.parametrize("protocol", ["loo_sampled", "loo_full"])
def test_leave_one_out_holds_out_one_valid_and_one_test_item_per_user(synthetic_data, synthetic_splits, protocol):
    s = synthetic_splits[protocol]
    assert np.array_equal(np.sort(s.valid_users), np.arange(synthetic_data.num_users))
    assert np.array_equal(np.sort(s.test_users), np.arange(synthetic_data.num_users))


def test_sampled_negatives_are_distinct_unobserved_items(synthetic_data, synthetic_splits):
    s = synthetic_splits["loo_sampled"]
    assert s.negatives.shape == (synthetic_data.num_users, 99)
    observed = _pairs(synthetic_data.users, synthetic_data.items, synthetic_data.num_items)
    keys = np.arange(synthetic_data.num_users)[:, None] * synthetic_data.num_items + s.negatives
    assert not observed & set(keys.ravel().tolist())
    assert all(len(set(row)) == 99 for row in s.negatives.tolist())


def test_holdout_fractions(synthetic_splits):
    s = synthetic_splits["holdout"]
    total = s.num_train + len(s.valid_users) + len(s.test_users)
    assert abs(len(s.test_users) / total - 0.2) < 0.03
    assert abs(len(s.valid_users) / total - 0.2) < 0.03
    assert len(np.unique(s.train_users)) == s.num_users  # every user keeps training data


def test_split_seed_determines_the_split(synthetic_data):
    a = splits.make_split(synthetic_data, "loo_sampled", 7, num_negatives=50)
    b = splits.make_split(synthetic_data, "loo_sampled", 7, num_negatives=50)
    c = splits.make_split(synthetic_data, "loo_sampled", 8, num_negatives=50)
    assert np.array_equal(a.test_items, b.test_items) and np.array_equal(a.negatives, b.negatives)
    assert not np.array_equal(a.test_items, c.test_items)
    assert a.key == b.key != c.key


def test_saved_split_round_trips_and_checks_the_dataset(synthetic_data, tmp_path):
    s = Store(tmp_path).split(synthetic_data, "loo_sampled", 1, num_negatives=20)
    (path,) = tmp_path.glob("splits/*/split.npz")
    again = Store(tmp_path).split(synthetic_data, "loo_sampled", 1, num_negatives=20)
    assert np.array_equal(s.negatives, again.negatives) and again.key == s.key
    with pytest.raises(ValueError, match="delete it to rebuild"):
        splits.load_split(path, expected_sha256="0" * 64)


def test_too_many_negatives_is_a_clear_error(synthetic_data):
    with pytest.raises(ValueError, match=r"num_negatives=499 is more than"):
        splits.make_split(synthetic_data, "loo_sampled", 0, num_negatives=499)


def test_unknown_protocol(synthetic_data):
    with pytest.raises(ValueError, match="unknown protocol 'random'"):
        splits.make_split(synthetic_data, "random")


@pytest.mark.realdata
def test_citeulike_loo_leaves_the_papers_training_set(citeulike):
    s = splits.make_split(citeulike, "loo_full", 0)
    assert s.num_train == 115142 and len(s.test_users) == 5219
