"""The autoencoder base models (Mult-VAE, item-based AE) and fit's whole-row training."""

import numpy as np
import pytest
import torch

from kdrepro.evaluate import evaluate
from kdrepro.models import ModelConfig, build
from kdrepro.models.vae import ANNEAL_CAP
from kdrepro.train import RowBatches, TrainConfig, fit

ROWS = dict(epochs=4, eval_every=2, patience=0, progress=False, device="cpu", loss="multinomial",
            batch_size=64, weight_decay=0.0, lr=1e-2)


def _dense_train(split, side):
    matrix = np.zeros((split.num_users, split.num_items), dtype=np.float32)
    matrix[split.train_users, split.train_items] = 1
    return matrix if side == "users" else matrix.T


@pytest.mark.parametrize("name", ["vae", "item_ae"])
def test_pair_scores_agree_with_full_rows(name, synthetic_splits):
    split = synthetic_splits["holdout"]
    torch.manual_seed(0)
    model = build(ModelConfig(name, 8), split).eval()
    users = torch.tensor([0, 5, 17])
    full = model.score_all(users)
    assert full.shape == (3, split.num_items)
    items = torch.tensor([[1, 2, 299], [0, 4, 7], [10, 11, 12]])
    assert torch.allclose(model.score(users, items), full.gather(1, items), atol=1e-5)
    assert torch.allclose(model.score(users, items[:, 0]), full.gather(1, items[:, :1])[:, 0], atol=1e-5)
    assert model.user_repr(users).shape == (3, 8) and model.item_repr(items[0]).shape == (3, 8)


@pytest.mark.parametrize("name", ["vae", "item_ae"])
def test_row_encoder_is_the_dense_normalised_product(name, synthetic_splits):
    """The embedding bag equals tanh(x/‖x‖ W + b) on the dense 0/1 row (no dropout at evaluation)."""
    split = synthetic_splits["holdout"]
    torch.manual_seed(0)
    model = build(ModelConfig(name, 8), split).eval()
    encoder = model.encoder
    side = model.row_side
    dense = torch.from_numpy(_dense_train(split, side)[:7])
    normalised = dense / dense.norm(dim=1, keepdim=True).clamp(min=1e-12)
    expected = encoder.second(torch.tanh(normalised @ encoder.first.weight + encoder.first_bias))
    assert torch.allclose(encoder(torch.arange(7)), expected, atol=1e-5)


@torch.no_grad()
def test_vae_kl_term_by_hand_and_its_annealing(synthetic_splits):
    split = synthetic_splits["holdout"]
    torch.manual_seed(0)
    model = build(ModelConfig("vae", 4), split).eval()
    users = torch.arange(5)
    mean, log_var = model.posterior(users)
    pairs = zip(mean.flatten().tolist(), log_var.flatten().tolist(), strict=True)
    kl = 0.5 * sum(float(m**2 + np.exp(v) - v - 1) for m, v in pairs)
    logits, extra = model.reconstruct(users)
    assert logits.shape == (5, split.num_items)
    assert float(extra["kl"]) == 0.0  # β = 0 before any training step
    model.steps.fill_(model.anneal_steps // 2)
    assert float(model.reconstruct(users)[1]["kl"]) == pytest.approx(ANNEAL_CAP / 2 * kl, rel=1e-4)
    model.steps.fill_(10 * model.anneal_steps)
    assert float(model.reconstruct(users)[1]["kl"]) == pytest.approx(ANNEAL_CAP * kl, rel=1e-4)
    model.train()
    model.reconstruct(users)
    assert int(model.steps) == 10 * model.anneal_steps + 1  # counts training steps only


@pytest.mark.parametrize("side", ["users", "items"])
def test_row_batches_cover_every_row_once_with_its_training_row(side, synthetic_splits):
    split = synthetic_splits["holdout"]
    rows = RowBatches(split, side)
    dense = _dense_train(split, side)
    seen = []
    for ids, targets in rows.batches(64, torch.Generator().manual_seed(0)):
        assert np.array_equal(targets.numpy(), dense[ids.numpy()])
        seen.append(ids)
    assert sorted(torch.cat(seen).tolist()) == list(range(dense.shape[0]))


@pytest.mark.parametrize("name", ["vae", "item_ae"])
def test_fit_trains_autoencoders_on_rows_deterministically(name, synthetic_splits):
    split = synthetic_splits["holdout"]
    torch.manual_seed(0)
    untrained = evaluate(build(ModelConfig(name, 16), split), split, "test")["Recall@50"]
    a = fit(ModelConfig(name, 16), split, TrainConfig(**ROWS), seed=1)
    b = fit(ModelConfig(name, 16), split, TrainConfig(**ROWS), seed=1)
    assert a.test == b.test and [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert a.history[-1]["loss/base"] < a.history[0]["loss/base"]
    assert a.test["Recall@50"] > untrained
    assert ("loss/kl" in a.history[0]) == (name == "vae")


def test_fit_refuses_mismatched_objectives(synthetic_splits):
    split = synthetic_splits["holdout"]
    with pytest.raises(ValueError, match="trains on whole users rows"):
        fit(ModelConfig("vae", 8), split, TrainConfig(**{**ROWS, "loss": "bpr"}))
    with pytest.raises(ValueError, match="scores whole rows"):
        fit(ModelConfig("bpr", 8), split, TrainConfig(**ROWS))
    with pytest.raises(ValueError, match="multinomial"):
        TrainConfig(loss="softmax")
