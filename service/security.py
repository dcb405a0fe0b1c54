"""Bearer API keys and the request body limit.

Keys are compared with hmac.compare_digest against every configured key (no
early exit), and never logged or echoed. The body limit is enforced before
FastAPI parses anything, also for chunked uploads without Content-Length.
"""
from __future__ import annotations

import hashlib
import hmac
import json

from fastapi import Request
from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ApiError, error_body
from service.metrics import Metrics


class ApiKeyChecker:
    """FastAPI dependency: 401 unless `Authorization: Bearer <key>` matches a configured key."""

    def __init__(self, keys: list[SecretStr]):
        # Digests have one length, so the comparison time says nothing about a key's length either.
        self._digests = [_digest(k.get_secret_value()) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def matches(self, presented: str) -> bool:
        token = _digest(presented)
        ok = False
        for digest in self._digests:
            ok |= hmac.compare_digest(token, digest)
        return ok

    async def __call__(self, request: Request) -> None:
        if not self._digests:
            return
        challenge = {"WWW-Authenticate": "Bearer"}
        header = request.headers.get("authorization")
        if header is None:
            raise ApiError(401, "missing_api_key", "an API key is required: Authorization: Bearer <key>",
                           "headers.authorization", challenge)
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "invalid_authorization", "the Authorization header must be 'Bearer <key>'",
                           "headers.authorization", challenge)
        if not self.matches(token.strip()):
            raise ApiError(401, "invalid_api_key", "the API key is not valid", "headers.authorization", challenge)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class BodyLimitMiddleware:
    """413 for bodies above `max_bytes`: by Content-Length up front, or while reading a chunked body."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def _reject(self, send: Send, size: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels("body_too_large").inc()
        body = json.dumps(error_body(
            "body_too_large", f"request body of {size} bytes exceeds the limit of {self.max_bytes} "
            "(LLMEMB_MAX_BODY_BYTES)", "body", status=413)).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size > self.max_bytes:
                await self._reject(send, str(size))
                return
            await self.app(scope, receive, send)
            return
        # No Content-Length (chunked): buffer up to the limit, then replay to the app.
        chunks: list[bytes] = []
        total = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away before sending the body
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await self._reject(send, f"more than {self.max_bytes}")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The buffered body first, then the real channel (so disconnects still arrive)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay
