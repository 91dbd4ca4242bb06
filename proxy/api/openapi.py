"""GET /openapi.json, built from the application's own route table so every route is described."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from proxy import __version__
from proxy.models import ConnectionSpec

ERROR_SCHEMA = {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}
OBJECT = {"type": "object"}
# POST routes that answer 201 (the others answer 200).
CREATING = {"/endpointConnections", "/versions", "/sessions", "/sessions/{id}/turns", "/inferenceResults"}


def _request_schemas() -> tuple[dict[tuple[str, str], dict[str, Any]], dict[str, Any]]:
    connection = ConnectionSpec.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    components = {"EndpointConnection": connection, **connection.pop("$defs", {})}
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("/endpointConnections", "POST"): {"$ref": "#/components/schemas/EndpointConnection"},
        ("/sessions/{id}/turns", "POST"): {
            "type": "object",
            "required": ["input"],
            "properties": {"input": {"oneOf": [OBJECT, {"type": "string"}]}, "context": OBJECT},
        },
    }
    return bodies, components


def _operation(route: Route, method: str, body: dict[str, Any] | None) -> dict[str, Any]:
    doc = (route.endpoint.__doc__ or route.name.replace("_", " ")).strip().splitlines()[0]
    ok = "201" if method == "POST" and route.path in CREATING else "200"
    media = "text/html" if route.path == "/" or route.path.startswith("/inspector") else "application/json"
    operation: dict[str, Any] = {
        "operationId": f"{route.name}_{method.lower()}",
        "summary": doc,
        "responses": {
            ok: {"description": "OK", "content": {media: {"schema": {}}}},
            "4XX": {"description": "Client error", "content": {"application/json": {"schema": ERROR_SCHEMA}}},
        },
    }
    params = re.findall(r"\{(\w+)(?::\w+)?\}", route.path)
    if params:
        operation["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
        ]
    if method in ("POST", "PATCH", "PUT"):
        form = route.path.startswith("/inspector")
        content_type = "application/x-www-form-urlencoded" if form else "application/json"
        operation["requestBody"] = {"required": False, "content": {content_type: {"schema": body or OBJECT}}}
    return operation


def build_spec(routes: list[Any]) -> dict[str, Any]:
    bodies, components = _request_schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            paths.setdefault(path, {})[method.lower()] = _operation(route, method, bodies.get((path, method)))
    return {
        "openapi": "3.1.0",
        "info": {"title": "proxy", "version": __version__},
        "paths": paths,
        "components": {"schemas": components},
    }


async def openapi(request: Request) -> JSONResponse:
    """OpenAPI description of every route."""
    spec = getattr(request.app.state, "openapi", None)
    if spec is None:
        spec = request.app.state.openapi = build_spec(request.app.routes)
    return JSONResponse(spec)
