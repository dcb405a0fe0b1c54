"""Amazon 2014 (Beauty) and 2018 (Fashion) raw formats, written here in miniature."""
import gzip
import json
import logging

import pytest

from llmemb.data import load_dataset
from llmemb.data.amazon import clean_text, flatten_categories, parse_price


def write_lines(path, lines, compress):
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data) if compress else data)


def review(user, asin, time, overall=5.0):
    return json.dumps({
        "reviewerID": user,
        "asin": asin,
        "reviewerName": "Someone",
        "helpful": [0, 0],
        "reviewText": "Nice.\nWould buy again.",
        "overall": overall,
        "summary": "ok",
        "unixReviewTime": time,
        "reviewTime": "01 1, 2014",
    })


# Users A, B, C keep three items each (time order scrambled in the file). D has two
# reviews and goes (3-core users); then i4 keeps one review and goes (2-core items).
REVIEWS = [
    review("A", "i2", 200),
    review("A", "i1", 100),
    review("B", "i4", 50),
    review("A", "i3", 300),
    review("B", "i2", 150),
    review("C", "i1", 10),
    review("B", "i1", 250),
    review("D", "i4", 400),
    review("C", "i2", 20),
    review("B", "i3", 350),
    review("D", "i5", 500),
    review("C", "i3", 30),
]
BAD_REVIEWS = [
    '{"reviewerID": "A", "asin": "i9", "unixReviewTime": ',  # truncated JSON
    json.dumps({"reviewerID": "A", "unixReviewTime": 5}),      # no asin
    json.dumps({"reviewerID": "A", "asin": "i9", "unixReviewTime": "soon"}),
]

META_2014 = [
    repr({
        "asin": "i1",
        "title": "Rose <b>Oil</b> &amp; Balm",
        "brand": "Acme",
        "categories": [["Beauty", "Skin Care", "Face"], ["Beauty", "Skin Care", "Body"]],
        "price": 12.5,
        "salesRank": {"Beauty": 1234},
        "description": "A gentle oil.\nFor the face and body, every day.",
        "related": {"also_bought": ["i2"]},
    }),
    repr({"asin": "i2", "title": "Night Cream", "categories": [["Beauty"]], "price": 30}),
    repr({"asin": "i3", "brand": "O'Brien", "categories": [["Beauty", "Hair Care"]]}),
    repr({"asin": "i4", "title": "Gone"}),
    repr({"asin": "zz", "title": "No reviews"}),
]
BAD_META = [
    "{'asin': 'i8', 'title': ",          # truncated literal
    repr({"title": "no asin"}),
]


def beauty_spec(directory, **extra):
    spec = dict(name="beauty", format="amazon2014", path=str(directory), domain="beauty",
                user_core=3, item_core=2, category="Beauty")
    spec.update(extra)
    return spec


def by_user(ds):
    return {u: [ds.item_ids[i - 1] for i in seq] for u, seq in zip(ds.user_ids, ds.sequences)}


@pytest.mark.parametrize("compress", [False, True])
def test_amazon2014_sequences_attributes_and_kcore(tmp_path, compress):
    suffix = ".json.gz" if compress else ".json"
    write_lines(tmp_path / f"reviews_Beauty_5{suffix}", REVIEWS, compress)
    write_lines(tmp_path / f"meta_Beauty{suffix}", META_2014, compress)
    assert "'asin': 'i1'" in META_2014[0]  # the 2014 metadata is Python literals, not JSON
    ds = load_dataset(beauty_spec(tmp_path, description_chars=30))
    assert by_user(ds) == {"A": ["i1", "i2", "i3"], "B": ["i2", "i1", "i3"], "C": ["i1", "i2", "i3"]}
    assert ds.user_ids == ["C", "A", "B"]  # ordered by first kept interaction (B's i4 is gone)
    assert ds.domain == "beauty"
    assert ds.filter_log["kcore_rounds"] >= 3
    assert ds.filter_log["source_files"] == [f"reviews_Beauty_5{suffix}", f"meta_Beauty{suffix}"]
    attrs = {ext: ds.item_attributes(i + 1) for i, ext in enumerate(ds.item_ids)}
    assert attrs["i1"] == {
        "title": "Rose Oil & Balm",
        "brand": "Acme",
        "categories": ["Beauty", "Skin Care", "Face", "Body"],
        "price": 12.5,
        "description": "A gentle oil. For the face and",
    }
    assert attrs["i2"] == {"title": "Night Cream", "categories": ["Beauty"], "price": 30.0}
    assert attrs["i3"] == {"brand": "O'Brien", "categories": ["Beauty", "Hair Care"]}


