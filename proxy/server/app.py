"""The Starlette application: routes, error mapping, middleware, lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from proxy.errors import ProxyError
from proxy.server.api import (
    cohere,
    faults,
    flows,
    forward,
    galtea,
    inference_results,
    inspector,
    login,
    products,
    sessions,
    versions,
)
from proxy.server.api.guard import BrowserKeys, GuardPolicy, RequestGuard
from proxy.server.api.middleware import ApiKeyMiddleware, BodyLimitMiddleware
from proxy.server.api.openapi import OPENAPI_DOCUMENT, ApiRoute, openapi
from proxy.server.api.schemas import Health
from proxy.server.runtime import Runtime

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
    if isinstance(exc, ClientDisconnect):  # the client left (or was cut off) before its body came: nobody to tell
        log.debug("%s %s: the client disconnected before its request body arrived", request.method, request.url.path)
        return JSONResponse({"message": "the client disconnected"}, status_code=400)
    redactor = request.app.state.runtime.redactor
    log.error(
        "unexpected error on %s %s: %s", request.method, request.url.path, redactor.redact(repr(exc)), exc_info=exc
    )
    return JSONResponse({"message": "internal error; the server log has the details"}, status_code=500)


def all_routes() -> list[Route]:
    """Every route the server serves; /openapi.json describes exactly these."""
    return [
        *forward.ROUTES,  # first: the route most calls take, and no other path starts /forward/
        ApiRoute("/healthz", healthz, methods=["GET"], response=Health),
        ApiRoute("/openapi.json", openapi, methods=["GET"], response=OPENAPI_DOCUMENT),
        *galtea.ROUTES,
        *versions.ROUTES,
        *sessions.ROUTES,
        *inference_results.ROUTES,
        *products.ROUTES,
        *cohere.ROUTES,
        *faults.ROUTES,
        *inspector.ROUTES,
        *flows.ROUTES,
        *login.ROUTES,
    ]


def create_app(runtime: Runtime) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.close()

    settings = runtime.settings
    keys = BrowserKeys()  # this server's own: two apps in one process never share a CSRF token or cookie
    browser_login = login.InspectorLogin(settings.api_key, keys) if settings.api_key else None
    routes = all_routes()
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(RequestGuard, policy=GuardPolicy.from_settings(settings), keys=keys),
            Middleware(ApiKeyMiddleware, api_key=settings.api_key, login=browser_login),
            Middleware(BodyLimitMiddleware),
            Middleware(faults.FaultScopeMiddleware),
        ],
        exception_handlers={ProxyError: on_proxy_error, HTTPException: on_http_error, Exception: on_unexpected},
    )
    app.state.runtime = runtime
    app.state.browser_keys = keys
    return app
