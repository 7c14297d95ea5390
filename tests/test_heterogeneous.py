"""Chapter 07's library (kdrepro.trajectories, kdrepro.heterogeneous): the trajectory rule, the ranking
recorder, metrics of a precomputed ranking, the gap-closed table, and one stored teacher trajectory."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from kdrepro import heterogeneous as het
from kdrepro import jobs
from kdrepro import trajectories as traj
from kdrepro.evaluate import evaluate
from kdrepro.models import ModelConfig, build
from kdrepro.store import Store
from kdrepro.train import TrainConfig


def _history(values):
    return [{"epoch": 2 * (i + 1), "loss": 1.0, traj.MONITOR: v} for i, v in enumerate(values)]


def test_checkpoint_epochs_by_hand():
    history = _history([0.10, 0.30, 0.25, 0.45, 0.50, 0.40])  # epochs 2 … 12, best 0.50 at epoch 10
    # 0.5·best = 0.25 first at epoch 4 (0.30), 0.7·best = 0.35 at 8, 0.9·best = 0.45 at 8; then the best.
    assert traj.checkpoint_epochs(history, [0.5, 0.7, 0.9]) == [4, 8, 8, 10]
    assert traj.checkpoint_epochs(_history([0.2, 0.2]), [0.5]) == [2, 2]  # the first maximum is the best
    with pytest.raises(ValueError, match="increase"):
        traj.checkpoint_epochs(history, [0.9, 0.5])
    with pytest.raises(ValueError, match="no 'valid/Recall@50'"):
        traj.checkpoint_epochs([{"epoch": 1, "loss": 1.0}], [0.5])


def test_recorder_keeps_only_rankings_that_can_become_checkpoints(synthetic_splits):
    split = synthetic_splits["holdout"]
    torch.manual_seed(0)
    model = build(ModelConfig("bpr", 8), split)
    recorder = traj.RankingRecorder(split, 20, min_fraction=0.5)
    for epoch, value in zip([1, 2, 3, 4, 5], [0.1, 0.3, 0.2, 0.7, 0.65], strict=True):
        recorder(epoch, model, {"Recall@50": value})
    # Epoch 3 and 5 are no new maximum; 1 and 2 fall below 0.5 × 0.7 once epoch 4 is recorded.
    assert sorted(recorder.rankings) == [4]
    assert recorder.rankings[4].dtype == np.int32 and recorder.rankings[4].shape == (split.num_users, 20)


def test_ranking_metrics_of_a_models_ranking_equal_evaluate(synthetic_splits):
    split = synthetic_splits["holdout"]
    torch.manual_seed(0)
    model = build(ModelConfig("bpr", 8), split)
    ranked = torch.from_numpy(traj.top_n_items(model, split, 200))
    for which in ("valid", "test"):
        ours, reference = het.ranking_metrics(ranked, split, which), evaluate(model, split, which)
        assert ours == pytest.approx(reference, abs=1e-6)
    with pytest.raises(ValueError, match="fewer than k"):
        het.ranking_metrics(ranked[:, :20], split, "test")


def test_gap_table_by_hand():
    results = pd.DataFrame({"seed": [0, 0, 0, 1, 1, 1], "metric": "Recall@50",
                            "method": ["Student", "HetComp", "Ensemble"] * 2,
                            "value": [0.10, 0.16, 0.20, 0.10, 0.12, 0.20]})
    assert het.gap_table(results)["gap_closed"].tolist() == pytest.approx([0.6, 0.2])
    with pytest.raises(ValueError, match="needs results"):
        het.gap_table(results[results["method"] != "Ensemble"])


def test_teacher_objectives():
    base = TrainConfig(batch_size=1024)
    assert traj.teacher_train_config("vae", base, 64).loss == "multinomial"
    assert traj.teacher_train_config("vae", base, 64).batch_size == 64
    assert traj.teacher_train_config("neumf", base, 64).loss == "bce"
    assert traj.teacher_train_config("neumf", base, 64).batch_size == 1024
    with pytest.raises(ValueError, match="unknown teacher kind"):
        traj.teacher_train_config("svd", base, 64)


def test_trajectory_is_trained_once_and_holds_its_checkpoints(synthetic_splits, tmp_path):
    split = synthetic_splits["holdout"]
    store = Store(tmp_path)
    config = TrainConfig(epochs=5, eval_every=1, patience=0, progress=False, device="cpu", lr=0.01, weight_decay=0)
    first = traj.get_trajectory(ModelConfig("bpr", 8), split, config, top_n=50, fractions=[0.5, 0.9], store=store)
    again = traj.get_trajectory(ModelConfig("bpr", 8), split, config, top_n=50, fractions=[0.5, 0.9], store=store)
    assert not first.loaded and again.loaded
    assert first.epochs == again.epochs and first.epochs == sorted(first.epochs) and len(first.epochs) == 3
    assert first.epochs[-1] == first.metrics["best_epoch"]
    assert first.rankings.shape == (3, split.num_users, 50) and first.rankings.dtype == np.int32
    assert np.array_equal(first.rankings, again.rankings)
    assert first.item_rankings.shape == (split.num_items, 50)
    train = set((split.train_users * split.num_items + split.train_items).tolist())
    keys = np.arange(split.num_users)[:, None] * split.num_items + first.rankings[-1]
    assert not train & set(keys.ravel().tolist())
    trajectories = traj.as_teacher_trajectories([first, again])
    assert tuple(trajectories.rankings.shape) == (2, 3, split.num_users, 50)


def _chapter_jobs(split, store):
    """Two teacher trajectories and three students on them (smoke settings)."""
    teacher_train = TrainConfig(epochs=4, eval_every=2, patience=0, progress=False, device="cpu", lr=0.01,
                                weight_decay=0, batch_size=256)
    student_train = TrainConfig(epochs=3, eval_every=1, patience=0, progress=False, device="cpu", batch_size=256)
    configs = {"hetcomp": {"top_n": 30, "num_observed": 3, "num_rest": 10, "period": 1, "ndcg_k": 20},
               "dcd": {"top_n": 30, "num_samples": 5}}
    runs = traj.get_trajectories(["bpr", "cml"], {"bpr": 8, "cml": 8}, split, teacher_train, top_n=30,
                                 fractions=[0.5], store=store)
    students = het.run_students(split, runs, ["Student", "DCD", "HetComp"], [0], student_train, 4, configs, 30,
                                store=store)
    return runs, students, student_train, configs


def test_chapter_07_jobs_are_planned_filled_once_and_read_from_the_ledger(synthetic_splits, tmp_path, monkeypatch):
    split = synthetic_splits["holdout"]
    store = Store(tmp_path / "store")
    plan_file = tmp_path / "plan.jsonl"
    monkeypatch.setenv(jobs.PLAN_FILE_ENV, str(plan_file))
    runs, students, _, _ = _chapter_jobs(split, store)
    recorded = [jobs.FitJob.from_dict(json.loads(line)) for line in plan_file.read_text().splitlines()]
    assert [j.task for j in recorded] == ["trajectory", "trajectory", "", "hetcomp", "hetcomp"]
    assert all(j.inputs == tuple(r.job for r in runs) for j in recorded if j.task == "hetcomp")
    assert students.results.empty and not (tmp_path / "store" / traj.TRAJECTORY_KIND).exists()
    rows = jobs.plan({"07": recorded})
    assert {r["status"] for r in rows} == {"missing"} and all(r["est_seconds"] > 0 for r in rows)
    students_only = jobs.plan({"07": [j for j in recorded if j.task == "hetcomp"]})
    assert [r["kind"] for r in students_only] == [traj.TRAJECTORY_KIND] * 2 + [het.STUDENT_KIND] * 2  # inputs too
    monkeypatch.delenv(jobs.PLAN_FILE_ENV)

    done = jobs.fill({"07": recorded}, store=store, log=lambda _: None)  # trajectories first, then students
    assert len(done) == 5 and all(d.trained for d in done.values())
    runs, students, _, _ = _chapter_jobs(split, store)
    assert all(r.loaded for r in runs) and students.fits["loaded"].all()  # nothing trained again
    assert set(students.results["method"]) == {"Student", "DCD", "HetComp"}
    assert not students.dynamics[students.dynamics["method"] == "HetComp"].empty
    summary = het.dynamics_summary(students.dynamics)
    assert summary["epoch"].dtype.kind == "i" and summary["epoch"].is_monotonic_increasing
    shares = summary[[c for c in summary.columns if c.startswith("v")]]
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, rtol=1e-6)  # every (teacher, user) pair at one checkpoint
    assert runs[0].rankings.shape == (2, split.num_users, 30) and runs[0].epochs[-1] == runs[0].metrics["best_epoch"]
    assert het.teacher_table(runs, split)["epochs_run"].tolist() == [4, 4]  # epochs, not validations
    assert jobs.plan({"07": recorded})[0]["status"] == "done"


def test_a_hetcomp_job_gives_the_same_numbers_on_the_local_executor(synthetic_splits, tmp_path):
    split = synthetic_splits["holdout"]
    store = Store(tmp_path / "store")
    runs, students, student_train, configs = _chapter_jobs(split, store)
    job = het.student_job(split, runs, "HetComp", 0, student_train, 4, configs, 30, store=store)
    serial = jobs.Ledger().get(job)
    elsewhere = Store(tmp_path / "local")  # empty: the trajectories are computed there first, then the student
    jobs.split_entry(elsewhere, split)
    local = jobs.run_jobs([job], store=elsewhere, ledger=jobs.Ledger(tmp_path / "results"),
                          settings=jobs.ExecutorSettings(kind="local", workers=2, threads=1), log=lambda _: None)
    assert local[job.key].trained and local[job.key].entry["test"] == serial["test"]
    assert local[job.key].entry["extra"] == serial["extra"]
    assert all(elsewhere.open(j.kind, j.name, j.key) is not None for j in job.inputs)
