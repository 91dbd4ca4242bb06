"""The Starlette application: routes, error mapping, middleware, lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from proxy.api import cohere, forward, galtea, inspector, sessions
from proxy.api.middleware import ApiKeyMiddleware, BodyLimitMiddleware
from proxy.api.openapi import openapi
from proxy.errors import ProxyError
from proxy.runtime import Runtime

log = logging.getLogger("proxy")


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def on_proxy_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProxyError)
    return JSONResponse(exc.body(), status_code=exc.status_code)


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    message = "no such route" if exc.status_code == 404 else str(exc.detail)
    return JSONResponse({"message": f"{request.method} {request.url.path}: {message}"}, status_code=exc.status_code)


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Logged for the operator (secrets scrubbed); the client gets no stack trace.
    redactor = request.app.state.runtime.redactor
    log.error("unexpected error on %s %s: %s", request.method, request.url.path, redactor.redact(repr(exc)))
    return JSONResponse({"message": "internal error; the server log has the details"}, status_code=500)


def all_routes() -> list[Route]:
    """Every route the server serves; /openapi.json describes exactly these."""
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *galtea.ROUTES,
        *sessions.ROUTES,
        *forward.ROUTES,
        *cohere.ROUTES,
        *inspector.ROUTES,
    ]


def create_app(runtime: Runtime) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.close()

    routes = all_routes()
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(ApiKeyMiddleware, api_key=runtime.settings.api_key),
            Middleware(BodyLimitMiddleware),
        ],
        exception_handlers={ProxyError: on_proxy_error, HTTPException: on_http_error, Exception: on_unexpected},
    )
    app.state.runtime = runtime
    return app
