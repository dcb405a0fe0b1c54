"""RecBole atomic files: typed headers, configurable fields, malformed rows."""
import pytest

from llmemb.data import recbole
from llmemb.data.recbole import parse_value, read_header

INTER_HEADER = "uid:token\tiid:token\tts:float\tstars:float"
ITEM_HEADER = "iid:token\tname:token_seq\ttags:token_seq\tprice:float\tvec:float_seq"

# Three users over items p, q, r (s appears once: 2-core items drop it).
INTER_ROWS = [
    "u1\tq\t20\t4",
    "u1\tp\t10\t5",
    "u1\tr\t30\t1",
    "u2\tp\t5\t3",
    "u2\tq\t6\t5",
    "u2\tr\t7\t4",
    "u3\tr\t1\t2",
    "u3\tq\t2\t2",
    "u3\tp\t3\t5",
    "u3\ts\t4\t5",
]
ITEM_ROWS = [
    "p\tThe  Big   Book\tpaper book\t9.5\t0.1 0.2",
    "q\tQuiet\t\t\t",
    "r\tRed Lamp\tlamp\t20\t1 2",
    "s\tSpare\tmisc\t1\t3",
]


def write(directory, name, header, rows):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


def make_atomic(tmp_path, inter_rows=INTER_ROWS, item_rows=ITEM_ROWS, stem="toy"):
    directory = tmp_path / stem
    write(directory, f"{stem}.inter", INTER_HEADER, inter_rows)
    if item_rows is not None:
        write(directory, f"{stem}.item", ITEM_HEADER, item_rows)
    return directory


def load(directory, **extra):
    kwargs = dict(
        path=directory,
        name="toy",
        domain="item",
        user_core=3,
        item_core=2,
        user_field="uid",
        item_field="iid",
        time_field="ts",
    )
    kwargs.update(extra)
    return recbole.load(**kwargs)


def by_user(ds):
    return {u: [ds.item_ids[i - 1] for i in seq] for u, seq in zip(ds.user_ids, ds.sequences)}


def test_parse_value_by_declared_type():
    assert parse_value(" a b ", "token", "f") == "a b"
    assert parse_value("a  b c", "token_seq", "f") == ["a", "b", "c"]
    assert parse_value("2.5", "float", "f") == 2.5
    assert parse_value("1 2.5", "float_seq", "f") == [1.0, 2.5]
    assert parse_value("", "float", "f") is None


def test_sequences_time_ordered_and_attributes_by_config(tmp_path):
    ds = load(
        make_atomic(tmp_path),
        item_fields={"name": "title", "tags": "tags", "price": "price"},
        text_fields=["name"],
    )
    assert by_user(ds) == {"u1": ["p", "q", "r"], "u2": ["p", "q", "r"], "u3": ["r", "q", "p"]}
    attrs = {ext: ds.item_attributes(i + 1) for i, ext in enumerate(ds.item_ids)}
    # the text field is one string with its spaces collapsed; empty cells are left out
    assert attrs["p"] == {"title": "The Big Book", "tags": ["paper", "book"], "price": 9.5}
    assert attrs["q"] == {"title": "Quiet"}
    assert attrs["r"] == {"title": "Red Lamp", "tags": ["lamp"], "price": 20.0}
    assert "s" not in ds.item_ids  # removed by the 2-core on items
    assert ds.filter_log["source_files"] == ["toy.inter", "toy.item"]
    assert ds.filter_log["skipped_lines"] == {}


def test_default_item_fields_keep_every_field_under_its_own_name(tmp_path):
    ds = load(make_atomic(tmp_path))
    p = ds.item_attributes(ds.item_index()["p"])
    assert p == {"name": ["The", "Big", "Book"], "tags": ["paper", "book"], "price": 9.5, "vec": [0.1, 0.2]}


def test_list_of_item_fields(tmp_path):
    rows = INTER_ROWS + ["u1\ts\t40\t3", "u2\ts\t8\t3"]
    ds = load(make_atomic(tmp_path, inter_rows=rows), item_fields=["price"])
    assert ds.item_attributes(ds.item_index()["r"]) == {"price": 20.0}
    # q has no price, so no attributes: require_attributes (the default with an .item file) drops it
    assert by_user(ds) == {"u1": ["p", "r", "s"], "u2": ["p", "r", "s"], "u3": ["r", "p", "s"]}
    assert ds.filter_log["dropped_without_attributes"] == 3


def test_min_rating_filters_and_is_logged(tmp_path):
    rows = INTER_ROWS + ["u4\tp\t1\t5", "u4\tq\t2\t5", "u4\tr\t3\t5"]
    directory = make_atomic(tmp_path, inter_rows=rows)
    with pytest.raises(ValueError, match=r"no field 'rating' \(dataset spec key 'rating_field'\)"):
        load(directory, min_rating=3)
    ds = load(directory, min_rating=3, rating_field="stars", user_core=3, item_core=1)
    assert by_user(ds) == {"u2": ["p", "q", "r"], "u4": ["p", "q", "r"]}
    assert ds.filter_log["below_min_rating"] == 3  # u1-r, u3-r, u3-q


def test_without_time_field_line_order_is_time(tmp_path):
    ds = load(make_atomic(tmp_path), time_field=None)
    assert by_user(ds)["u1"] == ["q", "p", "r"]


