"""The published OpenAPI schema, with this deployment's request limits written into it.

The limits are settings (LLMEMB_MAX_*), checked per request by limits.py; here the same
values become maxItems, maxLength, maxProperties and maximum in the schema, so generated
clients and fuzzers see them. Each rule below names a schema location and a setting.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from service.settings import Settings

Schema = dict[str, Any]


def _ids(limit: int, id_chars: int) -> Schema:
    return {"maxItems": limit, "items": {"maxLength": id_chars}}


def _attributes(s: Settings) -> Schema:
    """An attribute map: count, key length, string length and list length."""
    text = {"maxLength": s.max_attribute_chars}
    return {"maxProperties": s.max_attributes_per_item, "propertyNames": text,
            "additionalProperties": {"anyOf": [text, {}, {}, {}, {"maxItems": s.max_list_values,
                                                                 "items": {"anyOf": [text, {}, {}]}}]}}


def _input(s: Settings) -> Schema:
    text = {"maxLength": s.max_text_chars}
    return {"anyOf": [text, {"maxItems": s.max_items_per_request, "items": text}]}


# component -> property -> the keywords it gets, from the settings
RULES: dict[str, dict[str, Callable[[Settings], Schema]]] = {
    "EmbedItemsRequest": {"items": lambda s: {"maxItems": s.max_items_per_request}},
    "ItemIn": {"id": lambda s: {"anyOf": [{"maxLength": s.max_id_chars}, {}]}, "attributes": _attributes},
    "PutItemsRequest": {"items": lambda s: {"maxItems": s.max_items_per_request}},
    "CatalogueItemIn": {"id": lambda s: {"maxLength": s.max_id_chars}, "attributes": _attributes},
    "PutItemRequest": {"attributes": _attributes},
    "EmbeddingsRequest": {"input": _input},
    "RecommendRequest": {"history": lambda s: _ids(s.max_history, s.max_id_chars),
                         "candidates": lambda s: {"anyOf": [_ids(s.max_candidates, s.max_id_chars), {}]},
                         "k": lambda s: {"maximum": s.max_k}},
    "ScoreRequest": {"history": lambda s: _ids(s.max_history, s.max_id_chars),
                     "candidates": lambda s: _ids(s.max_candidates, s.max_id_chars)},
}
PATH_ITEM_ID = "/v1/items/{item_id}"


def _merge(target: Schema, extra: Schema, where: str) -> None:
    """Write `extra`'s keywords into `target`, following the same nesting ({} = nothing to add)."""
    for key, value in extra.items():
        if key == "anyOf":
            members = target.get("anyOf")
            if not isinstance(members, list) or len(members) != len(value):
                raise KeyError(f"{where}: the schema's anyOf no longer matches the limit rule")
            for i, (member, more) in enumerate(zip(members, value)):
                _merge(member, more, f"{where}.anyOf[{i}]")
        elif isinstance(value, dict) and key in ("items", "additionalProperties", "propertyNames"):
            _merge(target.setdefault(key, {}), value, f"{where}.{key}")
        else:
            target[key] = value


def with_limits(schema: Schema, settings: Settings) -> Schema:
    components = schema["components"]["schemas"]
    for name, properties in RULES.items():
        for prop, rule in properties.items():
            _merge(components[name]["properties"][prop], rule(settings), f"{name}.{prop}")
    for operation in schema["paths"].get(PATH_ITEM_ID, {}).values():
        for parameter in operation.get("parameters", []):
            if parameter["name"] == "item_id":
                parameter["schema"]["maxLength"] = settings.max_id_chars
    return schema


def install(app: FastAPI, settings: Settings) -> None:
    """Serve FastAPI's own schema with the limits written into it (once: FastAPI keeps the schema
    it builds in app.openapi_schema, and the limits go into that same dict)."""
    generate = app.openapi

    def openapi() -> Schema:
        if app.openapi_schema is None:
            with_limits(generate(), settings)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
