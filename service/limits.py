"""The configurable request limits (Settings) applied to already type-checked bodies.

Each violation is a 422 naming the field, e.g. `items[3].attributes.title`.
"""
from __future__ import annotations

from typing import Any

from service.errors import ApiError
from service.settings import Settings


def _too_many(field: str, what: str, n: int, limit: int, setting: str) -> ApiError:
    return ApiError(422, "limit_exceeded", f"{field}: {n} {what}, at most {limit} allowed (LLMEMB_{setting.upper()})",
                    field)


def check_count(field: str, n: int, limit: int, setting: str, what: str = "entries") -> None:
    if n > limit:
        raise _too_many(field, what, n, limit, setting)


def check_id(field: str, value: str, settings: Settings) -> None:
    if not value or not value.strip():
        raise ApiError(422, "invalid_id", f"{field}: an item id must be a non-empty string", field)
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
    meaningful = False
    for key, value in attributes.items():
        where = f"{field}.{key}"
        if not key.strip():
            raise ApiError(422, "invalid_attribute", f"{field}: attribute names must not be blank", field)
        if len(key) > settings.max_value_chars:
            raise _too_many(f"{field} (a key)", "characters", len(key), settings.max_value_chars, "max_value_chars")
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list):
            check_count(where, len(value), settings.max_list_values, "max_list_values", "values")
        for v in values:
            if isinstance(v, str) and len(v) > settings.max_value_chars:
                raise _too_many(where, "characters", len(v), settings.max_value_chars, "max_value_chars")
            if isinstance(v, float) and v != v:
                raise ApiError(422, "invalid_attribute", f"{where}: NaN is not a value", where)
        if value is not None and value != "" and value != []:
            meaningful = True
    if not meaningful:
        raise ApiError(422, "empty_attributes", f"{field}: every attribute is empty or null", field)


def check_text(field: str, text: str, settings: Settings) -> None:
    if not text.strip():
        raise ApiError(422, "empty_input", f"{field}: the text is empty", field)
    if len(text) > settings.max_text_chars:
        raise _too_many(field, "characters", len(text), settings.max_text_chars, "max_text_chars")
