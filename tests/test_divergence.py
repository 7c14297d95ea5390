"""A divergent fit is an error, never a result: fit raises, evaluation refuses, nothing is stored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdrepro import teachers
from kdrepro.evaluate import NonFiniteScoresError, evaluate
from kdrepro.models import ModelConfig, build
from kdrepro.train import DivergenceError, TrainConfig, fit

CFG = TrainConfig(epochs=3, eval_every=1, patience=0, progress=False, device="cpu")


class NaNAfter(nn.Module):
    """A distillation term that turns NaN at a given epoch."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def forward(self, student, batch):
        value = student.score(batch.users, batch.pos.unsqueeze(1)).sum() * 0
        return {"kd/nan": value + (torch.nan if batch.epoch >= self.epoch else 0.0)}


@pytest.mark.parametrize("bad", [{"lr": float("inf")}, {"lr": float("nan")}, {"lr": 0.0}, {"weight_decay": -1.0}])
def test_train_config_refuses_non_finite_or_negative_rates(bad):
    with pytest.raises(ValueError, match="TrainConfig"):
        TrainConfig(**bad)


def test_a_nan_loss_term_raises_with_epoch_term_and_lr(synthetic_splits):
    with pytest.raises(DivergenceError) as caught:
        fit(ModelConfig("bpr", 8), synthetic_splits["loo_full"], CFG, distill=NaNAfter(epoch=2), seed=0)
    assert (caught.value.epoch, caught.value.term, caught.value.lr) == (2, "kd/nan", CFG.lr)
    assert "epoch 2" in str(caught.value) and "kd/nan" in str(caught.value)


def test_a_huge_learning_rate_raises(synthetic_splits):
    config = TrainConfig(**{**CFG.to_dict(), "lr": 1e38})
    with pytest.raises(DivergenceError, match="diverged at epoch 1"):
        fit(ModelConfig("bpr", 8), synthetic_splits["loo_sampled"], config, seed=0)


def test_a_divergent_teacher_is_not_stored(synthetic_splits, tmp_path):
    config = TrainConfig(**{**CFG.to_dict(), "lr": 1e38})
    with pytest.raises(DivergenceError):
        teachers.get(ModelConfig("bpr", 8), synthetic_splits["loo_full"], config, cache_dir=tmp_path)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("protocol", ["loo_sampled", "loo_full"])
def test_evaluation_refuses_non_finite_scores(synthetic_splits, protocol):
    split = synthetic_splits[protocol]
    torch.manual_seed(0)
    model = build(ModelConfig("bpr", 8), split)
    with torch.no_grad():
        next(model.parameters())[3] = torch.nan
    with pytest.raises(NonFiniteScoresError, match="non-finite scores"):
        evaluate(model, split, "test")
