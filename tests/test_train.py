import copy

import numpy as np
import pytest
import torch

from kdrepro import train
from kdrepro.evaluate import evaluate
from kdrepro.models import ModelConfig, build
from kdrepro.train import NegativeSampler, TrainConfig, fit

FAST = dict(epochs=6, eval_every=2, patience=0, progress=False, device="cpu")


def test_same_seed_gives_identical_metrics(synthetic_splits):
    split = synthetic_splits["loo_sampled"]
    a = fit(ModelConfig("bpr", 16), split, TrainConfig(**FAST), seed=3)
    b = fit(ModelConfig("bpr", 16), split, TrainConfig(**FAST), seed=3)
    c = fit(ModelConfig("bpr", 16), split, TrainConfig(**FAST), seed=4)
    assert a.test == b.test
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert a.test != c.test


def test_training_beats_the_untrained_model(synthetic_splits):
    split = synthetic_splits["loo_full"]
    torch.manual_seed(0)
    untrained = evaluate(build(ModelConfig("bpr", 16), split), split, "test")
    trained = fit(ModelConfig("bpr", 16), split, TrainConfig(**{**FAST, "epochs": 30, "lr": 1e-2, "weight_decay": 0}))
    assert trained.test["Recall@50"] > 2 * untrained["Recall@50"]


def test_history_is_flat_and_the_best_validation_state_is_restored(synthetic_splits):
    split = synthetic_splits["loo_full"]
    result = fit(ModelConfig("bpr", 16), split, TrainConfig(**{**FAST, "epochs": 8, "lr": 5e-2}))
    assert all(isinstance(v, (int, float)) for h in result.history for v in h.values())
    evaluated = [h for h in result.history if "valid/Recall@50" in h]
    best = max(evaluated, key=lambda h: h["valid/Recall@50"])
    assert result.best_epoch == best["epoch"]
    assert evaluate(result.model, split, "valid")["Recall@50"] == pytest.approx(best["valid/Recall@50"])


def test_fit_flushes_subnormal_floats_to_zero(synthetic_splits):
    torch.set_flush_denormal(False)
    tiny = torch.tensor([2e-38]) * torch.tensor([0.01])  # 2e-40: subnormal in float32
    if tiny.item() == 0.0 or not torch.set_flush_denormal(False):
        pytest.skip("this CPU has no flush-to-zero mode")
    fit(ModelConfig("bpr", 8), synthetic_splits["loo_full"], TrainConfig(**{**FAST, "epochs": 1}))
    assert (torch.tensor([2e-38]) * torch.tensor([0.01])).item() == 0.0
    assert (torch.tensor([2e-37]) * torch.tensor([0.1])).item() == pytest.approx(2e-38)  # normal floats unchanged


def test_early_stopping_counts_validations(synthetic_splits):
    split = synthetic_splits["loo_full"]
    result = fit(ModelConfig("bpr", 16), split, TrainConfig(epochs=200, eval_every=1, patience=2, lr=0.5,
                                                            progress=False, weight_decay=0))
    assert len(result.history) < 200
    assert len(result.history) - result.best_epoch == 2


def test_negative_sampler_never_returns_training_items(synthetic_splits):
    split = synthetic_splits["loo_full"]
    sampler = NegativeSampler(split)
    negatives = sampler.sample(3, torch.Generator().manual_seed(0))
    train = set((split.train_users * split.num_items + split.train_items).tolist())
    keys = split.train_users[:, None] * split.num_items + negatives.numpy()
    assert negatives.shape == (split.num_train, 3)
    assert not train & set(keys.ravel().tolist())
    again = sampler.sample(3, torch.Generator().manual_seed(0))
    assert torch.equal(negatives, again)


