"""Yelp Open Dataset business and review JSON lines, written here in miniature."""
import datetime as dt
import json

import pytest

from llmemb.data import load_dataset
from llmemb.data.yelp import category_list

BUSINESSES = [
    {"business_id": "b1", "name": "Pizza  Place", "address": "1 Main St", "city": "Phoenix", "state": "AZ",
     "postal_code": "85001", "latitude": 33.4, "longitude": -112.0, "stars": 4.5, "review_count": 10,
     "is_open": 1, "attributes": {"WiFi": "u'free'"}, "categories": "Restaurants, Pizza, Restaurants",
     "hours": None},
    {"business_id": "b2", "name": "Book Nook", "city": "Tempe", "state": "AZ", "stars": 4.0,
     "categories": None},
    {"business_id": "b3", "name": "Gym", "city": "Mesa", "state": "AZ", "stars": 3, "categories": "Fitness"},
    {"business_id": "b4", "name": "Never reviewed", "city": "X", "state": "AZ", "stars": 1, "categories": "Bars"},
]


def rev(user, business, date, stars=4.0):
    return {"review_id": f"{user}-{business}-{date}", "user_id": user, "business_id": business, "stars": stars,
            "useful": 0, "funny": 0, "cool": 0, "text": "Great!\nCame back.", "date": date}


# u1 and u2 review b1..b3 inside the window, u3 only partly; reviews on the
# window's edges test that both end days are included.
REVIEWS = [
    rev("u1", "b2", "2015-06-01 12:00:00"),
    rev("u1", "b1", "2000-01-01 00:00:00"),
    rev("u1", "b3", "2019-12-31 23:59:59"),
    rev("u1", "b3", "2020-01-01 00:00:00"),   # after the window
    rev("u2", "b1", "1999-12-31 23:59:59"),   # before the window
    rev("u2", "b3", "2012-03-04 05:06:07"),
    rev("u2", "b2", "2012-03-04 05:06:08"),
    rev("u2", "b1", "2013-01-01 00:00:00"),
    rev("u3", "b1", "2018-01-01 00:00:00"),
    rev("u3", "b2", "2021-05-05 10:00:00"),   # after the window
    rev("u3", "b3", "2018-02-01 00:00:00"),
]


