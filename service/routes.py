"""HTTP routes: check the request, hand the work to the runtime, shape the answer."""
from __future__ import annotations

import base64
from datetime import datetime
from typing import Any, cast
from urllib.parse import unquote_to_bytes

import torch
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from llmemb_client.schemas import (
    BaseModelInfo,
    CatalogueInfo,
    DeleteItemResponse,
    EmbeddedItem,
    EmbeddingData,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedItemsRequest,
    EmbedItemsResponse,
    ErrorResponse,
    HealthResponse,
    InfoResponse,
    ItemResponse,
    ModelCard,
    ModelsResponse,
    PutItemRequest,
    PutItemResponse,
    PutItemsRequest,
    PutItemsResponse,
    PutItemsResult,
    ReadyResponse,
    RecommendRequest,
    RecommendResponse,
    ScoredItem,
    ScoreRequest,
    ScoreResponse,
    Usage,
)
from service.batcher import Overloaded, ShuttingDown
from service.cache import to_bytes
from service.catalogue import CatalogueLost, CatalogueUnavailable, Snapshot, UnknownItem
from service.errors import ApiError
from service.limits import (
    check_attributes,
    check_count,
    check_id,
    check_ids,
    check_text,
)
from service.model_process import ModelUnavailable
from service.runtime import ReadyRuntime, Runtime
from service.scoring import best_items, score_rows

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 422, 429, 503)}


def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime


BEARER = HTTPBearer(auto_error=False, description="an API key from LLMEMB_API_KEYS (when keys are configured)")


async def require_api_key(request: Request, _: HTTPAuthorizationCredentials | None = Depends(BEARER)) -> None:
    """The check itself is ApiKeyChecker's; the HTTPBearer parameter documents the scheme in /docs."""
    await request.app.state.auth(request)


def ready_runtime(request: Request) -> ReadyRuntime:
    rt = runtime_of(request)
    if not rt.ready:
        raise ApiError(503, "not_ready", f"the service is {rt.status}" + (f": {rt.error}" if rt.error else ""),
                       headers={"Retry-After": "1"})
    return cast(ReadyRuntime, rt)  # ready: start-up has set every part


ops = APIRouter(tags=["operations"])
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=ERRORS)


# ------------------------------------------------------------------ helpers
async def embed(rt: ReadyRuntime, stage: str, prompts: list[str]):
    try:
        return await rt.embed_prompts(stage, prompts)
    except Overloaded as e:
        raise ApiError(429, "overloaded", str(e), headers={"Retry-After": str(e.retry_after_s)}) from None
    except ShuttingDown as e:
        raise ApiError(503, "shutting_down", str(e), headers={"Retry-After": "1"}) from None
    except ModelUnavailable as e:
        raise ApiError(503, "model_unavailable", str(e), headers={"Retry-After": "2"}) from None


def resolve(snap: Snapshot, ids: list[str]) -> tuple[list[int], list[str]]:
    rows, unknown = [], []
    for ext in ids:
        row = snap.index.get(ext)
        if row is None:
            unknown.append(ext)
        else:
            rows.append(row)
    return rows, list(dict.fromkeys(unknown))