def test_without_item_file(tmp_path):
    directory = make_atomic(tmp_path, item_rows=None)
    ds = load(directory)
    assert ds.attributes == [{}] * ds.n_items
    assert ds.filter_log["source_files"] == ["toy.inter"]
    with pytest.raises(ValueError, match="'require_attributes' is true but .*toy.item does not exist"):
        load(directory, require_attributes=True)


@pytest.mark.parametrize(
    "bad_row,problem",
    [
        ("u1\tp\t10", "expected 4 tab-separated fields, found 3"),
        ("u1\tp\tnoon\t4", "field 'ts' must be a number"),
        ("\tp\t11\t4", "missing field 'uid'"),
        ("u1\t\t11\t4", "missing field 'iid'"),
    ],
)
def test_malformed_rows_raise_with_file_and_line_or_are_skipped(tmp_path, bad_row, problem):
    rows = INTER_ROWS[:4] + [bad_row] + INTER_ROWS[4:]
    directory = make_atomic(tmp_path, inter_rows=rows)
    with pytest.raises(ValueError) as err:
        load(directory)
    # header is line 1, so the fifth row is line 6
    assert str(err.value).startswith(f"{directory / 'toy.inter'}:6: {problem}")
    ds = load(directory, on_error="skip")
    assert ds.filter_log["skipped_lines"] == {"toy.inter": 1}
    assert by_user(ds)["u1"] == ["p", "q", "r"]


def test_bad_item_row_is_counted_under_its_file(tmp_path):
    directory = make_atomic(tmp_path, item_rows=ITEM_ROWS + ["t\tx\ty\tcheap\t"])
    with pytest.raises(ValueError, match=r"toy\.item:6: field 'price' must be a number"):
        load(directory)
    assert load(directory, on_error="skip").filter_log["skipped_lines"] == {"toy.item": 1}


def test_duplicate_item_rows_first_wins(tmp_path):
    directory = make_atomic(tmp_path, item_rows=ITEM_ROWS + ["p\tOther\tx\t1\t"])
    ds = load(directory, item_fields={"name": "title"}, text_fields=["name"])
    assert ds.item_attributes(ds.item_index()["p"]) == {"title": "The Big Book"}
    assert ds.filter_log["duplicate_item_rows"] == 1


@pytest.mark.parametrize(
    "header,problem",
    [
        ("uid:token\tiid\tts:float", "header column 'iid' is not 'field:type'"),
        ("uid:token\tiid:token\tts:datetime", "field 'ts' has unknown type 'datetime'"),
        ("uid:token\tuid:token", "field 'uid' appears twice"),
    ],
)
def test_bad_header(tmp_path, header, problem):
    path = tmp_path / "x.inter"
    path.write_text(header + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"x.inter:1: {problem}"):
        read_header(path)


def test_configured_field_missing_from_header(tmp_path):
    directory = make_atomic(tmp_path)
    with pytest.raises(ValueError, match=r"toy\.inter:1: no field 'timestamp' \(dataset spec key 'time_field'\)"):
        load(directory, time_field="timestamp")
    with pytest.raises(ValueError, match=r"toy\.item:1: no field 'title' \(dataset spec key 'item_fields'\)"):
        load(directory, item_fields={"title": "title"})
    with pytest.raises(ValueError, match="'text_fields': 'tags' is not one of the item_fields"):
        load(directory, item_fields={"name": "title"}, text_fields=["tags"])
    with pytest.raises(ValueError, match="'text_fields': expected a list of field names, found 'name'"):
        load(directory, item_fields={"name": "title"}, text_fields="name")
    with pytest.raises(ValueError, match="'item_fields': expected a list or a mapping, found str"):
        load(directory, item_fields="name")


def test_atomic_name_overrides_directory_name(tmp_path):
    directory = make_atomic(tmp_path, stem="toy")
    renamed = tmp_path / "elsewhere"
    directory.rename(renamed)
    with pytest.raises(FileNotFoundError, match="none of elsewhere.inter found"):
        load(renamed)
    assert load(renamed, atomic_name="toy").n_users == 3


def test_split_text_turns_one_sentence_field_into_named_attributes(tmp_path):
    rows = ["p\tDr. Who Mug. Kitchen Mugs. Acme.\t\t\t", "q\tQuiet\t\t\t", "r\tRed Lamp.  . Lumo\t\t\t",
            "s\tSpare\t\t\t"]
    ds = load(make_atomic(tmp_path, item_rows=rows), item_fields={"name": "text"}, text_fields=["name"],
              split_text={"text": ["title", "categories", "brand"]})
    attrs = dict(zip(ds.item_ids, ds.attributes))
    # split from the right: the title keeps its own ". "; an empty sentence gives no attribute
    assert attrs["p"] == {"title": "Dr. Who Mug", "categories": "Kitchen Mugs", "brand": "Acme"}
    assert attrs["q"] == {"title": "Quiet"}
    assert attrs["r"] == {"title": "Red Lamp", "brand": "Lumo"}


@pytest.mark.parametrize("spec", [["title"], {"text": ["title"]}, {"text": "title brand"}])
def test_split_text_refuses_a_malformed_spec(tmp_path, spec):
    with pytest.raises(ValueError, match="split_text"):
        load(make_atomic(tmp_path), item_fields={"name": "text"}, split_text=spec)


def test_split_text_names_an_unknown_attribute(tmp_path):
    with pytest.raises(ValueError, match="split_text.*'body'"):
        load(make_atomic(tmp_path), item_fields={"name": "text"}, split_text={"body": ["a", "b"]})
