"""One error shape for every failure: {"error": {"code", "message", "type", "field"?, "param"?, ...}}."""
from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("llmemb.service")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers
        self.details = details


def error_type(status: int) -> str:
    """The OpenAI-style class of an error, from its HTTP status (OpenAI SDKs read `type`)."""
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(code: str, message: str, field: str | None = None, details: dict[str, Any] | None = None,
               status: int = 400) -> dict:
    """{"error": {"code", "message", "type", "field", "param", ...details}}: `param` repeats `field`
    under the OpenAI name, so OpenAI clients read these errors too (llmemb_client/schemas.py: ErrorDetail)."""
    err: dict[str, Any] = {"code": code, "message": message, "type": error_type(status)}
    if field is not None:
        err["field"] = field
        err["param"] = field
    if details:
        err.update(details)
    return {"error": err}


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(error.code, error.message, error.field, error.details, error.status),
        status_code=error.status,
        headers=error.headers,
    )


def field_path(loc: tuple | list) -> str:
    """('body', 'items', 0, 'attributes') -> 'items[0].attributes'; other sources keep their prefix."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "body"


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        first = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (first.get("ctx") or {}).get("error", "invalid JSON")
        return JSONResponse(error_body("invalid_json", f"request body is not valid JSON: {reason}", "body"),
                            status_code=400)
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    field = field_path(first.get("loc", ()))
    problems = [{"field": field_path(e.get("loc", ())), "message": e.get("msg", "")} for e in errors[:20]]
    message = f"{field}: {first.get('msg', 'invalid value')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return JSONResponse(error_body("validation_error", message, field, {"problems": problems}, 422), status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return _validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "body_too_large"}
        code = codes.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return JSONResponse(error_body(code, message, status=exc.status_code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "internal error; see the service log", status=500),
                            status_code=500)