def test_amazon2014_description_is_left_out_by_default(tmp_path):
    write_lines(tmp_path / "reviews_Beauty_5.json", REVIEWS, False)
    write_lines(tmp_path / "meta_Beauty.json", META_2014, False)
    ds = load_dataset(beauty_spec(tmp_path))
    assert all("description" not in a for a in ds.attributes)


def test_amazon2014_malformed_reviews_raise_with_file_and_line(tmp_path):
    write_lines(tmp_path / "reviews_Beauty_5.json", REVIEWS[:3] + BAD_REVIEWS + REVIEWS[3:], False)
    write_lines(tmp_path / "meta_Beauty.json", META_2014, False)
    path = tmp_path / "reviews_Beauty_5.json"
    with pytest.raises(ValueError, match=rf"^{path}:4: invalid JSON"):
        load_dataset(beauty_spec(tmp_path))


@pytest.mark.parametrize("index,problem", [(1, "missing field 'asin'"), (2, "field 'unixReviewTime' must be a number")])
def test_amazon2014_missing_or_bad_fields_are_malformed(tmp_path, index, problem):
    write_lines(tmp_path / "reviews_Beauty_5.json", REVIEWS + [BAD_REVIEWS[index]], False)
    write_lines(tmp_path / "meta_Beauty.json", META_2014, False)
    with pytest.raises(ValueError, match=rf"reviews_Beauty_5\.json:13: {problem}"):
        load_dataset(beauty_spec(tmp_path))


def test_amazon2014_malformed_metadata_raises_with_file_and_line(tmp_path):
    write_lines(tmp_path / "reviews_Beauty_5.json", REVIEWS, False)
    write_lines(tmp_path / "meta_Beauty.json", META_2014[:2] + BAD_META[:1] + META_2014[2:], False)
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'meta_Beauty.json'}:3: neither a Python literal nor JSON"):
        load_dataset(beauty_spec(tmp_path))


def test_amazon2014_skip_counts_every_malformed_line(tmp_path, caplog):
    write_lines(tmp_path / "reviews_Beauty_5.json.gz", REVIEWS[:3] + BAD_REVIEWS + REVIEWS[3:], True)
    write_lines(tmp_path / "meta_Beauty.json.gz", BAD_META[:1] + META_2014 + BAD_META[1:], True)
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(beauty_spec(tmp_path, on_error="skip"))
    assert ds.filter_log["skipped_lines"] == {"reviews_Beauty_5.json.gz": 3, "meta_Beauty.json.gz": 2}
    assert by_user(ds) == {"A": ["i1", "i2", "i3"], "B": ["i2", "i1", "i3"], "C": ["i1", "i2", "i3"]}
    assert "skipped 3 malformed line(s) in reviews_Beauty_5.json.gz" in caplog.text
    assert "skipped 2 malformed line(s) in meta_Beauty.json.gz" in caplog.text
    assert "meta_Beauty.json.gz:7: missing field 'asin'" in caplog.text


def test_amazon2014_min_rating(tmp_path):
    rows = REVIEWS + [review("C", "i4", 40, overall=2.0), review("A", "i4", 310, overall=1.0)]
    write_lines(tmp_path / "reviews_Beauty_5.json", rows, False)
    write_lines(tmp_path / "meta_Beauty.json", META_2014, False)
    assert "i4" in load_dataset(beauty_spec(tmp_path)).item_ids
    ds = load_dataset(beauty_spec(tmp_path, min_rating=3))
    assert "i4" not in ds.item_ids
    assert ds.filter_log["below_min_rating"] == 2


def test_amazon2014_missing_files_name_the_spec_keys(tmp_path):
    write_lines(tmp_path / "meta_Beauty.json", META_2014, False)
    with pytest.raises(FileNotFoundError, match="reviews_Beauty_5.json, reviews_Beauty_5.json.gz"):
        load_dataset(beauty_spec(tmp_path))
    write_lines(tmp_path / "my_reviews.json", REVIEWS, False)
    ds = load_dataset(beauty_spec(tmp_path, reviews_file="my_reviews.json"))
    assert ds.n_users == 3


# ---------------------------------------------------------------- 2018 (Fashion)
def meta_2018(asin, **fields):
    row = {"asin": asin, "title": "", "brand": "", "category": [], "price": "", "feature": [],
           "description": [], "also_buy": [], "rank": "", "main_cat": "Fashion", "date": "", "imageURL": []}
    row.update(fields)
    return json.dumps(row)


