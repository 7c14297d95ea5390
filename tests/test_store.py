"""The store: verified entries, corruption reported and rebuilt, artefacts, one code digest, teacher outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kdrepro import store as store_module
from kdrepro import teachers
from kdrepro.evaluate import gather_rows
from kdrepro.models import ModelConfig
from kdrepro.store import Store, StoreWarning, code_digest
from kdrepro.train import TrainConfig

CFG = TrainConfig(epochs=2, eval_every=1, patience=0, progress=False, device="cpu")


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path):
    path.write_bytes(b"")


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE = {"truncated": _truncate, "empty": _empty, "flipped byte": _flip}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("file", ["model.pt", "metrics.json"])
def test_a_damaged_model_entry_is_reported_removed_and_rebuilt(synthetic_splits, tmp_path, damage, file):
    split = synthetic_splits["loo_full"]
    first = teachers.get(ModelConfig("bpr", 8), split, CFG, seed=0, cache_dir=tmp_path)
    DAMAGE[damage](first.path / file)
    with pytest.warns(StoreWarning, match=str(first.path / file)):
        again = teachers.get(ModelConfig("bpr", 8), split, CFG, seed=0, cache_dir=tmp_path)
    assert not again.loaded and again.metrics["test"] == first.metrics["test"]  # retrained: same numbers
    assert teachers.load(ModelConfig("bpr", 8), split, CFG, 0, Store(tmp_path)).metrics == again.metrics


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_split_is_reported_removed_and_rebuilt(synthetic_data, tmp_path, damage):
    store = Store(tmp_path)
    split = store.split(synthetic_data, "loo_sampled", 0, num_negatives=20)
    (file,) = tmp_path.glob("splits/*/split.npz")
    DAMAGE[damage](file)
    with pytest.warns(StoreWarning, match=str(file)):
        again = store.split(synthetic_data, "loo_sampled", 0, num_negatives=20)
    assert again.key == split.key and np.array_equal(again.negatives, split.negatives)
    assert store.split(synthetic_data, "loo_sampled", 0, num_negatives=20).key == split.key  # now clean


def test_an_interrupted_entry_is_discarded(tmp_path):
    store = Store(tmp_path)
    folder = store.folder("models", "x", "k")
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"half")
    with pytest.warns(StoreWarning, match="interrupted write"):
        assert store.open("models", "x", "k") is None
    assert not folder.exists()


def test_entries_round_trip_every_format(tmp_path):
    store = Store(tmp_path)
    store.write("k", "n", "1", {"a.json": {"x": [1, 2]}, "b.npz": {"v": np.arange(3)},
                                "c.pt": {"w": torch.ones(2)}}, {"why": "test"})
    entry = store.open("k", "n", "1")
    assert entry.json("a.json") == {"x": [1, 2]} and entry.meta == {"why": "test"}
    assert np.array_equal(entry.arrays("b.npz")["v"], np.arange(3))
    assert torch.equal(entry.state("c.pt")["w"], torch.ones(2))
    manifest = json.loads((entry.path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"a.json", "b.npz", "c.pt"}
    with pytest.raises(ValueError, match="extension"):
        store.write("k", "n", "2", {"d.pkl": b""})


def test_artefacts_of_a_job(tmp_path):
    store = Store(tmp_path)
    assert store.get_artefact("models/x-1", "trajectory") is None
    store.put_artefact("models/x-1", "trajectory", {"epochs": np.array([1, 2]), "topn": np.zeros((2, 3))})
    got = store.get_artefact("models/x-1", "trajectory")
    assert np.array_equal(got["epochs"], [1, 2]) and got["topn"].shape == (2, 3)
    (file,) = tmp_path.glob("artefacts/*/trajectory.npz")
    _flip(file)
    with pytest.warns(StoreWarning):
        assert store.get_artefact("models/x-1", "trajectory") is None


def test_code_digest_is_per_file():
    whole = code_digest()
    assert len(whole) == 16 and whole == code_digest("")
    assert code_digest("distill/ftd.py") != code_digest("distill/de.py")
    assert code_digest(store_module) == code_digest("store.py")
    # A DE student's key does not depend on ftd.py: its digest is built from its own files.
    assert teachers.model_code_digest("bpr") == code_digest(*store_module.TRAINING_CODE, "models/mf.py")
    with pytest.raises(FileNotFoundError):
        code_digest("nope.py")


def _reference_item_topk(model, split, top_n_users, batch_size=64):
    """The plain reference: every item block scored against all users at once, ties to the lower user id."""
    item_order = np.argsort(split.train_items, kind="stable")
    item_ptr = np.concatenate([[0], np.cumsum(np.bincount(split.train_items, minlength=split.num_items))])
    item_users = split.train_users[item_order]
    all_users = torch.arange(split.num_users)
    blocks = []
    for lo in range(0, split.num_items, batch_size):
        items = np.arange(lo, min(lo + batch_size, split.num_items))
        scores = model.score_all(all_users)[:, lo : lo + len(items)].T.contiguous()
        rows, cols = gather_rows(item_ptr, item_users, items)
        scores[torch.as_tensor(rows), torch.as_tensor(cols)] = -torch.inf
        blocks.append(torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :top_n_users])
    return torch.cat(blocks)


@pytest.mark.parametrize("model_name", ["bpr", "neumf"])
def test_item_side_outputs_match_the_reference(synthetic_splits, tmp_path, model_name):
    split = synthetic_splits["loo_full"]
    teacher = teachers.get(ModelConfig(model_name, 8), split, CFG, cache_dir=tmp_path)
    with torch.no_grad():
        reference = _reference_item_topk(teacher.model.eval(), split, 40)
        ours = teachers.compute_outputs(teacher.model, split, top_n=30, top_n_users=40, batch_size=64).item_topk
    assert torch.equal(ours, reference)
