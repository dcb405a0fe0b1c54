"""RecBole atomic files: `<name>.inter` and an optional `<name>.item`.

Both are tab-separated with a header of `field:type` columns, type one of
token, token_seq (space-separated tokens), float, float_seq. Values are parsed
by their declared type; an empty cell is a missing value.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dataset import Dataset, Interaction
from .rawio import (
    BadRow,
    LinePolicy,
    dataset_dir,
    dataset_from_rows,
    find_file,
    iter_lines,
    iter_records,
    to_float,
)

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")


@dataclass
class AtomicHeader:
    path: Path
    lineno: int
    names: list[str]
    types: list[str]

    def column(self, field: str, spec_key: str) -> int:
        """Column index of `field`, which the dataset spec key `spec_key` asked for."""
        try:
            return self.names.index(field)
        except ValueError:
            raise ValueError(
                f"{self.path}:{self.lineno}: no field {field!r} (dataset spec key {spec_key!r}); "
                f"fields are {', '.join(self.names)}"
            ) from None

    def type_of(self, field: str) -> str:
        return self.types[self.names.index(field)]


def read_header(path: Path) -> AtomicHeader:
    """The `field:type` header; a bad header fails whatever the line policy."""
    for lineno, text in iter_lines(path, LinePolicy("raise")):
        names, types = [], []
        for column in text.split("\t"):
            name, sep, ftype = column.strip().rpartition(":")
            if not sep or not name:
                raise ValueError(f"{path}:{lineno}: header column {column!r} is not 'field:type'")
            if ftype not in FIELD_TYPES:
                raise ValueError(
                    f"{path}:{lineno}: field {name!r} has unknown type {ftype!r}; "
                    f"known: {', '.join(FIELD_TYPES)}"
                )
            if name in names:
                raise ValueError(f"{path}:{lineno}: field {name!r} appears twice in the header")
            names.append(name)
            types.append(ftype)
        return AtomicHeader(path, lineno, names, types)
    raise ValueError(f"{path}: empty file, expected a 'field:type' header")


def parse_value(cell: str, ftype: str, field: str) -> Any:
    """A cell by its declared type; None for an empty cell."""
    cell = cell.strip()
    if not cell:
        return None
    if ftype == "token":
        return cell
    if ftype == "float":
        return to_float(cell, field)
    tokens = cell.split()
    if ftype == "token_seq":
        return tokens
    return [to_float(token, field) for token in tokens]


def _split_row(text: str, header: AtomicHeader) -> list[str]:
    cells = text.split("\t")
    if len(cells) != len(header.names):
        raise BadRow(f"expected {len(header.names)} tab-separated fields, found {len(cells)}")
    return cells


def _required(cells: list[str], header: AtomicHeader, column: int) -> Any:
    value = parse_value(cells[column], header.types[column], header.names[column])
    if value is None:
        raise BadRow(f"missing field {header.names[column]!r}")
    return value


def _token(value: Any) -> str:
    """Ids are tokens; a token_seq id keeps its spaces."""
    return " ".join(value) if isinstance(value, list) else str(value)


def read_interactions(
    path: Path,
    policy: LinePolicy,
    user_field: str = "user_id",
    item_field: str = "item_id",
    time_field: str | None = "timestamp",
    rating_field: str = "rating",
    min_rating: float | None = None,
) -> tuple[list[Interaction], dict[str, Any]]:
    """Interactions of an `.inter` file; without a time field the line order is the time."""
    header = read_header(path)
    user_col = header.column(user_field, "user_field")
    item_col = header.column(item_field, "item_field")
    time_col = None if time_field is None else header.column(time_field, "time_field")
    rating_col = None if min_rating is None else header.column(rating_field, "rating_field")
    for col in (time_col, rating_col):
        if col is not None and header.types[col] not in ("float", "token"):
            raise ValueError(
                f"{path}:{header.lineno}: field {header.names[col]!r} is {header.types[col]}, expected a number"
            )

    def parse(text: str) -> tuple[str, str, float | None, float | None]:
        cells = _split_row(text, header)
        user = _token(_required(cells, header, user_col))
        item = _token(_required(cells, header, item_col))
        time = None if time_col is None else to_float(_required(cells, header, time_col), header.names[time_col])
        rating = (
            None if rating_col is None else to_float(_required(cells, header, rating_col), rating_field)
        )
        return user, item, time, rating

    interactions: list[Interaction] = []
    below_min = 0
    for lineno, (user, item, time, rating) in iter_records(path, policy, parse, after_line=header.lineno):
        if rating is not None and min_rating is not None and rating < min_rating:
            below_min += 1
            continue
        interactions.append((user, item, float(lineno) if time is None else time))
    log: dict[str, Any] = {}
    if min_rating is not None:
        log["below_min_rating"] = below_min
    return interactions, log


def read_item_attributes(
    path: Path,
    policy: LinePolicy,
    item_field: str,
    fields: Mapping[str, str],
    text_fields: Sequence[str] = (),
) -> tuple[dict[str, dict[str, Any]], int]:
    """Attributes per external item id from an `.item` file, and the number of duplicate rows.

    `fields` maps source field -> attribute name. `text_fields` are token_seq
    fields that hold text (a title), kept as one string instead of a token list.
    The first row of an item wins.
    """
    header = read_header(path)
    item_col = header.column(item_field, "item_field")
    columns = [(header.column(src, "item_fields"), attr) for src, attr in fields.items()]
    for src in text_fields:
        col = header.column(src, "text_fields")
        if src not in fields:
            raise ValueError(f"dataset spec key 'text_fields': {src!r} is not one of the item_fields")
        if header.types[col] not in ("token", "token_seq"):
            raise ValueError(
                f"{path}:{header.lineno}: text field {src!r} is {header.types[col]}, expected token_seq"
            )
    text_cols = {header.names.index(src) for src in text_fields}

    def parse(text: str) -> tuple[str, dict[str, Any]]:
        cells = _split_row(text, header)
        item = _token(_required(cells, header, item_col))
        attrs: dict[str, Any] = {}
        for col, attr in columns:
            if col in text_cols:
                value = " ".join(cells[col].split()) or None
            else:
                value = parse_value(cells[col], header.types[col], header.names[col])
            if value is not None and value != []:
                attrs[attr] = value
        return item, attrs

    attributes: dict[str, dict[str, Any]] = {}
    duplicates = 0
    for _, (item, attrs) in iter_records(path, policy, parse, after_line=header.lineno):
        if item in attributes:
            duplicates += 1
            continue
        attributes[item] = attrs
    return attributes, duplicates


def field_mapping(item_fields: Any, header: AtomicHeader, item_field: str) -> dict[str, str]:
    """The `item_fields` spec (None, list of fields, or {field: attribute}) as {field: attribute}."""
    if item_fields is None:
        return {name: name for name in header.names if name != item_field}
    if isinstance(item_fields, Mapping):
        mapping = dict(item_fields)
    elif isinstance(item_fields, (list, tuple)):
        mapping = {name: name for name in item_fields}
    else:
        raise ValueError(
            f"dataset spec key 'item_fields': expected a list or a mapping, found {type(item_fields).__name__}"
        )
    for src, attr in mapping.items():
        if not isinstance(src, str) or not isinstance(attr, str) or not attr:
            raise ValueError(f"dataset spec key 'item_fields': entry {src!r}: {attr!r} must map a field to a name")
    return mapping


def atomic_files(directory: Path, atomic_name: str | None) -> tuple[Path, Path | None]:
    """`<name>.inter` (required) and `<name>.item` (None when absent); name defaults to the directory's."""
    stem = atomic_name or directory.resolve().name
    inter = find_file(directory, [f"{stem}.inter"], "RecBole interactions")
    item = directory / f"{stem}.item"
    return inter, item if item.is_file() else None