@pytest.mark.parametrize("shape", [(13, 7), (5, 64), (1, 3)])
def test_pair_set_membership_matches_a_python_set(shape):
    from kdrepro.sampling import PairSet

    num_rows, num_cols = shape
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(num_rows, (30,), generator=generator)  # duplicates included
    cols = torch.randint(num_cols, (30,), generator=generator)
    members = PairSet(rows, cols, num_rows, num_cols)
    grid_rows, grid_cols = torch.meshgrid(torch.arange(num_rows), torch.arange(num_cols), indexing="ij")
    expected = {(r, c) for r, c in zip(rows.tolist(), cols.tolist(), strict=True)}
    found = members.contains(grid_rows, grid_cols)
    assert found.dtype == torch.bool and found.shape == shape
    assert {(r, c) for r, c in zip(grid_rows[found].tolist(), grid_cols[found].tolist(), strict=True)} == expected


class ConstantTerm(torch.nn.Module):
    """A KD term that owns a parameter: fit must optimise it and log it by name."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(1.0))
        self.epochs_seen = []

    def on_epoch_start(self, epoch, generator):
        self.epochs_seen.append(epoch)

    def forward(self, student, batch):
        return {"toy": 0.1 * self.weight**2}


def test_distillation_terms_are_added_logged_and_optimised(synthetic_splits):
    term = ConstantTerm()
    result = fit(ModelConfig("bpr", 8), synthetic_splits["loo_full"], TrainConfig(**FAST), distill=term)
    assert term.epochs_seen == list(range(1, 7))
    assert "loss/toy" in result.history[0] and "loss/base" in result.history[0]
    assert abs(term.weight.item()) < 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"loss": "hinge"}, "TrainConfig.loss='hinge'"), ({"epochs": 0}, "epochs must be >= 1"),
     ({"patience": -1}, "patience must be >= 0")],
)
def test_bad_config_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_unknown_monitor_names_the_choices(synthetic_splits):
    with pytest.raises(ValueError, match=r"monitor='HR@7' is not a loo_full metric"):
        fit(ModelConfig("bpr", 8), synthetic_splits["loo_full"], TrainConfig(**{**FAST, "monitor": "HR@7"}))


def test_model_instance_is_trained_in_place(synthetic_splits):
    split = synthetic_splits["holdout"]
    model = build(ModelConfig("lightgcn", 8), split)
    before = model.user_embedding.weight.detach().clone()
    result = fit(model, split, TrainConfig(**FAST))
    assert result.model is model
    assert not np.allclose(before.numpy(), model.user_embedding.weight.detach().numpy())


def test_fixed_schedule_without_early_stopping_restores_the_best_validated_epoch(synthetic_splits, monkeypatch):
    """TD's protocol: 21 epochs, validation every 10, patience 0. Scripted validation Recall@50 of 0.30 at
    epoch 10, a dip to 0.25 at epoch 20 and 0.28 at the last epoch (21, always validated): by hand, every
    epoch runs, validations happen at 10, 20, 21, and the state after epoch 10 is restored and tested."""
    split = synthetic_splits["loo_full"]
    validated_at = [10, 20, 21]
    scripted = {10: 0.30, 20: 0.25, 21: 0.28}
    states = {}

    def scripted_evaluate(model, split_, which):
        if which == "test":
            return {"Recall@50": 0.0}
        epoch = validated_at[len(states)]
        states[epoch] = copy.deepcopy(model.state_dict())
        return {"Recall@50": scripted[epoch]}

    monkeypatch.setattr(train, "evaluate", scripted_evaluate)
    config = TrainConfig(epochs=21, eval_every=10, patience=0, lr=5e-2, progress=False, device="cpu")
    result = fit(ModelConfig("bpr", 8), split, config)
    assert len(result.history) == 21
    assert [h["epoch"] for h in result.history if "valid/Recall@50" in h] == validated_at
    assert result.best_epoch == 10 and result.valid == {"Recall@50": 0.30}
    restored = result.model.state_dict()
    assert all(torch.equal(restored[name], states[10][name]) for name in restored)
    assert not all(torch.equal(restored[name], states[21][name]) for name in restored)