def write_lines(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")


def make_yelp(directory, reviews=REVIEWS, businesses=BUSINESSES):
    write_lines(directory / "yelp_academic_dataset_review.json", reviews)
    write_lines(directory / "yelp_academic_dataset_business.json", businesses)
    return directory


def yelp_spec(directory, **extra):
    spec = dict(name="yelp", format="yelp", path=str(directory), domain="poi", user_core=3, item_core=2)
    spec.update(extra)
    return spec


def by_user(ds):
    return {u: [ds.item_ids[i - 1] for i in seq] for u, seq in zip(ds.user_ids, ds.sequences)}


def test_default_window_keeps_2000_to_2019_inclusive(tmp_path):
    ds = load_dataset(yelp_spec(make_yelp(tmp_path), user_core=2))
    # u3 has only two reviews in the window, fewer than the three leave-one-out needs.
    assert by_user(ds) == {"u1": ["b1", "b2", "b3"], "u2": ["b3", "b2", "b1"]}
    assert ds.filter_log["outside_date_window"] == 3
    assert ds.filter_log["date_window"] == ["2000-01-01", "2019-12-31"]
    assert ds.filter_log["user_core"] == 3
    assert ds.filter_log["raw_interactions"] == 8


def test_timestamps_order_reviews_to_the_second(tmp_path):
    ds = load_dataset(yelp_spec(make_yelp(tmp_path)))
    assert by_user(ds)["u2"] == ["b3", "b2", "b1"]  # 05:06:07 before 05:06:08


def test_configured_window(tmp_path):
    directory = make_yelp(tmp_path)
    ds = load_dataset(yelp_spec(directory, start_date="2012-01-01", end_date=dt.date(2021, 12, 31), item_core=1))
    assert by_user(ds) == {"u2": ["b3", "b2", "b1"], "u3": ["b1", "b3", "b2"], "u1": ["b2", "b3", "b3"]}
    assert ds.filter_log["outside_date_window"] == 2
    with pytest.raises(ValueError, match="'start_date': '2012-13-01' is not a date"):
        load_dataset(yelp_spec(directory, start_date="2012-13-01"))
    with pytest.raises(ValueError, match="'start_date' / 'end_date': 2020-01-01 is after 2019-01-01"):
        load_dataset(yelp_spec(directory, start_date="2020-01-01", end_date="2019-01-01"))


def test_business_attributes(tmp_path):
    ds = load_dataset(yelp_spec(make_yelp(tmp_path)))
    attrs = {ext: ds.item_attributes(i + 1) for i, ext in enumerate(ds.item_ids)}
    assert attrs["b1"] == {
        "name": "Pizza Place",
        "city": "Phoenix",
        "state": "AZ",
        "categories": ["Restaurants", "Pizza"],
        "stars": 4.5,
    }
    assert attrs["b2"] == {"name": "Book Nook", "city": "Tempe", "state": "AZ", "stars": 4.0}
    assert attrs["b3"]["categories"] == ["Fitness"]
    assert "b4" not in attrs
    assert ds.domain == "poi"
    assert ds.filter_log["source_files"] == ["yelp_academic_dataset_review.json", "yelp_academic_dataset_business.json"]


@pytest.mark.parametrize(
    "bad,problem",
    [
        ({"user_id": "u1", "business_id": "b1", "date": "2015/01/01 10:00:00"}, "field 'date' is not a date"),
        ({"user_id": "u1", "business_id": "b1", "date": "2015-02-30 10:00:00"}, "field 'date' is not a date"),
        ({"user_id": "u1", "business_id": "b1"}, "missing field 'date'"),
        ({"business_id": "b1", "date": "2015-01-01 10:00:00"}, "missing field 'user_id'"),
        ({"user_id": "u1", "business_id": "b1", "date": "2015-01-01 10:00:00", "stars": "five"},
         "field 'stars' must be a number"),
        ('{"user_id": "u1", "business_id"', "invalid JSON"),
    ],
)
def test_malformed_review_raise_or_skip(tmp_path, bad, problem):
    directory = make_yelp(tmp_path, reviews=REVIEWS[:2] + [bad] + REVIEWS[2:])
    review_path = directory / "yelp_academic_dataset_review.json"
    with pytest.raises(ValueError) as err:
        load_dataset(yelp_spec(directory))
    assert str(err.value).startswith(f"{review_path}:3: {problem}")
    ds = load_dataset(yelp_spec(directory, on_error="skip"))
    assert ds.filter_log["skipped_lines"] == {"yelp_academic_dataset_review.json": 1}
    assert by_user(ds)["u1"] == ["b1", "b2", "b3"]


def test_malformed_business_rows(tmp_path):
    bad = [{"name": "no id", "city": "X"}, {"business_id": "b9", "categories": 42}]
    directory = make_yelp(tmp_path, businesses=BUSINESSES + bad)
    with pytest.raises(ValueError, match=r"yelp_academic_dataset_business\.json:5: missing field 'business_id'"):
        load_dataset(yelp_spec(directory))
    ds = load_dataset(yelp_spec(directory, on_error="skip"))
    assert ds.filter_log["skipped_lines"] == {"yelp_academic_dataset_business.json": 2}


def test_min_rating_uses_review_stars(tmp_path):
    reviews = REVIEWS + [rev("u4", "b1", "2010-01-01 00:00:00", 1.0), rev("u4", "b2", "2010-01-02 00:00:00", 5.0),
                         rev("u4", "b3", "2010-01-03 00:00:00", 5.0)]
    directory = make_yelp(tmp_path, reviews=reviews)
    assert "u4" in load_dataset(yelp_spec(directory)).user_ids
    ds = load_dataset(yelp_spec(directory, min_rating=3))
    assert "u4" not in ds.user_ids
    assert ds.filter_log["below_min_rating"] == 1


def test_category_list():
    assert category_list("Food,  Coffee & Tea ,Food, ") == ["Food", "Coffee & Tea"]
    assert category_list(None) == []
    assert category_list(["Bars", "Pubs"]) == ["Bars", "Pubs"]
