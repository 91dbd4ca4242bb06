"""Galtea-compatible routes: endpoint connections, testConnection, SDK version check."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.config.settings import DEFAULT_TEST_INPUT, LATEST_SDK_VERSION, MINIMUM_SDK_VERSION
from proxy.connections.compiled import CompiledConnection, public_fields
from proxy.connections.spec import ConnectionSpec
from proxy.engine.results import CallContext, CallLabel, CallResult
from proxy.server.api import schemas
from proxy.server.api.common import (
    created_between,
    json_response,
    matches_any,
    paginate_sorted,
    query_list,
    read_json_object,
    record_mode_header,
    runtime,
)
from proxy.server.api.openapi import ApiRoute


async def minimum_sdk_version(request: Request) -> JSONResponse:
    return json_response(
        {"latestSdkVersionPublished": LATEST_SDK_VERSION, "minimumSdkVersionSupported": MINIMUM_SDK_VERSION}
    )


async def create_connection(request: Request) -> JSONResponse:
    conn = await runtime(request).connections.create(await read_json_object(request))
    return json_response(public_fields(conn), 201)


async def list_connections(request: Request) -> JSONResponse:
    product_ids = query_list(request, "productIds")
    names = query_list(request, "names")
    types = query_list(request, "types")
    methods = query_list(request, "httpMethods")
    auth_types = query_list(request, "authTypes")
    name_part = (request.query_params.get("name") or "").lower()
    url_part = (request.query_params.get("url") or "").lower()

    def wanted(conn: CompiledConnection) -> bool:
        s = conn.spec
        return (
            matches_any(s.product_id, product_ids)
            and matches_any(s.name, names)
            and matches_any(s.type.value, types, case_insensitive=True)
            and matches_any(s.http_method.value, methods, case_insensitive=True)
            and matches_any(s.auth_type.value, auth_types, case_insensitive=True)
            and name_part in s.name.lower()
            and url_part in conn.shown_url.lower()  # never a probe for a credential in the URL
            and created_between(request, conn.created_at)
        )

    found = [c for c in runtime(request).connections.all() if wanted(c)]
    page = paginate_sorted(request, found, lambda c: c.created_at)
    return json_response([public_fields(c) for c in page])


async def get_connection(request: Request) -> JSONResponse:
    conn = runtime(request).connections.get(request.path_params["id"])
    return json_response(public_fields(conn))


async def update_connection(request: Request) -> JSONResponse:
    conn = await runtime(request).connections.update(request.path_params["id"], await read_json_object(request))
    return json_response(public_fields(conn))


async def delete_connection(request: Request) -> Response:
    conn_id = request.path_params["id"]
    await runtime(request).connections.delete(conn_id)
    return json_response({"id": conn_id, "deleted": True})


async def test_connection(request: Request) -> JSONResponse:
    """With `id`: the stored connection plus overrides; without: the fields given. `input` and
    `context` (this server's extension) choose what the template renders; a sample input otherwise."""
    rt = runtime(request)
    mode = record_mode_header(request)
    data = await read_json_object(request)
    given = schemas.TestConnectionRequest.parse(data)  # a model made at import time: fields read by name
    test_input = getattr(given, "input", None)
    test_input = DEFAULT_TEST_INPUT if test_input is None else test_input
    test_context = getattr(given, "context", None) or {}
    conn_id = getattr(given, "id", None)
    data = {k: v for k, v in data.items() if k not in ("id", "input", "context")}
    if conn_id:
        conn = rt.connections.build_patched(rt.connections.get(conn_id), data)
    else:
        data.setdefault("name", "connection-test")
        data.setdefault("productId", data.pop("product_id", "connection-test"))
        data.setdefault("type", "CONVERSATION")
        conn = rt.connections.build(data)
    handle = rt.library.server_handle("connections", conn.name, "test", rt.library.mode_for(conn.name))
    ctx = CallContext(
        input=test_input,
        context=test_context,
        cassette=handle.for_call(mode),
        label=CallLabel("testConnection"),
        warn_undefined=True,
    )
    # Credentials given here are masked in what this call produces, and not kept after it.
    with rt.connections.secrets_for_one_call(conn):
        result = await rt.engine.call(conn, ctx)
    return json_response(test_result(result))


def test_result(result: CallResult) -> dict[str, Any]:
    reply = result.reply
    return {
        "success": result.ok,
        "statusCode": reply.status if reply else 0,
        "latency": round(result.latency_ms, 3),
        "response": (reply.json if reply.is_json else reply.text) if reply else None,
        "error": result.error,
        "extractedOutput": result.extracted or None,
        "extractionError": result.extraction_error,
        "warnings": result.warnings,
        "exchange": result.to_json(),
    }


ROUTES = [
    ApiRoute("/minimum-sdk-version", minimum_sdk_version, methods=["GET"], response=schemas.MinimumSdkVersion),
    ApiRoute(
        "/endpointConnections",
        create_connection,
        methods=["POST"],
        body=ConnectionSpec,
        response=schemas.EndpointConnection,
        status=201,
    ),
    ApiRoute("/endpointConnections", list_connections, methods=["GET"], response=list[schemas.EndpointConnection]),
    ApiRoute(
        "/endpointConnections/testConnection",
        test_connection,
        methods=["POST"],
        body=schemas.TestConnectionRequest,
        response=schemas.TestConnectionResult,
    ),
    ApiRoute("/endpointConnections/{id}", get_connection, methods=["GET"], response=schemas.EndpointConnection),
    ApiRoute(
        "/endpointConnections/{id}",
        update_connection,
        methods=["PATCH"],
        body=schemas.EndpointConnectionPatch,
        response=schemas.EndpointConnection,
    ),
    ApiRoute("/endpointConnections/{id}", delete_connection, methods=["DELETE"], response=schemas.Deleted),
]
