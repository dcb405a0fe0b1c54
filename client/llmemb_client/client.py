"""Typed HTTP clients of the v1 API: `LLMEmbClient` (sync) and `AsyncLLMEmbClient`.

Both return the response models of llmemb_client.schemas and raise `LLMEmbError`
(status, code, message, field) for any error answer. `max_retries` retries 429
and 503 answers after their Retry-After, and connection errors after an
exponential back-off (every call of the API is idempotent, so a retry is safe).
"""
from __future__ import annotations

import array
import asyncio
import base64
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from llmemb_client.schemas import (
    DeleteItemResponse,
    EmbeddingsResponse,
    EmbedItemsResponse,
    HealthResponse,
    InfoResponse,
    ItemResponse,
    ModelsResponse,
    PutItemResponse,
    PutItemsResponse,
    ReadyResponse,
    RecommendResponse,
    ScoreResponse,
)

M = TypeVar("M", bound=BaseModel)
RETRYABLE = (429, 503)
BACKOFF_S = 0.5        # first wait after a connection error; doubles per attempt, with jitter
MAX_WAIT_S = 30.0      # no wait (Retry-After or back-off) is longer than this


class LLMEmbError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 body: Any = None, retry_after: float | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.body = body
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    json: Any = None
    model: type[BaseModel] | None = None
    ok_statuses: tuple[int, ...] = ()   # statuses parsed as answers, not errors (readiness)


def _error(response: httpx.Response) -> LLMEmbError:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    err = body.get("error") if isinstance(body, dict) else None
    retry = response.headers.get("retry-after")
    retry_after = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
    if isinstance(err, dict):
        return LLMEmbError(response.status_code, str(err.get("code", "error")), str(err.get("message", "")),
                           err.get("field"), body, retry_after)
    return LLMEmbError(response.status_code, "http_error", str(body)[:500], None, body, retry_after)


def _parse(call: _Call, response: httpx.Response):
    if response.is_error and response.status_code not in call.ok_statuses:
        raise _error(response)
    if call.model is None:
        return response.text
    return call.model.model_validate(response.json())


def decode_base64_embedding(data: str) -> list[float]:
    """An embedding returned with encoding_format="base64" (little-endian float32) -> its floats."""
    values = array.array("f", base64.b64decode(data))
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


def _wait(call: _Call, attempt: int, max_retries: int, response: httpx.Response | None) -> float | None:
    """Seconds to wait before retry `attempt` + 1 of `call`, or None when `response` is the answer.

    `response` None means the request failed to connect or was cut off (and retries are left)."""
    if response is not None and (attempt >= max_retries or response.status_code in call.ok_statuses):
        return None
    if response is None:
        return min(MAX_WAIT_S, BACKOFF_S * 2 ** attempt * (0.5 + random.random()))
    if response.status_code not in RETRYABLE:
        return None
    return min(MAX_WAIT_S, _error(response).retry_after or BACKOFF_S * 2 ** attempt)


