"""Chapter 07's library (kdrepro.trajectories, kdrepro.heterogeneous): the trajectory rule, the ranking
recorder, metrics of a precomputed ranking, the gap-closed table, and one stored teacher trajectory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kdrepro import heterogeneous as het
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
