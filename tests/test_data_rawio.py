"""Line reading: plain and gzip, file:line errors, skip counting."""
import gzip
import logging

import pytest

from llmemb.data.rawio import (
    BadRow,
    LinePolicy,
    find_file,
    iter_lines,
    iter_records,
    json_object,
    python_literal_object,
    required_float,
    required_id,
)


def test_plain_and_gzip_read_the_same_whatever_the_suffix(tmp_path):
    content = '{"a": 1}\n\n{"a": 2}\r\n'
    plain = tmp_path / "rows.json"
    plain.write_text("\ufeff" + content, encoding="utf-8")
    packed = tmp_path / "rows.json.gz"
    packed.write_bytes(gzip.compress(content.encode()))
    misnamed = tmp_path / "rows_really_gzip.json"  # gzip recognised by its bytes, not its name
    misnamed.write_bytes(gzip.compress(content.encode()))
    for path in (plain, packed, misnamed):
        assert list(iter_lines(path, LinePolicy())) == [(1, '{"a": 1}'), (3, '{"a": 2}')]


def test_raise_names_file_and_line(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('{"a": 1}\n{"a": \n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ValueError) as err:
        list(iter_records(path, LinePolicy("raise"), json_object))
    assert str(err.value).startswith(f"{path}:2: invalid JSON")
    assert err.value.__context__ is None  # the message stands alone, no chained traceback


def test_skip_counts_per_file_and_warns(tmp_path, caplog):
    path = tmp_path / "rows.json"
    path.write_bytes(b'{"a": 1}\n{"a": \n[1, 2]\n{"a": "\xff"}\n{"a": 5}\n')
    policy = LinePolicy("skip")
    rows = list(iter_records(path, policy, json_object))
    assert rows == [(1, {"a": 1}), (5, {"a": 5})]
    with caplog.at_level(logging.WARNING):
        assert policy.report() == {"rows.json": 3}
    assert "skipped 3 malformed line(s) in rows.json" in caplog.text
    assert f"{path}:2: invalid JSON" in caplog.text
    assert f"{path}:3: expected a JSON object, found list" in caplog.text


def test_header_lines_are_not_parsed(tmp_path):
    path = tmp_path / "table.tsv"
    path.write_text("id:token\n7\n", encoding="utf-8")
    assert list(iter_records(path, LinePolicy(), str.strip, after_line=1)) == [(2, "7")]


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="'on_error'.*'ignore'"):
        LinePolicy("ignore")


def test_python_literal_rows():
    assert python_literal_object("{'asin': 'B1', 'price': 3.5, 'categories': [['A', 'B']]}") == {
        "asin": "B1",
        "price": 3.5,
        "categories": [["A", "B"]],
    }
    assert python_literal_object('{"asin": "B1", "ok": true, "x": null}') == {"asin": "B1", "ok": True, "x": None}
    with pytest.raises(BadRow, match="neither a Python literal nor JSON"):
        python_literal_object("{'asin': __import__('os').getcwd()}")
    with pytest.raises(BadRow, match="expected a dict"):
        python_literal_object("['B1']")


def test_field_helpers():
    row = {"id": "u1", "n": 7, "t": "12", "bad": "x", "empty": " ", "flag": True, "inf": float("inf")}
    assert required_id(row, "id") == "u1"
    assert required_id(row, "n") == "7"
    assert required_float(row, "t") == 12.0
    for key, message in [
        ("missing", "missing field 'missing'"),
        ("empty", "field 'empty' is empty"),
        ("flag", "must be a string"),
    ]:
        with pytest.raises(BadRow, match=message):
            required_id(row, key)
    for key, message in [("bad", "must be a number"), ("flag", "found bool"), ("inf", "must be finite")]:
        with pytest.raises(BadRow, match=message):
            required_float(row, key)


def test_find_file_tries_candidates_in_order(tmp_path):
    (tmp_path / "b.json.gz").write_bytes(b"")
    (tmp_path / "c.json").write_bytes(b"")
    assert find_file(tmp_path, ["a.json", "b.json.gz", "c.json"], "rows").name == "b.json.gz"
    with pytest.raises(FileNotFoundError, match="rows: none of x.json, y.json found in"):
        find_file(tmp_path, ["x.json", "y.json"], "rows")
