"""Amazon review data: the 2014 release (McAuley et al.; Beauty in the paper) and
the 2018 release (Ni et al.; AMAZON_FASHION in the paper).

Reviews (both releases): JSON lines with reviewerID, asin, unixReviewTime,
overall. Metadata: 2014 lines are Python dict literals (single quotes), read
with ast.literal_eval; 2018 lines are JSON. 2014 has `categories` (list of
lists) and a numeric price; 2018 has `category` (list) and a price string such
as "$12.99". Either release may be plain or gzip.

Attributes: title, brand, categories (flattened, first occurrence kept), price,
and optionally the description cut to `description_chars`. Text is cleaned of
HTML tags and entities, which the 2018 metadata is full of. A repeated metadata
row for the same asin is ignored (the first wins) and counted; so is a repeated
review (same user, item and time), which the 2018 files contain.
"""
from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
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
    python_literal_object,
    required_float,
    required_id,
)

TAG = re.compile(r"<[^<>]*>")
SINGLE_PRICE = re.compile(r"^\$?\s*(\d[\d,]*(?:\.\d+)?)$")
PRICE_RANGE = re.compile(r"^\$\s*\d[\d,]*(?:\.\d+)?\s*-\s*\$\s*\d[\d,]*(?:\.\d+)?$")


# ------------------------------------------------------------------ values
def clean_text(value: str) -> str:
    """HTML tags removed, entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(TAG.sub(" ", value)).split())


def text_field(row: dict[str, Any], key: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadRow(f"field {key!r} must be text, found {type(value).__name__}")
    return clean_text(str(value)) or None


def flatten_categories(value: Any, key: str) -> list[str]:
    """Category names from a list, or a list of lists (2014), in order, without repeats."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRow(f"field {key!r} must be a list, found {type(value).__name__}")
    names: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for child in node:
                walk(child)
        elif isinstance(node, str):
            name = clean_text(node)
            if name and name not in names:
                names.append(name)
        else:
            raise BadRow(f"field {key!r} holds a {type(node).__name__}, expected category names")

    walk(value)
    return names


def parse_price(value: Any) -> float | str | None:
    """12.99 from 12.99 or "$12.99"; a range "$5.99 - $9.99" stays text; anything else is None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value >= 0 else None
    if not isinstance(value, str):
        return None
    text = clean_text(value)
    single = SINGLE_PRICE.match(text)
    if single:
        return float(single.group(1).replace(",", ""))
    if PRICE_RANGE.match(text):
        return text
    return None


def description_text(value: Any, limit: int) -> str | None:
    """2014: a string; 2018: a list of paragraphs. Cut to `limit` characters."""
    if isinstance(value, list):
        value = " ".join(v for v in value if isinstance(v, str))
    if not isinstance(value, str):
        return None
    return clean_text(value)[:limit].rstrip() or None


# ------------------------------------------------------------------ rows
def review_row(text: str) -> tuple[str, str, float, float | None]:
    row = json_object(text)
    return (
        required_id(row, "reviewerID"),
        required_id(row, "asin"),
        required_float(row, "unixReviewTime"),
        optional_float(row, "overall"),
    )


def read_reviews(
    path: Path, policy: LinePolicy, min_rating: float | None
) -> tuple[list[Interaction], dict[str, Any]]:
    interactions: list[Interaction] = []
    seen: set[tuple[str, str, float]] = set()
    duplicates = below_min = 0
    for lineno, (user, item, time, rating) in iter_records(path, policy, review_row):
        if min_rating is not None:
            if rating is None:
                policy.bad_line(path, lineno, "missing field 'overall' (needed by min_rating)")
                continue
            if rating < min_rating:
                below_min += 1
                continue
        key = (user, item, time)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        interactions.append(key)
    log: dict[str, Any] = {"duplicate_interactions": duplicates}
    if min_rating is not None:
        log["below_min_rating"] = below_min
    return interactions, log


def read_meta(
    path: Path,
    policy: LinePolicy,
    parse_object: Callable[[str], dict[str, Any]],
    categories_key: str,
    description_chars: int,
    wanted: set[str],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Attributes of the items in `wanted` (those with interactions).

    The first row of an asin wins; repeats are counted among the wanted items
    only, which spares a set of every asin of a multi-million-row file.
    """
    unparsed_prices = 0

    def parse(text: str) -> tuple[str, dict[str, Any], bool]:
        row = parse_object(text)
        asin = required_id(row, "asin")
        attrs: dict[str, Any] = {}
        for key in ("title", "brand"):
            value = text_field(row, key)
            if value:
                attrs[key] = value
        categories = flatten_categories(row.get(categories_key), categories_key)
        if categories:
            attrs["categories"] = categories
        price = parse_price(row.get("price"))
        if price is not None:
            attrs["price"] = price
        if description_chars > 0:
            description = description_text(row.get("description"), description_chars)
            if description:
                attrs["description"] = description
        price_lost = price is None and row.get("price") not in (None, "")
        return asin, attrs, price_lost

    attributes: dict[str, dict[str, Any]] = {}
    duplicates = 0
    for _, (asin, attrs, price_lost) in iter_records(path, policy, parse):
        if asin not in wanted:
            continue
        if asin in attributes:
            duplicates += 1
            continue
        attributes[asin] = attrs
        unparsed_prices += price_lost
    log = {"duplicate_meta_rows": duplicates, "unparsed_prices": unparsed_prices}
    return {asin: attrs for asin, attrs in attributes.items() if attrs}, log


