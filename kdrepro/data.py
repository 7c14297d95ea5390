"""Datasets: raw parsers, checksummed retrieval, filtering, and a synthetic generator.

Every loader returns an :class:`Interactions`: implicit feedback as parallel ``users``/``items``
arrays with contiguous ids, the mapping back to the raw ids, and a content hash that splits and
teacher caches are keyed by. Nothing is unpickled: raw files are plain text, caches are ``.npz``
read with ``allow_pickle=False``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdrepro._io import cache_root, sha256_file, stable_hash

DATA_DIR_ENV = "KDREPRO_DATA_DIR"


@dataclass(frozen=True)
class RemoteFile:
    url: str
    sha256: str


# Canonical sources of the raw files (see the papers' data statement).
REMOTE_FILES: dict[str, dict[str, RemoteFile]] = {
    "citeulike-t": {
        "users.dat": RemoteFile(
            "https://raw.githubusercontent.com/js05212/citeulike-t/master/users.dat",
            "02d5d429b2c0362e0ed79f6ef204666b4092563d21493abf4dfb521e8a7078bf",
        ),
        "tag-item.dat": RemoteFile(
            "https://raw.githubusercontent.com/js05212/citeulike-t/master/tag-item.dat",
            "e2b80fc0e023780b63c00a397a2d0934eff6dbaf8a1b918778698361dae7ce6b",
        ),
        "tags.dat": RemoteFile(
            "https://raw.githubusercontent.com/js05212/citeulike-t/master/tags.dat",
            "2f1e6dd94fe216a4453caf67e337c45f73938373b21d2aa3b6d2696387449e76",
        ),
    },
    "citeulike-a": {
        "users.dat": RemoteFile(
            "https://raw.githubusercontent.com/js05212/citeulike-a/master/users.dat",
            "53211d82c14ff261e595634d285ed9fbf8049cf81dcb751d924d695b9612a02c",
        ),
    },
}

DATASETS = ("citeulike-t", "citeulike-a", "synthetic")


class DataError(ValueError):
    """A raw data file is missing, corrupt or malformed; the message says which and how to fix it."""


@dataclass(frozen=True, eq=False)
class Interactions:
    """Implicit feedback with contiguous ids ``0..num_users-1`` and ``0..num_items-1``.

    ``raw_user_ids[u]`` / ``raw_item_ids[i]`` map back to the ids of the source file.
    ``sha256`` identifies the content (raw files + filtering), and keys every derived cache.
    """

    name: str
    users: np.ndarray  # (n,) int64
    items: np.ndarray  # (n,) int64
    num_users: int
    num_items: int
    raw_user_ids: np.ndarray
    raw_item_ids: np.ndarray
    sha256: str
    user_groups: np.ndarray | None = None  # synthetic data only: the generating preference group
    item_groups: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def num_interactions(self) -> int:
        return int(self.users.shape[0])

    @property
    def density(self) -> float:
        return self.num_interactions / (self.num_users * self.num_items)

    def user_counts(self) -> np.ndarray:
        return np.bincount(self.users, minlength=self.num_users)

    def item_counts(self) -> np.ndarray:
        return np.bincount(self.items, minlength=self.num_items)

    def stats(self) -> dict:
        return {
            "dataset": self.name,
            "users": self.num_users,
            "items": self.num_items,
            "interactions": self.num_interactions,
            "density": self.density,
        }

    def __repr__(self) -> str:
        return (
            f"Interactions({self.name!r}, users={self.num_users:,}, items={self.num_items:,}, "
            f"interactions={self.num_interactions:,})"
        )


# --------------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------------


def _resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else None


def fetch(dataset: str, filename: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Path of a verified raw file: from ``data_dir`` (or ``$KDREPRO_DATA_DIR``) when given, else downloaded.

    A local folder is used as it is (no network); a download is cached under the kdrepro cache and
    checked against the published sha256 either way.
    """
    if dataset not in REMOTE_FILES or filename not in REMOTE_FILES[dataset]:
        known = {d: sorted(f) for d, f in REMOTE_FILES.items()}
        raise DataError(f"unknown raw file {dataset}/{filename}; known files: {known}")
    remote = REMOTE_FILES[dataset][filename]
    folder = _resolve_data_dir(data_dir)
    if folder is not None:
        path = folder / dataset / filename
        if not path.is_file():
            raise DataError(
                f"{path} does not exist. The data folder (argument data_dir or ${DATA_DIR_ENV}) must "
                f"hold {dataset}/{filename}; download it from {remote.url} or unset {DATA_DIR_ENV} "
                "to let kdrepro download it."
            )
    else:
        import pooch  # imported here: only needed when downloading

        path = Path(
            pooch.retrieve(
                remote.url,
                known_hash=f"sha256:{remote.sha256}",
                fname=filename,
                path=cache_root() / "downloads" / dataset,
                progressbar=False,
            )
        )
    actual = sha256_file(path)
    if actual != remote.sha256:
        raise DataError(
            f"{path} has sha256 {actual}, expected {remote.sha256}. The file is corrupt or a different "
            f"version: replace it with a fresh copy of {remote.url}."
        )
    return path


