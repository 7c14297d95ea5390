import hashlib

import numpy as np
import pytest

from kdrepro import data
from kdrepro.data import DataError


@pytest.mark.realdata
def test_citeulike_t_matches_the_papers(citeulike):
    assert (citeulike.num_users, citeulike.num_items, citeulike.num_interactions) == (5219, 25181, 125580)
    # Users re-indexed in file order, items by first appearance.
    assert np.all(np.diff(citeulike.raw_user_ids) > 0)
    assert citeulike.items[0] == 0 and citeulike.users[0] == 0
    assert len(np.unique(citeulike.users * citeulike.num_items + citeulike.items)) == 125580
    assert citeulike.user_counts().min() >= 5


@pytest.mark.realdata
def test_citeulike_unfiltered_counts(citeulike, data_dir):
    raw = data.load("citeulike-t", data_dir=data_dir)
    # 25,975 item ids exist (max id + 1) but only 25,584 of them appear in users.dat.
    assert (raw.num_users, raw.num_interactions, raw.raw_item_ids.max() + 1) == (7947, 134860, 25975)
    assert raw.num_items == 25584
    assert raw.sha256 != citeulike.sha256


@pytest.mark.realdata
def test_citeulike_tags_align_with_items(citeulike, data_dir):
    items, tags, names = data.load_citeulike_tags(citeulike, data_dir)
    assert items.min() >= 0 and items.max() < citeulike.num_items
    assert tags.max() < len(names)


def _write_users_dat(folder, text):
    path = folder / "citeulike-t" / "users.dat"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_missing_file_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"citeulike-t/users.dat does not exist.*KDREPRO_DATA_DIR"):
        data.load("citeulike-t", data_dir=tmp_path)


def test_wrong_hash_is_rejected(tmp_path):
    _write_users_dat(tmp_path, "2 1 2\n")
    with pytest.raises(DataError, match="sha256"):
        data.load("citeulike-t", data_dir=tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [("2 1 2\n3 1 x 4\n", r"users.dat:2: 'x' is not an integer"),
     ("2 1 2\n3 1 2\n", r"users.dat:2: the line announces 3 ids but lists 2")],
)
def test_malformed_lines_name_file_and_line(tmp_path, text, message):
    path = _write_users_dat(tmp_path, text)
    with pytest.raises(DataError, match=message):
        data.parse_count_lists(path)


def test_parse_count_lists(tmp_path):
    path = _write_users_dat(tmp_path, "2 5 7\n1 5\n")
    rows = data.parse_count_lists(path)
    assert [r.tolist() for r in rows] == [[5, 7], [5]]


def test_generic_tsv_loader_reindexes_and_filters(tmp_path):
    path = tmp_path / "ratings.tsv"
    path.write_text("# user item rating ts\nu1 a 5 10\nu1 b 1 11\nu2 b 4 12\nu2 c 5 13\nu1 a 5 14\nu3 c 5 15\n")
    d = data.load_interactions_tsv(path, min_rating=4)
    assert (d.num_users, d.num_items, d.num_interactions) == (3, 3, 4)  # duplicate (u1, a) dropped
    assert d.raw_user_ids.tolist() == ["u1", "u2", "u3"]
    assert d.raw_item_ids.tolist() == ["a", "b", "c"]
    filtered = data.load_interactions_tsv(path, min_rating=4, min_user_interactions=2)
    assert filtered.raw_user_ids.tolist() == ["u2"]


def test_generic_tsv_errors(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("u1 a 5 1 extra\n")
    with pytest.raises(DataError, match=r"bad.tsv:1: expected 'user item \[rating\] \[timestamp\]'"):
        data.load_interactions_tsv(path)
    path.write_text("u1 a five\n")
    with pytest.raises(DataError, match=r"bad.tsv:1: rating 'five' is not a number"):
        data.load_interactions_tsv(path)


def test_foursquare_checkins(tmp_path):
    path = tmp_path / "Foursquare_checkins.txt"
    path.write_text("0\t10\t3\n0\t11\t1\n1\t10\t2\n")
    d = data.load_foursquare(path)
    assert d.name == "foursquare" and (d.num_users, d.num_items, d.num_interactions) == (2, 2, 3)


def test_synthetic_is_deterministic_and_structured():
    a, b = data.synthetic(seed=3), data.synthetic(seed=3)
    assert a.sha256 == b.sha256 and np.array_equal(a.items, b.items)
    assert data.synthetic(seed=4).sha256 != a.sha256
    assert a.user_counts().min() >= 5
    # Preference groups: users pick items of their own niche far more often than chance.
    same = (a.user_groups[a.users] == a.item_groups[a.items]).mean()
    assert same > 2.0 / a.info["num_groups"]
    # Popularity is skewed.
    counts = np.sort(a.item_counts())[::-1]
    assert counts[: len(counts) // 10].sum() > 0.2 * counts.sum()


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'movielens'"):
        data.load("movielens")


def test_download_path_uses_pooch_with_the_published_hash(monkeypatch, tmp_path):
    """Without a data folder, the file is retrieved with pooch against the published sha256."""
    monkeypatch.delenv("KDREPRO_DATA_DIR", raising=False)
    content = b"2 0 1\n1 1\n"
    calls = {}

    def fake_retrieve(url, known_hash, fname, path, progressbar):
        calls.update(url=url, known_hash=known_hash)
        target = tmp_path / fname
        target.write_bytes(content)
        return str(target)

    import pooch

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    monkeypatch.setitem(
        data.REMOTE_FILES["citeulike-a"], "users.dat",
        data.RemoteFile("https://example.invalid/users.dat", hashlib.sha256(content).hexdigest()),
    )
    d = data.load("citeulike-a")
    assert calls["known_hash"] == f"sha256:{hashlib.sha256(content).hexdigest()}"
    assert d.num_interactions == 3