def unknown_error(field: str, unknown: list[str]) -> ApiError:
    shown = ", ".join(repr(u) for u in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
    return ApiError(422, "unknown_items", f"{field}: {len(unknown)} unknown item id(s): {shown} "
                    "(set ignore_unknown to skip them)", field, details={"unknown": unknown[:1000]})


def resolve_history(rt: ReadyRuntime, snap: Snapshot, history: list[str], candidates: list[str] | None,
                    ignore_unknown: bool):
    s = rt.settings
    check_ids("history", history, s, s.max_history, "max_history")
    if candidates is not None:
        check_ids("candidates", candidates, s, s.max_candidates, "max_candidates")
    rows, unknown = resolve(snap, history)
    cand_rows, cand_unknown = resolve(snap, candidates) if candidates is not None else ([], [])
    if unknown and not ignore_unknown:
        raise unknown_error("history", unknown)
    if cand_unknown and not ignore_unknown:
        raise unknown_error("candidates", cand_unknown)
    if not rows:
        raise ApiError(422, "empty_history", "history: none of the ids is in the catalogue", "history",
                       details={"unknown": unknown[:1000]})
    if candidates is not None and not cand_rows:
        raise ApiError(422, "no_candidates", "candidates: none of the ids is in the catalogue", "candidates",
                       details={"unknown": cand_unknown[:1000]})
    return rows, cand_rows, list(dict.fromkeys(unknown + cand_unknown))


# -------------------------------------------------------------- operations
@ops.get("/healthz", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def healthz(request: Request):
    rt = runtime_of(request)
    if rt.status == "failed":
        return JSONResponse(HealthResponse(status="failed", error=rt.error).model_dump(), status_code=503)
    return HealthResponse(status="ok")


@ops.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def readyz(request: Request):
    rt = runtime_of(request)
    body = ReadyResponse(**rt.readiness())
    return JSONResponse(body.model_dump(), status_code=200 if rt.ready else 503)


@ops.get("/metrics", response_class=Response)
async def metrics(request: Request):
    m = runtime_of(request).metrics
    return Response(m.render(), media_type=m.content_type)


# ------------------------------------------------------------------ items
@v1.post("/items/embed", response_model=EmbedItemsResponse, tags=["items"])
async def embed_items(body: EmbedItemsRequest, rt: ReadyRuntime = Depends(ready_runtime)):
    """Embed items from their attributes: prompt -> LLM -> PCA -> adapter (stage picks where to stop)."""
    s = rt.settings
    check_count("items", len(body.items), s.max_items_per_request, "max_items_per_request", "items")
    for i, item in enumerate(body.items):
        if item.id is not None:
            check_id(f"items[{i}].id", item.id, s)
        check_attributes(f"items[{i}].attributes", item.attributes, s)
    prompts = [rt.scoring.prompt(item.attributes) for item in body.items]
    vectors, cached = await embed(rt, body.stage, prompts)
    data = [EmbeddedItem(index=i, id=item.id, embedding=v.tolist(), cached=c)
            for i, (item, v, c) in enumerate(zip(body.items, vectors, cached))]
    return EmbedItemsResponse(stage=body.stage, dim=rt.bundle.dims[body.stage], fingerprint=rt.bundle.fingerprint,
                              data=data)


def catalogue_error(e: CatalogueUnavailable) -> ApiError:
    """503: Redis is down (retry soon), or the shared catalogue is lost (an operator restores it)."""
    if isinstance(e, CatalogueLost):
        return ApiError(503, "catalogue_lost", str(e))
    return ApiError(503, "catalogue_unavailable", str(e), headers={"Retry-After": "1"})


def check_path_id(request: Request, item_id: str, settings) -> None:
    """The id as it came in the path: the server decodes invalid UTF-8 to U+FFFD, which would
    silently name another item; refuse it instead."""
    try:
        unquote_to_bytes(request.scope.get("raw_path") or b"").decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_path", "path.item_id: the item id is not valid UTF-8 once percent-decoded",
                       "path.item_id") from None
    check_id("path.item_id", item_id, settings)


@v1.put("/items", response_model=PutItemsResponse, tags=["items"])
async def put_items(body: PutItemsRequest, rt: ReadyRuntime = Depends(ready_runtime)):
    """Add or replace several items at once (bulk import): one catalogue change, all or nothing."""
    s = rt.settings
    check_count("items", len(body.items), s.max_items_per_request, "max_items_per_request", "items")
    seen: dict[str, int] = {}
    for i, item in enumerate(body.items):
        check_id(f"items[{i}].id", item.id, s)
        if item.id in seen:
            raise ApiError(422, "duplicate_id", f"items[{i}].id: {item.id!r} is also items[{seen[item.id]}].id",
                           f"items[{i}].id")
        seen[item.id] = i
        check_attributes(f"items[{i}].attributes", item.attributes, s)
    vectors, _ = await embed(rt, "item", [rt.scoring.prompt(item.attributes) for item in body.items])
    batch = [(item.id, rt.bundle.catalogue_vector(item.id, v), item.attributes) for item, v in zip(body.items, vectors)]
    try:
        created, version = await rt.catalogue.put_many(batch)
    except CatalogueUnavailable as e:
        raise catalogue_error(e) from None
    return PutItemsResponse(items=[PutItemsResult(id=item.id, created=c) for item, c in zip(body.items, created)],
                            catalogue_version=version, dim=rt.bundle.dims["item"])


@v1.put("/items/{item_id:path}", response_model=PutItemResponse, tags=["items"],
        responses={201: {"model": PutItemResponse}})
async def put_item(item_id: str, body: PutItemRequest, request: Request, rt: ReadyRuntime = Depends(ready_runtime)):
    """Add an item (201) or replace one (200) from its attributes; every replica sees it within a second."""
    check_path_id(request, item_id, rt.settings)
    check_attributes("attributes", body.attributes, rt.settings)
    vectors, _ = await embed(rt, "item", [rt.scoring.prompt(body.attributes)])
    try:
        created, version = await rt.catalogue.put(item_id, rt.bundle.catalogue_vector(item_id, vectors[0]),
                                                  body.attributes)
    except CatalogueUnavailable as e:
        raise catalogue_error(e) from None
    answer = PutItemResponse(id=item_id, created=created, catalogue_version=version, dim=rt.bundle.dims["item"])
    return JSONResponse(answer.model_dump(), status_code=201 if created else 200)


@v1.get("/items/{item_id:path}", response_model=ItemResponse, tags=["items"],
        responses={404: {"model": ErrorResponse}})
async def get_item(item_id: str, request: Request, rt: ReadyRuntime = Depends(ready_runtime)):
    """An item of the catalogue: its vector (the row recommend and score use), its attributes,
    and whether it came from the bundle or was added through the API."""
    check_path_id(request, item_id, rt.settings)
    snap = rt.catalogue.snapshot
    row = snap.index.get(item_id)
    if row is None:
        raise ApiError(404, "unknown_item", f"item {item_id!r} is not in the catalogue", "path.item_id")
    attributes = snap.attributes.get(item_id)
    if attributes is None:
        attributes = rt.bundle.item_attributes[rt.bundle.rows[item_id] - 1]
    return ItemResponse(id=item_id, source="bundle" if row <= snap.n_bundle else "added", attributes=attributes,
                        embedding=snap.table[row].tolist(), catalogue_version=snap.version)


@v1.delete("/items/{item_id:path}", response_model=DeleteItemResponse, tags=["items"])
async def delete_item(item_id: str, request: Request, rt: ReadyRuntime = Depends(ready_runtime)):
    """Remove an item: it is never recommended again (bundle items too)."""
    check_path_id(request, item_id, rt.settings)
    try:
        version = await rt.catalogue.delete(item_id)
    except UnknownItem:
        raise ApiError(404, "unknown_item", f"item {item_id!r} is not in the catalogue", "path.item_id") from None
    except CatalogueUnavailable as e:
        raise catalogue_error(e) from None
    return DeleteItemResponse(id=item_id, deleted=True, catalogue_version=version)


# ------------------------------------------------------------------ scoring
@v1.post("/recommend", response_model=RecommendResponse, tags=["recommend"])
async def recommend(body: RecommendRequest, rt: ReadyRuntime = Depends(ready_runtime)):
    """Top-k next items for a history, over the bundle items plus the added ones."""
    s = rt.settings
    if body.k > s.max_k:
        raise ApiError(422, "limit_exceeded", f"k: {body.k} is above the limit of {s.max_k} (LLMEMB_MAX_K)", "k")
    snap = rt.catalogue.snapshot
    rows, cand_rows, ignored = resolve_history(rt, snap, body.history, body.candidates, body.ignore_unknown)

    def work():
        table = rt.scoring.scoring_table(snap.table)
        user = rt.scoring.user_vectors([rows], table)[0]
        return best_items(user, table, body.k, snap.blocked_rows, rt.topk,
                          history=rows if body.exclude_seen else None,
                          candidates=cand_rows if body.candidates is not None else None)

    values, best = await rt.run_scoring(work)
    items = [ScoredItem(id=snap.ids[r], score=v) for v, r in zip(values.tolist(), best.tolist())]
    return RecommendResponse(items=items, ignored=ignored, catalogue_version=snap.version)


@v1.post("/score", response_model=ScoreResponse, tags=["recommend"])
async def score(body: ScoreRequest, rt: ReadyRuntime = Depends(ready_runtime)):
    """One score per known candidate (dot product of the user vector and the item vector)."""
    snap = rt.catalogue.snapshot
    rows, cand_rows, ignored = resolve_history(rt, snap, body.history, body.candidates, body.ignore_unknown)

    def work():
        table = rt.scoring.scoring_table(snap.table)
        user = rt.scoring.user_vectors([rows], table)[0]
        return score_rows(user, table, torch.tensor(cand_rows, dtype=torch.long, device=table.device))

    values = await rt.run_scoring(work)
    scores = [ScoredItem(id=snap.ids[r], score=v) for r, v in zip(cand_rows, values.tolist())]
    return ScoreResponse(scores=scores, ignored=ignored, catalogue_version=snap.version)


# ------------------------------------------------------- OpenAI compatible
@v1.post("/embeddings", response_model=EmbeddingsResponse, tags=["openai"])
async def embeddings(body: EmbeddingsRequest, rt: ReadyRuntime = Depends(ready_runtime)):
    """OpenAI-compatible: each input is embedded as a prompt, as given, into item space."""
    s = rt.settings
    if body.model != s.served_model_name:
        raise ApiError(404, "model_not_found", f"model: {body.model!r} is not served here; use "
                       f"{s.served_model_name!r}", "model")
    single = isinstance(body.input, str)
    inputs = [body.input] if single else body.input
    if not inputs:
        raise ApiError(422, "empty_input", "input: at least one text is needed", "input")
    check_count("input", len(inputs), s.max_items_per_request, "max_items_per_request", "inputs")
    for i, text in enumerate(inputs):
        check_text("input" if single else f"input[{i}]", text, s)
    dim = rt.bundle.dims["item"]
    if body.dimensions is not None and body.dimensions != dim:
        raise ApiError(422, "invalid_dimensions", f"dimensions: this model has {dim} dimensions", "dimensions")
    tokens = sum(rt.scoring.token_lengths(inputs))
    vectors, _ = await embed(rt, "item", inputs)
    if body.encoding_format == "base64":
        data = [EmbeddingData(index=i, embedding=base64.b64encode(to_bytes(v)).decode()) for i, v in enumerate(vectors)]
    else:
        data = [EmbeddingData(index=i, embedding=v.tolist()) for i, v in enumerate(vectors)]
    return EmbeddingsResponse(data=data, model=s.served_model_name,
                              usage=Usage(prompt_tokens=tokens, total_tokens=tokens))


@v1.get("/models", response_model=ModelsResponse, tags=["openai"])
async def models(rt: ReadyRuntime = Depends(ready_runtime)):
    """OpenAI-compatible: the one model served here (its id is what /v1/embeddings expects)."""
    created = int(datetime.fromisoformat(rt.bundle.manifest.created_at.replace("Z", "+00:00")).timestamp())
    return ModelsResponse(data=[ModelCard(id=rt.settings.served_model_name, created=created)])


# -------------------------------------------------------------------- info
@v1.get("/info", response_model=InfoResponse, tags=["operations"])
async def info(rt: ReadyRuntime = Depends(ready_runtime)):
    m = rt.bundle.manifest
    snap = rt.catalogue.snapshot
    return InfoResponse(
        base_model=BaseModelInfo(**m.base_model.to_dict()),
        fingerprint=m.fingerprint,
        method=rt.scoring.method,
        format_version=m.format_version,
        created_at=m.created_at,
        dims=m.dims.to_dict(),
        encoder=m.encoder.to_dict(),
        backbone=m.backbone.to_dict(),
        dataset=m.dataset,
        metrics=m.metrics,
        served_model_name=rt.settings.served_model_name,
        catalogue=CatalogueInfo(bundle_items=snap.n_bundle, added=snap.n_added, deleted=snap.n_deleted,
                                active=snap.n_active, version=snap.version, shared=rt.catalogue.shared),
    )

