"""Yelp Open Dataset: business and review JSON lines.

Reviews (user_id, business_id, date "YYYY-MM-DD HH:MM:SS", stars) are kept when
their date lies in [start_date, end_date], both days included; the paper keeps
2000-01-01 to 2019-12-31. Businesses give the attributes: name, city, state,
categories (a comma-separated string in the file, a list here) and stars.
Either file may be gzip-compressed (same name plus .gz).
"""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from .dataset import Dataset, Interaction
from .rawio import (
    BadRow,
    LinePolicy,
    dataset_dir,
    dataset_from_rows,
    find_file,
    iter_records,
    json_object,
    optional_float,
    required_id,
)

BUSINESS_FILE = "yelp_academic_dataset_business.json"
REVIEW_FILE = "yelp_academic_dataset_review.json"
REVIEW_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}( \d{2}:\d{2}:\d{2})?$")


def spec_date(value: Any, key: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):  # YAML reads an unquoted 2019-12-31 as a date
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"dataset spec key {key!r}: {value!r} is not a date YYYY-MM-DD") from None


def review_time(value: Any) -> dt.datetime:
    """UTC time of a review date: "YYYY-MM-DD HH:MM:SS" (older releases: "YYYY-MM-DD")."""
    if not isinstance(value, str):
        raise BadRow(f"field 'date' must be a string, found {type(value).__name__}")
    if REVIEW_DATE.match(value):
        try:
            return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
        except ValueError:
            pass  # well-formed but impossible, e.g. month 13
    raise BadRow(f"field 'date' is not a date 'YYYY-MM-DD HH:MM:SS': {value!r}")


def review_row(text: str) -> tuple[str, str, dt.datetime, float | None]:
    row = json_object(text)
    if row.get("date") is None:
        raise BadRow("missing field 'date'")
    return (
        required_id(row, "user_id"),
        required_id(row, "business_id"),
        review_time(row["date"]),
        optional_float(row, "stars"),
    )


def category_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        parts = value
    else:
        raise BadRow(f"field 'categories' must be a comma-separated string, found {type(value).__name__}")
    names: list[str] = []
    for part in parts:
        name = " ".join(part.split())
        if name and name not in names:
            names.append(name)
    return names


def business_row(text: str) -> tuple[str, dict[str, Any]]:
    row = json_object(text)
    business = required_id(row, "business_id")
    attrs: dict[str, Any] = {}
    for key in ("name", "city", "state"):
        value = row.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise BadRow(f"field {key!r} must be a string, found {type(value).__name__}")
        value = " ".join(value.split())
        if value:
            attrs[key] = value
    categories = category_list(row.get("categories"))
    if categories:
        attrs["categories"] = categories
    stars = optional_float(row, "stars")
    if stars is not None:
        attrs["stars"] = stars
    return business, attrs


def read_reviews(
    path: Path, policy: LinePolicy, start: dt.date, end: dt.date, min_rating: float | None
) -> tuple[list[Interaction], dict[str, Any]]:
    interactions: list[Interaction] = []
    outside = below_min = 0
    for lineno, (user, business, when, stars) in iter_records(path, policy, review_row):
        if not start <= when.date() <= end:
            outside += 1
            continue
        if min_rating is not None:
            if stars is None:
                policy.bad_line(path, lineno, "missing field 'stars' (needed by min_rating)")
                continue
            if stars < min_rating:
                below_min += 1
                continue
        interactions.append((user, business, when.timestamp()))
    log: dict[str, Any] = {
        "date_window": [start.isoformat(), end.isoformat()],
        "outside_date_window": outside,
    }
    if min_rating is not None:
        log["below_min_rating"] = below_min
    return interactions, log


def read_businesses(
    path: Path, policy: LinePolicy, wanted: set[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    attributes: dict[str, dict[str, Any]] = {}
    duplicates = 0
    for _, (business, attrs) in iter_records(path, policy, business_row):
        if business not in wanted:
            continue
        if business in attributes:
            duplicates += 1
            continue
        attributes[business] = attrs
    log = {"duplicate_business_rows": duplicates}
    return {b: attrs for b, attrs in attributes.items() if attrs}, log


def load(
    *,
    path: str | Path,
    name: str,
    domain: str,
    user_core: int,
    item_core: int,
    on_error: str = "raise",
    start_date: Any = "2000-01-01",
    end_date: Any = "2019-12-31",
    business_file: str = BUSINESS_FILE,
    review_file: str = REVIEW_FILE,
    min_rating: float | None = None,
    require_attributes: bool = True,
) -> Dataset:
    directory = dataset_dir(path)
    start = spec_date(start_date, "start_date")
    end = spec_date(end_date, "end_date")
    if start > end:
        raise ValueError(f"dataset spec keys 'start_date' / 'end_date': {start} is after {end}")
    policy = LinePolicy(on_error)
    review_path = find_file(
        directory, [review_file, review_file + ".gz"], "Yelp reviews (dataset spec key 'review_file')"
    )
    business_path = find_file(
        directory, [business_file, business_file + ".gz"], "Yelp businesses (dataset spec key 'business_file')"
    )
    interactions, log = read_reviews(review_path, policy, start, end, min_rating)
    attributes, business_log = read_businesses(business_path, policy, {b for _, b, _ in interactions})
    log.update(business_log)
    return dataset_from_rows(
        name=name,
        domain=domain,
        interactions=interactions,
        attributes=attributes,
        user_core=user_core,
        item_core=item_core,
        require_attributes=require_attributes,
        policy=policy,
        files=[review_path, business_path],
        extra_log=log,
    )
