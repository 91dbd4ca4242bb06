"""GET /openapi.json, built from the application's own route table so every route is described.

Each route says what it takes and answers (`ApiRoute`): a pydantic model (the one that validates the
body, or describes the answer), `list[Model]` for a bare JSON array, or a JSON schema for what no model
describes (HTML pages, the forward route's bytes).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from proxy import __version__

JSON = "application/json"
HTML = {"type": "string", "description": "an HTML page"}
ANY_BYTES = {"type": "string", "format": "binary"}
OPENAPI_DOCUMENT = {"type": "object", "required": ["openapi", "paths"], "description": "this document"}
ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "message": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {"type": "object", "properties": {"field": {"type": "string"}, "reason": {"type": "string"}}},
        },
    },
    "required": ["message"],
}
BODY_METHODS = {"POST", "PUT", "PATCH"}
REF_TEMPLATE = "#/components/schemas/{model}"


class ApiRoute(Route):
    """A route that says what it takes (`body`, for POST/PUT/PATCH) and what it answers (`response`)."""

    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        methods: list[str],
        response: Any,
        body: Any = None,
        status: int = 200,
        media: str = JSON,
        body_media: str = JSON,
    ) -> None:
        super().__init__(path, endpoint, methods=methods)
        self.body, self.response, self.status = body, response, status
        self.media, self.body_media = media, body_media


def _models(kind: Any) -> list[type[BaseModel]]:
    if get_origin(kind) is list:
        return _models(get_args(kind)[0])
    return [kind] if isinstance(kind, type) and issubclass(kind, BaseModel) else []


def _schema(kind: Any, mode: JsonSchemaMode, refs: dict[tuple[type[BaseModel], JsonSchemaMode], Any]) -> Any:
    if get_origin(kind) is list:
        return {"type": "array", "items": _schema(get_args(kind)[0], mode, refs)}
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return refs[(kind, mode)]
    return kind


def _operation(route: Route, method: str, refs: dict[Any, Any]) -> dict[str, Any]:
    doc = (route.endpoint.__doc__ or route.name.replace("_", " ")).strip().splitlines()[0]
    status, media = str(getattr(route, "status", 200)), getattr(route, "media", JSON)
    response = getattr(route, "response", None)
    operation: dict[str, Any] = {
        "operationId": f"{route.name}_{method.lower()}",
        "summary": doc,
        "responses": {
            status: {"description": "OK", "content": {media: {"schema": _schema(response, "serialization", refs)}}},
            "4XX": {"description": "Client error", "content": {JSON: {"schema": ERROR_SCHEMA}}},
        },
    }
    params = re.findall(r"\{(\w+)(?::\w+)?\}", route.path)
    if params:
        operation["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
        ]
    if method in BODY_METHODS:
        body = {"schema": _schema(getattr(route, "body", None), "validation", refs)}
        operation["requestBody"] = {"required": False, "content": {getattr(route, "body_media", JSON): body}}
    return operation


def build_spec(routes: list[Any]) -> dict[str, Any]:
    described = [r for r in routes if isinstance(r, Route)]
    pairs: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for route in described:
        for model in _models(getattr(route, "body", None)):
            pairs[(model, "validation")] = None
        for model in _models(getattr(route, "response", None)):
            pairs[(model, "serialization")] = None
    refs, top = models_json_schema(list(pairs), ref_template=REF_TEMPLATE)
    paths: dict[str, dict[str, Any]] = {}
    for route in described:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            paths.setdefault(path, {})[method.lower()] = _operation(route, method, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "proxy", "version": __version__},
        "paths": paths,
        "components": {"schemas": top.get("$defs", {})},
    }


async def openapi(request: Request) -> JSONResponse:
    """OpenAPI description of every route."""
    spec = getattr(request.app.state, "openapi", None)
    if spec is None:
        spec = request.app.state.openapi = build_spec(request.app.routes)
    return JSONResponse(spec)
