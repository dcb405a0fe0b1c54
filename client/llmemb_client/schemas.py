"""Request and response bodies of the v1 API (pydantic v2; examples show in /docs).

Types are checked here (strictly: "10" is not a number, 5 is not an id); the
configurable size limits are checked by `limits.py` against the settings.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema

SCALARS = (str, int, float, bool)


def _attribute_value(value: Any) -> Any:
    """One error per bad value, named by its attribute (a union would add member names to the path)."""
    if value is None or isinstance(value, SCALARS):
        return value
    if isinstance(value, list) and all(isinstance(v, SCALARS) for v in value):
        return value
    raise ValueError("an attribute value must be a string, number, boolean, null or a list of those "
                     f"(got {type(value).__name__}{' with nested values' if isinstance(value, list) else ''})")


def _texts(value: Any) -> Any:
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return value
    raise ValueError("input must be a string or a list of strings (token arrays are not supported)")


TextInput = Annotated[
    Any,
    PlainValidator(_texts),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]

AttributeValue = Annotated[
    Any,
    PlainValidator(_attribute_value),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}, {"type": "null"},
                              {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "number"},
                                                                    {"type": "boolean"}]}}]}),
]
Stage = Literal["item", "pca", "llm"]

MOVIE: dict[str, Any] = {"title": "Toy Story", "year": 1995, "genres": ["Animation", "Children's", "Comedy"]}


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# ------------------------------------------------------------------- errors
class Problem(BaseModel):
    field: str
    message: str


class ErrorDetail(BaseModel):
    """Every field an error may carry. `type` and `param` are the OpenAI names (OpenAI SDKs read them)."""
    code: str = Field(examples=["validation_error"], description="what went wrong, stable for programs")
    message: str = Field(examples=["items[0].attributes: Field required"], description="for people")
    type: Literal["invalid_request_error", "authentication_error", "rate_limit_error", "server_error"] = Field(
        description="the OpenAI-style class of the error, from its HTTP status")
    field: str | None = Field(None, examples=["items[0].attributes"], description="the request field at fault")
    param: str | None = Field(None, description="the same as field (OpenAI's name)")
    problems: list[Problem] | None = Field(None, description="validation_error: every problem found (at most 20)")
    unknown: list[str] | None = Field(None, description="unknown_items, empty_history, no_candidates: the ids not "
                                                         "in the catalogue (at most 1000)")


class ErrorResponse(BaseModel):
    error: ErrorDetail


# -------------------------------------------------------------------- items
class ItemIn(Request):
    id: str | None = Field(None, description="echoed back; not used to compute the vector")
    attributes: dict[str, AttributeValue] = Field(description="attribute name -> value; order matters (prompt)")


class EmbedItemsRequest(Request):
    model_config = ConfigDict(
        extra="forbid", strict=True,
        json_schema_extra={"examples": [{"items": [{"id": "1", "attributes": MOVIE}], "stage": "item"}]},
    )
    items: list[ItemIn] = Field(min_length=1)
    stage: Stage = Field("item", description="item: adapter output (d); pca: PCA output; llm: pooled LLM vector (D)")


class EmbeddedItem(BaseModel):
    index: int
    id: str | None
    embedding: list[float]
    cached: bool = Field(description="true: read from the cache; false: computed by the model now")


class EmbedItemsResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "stage": "item", "dim": 64, "fingerprint": "3f1c...", "data": [
            {"index": 0, "id": "1", "embedding": [0.12, -0.03], "cached": False}]}]})
    stage: Stage
    dim: int
    fingerprint: str
    data: list[EmbeddedItem]


class PutItemRequest(Request):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"attributes": MOVIE}]})
    attributes: dict[str, AttributeValue]


class CatalogueItemIn(Request):
    id: str = Field(description="the item's id in the catalogue (a bundle id replaces that item)")
    attributes: dict[str, AttributeValue] = Field(description="attribute name -> value; order matters (prompt)")


class PutItemsRequest(Request):
    model_config = ConfigDict(
        extra="forbid", strict=True,
        json_schema_extra={"examples": [{"items": [{"id": "new-1", "attributes": MOVIE}]}]},
    )
    items: list[CatalogueItemIn] = Field(min_length=1)


class PutItemsResult(BaseModel):
    id: str
    created: bool


class PutItemsResponse(BaseModel):
    items: list[PutItemsResult]
    catalogue_version: int = Field(description="one version step for the whole batch")
    dim: int


class PutItemResponse(BaseModel):
    id: str
    created: bool = Field(description="true: new id; false: replaced an existing item's vector")
    catalogue_version: int
    dim: int


class ItemResponse(BaseModel):
    id: str
    source: str = Field(description="bundle: trained with the model; added: put through the API")
    attributes: dict
    embedding: list[float] = Field(description="the item-space vector recommend and score use")
    catalogue_version: int


class DeleteItemResponse(BaseModel):
    id: str
    deleted: bool
    catalogue_version: int


# ---------------------------------------------------------------- scoring
class RecommendRequest(Request):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"history": ["1", "50", "181"], "k": 10, "exclude_seen": True}]})
    history: list[str] = Field(min_length=1, description="external item ids, oldest first")
    k: int = Field(10, ge=1)
    exclude_seen: bool = True
    candidates: list[str] | None = Field(None, min_length=1, description="rank only these ids")
    ignore_unknown: bool = Field(False, description="drop unknown ids (reported in `ignored`) instead of 422")


class ScoredItem(BaseModel):
    id: str
    score: float


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    ignored: list[str] = Field(default_factory=list)
    catalogue_version: int


class ScoreRequest(Request):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"history": ["1", "50"], "candidates": ["181", "2"]}]})
    history: list[str] = Field(min_length=1)
    candidates: list[str] = Field(min_length=1)
    ignore_unknown: bool = False


class ScoreResponse(BaseModel):
    scores: list[ScoredItem] = Field(description="one per known candidate, in request order")
    ignored: list[str] = Field(default_factory=list)
    catalogue_version: int


# ------------------------------------------------- OpenAI-compatible embeddings
class EmbeddingsRequest(Request):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"input": ["The movie has the following attributes: \ntitle is Toy Story; year is 1995"],
         "model": "llmemb", "encoding_format": "float"}]})
    input: TextInput = Field(description="a prompt or a list of prompts, embedded as given")
    model: str
    encoding_format: Literal["float", "base64"] = Field("float", description="base64: little-endian float32")
    dimensions: int | None = Field(None, description="must equal the item dimension when given")
    user: str | None = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="when the bundle was made (Unix seconds)")
    owned_by: str = "llmemb"


class ModelsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ------------------------------------------------------------- operations
class HealthResponse(BaseModel):
    status: Literal["ok", "failed"]
    error: str | None = None


class ReadyResponse(BaseModel):
    status: Literal["ready", "loading", "draining", "failed"]
    ready: bool
    bundle_loaded: bool
    warmed_up: bool
    cache: Literal["ok", "degraded", "disabled"]
    cache_backend: Literal["redis", "memory", "none"]
    catalogue: Literal["shared", "degraded", "lost", "local"] = Field(
        description="lost: the shared catalogue vanished or went backwards; the last good snapshot is served "
                    "and changes are refused until `python -m service.catalogue_io import` restores it")
    model: Literal["stopped", "starting", "up", "restarting", "failed"] | None = Field(
        None, description="the model process: restarting after it ended (embeddings answer 503 meanwhile; "
                          "recommend and score are unaffected); absent from servers before it existed")
    error: str | None = None


class CatalogueInfo(BaseModel):
    bundle_items: int
    added: int
    deleted: int
    active: int
    version: int
    shared: bool


class BaseModelInfo(BaseModel):
    id: str
    config_sha256: str
    weights_sha256: str
    tokenizer_sha256: str


class InfoResponse(BaseModel):
    base_model: BaseModelInfo
    fingerprint: str
    method: str = Field(description="the item layer: llmemb = Adapter(PCA(LLM)); hybrid = that + a per-item "
                                    "residual for the bundle's trained items (new items get none)")
    format_version: int
    created_at: str
    dims: dict[str, int]
    encoder: dict
    backbone: dict
    dataset: dict
    metrics: dict
    served_model_name: str
    catalogue: CatalogueInfo
