"""The FastAPI application: `create_app()` wires settings, runtime, routes and middleware.

Run with `python -m service` or `uvicorn service.app:create_app --factory`.
"""
from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.access import AccessMiddleware
from service.errors import install_error_handlers
from service.openapi import install as install_openapi
from service.routes import ops, v1
from service.runtime import Runtime
from service.security import ApiKeyChecker, BodyLimitMiddleware
from service.settings import Settings

DESCRIPTION = """LLMEmb item embeddings and sequential recommendations.

Items are embedded from their attributes (prompt -> LLM -> PCA -> adapter) into the
item space of a recommender trained with those vectors; new items join the catalogue
without retraining. Errors are JSON: `{"error": {"code", "message", "type", "field", "param"}}` (`type`
and `param` are the OpenAI names, so OpenAI SDKs read them too).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    runtime = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    # operationId = the route function's name (embed_items, recommend, ...): stable for generated clients.
    app = FastAPI(title="LLMEmb-serve", version="1", description=DESCRIPTION, lifespan=lifespan,
                  generate_unique_id_function=lambda route: route.name)
    app.state.runtime = runtime
    app.state.auth = ApiKeyChecker(settings.api_keys)
    install_error_handlers(app)
    app.include_router(ops)
    app.include_router(v1)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, metrics=runtime.metrics)
    app.add_middleware(AccessMiddleware, metrics=runtime.metrics)
    install_openapi(app, settings)
    return app
