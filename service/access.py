"""Per request: its id (X-Request-ID, in and out), the in-flight gauge, latency by route, and one
JSON access-log line (request id, method, route, status, latency) on the `llmemb.access` logger."""
from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Receive, Scope, Send

from service.metrics import Metrics

log = logging.getLogger("llmemb.access")

HEADER = b"x-request-id"
# A caller's id is kept when it is short and plain (it goes into logs and a response header).
VALID_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


def request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == HEADER:
            text = value.decode("latin-1")
            if VALID_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


class AccessMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*message.get("headers", []), (HEADER, rid.encode())]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.request_seconds.labels(scope["method"], route, str(status["code"])).observe(elapsed)
            log.info("request", extra={"request_id": rid, "method": scope["method"], "route": route,
                                       "status": status["code"], "latency_ms": round(elapsed * 1000, 2)})
