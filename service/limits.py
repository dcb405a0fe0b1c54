"""The configurable request limits (Settings) applied to already type-checked bodies.

Each violation is a 422 naming the field, e.g. `items[3].attributes.title`.
"""
from __future__ import annotations

import math
import unicodedata
from typing import Any

from llmemb.prompts import has_content
from service.errors import ApiError
from service.settings import Settings


def _too_many(field: str, what: str, n: int, limit: int, setting: str) -> ApiError:
    return ApiError(422, "limit_exceeded", f"{field}: {n} {what}, at most {limit} allowed (LLMEMB_{setting.upper()})",
                    field)


def check_count(field: str, n: int, limit: int, setting: str, what: str = "entries") -> None:
    if n > limit:
        raise _too_many(field, what, n, limit, setting)


def _surrogate(text: str) -> str | None:
    """A lone UTF-16 surrogate (JSON's \\ud800 escapes allow one) cannot be encoded as UTF-8,
    so it could be neither hashed into a cache key nor echoed back: name it, or None."""
    for c in text:
        if 0xD800 <= ord(c) <= 0xDFFF:
            return f"a lone UTF-16 surrogate (U+{ord(c):04X})"
    return None


def _control(text: str) -> str | None:
    for c in text:
        if unicodedata.category(c) == "Cc":
            return f"a control character (U+{ord(c):04X})"
    return None


def check_id(field: str, value: str, settings: Settings) -> None:
    if not value or not value.strip():
        raise ApiError(422, "invalid_id", f"{field}: an item id must be a non-empty string", field)
    bad = _surrogate(value) or _control(value)
    if bad:
        raise ApiError(422, "invalid_id", f"{field}: an item id must not contain {bad}", field)
    if len(value) > settings.max_id_chars:
        raise _too_many(field, "characters", len(value), settings.max_id_chars, "max_id_chars")


def check_ids(field: str, values: list[str], settings: Settings, limit: int, setting: str) -> None:
    check_count(field, len(values), limit, setting, "ids")
    for i, v in enumerate(values):
        check_id(f"{field}[{i}]", v, settings)


def check_attributes(field: str, attributes: dict[str, Any], settings: Settings) -> None:
    if not attributes:
        raise ApiError(422, "empty_attributes", f"{field}: at least one attribute is needed", field)
    check_count(field, len(attributes), settings.max_attributes_per_item, "max_attributes_per_item", "attributes")
    for key, value in attributes.items():
        if not key.strip():
            raise ApiError(422, "invalid_attribute", f"{field}: attribute names must not be blank", field)
        bad = _surrogate(key)
        if bad:  # the name cannot be part of the error's field: it would not encode either
            raise ApiError(422, "invalid_attribute", f"{field}: an attribute name contains {bad}", field)
        where = f"{field}.{key}"
        if len(key) > settings.max_attribute_chars:
            raise _too_many(f"{field} (a key)", "characters", len(key), settings.max_attribute_chars, "max_attribute_chars")
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list):
            check_count(where, len(value), settings.max_list_values, "max_list_values", "values")
        for v in values:
            if isinstance(v, str) and len(v) > settings.max_attribute_chars:
                raise _too_many(where, "characters", len(v), settings.max_attribute_chars, "max_attribute_chars")
            if isinstance(v, float) and not math.isfinite(v):
                raise ApiError(422, "invalid_attribute", f"{where}: {v} is not a finite number", where)
            bad = _surrogate(v) if isinstance(v, str) else None
            if bad:
                raise ApiError(422, "invalid_attribute", f"{where}: the value contains {bad}", where)
    if not has_content(attributes):
        raise ApiError(422, "empty_attributes", f"{field}: every attribute is empty or null", field)


def check_text(field: str, text: str, settings: Settings) -> None:
    if not text.strip():
        raise ApiError(422, "empty_input", f"{field}: the text is empty", field)
    bad = _surrogate(text)
    if bad:
        raise ApiError(422, "invalid_input", f"{field}: the text contains {bad}", field)
    if len(text) > settings.max_text_chars:
        raise _too_many(field, "characters", len(text), settings.max_text_chars, "max_text_chars")