def _split_spec(split_text: Any) -> dict[str, list[str]]:
    if split_text is None:
        return {}
    if not isinstance(split_text, Mapping) or not all(
        isinstance(k, str) and isinstance(v, (list, tuple)) and len(v) >= 2 and all(isinstance(p, str) for p in v)
        for k, v in split_text.items()
    ):
        raise ValueError("dataset spec key 'split_text': expected {attribute: [part, part, ...]} with two or more "
                         f"part names, found {split_text!r}")
    return {k: list(v) for k, v in split_text.items()}


def split_sentences(text: str, parts: Sequence[str]) -> dict[str, str]:
    """"A. B. C." -> {parts[0]: "A", parts[1]: "B", parts[2]: "C"}, split at ". " from the right, so
    the last parts (categories, brand) take the last sentences and the first (a title, which may
    itself hold ". ") keeps the rest; missing and empty sentences give no attribute."""
    pieces = text.strip().removesuffix(".").rsplit(". ", len(parts) - 1)
    # Fewer sentences than parts: the first sentence is the first part, the others the last parts.
    named = {parts[0]: pieces[0], **dict(zip(parts[len(parts) - len(pieces) + 1:], pieces[1:]))}
    return {k: v.strip() for k, v in named.items() if v.strip()}


def load(
    *,
    path: str | Path,
    name: str,
    domain: str,
    user_core: int,
    item_core: int,
    on_error: str = "raise",
    atomic_name: str | None = None,
    user_field: str = "user_id",
    item_field: str = "item_id",
    time_field: str | None = "timestamp",
    rating_field: str = "rating",
    min_rating: float | None = None,
    item_fields: Any = None,
    text_fields: Sequence[str] = (),
    split_text: Mapping[str, Sequence[str]] | None = None,
    require_attributes: bool | None = None,
) -> Dataset:
    """A Dataset from RecBole atomic files.

    `require_attributes` defaults to True when an `.item` file exists (an item
    without attributes has no prompt), False otherwise. `split_text` turns one
    attribute that joins several sentences ("title. categories. brand.") into
    named attributes: {attribute: [part, ...]}, see `split_sentences`.
    """
    directory = dataset_dir(path)
    policy = LinePolicy(on_error)
    if isinstance(text_fields, str) or not all(isinstance(f, str) for f in text_fields):
        raise ValueError(f"dataset spec key 'text_fields': expected a list of field names, found {text_fields!r}")
    splits = _split_spec(split_text)
    inter_path, item_path = atomic_files(directory, atomic_name)
    if require_attributes is None:
        require_attributes = item_path is not None
    if require_attributes and item_path is None:
        raise ValueError(
            f"dataset spec key 'require_attributes' is true but {inter_path.with_suffix('.item')} does not exist"
        )
    interactions, log = read_interactions(
        inter_path, policy, user_field, item_field, time_field, rating_field, min_rating
    )
    attributes: dict[str, dict[str, Any]] = {}
    files = [inter_path]
    if item_path is not None:
        mapping = field_mapping(item_fields, read_header(item_path), item_field)
        attributes, duplicates = read_item_attributes(item_path, policy, item_field, mapping, text_fields)
        for attr, parts in splits.items():
            if attr not in mapping.values():
                raise ValueError(f"dataset spec key 'split_text': {attr!r} is not one of the item attributes "
                                 f"({', '.join(mapping.values())})")
            for attrs in attributes.values():
                if isinstance(attrs.get(attr), str):
                    attrs.update(split_sentences(attrs.pop(attr), parts))
        attributes = {item: attrs for item, attrs in attributes.items() if attrs}
        log["duplicate_item_rows"] = duplicates
        files.append(item_path)
    return dataset_from_rows(
        name=name, domain=domain, interactions=interactions, attributes=attributes, user_core=user_core,
        item_core=item_core, require_attributes=require_attributes, policy=policy, files=files, extra_log=log,
    )
