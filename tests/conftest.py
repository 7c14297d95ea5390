import os
from pathlib import Path

import pytest
import torch

from kdrepro import data, splits

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def real_data_dir() -> Path | None:
    env = os.environ.get("KDREPRO_DATA_DIR")
    for candidate in ([Path(env)] if env else []) + [SHARED_DATA]:
        if (candidate / "citeulike-t" / "users.dat").is_file():
            return candidate
    return None


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test writes its caches (store) and its results ledger into temporary folders."""
    monkeypatch.setenv("KDREPRO_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("KDREPRO_RESULTS_DIR", str(tmp_path_factory.mktemp("results")))
    monkeypatch.delenv("KDREPRO_COMMIT_LEDGER", raising=False)  # a campaign's setting, not the tests'
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synthetic_data():
    return data.synthetic(num_users=200, num_items=300, seed=0)


@pytest.fixture(scope="session")
def synthetic_splits(synthetic_data):
    return {p: splits.make_split(synthetic_data, p, 0, num_negatives=99) for p in splits.PROTOCOLS}


@pytest.fixture(scope="session")
def data_dir():
    folder = real_data_dir()
    if folder is None:
        pytest.skip("offline CiteULike not found (set KDREPRO_DATA_DIR)")
    return folder


@pytest.fixture(scope="session")
def citeulike(data_dir):
    return data.load("citeulike-t", min_user_interactions=5, data_dir=data_dir)
