import json

import torch

from kdrepro import teachers
from kdrepro.evaluate import evaluate
from kdrepro.models import ModelConfig
from kdrepro.train import TrainConfig

CFG = TrainConfig(epochs=3, eval_every=1, patience=0, progress=False, device="cpu")


def test_teacher_is_trained_once_and_reloaded(synthetic_splits, tmp_path):
    split = synthetic_splits["loo_full"]
    first = teachers.get(ModelConfig("bpr", 16), split, CFG, seed=1, cache_dir=tmp_path)
    files = sorted(p.name for p in first.path.iterdir())
    assert files == ["config.json", "history.json", "manifest.json", "metrics.json", "model.pt"]
    config = json.loads((first.path / "config.json").read_text())
    assert config["model"]["dim"] == 16 and config["seed"] == 1
    mtime = (first.path / "model.pt").stat().st_mtime_ns
    again = teachers.get(ModelConfig("bpr", 16), split, CFG, seed=1, cache_dir=tmp_path)
    assert (again.path / "model.pt").stat().st_mtime_ns == mtime
    assert evaluate(again.model, split) == evaluate(first.model, split) == first.metrics["test"]


def test_cache_key_changes_with_any_setting(synthetic_splits):
    split = synthetic_splits["loo_full"]
    base = teachers.teacher_key(ModelConfig("bpr", 16), split, CFG, 0)
    assert base != teachers.teacher_key(ModelConfig("bpr", 32), split, CFG, 0)
    assert base != teachers.teacher_key(ModelConfig("bpr", 16), split, CFG, 1)
    assert base != teachers.teacher_key(ModelConfig("bpr", 16), synthetic_splits["holdout"], CFG, 0)
    assert base != teachers.teacher_key(ModelConfig("bpr", 16), split, TrainConfig(epochs=4), 0)
    # Cosmetic settings do not change the teacher.
    assert base == teachers.teacher_key(ModelConfig("bpr", 16), split,
                                        TrainConfig(**{**CFG.to_dict(), "progress": True}), 0)


def test_outputs_exclude_training_interactions_and_are_cached(synthetic_splits, tmp_path):
    split = synthetic_splits["loo_full"]
    teacher = teachers.get(ModelConfig("bpr", 16), split, CFG, cache_dir=tmp_path)
    out = teacher.outputs(top_n=30, top_n_users=20)
    assert out.user_topk.shape == (split.num_users, 30) and out.item_topk.shape == (split.num_items, 20)
    assert out.user_repr.shape == (split.num_users, 16)
    train = set((split.train_users * split.num_items + split.train_items).tolist())
    user_keys = torch.arange(split.num_users)[:, None] * split.num_items + out.user_topk
    item_keys = out.item_topk * split.num_items + torch.arange(split.num_items)[:, None]
    assert not train & set(user_keys.ravel().tolist())
    assert not train & set(item_keys.ravel().tolist())
    # Ranked best first.
    scores = teacher.model.score(torch.arange(split.num_users), out.user_topk)
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())
    torch.testing.assert_close(out.user_topk_scores, scores)
    again = teacher.outputs(top_n=30, top_n_users=20)
    assert torch.equal(again.item_topk, out.item_topk)
