"""GET /openapi.json: every route, with request schemas taken from the pydantic models."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from proxy import __version__
from proxy.models import ConnectionSpec

ERROR_SCHEMA = {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}


def _op(summary: str, body: dict[str, Any] | None = None, params: list[str] = (), ok: str = "200") -> dict[str, Any]:  # type: ignore[assignment]
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            ok: {"description": "OK", "content": {"application/json": {"schema": {}}}},
            "4XX": {"description": "Client error", "content": {"application/json": {"schema": ERROR_SCHEMA}}},
        },
    }
    if params:
        op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params]
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def build_spec() -> dict[str, Any]:
    connection = ConnectionSpec.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    defs = connection.pop("$defs", {})
    schemas = {"EndpointConnection": connection, **defs}
    ref = {"$ref": "#/components/schemas/EndpointConnection"}
    obj = {"type": "object"}
    paths: dict[str, Any] = {
        "/healthz": {"get": _op("Liveness")},
        "/minimum-sdk-version": {"get": _op("SDK versions this server supports")},
        "/endpointConnections": {
            "get": _op("List endpoint connections"),
            "post": _op("Create an endpoint connection", ref, ok="201"),
        },
        "/endpointConnections/testConnection": {"post": _op("Test a stored or unsaved connection", obj)},
        "/endpointConnections/{id}": {
            "get": _op("Get an endpoint connection", params=["id"]),
            "patch": _op("Update an endpoint connection", obj, params=["id"]),
            "delete": _op("Delete an endpoint connection", params=["id"]),
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "proxy", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas},
    }


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(build_spec())
