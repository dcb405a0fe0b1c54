"""load_dataset: dispatch on the format and validation of the spec."""
from pathlib import Path

import pytest

from llmemb.data import LOADERS, load_dataset

ML100K = str(Path(__file__).resolve().parents[1] / "data" / "ml-100k")


def base_spec(**extra):
    spec = dict(name="ml-100k", format="movielens", path=ML100K, domain="movie", user_core=5, item_core=5)
    spec.update(extra)
    return spec


def test_every_format_has_a_loader():
    assert set(LOADERS) == {"recbole", "movielens", "amazon2014", "amazon2018", "yelp"}


@pytest.mark.parametrize("key", ["name", "format", "path", "domain", "user_core", "item_core"])
def test_missing_common_key(key):
    spec = base_spec()
    del spec[key]
    with pytest.raises(ValueError, match=f"missing key '{key}'"):
        load_dataset(spec)


def test_unknown_format_names_the_key():
    with pytest.raises(ValueError, match="key 'format': unknown format 'csv'"):
        load_dataset(base_spec(format="csv"))


def test_unknown_key_is_refused():
    with pytest.raises(ValueError, match="unknown key 'min_ratting' for format 'movielens'"):
        load_dataset(base_spec(min_ratting=4))


@pytest.mark.parametrize("fmt", ["amazon2014", "amazon2018"])
def test_format_specific_required_key(tmp_path, fmt):
    with pytest.raises(ValueError, match=f"missing key 'category' \\(required by format '{fmt}'\\)"):
        load_dataset(base_spec(format=fmt, path=str(tmp_path), domain="beauty"))


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("user_core", -1, "'user_core': expected an integer >= 0"),
        ("item_core", "5", "'item_core': expected an integer >= 0"),
        ("user_core", True, "'user_core': expected an integer >= 0"),
        ("domain", "cars", "'domain': unknown domain 'cars'"),
        ("on_error", "ignore", "'on_error': 'ignore' is not one of raise, skip"),
        ("min_rating", "4", "'min_rating': expected a number"),
    ],
)
def test_bad_values_name_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        load_dataset(base_spec(**{key: value}))


def test_path_must_be_a_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset spec key 'path': .* is not a directory"):
        load_dataset(base_spec(path=str(tmp_path / "nowhere")))


def test_spec_with_prompt_keys_loads():
    ds = load_dataset(base_spec(max_value_chars=100, min_rating=5, user_core=3, item_core=3))
    assert ds.name == "ml-100k" and ds.domain == "movie"
    assert ds.filter_log["below_min_rating"] == 100000 - 21201


def test_recbole_format_reads_the_shipped_files():
    spec = base_spec(
        format="recbole",
        item_fields={"movie_title": "title", "class": "genres"},
        text_fields=["movie_title"],
        user_core=0,
        item_core=0,
    )
    ds = load_dataset(spec)
    assert (ds.n_users, ds.n_interactions) == (943, 100000)
    assert ds.item_attributes(ds.item_index()["1"]) == {
        "title": "Toy Story",
        "genres": ["Animation", "Children's", "Comedy"],
    }
