"""The chapter tables: one variant table for DE-RRD's design choices and TD's ablations (by hand)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kdrepro import runs
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


def test_fidelity_table_passes_a_fast_mean_within_one_exact_standard_error():
    def long(values_by_metric, method="DE"):
        return pd.DataFrame([{"base": "bpr", "method": method, "seed": s, "metric": m, "value": v}
                             for m, values in values_by_metric.items() for s, v in enumerate(values)])

    exact = long({"Recall@50": [0.1, 0.2, 0.3], "NDCG@50": [0.1, 0.2, 0.3], "HR@5": [1.0, 1.0, 1.0]})
    fast = long({"Recall@50": [0.25, 0.25, 0.25], "NDCG@50": [0.3, 0.3, 0.3], "HR@5": [0.0, 0.0, 0.0]})
    table = compare.fidelity_table(exact, fast, ["Recall@50", "NDCG@50"]).set_index("metric")
    assert list(table.index) == ["Recall@50", "NDCG@50"]  # HR@5 not asked for
    se = 0.1 / np.sqrt(3)  # std 0.1 over three seeds
    assert table.loc["Recall@50", "exact_se"] == pytest.approx(se)
    assert table.loc["Recall@50", "difference"] == pytest.approx(0.05)
    assert table.loc["Recall@50", "verdict"] == "within 1 SE"
    assert table.loc["NDCG@50", "difference"] == pytest.approx(0.1)
    assert table.loc["NDCG@50", "verdict"] == "outside 1 SE"
    assert (table["n_seeds"] == 3).all()
    one_seed = compare.fidelity_table(exact[exact["seed"] == 0], fast[fast["seed"] == 0], ["Recall@50"])
    assert one_seed["verdict"].tolist() == ["no standard error (one seed)"]


def test_fidelity_fit_times_average_each_precision_over_seeds():
    exact = pd.DataFrame({"base": "bpr", "method": ["DE", "DE", "HTD"], "seed": [0, 1, 0],
                          "seconds": [600.0, 700.0, 900.0], "epoch_s": [6.0, 7.0, 9.0]})
    fast = exact.assign(seconds=exact["seconds"] / 2, epoch_s=exact["epoch_s"] / 2, precision="bf16")
    times = compare.fidelity_fit_times(exact, fast).set_index(["method", "precision"])
    assert times.loc[("DE", "fp32"), "seconds"] == pytest.approx(650.0)
    assert times.loc[("DE", "bf16"), "epoch_s"] == pytest.approx(3.25)
    assert times.loc[("HTD", "bf16"), "seconds"] == pytest.approx(450.0)
    assert len(times) == 4
    unlabelled = compare.fidelity_fit_times(exact, fast.drop(columns="precision"), precision="bf16")
    assert unlabelled.equals(times.reset_index()[unlabelled.columns])


def test_precision_runs_set_the_precision_of_every_part_that_has_one():
    de_rrd, htd = runs.precision_runs(["DE-RRD", "HTD"], "bf16")
    assert de_rrd.overrides == {"de": {"precision": "bf16"}} and de_rrd.keys == {"precision": "bf16"}
    assert htd.overrides == {"htd": {"precision": "bf16"}}
    with pytest.raises(ValueError, match="RRD has no precision option"):
        runs.precision_runs(["RRD"], "bf16")
    with pytest.raises(ValueError, match="'Student' is not a distillation method"):
        runs.precision_runs(["Student"], "bf16")


def test_schedule_table_sets_each_schedule_beside_the_paper_and_its_student_by_hand():
    def long(method, values, metric="Recall@50"):
        return [{"dataset": "citeulike-t", "base": "bpr", "method": method, "seed": s, "metric": metric, "value": v}
                for s, v in enumerate(values)]

    # Capped: seeds 0-2 (seed 2 and FitNet were not run longer, so they are left out); longer: seed 0-1.
    capped = pd.DataFrame(long("Student", [0.20, 0.22, 0.90]) + long("HTD", [0.24, 0.26, 0.90])
                          + long("FitNet", [0.5, 0.5, 0.5]) + long("HTD", [0.1, 0.1, 0.1], "NDCG@10"))
    capped = pd.concat([capped, capped.assign(base="lightgcn")])  # a base not run longer: left out
    longer = pd.DataFrame(long("Student", [0.23, 0.25]) + long("HTD", [0.27, 0.29]))
    capped_epochs = {"Student": [90, 100, 1], "HTD": [100, 101, 1]}
    fits = pd.DataFrame([{"base": b, "method": m, "seed": s, "best_epoch": e, "epochs_run": 101}
                         for b in ("bpr", "lightgcn") for m, epochs in capped_epochs.items()
                         for s, e in enumerate(epochs)])
    longer_epochs = {"Student": [200, 300], "HTD": [400, 500]}
    longer_fits = pd.DataFrame([{"base": "bpr", "method": m, "seed": s, "best_epoch": e, "epochs_run": e + 50}
                                for m, epochs in longer_epochs.items() for s, e in enumerate(epochs)])
    table = compare.schedule_table(capped, longer, fits, longer_fits, ["Recall@50"], "td_table1_main")
    assert list(table.columns) == compare.SCHEDULE_COLUMNS
    row = table.set_index("method")
    # FitNet and LightGCN (not run longer) and NDCG@10 (not asked for) left out.
    assert list(zip(table["base"], table["method"], strict=True)) == [("BPR", "Student"), ("BPR", "HTD")]
    # The paper's CiteULike BPR-MF values (TD Table 1): Student 0.2347, HTD 0.2803.
    assert row.loc["HTD", "paper"] == pytest.approx(0.2803)
    assert row.loc["HTD", "ours_capped"] == pytest.approx(0.25) and row.loc["HTD", "ours_longer"] == pytest.approx(0.28)
    assert row.loc["HTD", "rel_capped"] == pytest.approx((0.25 - 0.2803) / 0.2803)
    assert row.loc["Student", "rel_longer"] == pytest.approx((0.24 - 0.2347) / 0.2347)
    assert row.loc["HTD", "gain_capped"] == pytest.approx(0.25 / 0.21 - 1)
    assert row.loc["HTD", "gain_longer"] == pytest.approx(0.28 / 0.24 - 1)
    assert np.isnan(row.loc["Student", "gain_longer"])
    assert row.loc["HTD", "best_epoch_capped"] == pytest.approx(100.5)
    assert (row.loc["HTD", "best_epoch_longer"], row.loc["HTD", "epochs_run_longer"]) == (450, 500)
    assert (table["n_seeds"] == 2).all()
    assert compare.schedule_table(capped, longer.iloc[:0], fits, longer_fits, ["Recall@50"], "td_table1_main").empty