# ------------------------------------------------------------------ loaders
def _load(
    *,
    path: str | Path,
    name: str,
    domain: str,
    user_core: int,
    item_core: int,
    on_error: str,
    min_rating: float | None,
    description_chars: int,
    require_attributes: bool,
    review_candidates: list[str],
    meta_candidates: list[str],
    parse_meta_object: Callable[[str], dict[str, Any]],
    categories_key: str,
) -> Dataset:
    directory = dataset_dir(path)
    if isinstance(description_chars, bool) or not isinstance(description_chars, int) or description_chars < 0:
        raise ValueError(f"dataset spec key 'description_chars': expected an integer >= 0, found {description_chars!r}")
    policy = LinePolicy(on_error)
    reviews_path = find_file(directory, review_candidates, "Amazon reviews (dataset spec key 'reviews_file')")
    meta_path = find_file(directory, meta_candidates, "Amazon metadata (dataset spec key 'meta_file')")
    interactions, log = read_reviews(reviews_path, policy, min_rating)
    wanted = {item for _, item, _ in interactions}
    attributes, meta_log = read_meta(
        meta_path, policy, parse_meta_object, categories_key, description_chars, wanted
    )
    log.update(meta_log)
    return dataset_from_rows(
        name=name,
        domain=domain,
        interactions=interactions,
        attributes=attributes,
        user_core=user_core,
        item_core=item_core,
        require_attributes=require_attributes,
        policy=policy,
        files=[reviews_path, meta_path],
        extra_log=log,
    )


@dataclass(frozen=True)
class Layout:
    """Where one Amazon release keeps its files and how its metadata lines are written."""

    reviews: tuple[str, ...]        # candidate review file names, in order ({category} filled in)
    meta: tuple[str, ...]
    parse_meta_object: Callable[[str], Any]
    categories_key: str


# 2014: `reviews_<category>_5.json` (or the full `reviews_<category>.json`) and `meta_<category>.json`
# (Python-literal lines), plain or .gz. 2018: `<category>.json.gz` (or the 5-core
# `<category>_5.json.gz`) and `meta_<category>.json.gz` (JSON lines), gzip or plain.
LAYOUT_2014 = Layout(("reviews_{category}_5.json", "reviews_{category}_5.json.gz", "reviews_{category}.json",
                      "reviews_{category}.json.gz"), ("meta_{category}.json", "meta_{category}.json.gz"),
                     python_literal_object, "categories")
LAYOUT_2018 = Layout(("{category}.json.gz", "{category}.json", "{category}_5.json.gz", "{category}_5.json"),
                     ("meta_{category}.json.gz", "meta_{category}.json"), json_object, "category")


def load_release(
    layout: Layout,
    *,
    path: str | Path,
    name: str,
    domain: str,
    user_core: int,
    item_core: int,
    category: str,
    on_error: str = "raise",
    reviews_file: str | None = None,
    meta_file: str | None = None,
    min_rating: float | None = None,
    description_chars: int = 0,
    require_attributes: bool = True,
) -> Dataset:
    """One Amazon release's reviews and metadata for `category` (explicit file names win)."""
    return _load(
        path=path,
        name=name,
        domain=domain,
        user_core=user_core,
        item_core=item_core,
        on_error=on_error,
        min_rating=min_rating,
        description_chars=description_chars,
        require_attributes=require_attributes,
        review_candidates=[reviews_file] if reviews_file else [f.format(category=category) for f in layout.reviews],
        meta_candidates=[meta_file] if meta_file else [f.format(category=category) for f in layout.meta],
        parse_meta_object=layout.parse_meta_object,
        categories_key=layout.categories_key,
    )


load_2014 = partial(load_release, LAYOUT_2014)
load_2018 = partial(load_release, LAYOUT_2018)
