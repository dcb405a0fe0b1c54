"""Reading a JSON-lines catalogue: items, line numbers, byte ranges and chunks."""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmemb.prompts import has_content
from service.backfill.config import CatalogueError, Counts

log = logging.getLogger("llmemb.backfill")


@dataclass(frozen=True)
class CatalogueItem:
    line: int
    id: str
    attributes: dict[str, Any]


def _no_constants(name: str):
    raise ValueError(f"{name} is not a value")


def parse_item(text: str) -> tuple[str, dict[str, Any]]:
    """One catalogue line -> (id, attributes); ValueError saying what is wrong."""
    try:
        row = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected an object with id and attributes, got a JSON {type(row).__name__}")
    if "id" not in row or "attributes" not in row:
        raise ValueError(f"expected keys id and attributes, got {sorted(row)}")
    item_id, attributes = row["id"], row["attributes"]
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or not str(item_id).strip():
        raise ValueError(f"id must be a non-empty string or an integer, got {item_id!r}")
    if not isinstance(attributes, dict):
        raise ValueError(f"attributes must be an object, got a JSON {type(attributes).__name__}")
    # The service refuses such an item (422 empty_attributes): its prompt would be the instruction alone.
    if not has_content(attributes):
        raise ValueError("attributes are empty (every value is null, empty or missing)")
    return str(item_id), attributes


def read_items(path: str | Path, on_error: str, counts: Counts, start: int = 0, end: int | None = None,
               first_line: int = 1) -> Iterator[CatalogueItem]:
    """Valid items of the lines in bytes [start, end) of a JSON-lines file; `start` is a line start.

    Lines are split on b"\\n" only (JSON strings may hold other Unicode line separators).
    Malformed lines raise CatalogueError, or with on_error="skip" are counted in counts.errors.
    """
    with open(path, "rb") as f:
        f.seek(start)
        pos, line_no = start, first_line - 1
        while end is None or pos < end:
            raw = f.readline()
            if not raw:
                break
            pos += len(raw)
            line_no += 1
            if not raw.strip():
                continue
            try:
                item_id, attributes = parse_item(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                reason = "not UTF-8" if isinstance(e, UnicodeDecodeError) else str(e)
                if on_error == "raise":
                    raise CatalogueError(f"{path}:{line_no}: {reason}") from None
                counts.errors += 1
                log.warning("%s:%d: skipped: %s", path, line_no, reason)
                continue
            yield CatalogueItem(line_no, item_id, attributes)


def line_ranges(path: str | Path, lines_per_range: int) -> list[tuple[int, int, int]]:
    """(start byte, end byte, first line number) of consecutive blocks of `lines_per_range` lines."""
    ranges, start, pos, first, n = [], 0, 0, 1, 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            pos += len(raw)
            n += 1
            if n == lines_per_range:
                ranges.append((start, pos, first))
                start, first, n = pos, line_no + 1, 0
    if n:
        ranges.append((start, pos, first))
    return ranges


def chunked(items: Iterable[CatalogueItem], size: int) -> Iterator[list[CatalogueItem]]:
    chunk: list[CatalogueItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
