"""kdrepro.analysis (chapters 02 and 05) on hand-checkable cases, and the chapter helpers of runs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from kdrepro import analysis, data, runs, splits
from kdrepro.train import TrainConfig


def grid_frames():
    """Two DE configs × two seeds: config (0.1, 5) wins on validation, config (0.01, 30) on test."""
    histories, results = [], []
    valid = {(0.1, 5): [(0.20, 0.30), (0.22, 0.28)], (0.01, 30): [(0.25, 0.26), (0.27, 0.24)]}
    test = {(0.1, 5): [0.40, 0.42], (0.01, 30): [0.50, 0.52]}
    for (lam, experts), per_seed in valid.items():
        for seed, epochs in enumerate(per_seed):
            for epoch, value in enumerate(epochs, start=1):
                histories.append({"base": "bpr", "method": "DE", "lambda_de": lam, "num_experts": experts,
                                  "seed": seed, "epoch": epoch, "loss": 1.0, "loss/base": 1.0,
                                  "valid/NDCG@10": value, "valid/HR@10": 0.9})
            for metric, value in (("NDCG@10", test[(lam, experts)][seed]), ("HR@10", 0.7)):
                results.append({"dataset": "d", "protocol": "loo_sampled", "base": "bpr", "method": "DE",
                                "lambda_de": lam, "num_experts": experts, "seed": seed, "metric": metric,
                                "value": value})
    return pd.DataFrame(results), pd.DataFrame(histories)


def test_validation_scores_are_the_best_epoch():
    _, histories = grid_frames()
    scores = analysis.validation_scores(histories, "NDCG@10")
    assert list(scores["valid"]) == [0.30, 0.28, 0.26, 0.27]
    with pytest.raises(ValueError, match="MRR@10"):
        analysis.validation_scores(histories, "MRR@10")


def test_selection_picks_the_best_validation_config_not_the_best_test():
    results, histories = grid_frames()
    table = analysis.select_on_validation(results, histories, ["lambda_de", "num_experts"])
    assert table["monitor"].eq("NDCG@10").all()  # loo_sampled's default monitor
    chosen = table[table["selected"]].iloc[0]
    assert (chosen["lambda_de"], chosen["num_experts"]) == (0.1, 5)
    assert chosen["valid_mean"] == pytest.approx(0.29) and chosen["n_seeds"] == 2
    assert table.loc[~table["selected"], "test_mean"].iloc[0] == pytest.approx(0.51)  # shown, not used
    rows = analysis.selected_results(results, table)
    assert "lambda_de" not in rows and "num_experts" not in rows
    assert sorted(rows.query("metric == 'NDCG@10'")["value"]) == [0.40, 0.42]


def test_selection_per_base_and_protocol_column_from_results():
    results, histories = grid_frames()
    other_r, other_h = results.assign(base="neumf"), histories.assign(base="neumf")
    # neumf: the other config is better on validation
    other_h.loc[other_h["lambda_de"] == 0.01, "valid/NDCG@10"] += 0.1
    table = analysis.select_on_validation(pd.concat([results, other_r]), pd.concat([histories, other_h]),
                                          ["lambda_de", "num_experts"])
    picked = table[table["selected"]].set_index("base")["lambda_de"]
    assert picked.to_dict() == {"bpr": 0.1, "neumf": 0.01}
    assert table["protocol"].eq("loo_sampled").all()
    mixed = pd.concat([results, results.assign(protocol="loo_full")])
    with pytest.raises(ValueError, match="protocol"):
        analysis.select_on_validation(mixed, histories, ["lambda_de", "num_experts"], monitor="NDCG@10")


def test_popularity_groups_partition_ordered_and_keep_ties_together():
    distinct = np.array([5, 0, 3, 8, 9, 1, 6, 2, 7, 4, 10])
    groups = analysis.popularity_groups(distinct, 3)
    sizes = np.bincount(groups)
    assert sizes.sum() == len(distinct) and sizes.max() - sizes.min() <= 1  # no ties: about equal sizes
    assert groups.tolist() == [1, 0, 0, 2, 2, 0, 1, 0, 1, 1, 2]  # value (= cases below) * 3 // 11
    popularity = np.array([5, 0, 3, 3, 9, 1, 0, 2, 7, 4, 3])
    groups = analysis.popularity_groups(popularity, 3)
    assert len(groups) == len(popularity) and set(groups) <= {0, 1, 2}
    for value in np.unique(popularity):
        assert len(set(groups[popularity == value])) == 1  # ties share a group
    for low, high in ((0, 1), (1, 2)):  # every case of a lower group is less popular than one of a higher
        assert popularity[groups == low].max() < popularity[groups == high].min()
    assert analysis.popularity_groups(np.zeros(6), 3).tolist() == [0] * 6  # one value: one group
    with pytest.raises(ValueError, match="num_groups"):
        analysis.popularity_groups(popularity, 0)


def test_popularity_breakdown_by_hand():
    # four users, items of popularity 0, 1, 5, 9; two groups: users {0, 1} and {2, 3}
    frame = pd.DataFrame({
        "base": "bpr", "seed": 0, "user": [0, 1, 2, 3] * 2, "item": [10, 11, 12, 13] * 2,
        "popularity": [0, 1, 5, 9] * 2, "method": ["Student"] * 4 + ["RRD"] * 4,
        "HR@5": [0, 0, 1, 0, 1, 0, 1, 1],
    })
    table = analysis.popularity_breakdown(frame, "HR@5", 2)
    assert table["users"].tolist() == [2, 2, 2, 2]
    assert sorted(set(table["popularity"])) == ["0–1", "5–9"]
    rrd = table[table["method"] == "RRD"].set_index("group")
    assert rrd["mean"].tolist() == [0.5, 1.0]
    assert rrd["gain"].tolist() == [0.5, 0.5]
    assert rrd.loc[1, "rel_gain"] == pytest.approx(1.0) and math.isinf(rrd.loc[0, "rel_gain"])
    with pytest.raises(ValueError, match="reference"):
        analysis.popularity_breakdown(frame, "HR@5", 2, reference="Teacher")


def test_sample_pairs_never_pairs_an_entity_with_itself():
    pairs = analysis.sample_pairs(3, 2000, torch.Generator().manual_seed(0))
    assert (pairs[:, 0] != pairs[:, 1]).all() and pairs.min() >= 0 and pairs.max() <= 2
    assert len({tuple(p) for p in pairs.tolist()}) == 6  # every ordered pair of distinct entities


def test_bridge_pair_table_on_a_constructed_case():
    # Entities 0 and 1 point the same way for the teacher and share a bridge; entity 2 is orthogonal
    # with a bridge twice as large.
    reprs = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    eye = torch.eye(2).unsqueeze(0)
    bridges = torch.cat([eye, eye, 2 * eye])  # norms sqrt2, sqrt2, 2 sqrt2: mean 4 sqrt2 / 3
    table = analysis.bridge_pair_table(bridges, reprs, torch.tensor([[0, 1], [0, 2], [1, 2]]))
    assert table["teacher_cosine"].tolist() == pytest.approx([1.0, 0.0, 0.0])
    scale = 4 * math.sqrt(2) / 3
    assert table["bridge_distance"].tolist() == pytest.approx([0.0, math.sqrt(2) / scale, math.sqrt(2) / scale])


@pytest.fixture(scope="module")
def tiny_setting(tmp_path_factory):
    dataset = data.synthetic(num_users=120, num_items=200, seed=1)
    split = splits.make_split(dataset, "loo_sampled", 0, num_negatives=50)
    config = TrainConfig(epochs=2, eval_every=1, patience=0, progress=False, device="cpu")
    cache = tmp_path_factory.mktemp("kdcache") / "teachers"
    return runs.KDSetting(split, ["bpr"], [0], config, {"bpr": 16}, {"bpr": 4},
                                 {"phr": {}, "ir": {"top_n": 30, "num_interesting": 5, "num_uninteresting": 5,
                                                         "rrd_top_n": 30, "rrd_num_interesting": 10}},
                                 top_n=30, top_n_users=30, cache_dir=cache)


def test_fit_kd_module_is_run_kds_student_and_its_bridges_are_analysable(tiny_setting):
    table = runs.run_kd(tiny_setting, runs.method_runs(["PHR"]))
    fitted = runs.fit_kd_module(tiny_setting, runs.KDRun("PHR"), "bpr", 0)
    assert not fitted.cached
    ours = table.results.set_index("metric")["value"].to_dict()
    assert fitted.metrics["test"] == pytest.approx(ours, abs=0)  # bit-identical on CPU
    again = runs.fit_kd_module(tiny_setting, runs.KDRun("PHR"), "bpr", 0)
    assert again.cached
    for name, value in fitted.module.state_dict().items():
        assert torch.equal(value.cpu(), again.module.state_dict()[name].cpu())
    groups = np.arange(tiny_setting.split.num_users) % 2
    pairs, summary = analysis.bridge_similarity(again.module, "user", 50, 300, groups=groups, seed=0)
    assert len(pairs) == 300 and summary["entities"].iloc[0] == 50
    assert pairs["a"].ne(pairs["b"]).all() and pairs["bridge_distance"].ge(0).all()
    assert summary["spread"].iloc[0] > 0 and -1 <= summary["spearman"].iloc[0] <= 1
    assert summary["same_group_pairs"].iloc[0] == int((groups[pairs["a"]] == groups[pairs["b"]]).sum())
    assert analysis.bridge_similarity_plot(pairs) is not None
    with pytest.raises(TypeError, match="PHR"):
        analysis.bridge_similarity(torch.nn.Linear(2, 2))


def test_tied_sweep_and_per_user_breakdown(tiny_setting):
    planned = runs.tied_sweep_runs("IR", ["ir.num_interesting", "ir.num_uninteresting"], [3, 5], "ir_users")
    assert [r.overrides["ir"] for r in planned] == [{"num_interesting": 3, "num_uninteresting": 3},
                                                {"num_interesting": 5, "num_uninteresting": 5}]
    assert [dict(r.keys) for r in planned] == [{"ir_users": 3}, {"ir_users": 5}]
    with pytest.raises(ValueError, match="method.field"):
        runs.tied_sweep_runs("IR", ["num_interesting"], [3], "k")
    kd = runs.run_kd(tiny_setting, runs.method_runs(["Student", "IR"]))
    per_user = analysis.per_user_metrics(kd, tiny_setting.split, ["Student", "IR"])
    split = tiny_setting.split
    assert len(per_user) == 2 * len(split.test_users)
    # per-user means are the reported test metrics
    for method in ("Student", "IR"):
        reported = kd.results[(kd.results["method"] == method) & (kd.results["metric"] == "HR@5")]["value"]
        assert per_user[per_user["method"] == method]["HR@5"].mean() == pytest.approx(reported.iloc[0])
    table = analysis.popularity_breakdown(per_user, "HR@5", 3)
    assert table.query("method == 'Student'")["users"].sum() == len(split.test_users)
    assert table.query("method == 'Student'")["gain"].eq(0).all()
    curves = analysis.curve_summary(kd.histories, "HR@5")
    assert (curves["drop"] >= 0).all() and set(curves["method"]) == {"Student", "IR"}
    assert analysis.popularity_plot(table) is not None
    assert analysis.training_panels(kd.histories, ["loss/base", "valid/HR@5"]) is not None


def test_selected_configs_returns_plain_values_per_base():
    selection = pd.DataFrame({"base": ["bpr", "bpr", "neumf"], "num_topk": [10, 20, 5],
                              "position_temperature": [1.0, 5.0, 1.0], "selected": [False, True, True]})
    chosen = analysis.selected_configs(selection, ["num_topk", "position_temperature"])
    assert chosen == {"bpr": {"num_topk": 20, "position_temperature": 5.0},
                      "neumf": {"num_topk": 5, "position_temperature": 1.0}}
    assert type(chosen["bpr"]["num_topk"]) is int
    with pytest.raises(ValueError, match="one selected config per base"):
        analysis.selected_configs(selection.assign(selected=True), ["num_topk"])