class _Calls:
    """The API as a list of calls; the sync and async clients only differ in how they send them."""

    @staticmethod
    def embed_items(items: Sequence[dict[str, Any]], stage: str = "item") -> _Call:
        return _Call("POST", "/v1/items/embed", {"items": list(items), "stage": stage}, EmbedItemsResponse)

    @staticmethod
    def put_item(item_id: str, attributes: dict[str, Any]) -> _Call:
        return _Call("PUT", f"/v1/items/{quote(item_id, safe='')}", {"attributes": attributes}, PutItemResponse)

    @staticmethod
    def put_items(items: Sequence[dict[str, Any]]) -> _Call:
        return _Call("PUT", "/v1/items", {"items": list(items)}, PutItemsResponse)

    @staticmethod
    def get_item(item_id: str) -> _Call:
        return _Call("GET", f"/v1/items/{quote(item_id, safe='')}", None, ItemResponse)

    @staticmethod
    def models() -> _Call:
        return _Call("GET", "/v1/models", None, ModelsResponse)

    @staticmethod
    def delete_item(item_id: str) -> _Call:
        return _Call("DELETE", f"/v1/items/{quote(item_id, safe='')}", None, DeleteItemResponse)

    @staticmethod
    def recommend(history: Sequence[str], k: int = 10, exclude_seen: bool = True,
                  candidates: Sequence[str] | None = None, ignore_unknown: bool = False) -> _Call:
        body: dict[str, Any] = {"history": list(history), "k": k, "exclude_seen": exclude_seen,
                                "ignore_unknown": ignore_unknown}
        if candidates is not None:
            body["candidates"] = list(candidates)
        return _Call("POST", "/v1/recommend", body, RecommendResponse)

    @staticmethod
    def score(history: Sequence[str], candidates: Sequence[str], ignore_unknown: bool = False) -> _Call:
        return _Call("POST", "/v1/score", {"history": list(history), "candidates": list(candidates),
                                           "ignore_unknown": ignore_unknown}, ScoreResponse)

    @staticmethod
    def embeddings(input: str | Sequence[str], model: str = "llmemb", encoding_format: str = "float") -> _Call:
        payload = input if isinstance(input, str) else list(input)
        return _Call("POST", "/v1/embeddings", {"input": payload, "model": model,
                                                "encoding_format": encoding_format}, EmbeddingsResponse)

    @staticmethod
    def info() -> _Call:
        return _Call("GET", "/v1/info", None, InfoResponse)

    @staticmethod
    def health() -> _Call:
        return _Call("GET", "/healthz", None, HealthResponse, ok_statuses=(503,))

    @staticmethod
    def ready() -> _Call:
        return _Call("GET", "/readyz", None, ReadyResponse, ok_statuses=(503,))

    @staticmethod
    def metrics() -> _Call:
        return _Call("GET", "/metrics")


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class LLMEmbClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0, max_retries: int = 0,
                 http: httpx.Client | None = None):
        self.max_retries = max_retries
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout, headers=_headers(api_key))

    def __enter__(self) -> LLMEmbClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call):
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, json=call.json)
            except httpx.TransportError:
                if attempt >= self.max_retries:
                    raise
                response = None
            wait = _wait(call, attempt, self.max_retries, response)
            if wait is None:
                assert response is not None   # _wait answers None only for a response
                return _parse(call, response)
            time.sleep(wait)
            attempt += 1

    def embed_items(self, items: Sequence[dict[str, Any]], stage: str = "item") -> EmbedItemsResponse:
        return self._send(_Calls.embed_items(items, stage))

    def put_item(self, item_id: str, attributes: dict[str, Any]) -> PutItemResponse:
        return self._send(_Calls.put_item(item_id, attributes))

    def put_items(self, items: Sequence[dict[str, Any]]) -> PutItemsResponse:
        """Add or replace several items ({"id", "attributes"} each) in one catalogue change."""
        return self._send(_Calls.put_items(items))

    def get_item(self, item_id: str) -> ItemResponse:
        return self._send(_Calls.get_item(item_id))

    def delete_item(self, item_id: str) -> DeleteItemResponse:
        return self._send(_Calls.delete_item(item_id))

    def recommend(self, history: Sequence[str], k: int = 10, exclude_seen: bool = True,
                  candidates: Sequence[str] | None = None, ignore_unknown: bool = False) -> RecommendResponse:
        return self._send(_Calls.recommend(history, k, exclude_seen, candidates, ignore_unknown))

    def score(self, history: Sequence[str], candidates: Sequence[str], ignore_unknown: bool = False) -> ScoreResponse:
        return self._send(_Calls.score(history, candidates, ignore_unknown))

    def embeddings(self, input: str | Sequence[str], model: str = "llmemb",
                   encoding_format: str = "float") -> EmbeddingsResponse:
        return self._send(_Calls.embeddings(input, model, encoding_format))

    def models(self) -> ModelsResponse:
        return self._send(_Calls.models())

    def info(self) -> InfoResponse:
        return self._send(_Calls.info())

    def health(self) -> HealthResponse:
        return self._send(_Calls.health())

    def ready(self) -> ReadyResponse:
        return self._send(_Calls.ready())

    def metrics(self) -> str:
        return self._send(_Calls.metrics())

    def wait_ready(self, timeout: float = 120.0, interval: float = 0.2) -> ReadyResponse:
        """Poll /readyz until ready; raises TimeoutError (or the start-up error) otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = self.ready()
                if state.ready:
                    return state
                if state.status == "failed":
                    raise LLMEmbError(503, "start_up_failed", state.error or "start-up failed")
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"service not ready after {timeout}s")
            time.sleep(interval)


class AsyncLLMEmbClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0, max_retries: int = 0,
                 http: httpx.AsyncClient | None = None):
        self.max_retries = max_retries
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=_headers(api_key))

    async def __aenter__(self) -> AsyncLLMEmbClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call):
        attempt = 0
        while True:
            try:
                response = await self._http.request(call.method, call.path, json=call.json)
            except httpx.TransportError:
                if attempt >= self.max_retries:
                    raise
                response = None
            wait = _wait(call, attempt, self.max_retries, response)
            if wait is None:
                assert response is not None   # _wait answers None only for a response
                return _parse(call, response)
            await asyncio.sleep(wait)
            attempt += 1

    async def embed_items(self, items: Sequence[dict[str, Any]], stage: str = "item") -> EmbedItemsResponse:
        return await self._send(_Calls.embed_items(items, stage))

    async def put_item(self, item_id: str, attributes: dict[str, Any]) -> PutItemResponse:
        return await self._send(_Calls.put_item(item_id, attributes))

    async def put_items(self, items: Sequence[dict[str, Any]]) -> PutItemsResponse:
        """Add or replace several items ({"id", "attributes"} each) in one catalogue change."""
        return await self._send(_Calls.put_items(items))

    async def get_item(self, item_id: str) -> ItemResponse:
        return await self._send(_Calls.get_item(item_id))

    async def delete_item(self, item_id: str) -> DeleteItemResponse:
        return await self._send(_Calls.delete_item(item_id))

    async def recommend(self, history: Sequence[str], k: int = 10, exclude_seen: bool = True,
                        candidates: Sequence[str] | None = None, ignore_unknown: bool = False) -> RecommendResponse:
        return await self._send(_Calls.recommend(history, k, exclude_seen, candidates, ignore_unknown))

    async def score(self, history: Sequence[str], candidates: Sequence[str],
                    ignore_unknown: bool = False) -> ScoreResponse:
        return await self._send(_Calls.score(history, candidates, ignore_unknown))

    async def embeddings(self, input: str | Sequence[str], model: str = "llmemb",
                         encoding_format: str = "float") -> EmbeddingsResponse:
        return await self._send(_Calls.embeddings(input, model, encoding_format))

    async def models(self) -> ModelsResponse:
        return await self._send(_Calls.models())

    async def info(self) -> InfoResponse:
        return await self._send(_Calls.info())

    async def health(self) -> HealthResponse:
        return await self._send(_Calls.health())

    async def ready(self) -> ReadyResponse:
        return await self._send(_Calls.ready())

    async def metrics(self) -> str:
        return await self._send(_Calls.metrics())
