"""The chapter helpers of kdrepro.runs: run builders and the students' cache (claims: tests/test_paper_verdicts.py)."""

from __future__ import annotations

import pytest

from kdrepro import data, runs, splits
from kdrepro.train import TrainConfig


def test_sweep_runs_cover_the_product_and_name_their_keys():
    planned = runs.sweep_runs("DE-RRD", {"de.lambda_de": [0.1, 0.01], "rrd.lambda_rrd": [1e-3]})
    assert [r.keys for r in planned] == [{"lambda_de": 0.1, "lambda_rrd": 1e-3},
                                         {"lambda_de": 0.01, "lambda_rrd": 1e-3}]
    assert planned[0].overrides == {"de": {"lambda_de": 0.1}, "rrd": {"lambda_rrd": 1e-3}}
    with pytest.raises(ValueError, match="method.field"):
        runs.sweep_runs("DE", {"lambda_de": [0.1]})


def test_design_runs_use_the_papers_labels():
    planned = runs.design_runs("HTD", ["HTD", "K-means assignment"])
    assert [r.overrides for r in planned] == [{"htd": {}}, {"htd": {"assignment": "kmeans"}}]
    large = runs.design_runs("DE", ["(b) One expert (large)"])[0]
    assert large.match_experts and large.overrides == {"de": {"num_experts": 1}}
    with pytest.raises(ValueError, match="unknown RRD variants"):
        runs.design_runs("RRD", ["(z) nothing"])
    with pytest.raises(ValueError, match="unknown method"):
        runs.KDRun("NoSuchMethod")


def test_size_runs_set_phi_and_label_it():
    planned = runs.size_runs(["Student", "DE"], [0.5, 1.0])
    assert [(r.method, r.phi, r.keys) for r in planned] == [
        ("Student", 0.5, {"phi": 0.5}), ("DE", 0.5, {"phi": 0.5}), ("Student", 1.0, {"phi": 1.0}),
        ("DE", 1.0, {"phi": 1.0})]


def test_distilled_students_are_trained_once_and_keyed_by_their_config(tmp_path):
    dataset = data.synthetic(num_users=100, num_items=150, seed=2)
    split = splits.make_split(dataset, "loo_sampled", 0, num_negatives=40)
    config = TrainConfig(epochs=2, eval_every=1, patience=0, progress=False, device="cpu")
    setting = runs.KDSetting(split, ["bpr"], [0], config, {"bpr": 16}, {"bpr": 4},
                                    {"rrd": {"top_n": 20, "num_interesting": 4, "num_uninteresting": 4}},
                                    top_n=20, top_n_users=20, cache_dir=tmp_path / "teachers")
    first = runs.run_kd(setting, runs.method_runs(["RRD"]))
    again = runs.run_kd(setting, runs.method_runs(["RRD"]))
    assert not first.fits["from_cache"].iloc[0] and again.fits["from_cache"].iloc[0]
    assert first.results["value"].tolist() == again.results["value"].tolist()
    other = runs.run_kd(setting, runs.sweep_runs("RRD", {"rrd.lambda_rrd": [0.5]}))
    assert not other.fits["from_cache"].iloc[0]  # another config is another student
    assert len(list((tmp_path / "teachers" / "students").iterdir())) == 2


def test_teachers_follow_their_own_schedule_and_students_the_setting_s(tmp_path):
    """TD's chapter: students 3 epochs without early stopping, the teacher 2 epochs (its own config)."""
    dataset = data.synthetic(num_users=100, num_items=150, seed=2)
    split = splits.make_split(dataset, "loo_full", 0)
    students = TrainConfig(epochs=3, eval_every=1, patience=0, progress=False, device="cpu")
    teacher = TrainConfig(epochs=2, eval_every=1, patience=0, progress=False, device="cpu")
    setting = runs.KDSetting(split, ["bpr"], [0], students, {"bpr": 16}, {"bpr": 4},
                                    cache_dir=tmp_path / "teachers", teacher_train_config=teacher)
    planned = runs.run_kd(setting, runs.method_runs(["Teacher", "Student", "FTD"]))
    assert planned.fits.set_index("method")["epochs_run"].to_dict() == {"Teacher": 2, "Student": 3, "FTD": 3}
