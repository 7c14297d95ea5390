"""Evaluation protocols as saved splits: ``loo_sampled``, ``loo_full`` and ``holdout``.

A :class:`Split` is fully determined by (dataset content, protocol, ``split_seed``, options). It is
saved as ``.npz`` (no pickles) with the dataset hash inside, kept and verified by :mod:`kdrepro.store`
(``Store().split(...)``), and reused: every method of a chapter is evaluated on the same held-out items
and the same sampled negatives.

- ``loo_sampled`` (DE-RRD, IR-RRD): per user one validation and one test positive; the held-out item is
  ranked among ``num_negatives`` (499) unobserved items sampled once per user. HR/NDCG/MRR@{5,10,20}.
- ``loo_full`` (TD, PHR): same hold-out, ranked against every item not in training (the validation
  item is also excluded at test time). Recall/NDCG@{10,20,50}.
- ``holdout`` (ConCF, HetComp): per user 60/20/20 train/validation/test, full ranking.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from kdrepro._io import atomic_write, stable_hash
from kdrepro.data import Interactions

PROTOCOLS = ("loo_sampled", "loo_full", "holdout")
DEFAULT_KS = {"loo_sampled": (5, 10, 20), "loo_full": (10, 20, 50), "holdout": (10, 20, 50)}
FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class Split:
    """Train/validation/test interactions of one dataset under one protocol.

    Pairs are int64 arrays sorted by user. ``negatives`` is (num_users, num_negatives) for
    ``loo_sampled`` and empty otherwise; users without held-out items have no row in valid/test.
    """

    dataset: str
    dataset_sha256: str
    protocol: str
    split_seed: int
    num_users: int
    num_items: int
    train_users: np.ndarray
    train_items: np.ndarray
    valid_users: np.ndarray
    valid_items: np.ndarray
    test_users: np.ndarray
    test_items: np.ndarray
    negatives: np.ndarray

    @property
    def ks(self) -> tuple[int, ...]:
        return DEFAULT_KS[self.protocol]

    @property
    def num_train(self) -> int:
        return int(self.train_users.shape[0])

    @cached_property
    def key(self) -> str:
        """Content id of the split, used in cache keys."""
        return stable_hash(
            {
                "dataset": self.dataset_sha256,
                "protocol": self.protocol,
                "seed": self.split_seed,
                "sizes": [self.num_train, len(self.valid_users), len(self.test_users), self.negatives.shape],
                "version": FORMAT_VERSION,
            }
        )

    @cached_property
    def train_indptr(self) -> np.ndarray:
        """CSR row pointer of the (user-sorted) training pairs."""
        return np.concatenate([[0], np.cumsum(np.bincount(self.train_users, minlength=self.num_users))])

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.train_users), torch.from_numpy(self.train_items)

    def summary(self) -> dict:
        return {
            "protocol": self.protocol,
            "split_seed": self.split_seed,
            "train": self.num_train,
            "valid": int(len(self.valid_users)),
            "test": int(len(self.test_users)),
            "negatives_per_user": int(self.negatives.shape[1]) if self.negatives.size else 0,
        }


# --------------------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------------------


def _rank_within_user(users: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random order of each user's interactions: (permutation sorted by user, rank inside the user)."""
    order = np.lexsort((rng.random(users.shape[0]), users))
    sorted_users = users[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(sorted_users)) + 1])
    run_start = np.repeat(starts, np.diff(np.concatenate([starts, [len(order)]])))
    return order, np.arange(len(order)) - run_start


def _leave_one_out(data: Interactions, rng: np.random.Generator):
    order, rank = _rank_within_user(data.users, rng)
    users, items = data.users[order], data.items[order]
    counts = np.bincount(users, minlength=data.num_users)[users]
    # Users with fewer than 3 interactions keep them all for training and are not evaluated.
    evaluable = counts >= 3
    test = evaluable & (rank == 0)
    valid = evaluable & (rank == 1)
    train = ~(test | valid)
    return (users[train], items[train]), (users[valid], items[valid]), (users[test], items[test])


def _holdout(data: Interactions, rng: np.random.Generator, fractions=(0.6, 0.2, 0.2)):
    order, rank = _rank_within_user(data.users, rng)
    users, items = data.users[order], data.items[order]
    counts = np.bincount(users, minlength=data.num_users)[users]
    n_test = np.floor(counts * fractions[2] + 0.5).astype(np.int64)
    n_valid = np.floor(counts * fractions[1] + 0.5).astype(np.int64)
    # Keep at least one training interaction per user.
    n_valid = np.minimum(n_valid, np.maximum(counts - n_test - 1, 0))
    test = rank < n_test
    valid = ~test & (rank < n_test + n_valid)
    train = ~(test | valid)
    return (users[train], items[train]), (users[valid], items[valid]), (users[test], items[test])


