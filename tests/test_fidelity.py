"""Slow tier (opt-in: ``pytest -m slow``): the papers' BPR teacher and student under both protocols.

Trains with the papers' settings on the offline CiteULike (about 15–30 minutes per case on 2 CPU cores)
and checks the headline metric within ±5 % relative of the published value.
"""

import pytest

from kdrepro import data, paper
from kdrepro.models import ModelConfig
from kdrepro.store import Store
from kdrepro.train import TrainConfig, fit

CASES = [
    # protocol, role, dim, paper table, metric
    ("loo_sampled", "Teacher", 200, "derrd_table2_main_phi0.1", "HR@5"),
    ("loo_sampled", "Student", 20, "derrd_table2_main_phi0.1", "HR@5"),
    ("loo_full", "Teacher", 200, "td_table1_main", "Recall@50"),
    ("loo_full", "Student", 20, "td_table1_main", "Recall@50"),
]


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize(("protocol", "role", "dim", "table", "metric"), CASES)
def test_bpr_matches_the_paper(data_dir, protocol, role, dim, table, metric):
    dataset = data.load("citeulike-t", min_user_interactions=5, data_dir=data_dir)
    split = Store().split(dataset, protocol, 0)
    # The authors validate every epoch under loo_sampled; full ranking is validated every 5 epochs here.
    every, patience = (1, 20) if protocol == "loo_sampled" else (5, 4)
    result = fit(ModelConfig("bpr", dim), split, TrainConfig(eval_every=every, patience=patience, progress=False))
    published = paper.load_table(table)
    row = published[(published.dataset == "CiteULike") & (published.base == "BPR") & (published.method == role)]
    expected = float(row[metric].iloc[0])
    assert result.test[metric] == pytest.approx(expected, rel=0.05)