FASHION_REVIEWS = [
    json.dumps({"overall": 5.0, "verified": True, "reviewTime": "05 4, 2014", "reviewerID": u, "asin": a,
                "style": {"Size:": " Large"}, "reviewerName": "R", "reviewText": "fits", "summary": "ok",
                "unixReviewTime": t})
    for u, a, t in [
        ("U1", "F1", 1_400_000_300), ("U1", "F2", 1_400_000_100), ("U1", "F3", 1_400_000_200),
        ("U2", "F3", 1_300_000_000), ("U2", "F1", 1_300_000_001), ("U2", "F2", 1_300_000_002),
        ("U2", "F2", 1_300_000_002),  # the 2018 files repeat reviews verbatim
        ("U3", "F1", 1_500_000_000), ("U3", "F9", 1_500_000_001),
    ]
]
FASHION_META = [
    meta_2018("F1", title='<span class="a-size">Slim Fit <i>Jeans</i></span>', brand="Levi&#39;s",
              category=["Clothing", "Men", "Jeans", "Men"], price="$1,299.00",
              description=["Stretch denim.", "Machine wash."]),
    meta_2018("F2", title="Wool Socks", category=[], price="$5.99 - $9.99"),
    meta_2018("F3", title="Plain Tee", price=".a-box-inner{background-color:#fff}"),
    meta_2018("F1", title="Duplicate row"),
    "not json at all",
]


def fashion_spec(directory, **extra):
    spec = dict(name="fashion", format="amazon2018", path=str(directory), domain="fashion",
                user_core=3, item_core=2, category="AMAZON_FASHION")
    spec.update(extra)
    return spec


def test_amazon2018_gzip_files(tmp_path):
    write_lines(tmp_path / "AMAZON_FASHION.json.gz", FASHION_REVIEWS, True)
    write_lines(tmp_path / "meta_AMAZON_FASHION.json.gz", FASHION_META, True)
    with pytest.raises(ValueError, match=r"meta_AMAZON_FASHION\.json\.gz:5: invalid JSON"):
        load_dataset(fashion_spec(tmp_path))
    ds = load_dataset(fashion_spec(tmp_path, on_error="skip", description_chars=100))
    # U3 has two distinct items and goes; F9 goes with U3.
    assert by_user(ds) == {"U2": ["F3", "F1", "F2"], "U1": ["F2", "F3", "F1"]}
    assert ds.filter_log["duplicate_interactions"] == 1
    assert ds.filter_log["duplicate_meta_rows"] == 1
    assert ds.filter_log["unparsed_prices"] == 1
    assert ds.filter_log["skipped_lines"] == {"meta_AMAZON_FASHION.json.gz": 1}
    attrs = {ext: ds.item_attributes(i + 1) for i, ext in enumerate(ds.item_ids)}
    assert attrs["F1"] == {
        "title": "Slim Fit Jeans",
        "brand": "Levi's",
        "categories": ["Clothing", "Men", "Jeans"],
        "price": 1299.0,
        "description": "Stretch denim. Machine wash.",
    }
    assert attrs["F2"] == {"title": "Wool Socks", "price": "$5.99 - $9.99"}
    assert attrs["F3"] == {"title": "Plain Tee"}


def test_amazon2018_items_without_metadata(tmp_path):
    write_lines(tmp_path / "AMAZON_FASHION.json.gz", FASHION_REVIEWS, True)
    write_lines(tmp_path / "meta_AMAZON_FASHION.json.gz", FASHION_META[:1] + FASHION_META[2:4], True)
    # F2 has no metadata: required attributes drop it and, with it, every user.
    with pytest.raises(ValueError, match="no interactions left"):
        load_dataset(fashion_spec(tmp_path))
    ds = load_dataset(fashion_spec(tmp_path, require_attributes=False))
    assert ds.item_attributes(ds.item_index()["F2"]) == {}


def test_value_cleaning_helpers():
    assert clean_text("  <a href='x'>Red</a>\n&quot;Dress&quot; ") == 'Red "Dress"'
    assert flatten_categories([["A", "B"], ["A", "C"], "D"], "categories") == ["A", "B", "C", "D"]
    assert parse_price("$12.99") == 12.99
    assert parse_price(7) == 7.0
    assert parse_price("$5 - $9") == "$5 - $9"
    assert parse_price("") is None and parse_price("call us") is None and parse_price(-1) is None