# --------------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------------


def parse_count_lists(path: str | os.PathLike) -> list[np.ndarray]:
    """Parse the CiteULike ``n id_1 ... id_n`` format (one list per line, line number = owner id)."""
    path = Path(path)
    rows: list[np.ndarray] = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            tokens = line.split()
            if not tokens:
                raise DataError(f"{path}:{lineno}: empty line; every line must read 'n id_1 ... id_n'.")
            try:
                values = np.array([int(t) for t in tokens], dtype=np.int64)
            except ValueError:
                bad = next(t for t in tokens if not t.lstrip("-").isdigit())
                raise DataError(
                    f"{path}:{lineno}: {bad!r} is not an integer; every line must read 'n id_1 ... id_n'. "
                    "The file is corrupt: replace it with a fresh download."
                ) from None
            if values[0] != len(values) - 1:
                raise DataError(
                    f"{path}:{lineno}: the line announces {values[0]} ids but lists {len(values) - 1}. "
                    "The file is truncated or corrupt: replace it with a fresh download."
                )
            if (values[1:] < 0).any():
                raise DataError(f"{path}:{lineno}: negative id; ids must be non-negative integers.")
            rows.append(values[1:])
    return rows


def _reindex(
    name: str,
    raw_users: np.ndarray,
    raw_items: np.ndarray,
    source_hash: str,
    min_user_interactions: int,
    info: dict | None = None,
) -> Interactions:
    """Drop duplicate pairs, filter users, and re-index users by first appearance, items by first appearance."""
    if min_user_interactions < 0:
        raise ValueError(f"min_user_interactions must be >= 0, got {min_user_interactions}")
    raw_users = np.asarray(raw_users)
    raw_items = np.asarray(raw_items)
    # Deduplicate (user, item) pairs keeping the first occurrence, so file order is preserved.
    _, user_codes = np.unique(raw_users, return_inverse=True)
    _, item_codes = np.unique(raw_items, return_inverse=True)
    pair_keys = user_codes.astype(np.int64) * (item_codes.max(initial=0) + 1) + item_codes
    _, first = np.unique(pair_keys, return_index=True)
    keep = np.sort(first)
    raw_users, raw_items, user_codes = raw_users[keep], raw_items[keep], user_codes[keep]
    counts = np.bincount(user_codes)
    kept = counts[user_codes] >= min_user_interactions
    raw_users, raw_items = raw_users[kept], raw_items[kept]
    user_ids, users = _first_appearance_codes(raw_users)
    item_ids, items = _first_appearance_codes(raw_items)
    digest = stable_hash({"source": source_hash, "min_user_interactions": min_user_interactions}, 64)
    return Interactions(
        name=name,
        users=users,
        items=items,
        num_users=len(user_ids),
        num_items=len(item_ids),
        raw_user_ids=user_ids,
        raw_item_ids=item_ids,
        sha256=digest,
        info={"min_user_interactions": min_user_interactions, **(info or {})},
    )


def _first_appearance_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous codes numbered in order of first appearance; returns (raw ids by code, codes)."""
    uniques, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return uniques[order], rank[inverse].astype(np.int64)


def load_citeulike(
    variant: str = "t", *, min_user_interactions: int = 0, data_dir: str | os.PathLike | None = None
) -> Interactions:
    """CiteULike from ``users.dat``: users in file order, items re-indexed by first appearance."""
    name = f"citeulike-{variant}"
    path = fetch(name, "users.dat", data_dir)
    rows = parse_count_lists(path)
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    users = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    items = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
    return _reindex(name, users, items, REMOTE_FILES[name]["users.dat"].sha256, min_user_interactions)


def load_citeulike_tags(dataset: Interactions, data_dir: str | os.PathLike | None = None) -> tuple[
    np.ndarray, np.ndarray, list[str]
]:
    """Tags of citeulike-t items as (item, tag) pairs in the dataset's item ids, plus the tag names."""
    if dataset.name != "citeulike-t":
        raise DataError(f"tags exist for citeulike-t only, not {dataset.name!r}")
    rows = parse_count_lists(fetch("citeulike-t", "tag-item.dat", data_dir))
    names = fetch("citeulike-t", "tags.dat", data_dir).read_text(encoding="utf-8").splitlines()
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    tags = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    raw_items = np.concatenate(rows)
    lookup = np.full(max(raw_items.max(), dataset.raw_item_ids.max()) + 1, -1, dtype=np.int64)
    lookup[dataset.raw_item_ids] = np.arange(dataset.num_items)
    items = lookup[raw_items]
    known = items >= 0
    return items[known], tags[known], names


def load_foursquare(path: str | os.PathLike, *, min_user_interactions: int = 0) -> Interactions:
    """Foursquare check-ins in the SAE-NAD / VLDB'17 layout: ``user<TAB>poi<TAB>frequency`` per line.

    Check-in frequencies are collapsed to implicit feedback (a visit is a positive). Not available
    offline; the loader is exercised on small files by the tests.
    """
    return load_interactions_tsv(path, name="foursquare", min_user_interactions=min_user_interactions)