def sample_negatives(
    data: Interactions, num_negatives: int, rng: np.random.Generator
) -> np.ndarray:
    """For every user, ``num_negatives`` distinct items the user never interacted with (uniform)."""
    observed = np.unique(data.users * data.num_items + data.items)
    room = data.num_items - np.bincount(data.users, minlength=data.num_users)
    if room.min() < num_negatives:
        user = int(room.argmin())
        raise ValueError(
            f"num_negatives={num_negatives} is more than the {room.min()} unobserved items of user {user} "
            f"in {data.name!r}; choose num_negatives <= {room.min()}."
        )
    result = np.empty((data.num_users, num_negatives), dtype=np.int64)
    pending = np.arange(data.num_users)
    width = int(num_negatives * 1.25) + 16
    while pending.size:
        draws = rng.integers(data.num_items, size=(pending.size, width))
        keys = pending[:, None] * data.num_items + draws
        fresh = ~np.isin(keys, observed)
        # Drop repeats inside a row: sort each row and mark values equal to their left neighbour.
        order = np.argsort(draws, axis=1, kind="stable")
        sorted_draws = np.take_along_axis(draws, order, axis=1)
        repeat = np.zeros_like(fresh)
        repeat_sorted = np.concatenate(
            [np.zeros((pending.size, 1), bool), sorted_draws[:, 1:] == sorted_draws[:, :-1]], axis=1
        )
        np.put_along_axis(repeat, order, repeat_sorted, axis=1)
        good = fresh & ~repeat
        enough = good.sum(1) >= num_negatives
        # Stable argsort of ~good moves the good draws to the front in their drawn order.
        front = np.argsort(~good[enough], axis=1, kind="stable")[:, :num_negatives]
        result[pending[enough]] = np.take_along_axis(draws[enough], front, axis=1)
        pending = pending[~enough]
        width *= 2
    return result


def make_split(
    data: Interactions, protocol: str, split_seed: int = 0, *, num_negatives: int = 499
) -> Split:
    """Build a split (no caching); ``kdrepro.store.Store.split`` keeps it."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    rng = np.random.default_rng(split_seed)
    if protocol == "holdout":
        train, valid, test = _holdout(data, rng)
    else:
        train, valid, test = _leave_one_out(data, rng)
    negatives = (
        sample_negatives(data, num_negatives, rng)
        if protocol == "loo_sampled"
        else np.empty((0, 0), dtype=np.int64)
    )
    return Split(
        dataset=data.name,
        dataset_sha256=data.sha256,
        protocol=protocol,
        split_seed=split_seed,
        num_users=data.num_users,
        num_items=data.num_items,
        train_users=train[0],
        train_items=train[1],
        valid_users=valid[0],
        valid_items=valid[1],
        test_users=test[0],
        test_items=test[1],
        negatives=negatives,
    )


_ARRAYS = ("train_users", "train_items", "valid_users", "valid_items", "test_users", "test_items", "negatives")


def save_split(split: Split, path: str | os.PathLike) -> Path:
    meta = np.array(
        [split.dataset, split.dataset_sha256, split.protocol, str(split.split_seed),
         str(split.num_users), str(split.num_items), str(FORMAT_VERSION)]
    )

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, meta=meta, **{name: getattr(split, name) for name in _ARRAYS})

    return atomic_write(path, write)


def load_split(path: str | os.PathLike, expected_sha256: str | None = None) -> Split:
    with np.load(path, allow_pickle=False) as npz:
        meta = [str(x) for x in npz["meta"]]
        arrays = {name: npz[name] for name in _ARRAYS}
    dataset, sha, protocol, seed, users, items, version = meta
    if int(version) != FORMAT_VERSION:
        raise ValueError(f"{path}: split format {version}, this kdrepro reads {FORMAT_VERSION}; delete it")
    if expected_sha256 is not None and sha != expected_sha256:
        raise ValueError(
            f"{path} was built from dataset content {sha[:12]}, not {expected_sha256[:12]}; delete it to rebuild"
        )
    return Split(dataset, sha, protocol, int(seed), int(users), int(items), **arrays)
