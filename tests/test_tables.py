"""The chapter tables: one variant table for DE-RRD's design choices and TD's ablations (by hand)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kdrepro.tables import compare


def _results(rows):
    return pd.DataFrame([{"dataset": "citeulike-t", "protocol": "loo_full", "base": "bpr", "method": "HTD",
                          "variant": v, "seed": s, "metric": "Recall@50", "value": x} for v, s, x in rows])


def test_variant_table_means_ranks_and_paper_by_hand():
    results = _results([("A", 0, 0.30), ("A", 1, 0.32), ("B", 0, 0.35), ("B", 1, 0.33)])
    paper = pd.DataFrame([{"dataset": "CiteULike", "base": "BPR", "variant": "A", "metric": "Recall@50", "paper": 0.4},
                          {"dataset": "CiteULike", "base": "BPR", "variant": "B", "metric": "Recall@50", "paper": 0.3}])
    table = compare.variant_table(results, paper, ["Recall@50"], on=("dataset", "base", "variant", "metric"))
    assert list(table.columns) == compare.VARIANT_COLUMNS
    row = table.set_index("variant")
    assert row.loc["A", "ours_mean"] == pytest.approx(0.31) and row.loc["B", "ours_mean"] == pytest.approx(0.34)
    assert row.loc["A", "ours_std"] == pytest.approx(np.std([0.30, 0.32], ddof=1))
    assert (row.loc["A", "ours_rank"], row.loc["B", "ours_rank"]) == (2, 1)
    assert (row.loc["A", "paper_rank"], row.loc["B", "paper_rank"]) == (1, 2)
    assert list(row["n_seeds"]) == [2, 2]