def load_interactions_tsv(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    min_user_interactions: int = 0,
    min_rating: float | None = None,
    comment: str = "#",
) -> Interactions:
    """A generic whitespace-separated file of ``user item [rating] [timestamp]`` lines.

    Ids may be any tokens. With ``min_rating`` only pairs rated at least that much count as positives.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist.")
    users: list[str] = []
    items: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip() or line.startswith(comment):
                continue
            tokens = line.split()
            if not 2 <= len(tokens) <= 4:
                raise DataError(
                    f"{path}:{lineno}: expected 'user item [rating] [timestamp]' (2 to 4 fields), "
                    f"found {len(tokens)} fields."
                )
            if len(tokens) >= 3:
                try:
                    rating = float(tokens[2])
                except ValueError:
                    raise DataError(f"{path}:{lineno}: rating {tokens[2]!r} is not a number.") from None
                if min_rating is not None and rating < min_rating:
                    continue
            users.append(tokens[0])
            items.append(tokens[1])
    if not users:
        raise DataError(f"{path}: no interactions (after min_rating={min_rating}).")
    return _reindex(
        name or path.stem,
        np.array(users),
        np.array(items),
        sha256_file(path),
        min_user_interactions,
        info={"min_rating": min_rating, "path": str(path)},
    )


# --------------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------------


def synthetic(
    num_users: int = 400,
    num_items: int = 600,
    *,
    num_groups: int = 8,
    mean_interactions: float = 20.0,
    popularity_share: float = 0.3,
    group_affinity: float = 0.8,
    seed: int = 0,
) -> Interactions:
    """A small implicit-feedback dataset with popular and niche preference groups.

    Items are split into ``num_groups`` niches; each user belongs to one group. A user's items are drawn
    (without replacement) from a mixture: with weight ``popularity_share`` from a global Zipf popularity
    curve (the popular items everyone likes), the rest from the niches: ``group_affinity`` is the share
    of those niche draws that come from the user's own niche.
    Learnable structure, skewed popularity, seconds to train on.
    """
    if num_users < 2 or num_items < num_groups or num_groups < 1:
        raise ValueError("synthetic() needs num_users >= 2 and num_items >= num_groups >= 1")
    rng = np.random.default_rng(seed)
    user_groups = rng.integers(num_groups, size=num_users)
    item_groups = rng.permutation(np.arange(num_items) % num_groups)
    popularity = 1.0 / np.arange(1, num_items + 1) ** 0.8
    popularity = popularity[rng.permutation(num_items)]
    popularity /= popularity.sum()
    in_group = item_groups[None, :] == user_groups[:, None]  # (U, I)
    taste = popularity[None, :] ** 0.3  # within a niche, mildly popularity-skewed
    own = np.where(in_group, taste, 0.0)
    other = np.where(in_group, 0.0, taste)
    niche = (group_affinity * own / own.sum(1, keepdims=True)
             + (1 - group_affinity) * other / other.sum(1, keepdims=True))
    probs = popularity_share * popularity[None, :] + (1 - popularity_share) * niche
    sizes = np.clip(rng.poisson(mean_interactions - 5, size=num_users) + 5, 5, num_items // 2)
    # Gumbel top-k: sampling without replacement proportional to probs, vectorised over users.
    keys = np.log(probs) - np.log(-np.log(rng.random(probs.shape)))
    order = np.argsort(-keys, axis=1)
    mask = np.arange(num_items)[None, :] < sizes[:, None]
    users = np.repeat(np.arange(num_users), sizes)
    items = order[mask]
    data = _reindex(
        "synthetic",
        users,
        items,
        stable_hash(
            {
                "synthetic": [num_users, num_items, num_groups, mean_interactions],
                "shares": [popularity_share, group_affinity],
                "seed": seed,
            },
            64,
        ),
        0,
        info={"seed": seed, "num_groups": num_groups},
    )
    return Interactions(
        **{
            **data.__dict__,
            "user_groups": user_groups[data.raw_user_ids],
            "item_groups": item_groups[data.raw_item_ids],
        }
    )


# --------------------------------------------------------------------------------------------------
# The one entry point
# --------------------------------------------------------------------------------------------------


def load(
    name: str,
    *,
    min_user_interactions: int = 0,
    data_dir: str | os.PathLike | None = None,
    **synthetic_kwargs,
) -> Interactions:
    """Load a dataset by name: ``citeulike-t`` (the papers'), ``citeulike-a`` or ``synthetic``.

    The papers' CiteULike is ``load("citeulike-t", min_user_interactions=5)``: 5,219 users,
    25,181 items, 125,580 interactions.
    """
    if name in ("citeulike-t", "citeulike-a"):
        if synthetic_kwargs:
            raise TypeError(f"unexpected arguments for {name}: {sorted(synthetic_kwargs)}")
        return load_citeulike(name[-1], min_user_interactions=min_user_interactions, data_dir=data_dir)
    if name == "synthetic":
        data = synthetic(**synthetic_kwargs)
        if min_user_interactions:
            raise ValueError("synthetic data has no min_user_interactions filter; every user has >= 5 items")
        return data
    raise DataError(f"unknown dataset {name!r}; choose one of {DATASETS}")
