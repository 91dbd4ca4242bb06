"""Cohere-compatible connector routes (the official cohere SDK, given base_url, works against them)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from proxy.config.settings import COHERE_MAX_PAGE
from proxy.connectors.input import ConnectorIn
from proxy.connectors.search import SearchFailed
from proxy.errors import InvalidField
from proxy.server.api import schemas_cohere
from proxy.server.api.common import json_response, query_int, read_json_object, runtime
from proxy.server.api.openapi import ApiRoute


async def list_connectors(request: Request) -> JSONResponse:
    """List connectors, newest first."""
    limit = query_int(request, "limit")
    if limit is not None and limit > COHERE_MAX_PAGE:
        raise InvalidField("limit", f"must be at most {COHERE_MAX_PAGE}")
    page, total = runtime(request).connectors.page(limit, query_int(request, "offset"))
    return json_response({"connectors": [c.to_api() for c in page], "total_count": total})


async def create_connector(request: Request) -> JSONResponse:
    """Register a connector (after a successful test query)."""
    connector = await runtime(request).connectors.create(await read_json_object(request))
    return json_response({"connector": connector.to_api()})


async def get_connector(request: Request) -> JSONResponse:
    """Get a connector."""
    return json_response({"connector": runtime(request).connectors.get(request.path_params["id"]).to_api()})


async def update_connector(request: Request) -> JSONResponse:
    """Update a connector; a new URL or credential is tested again."""
    body = await read_json_object(request)
    connector = await runtime(request).connectors.update(request.path_params["id"], body)
    return json_response({"connector": connector.to_api()})


async def delete_connector(request: Request) -> JSONResponse:
    """Delete a connector."""
    await runtime(request).connectors.delete(request.path_params["id"])
    return json_response({})


async def search_connector(request: Request) -> JSONResponse:
    """Search through a connector: its service auth added, results whole, its `excludes` as `excluded_fields`."""
    try:
        answer, result = await runtime(request).connectors.calls.search(
            request.path_params["id"], await read_json_object(request)
        )
    except SearchFailed as failure:
        outcome = failure.result.outcome or "live"
        status = 404 if outcome == "miss" else 502
        return JSONResponse({"message": failure.message}, status_code=status, headers={"X-Proxy-Cassette": outcome})
    return JSONResponse(answer, headers={"X-Proxy-Cassette": result.outcome or "live"})


ROUTES = [
    ApiRoute("/v1/connectors", list_connectors, methods=["GET"], response=schemas_cohere.ConnectorList),
    ApiRoute(
        "/v1/connectors", create_connector, methods=["POST"], body=ConnectorIn, response=schemas_cohere.ConnectorAnswer
    ),
    ApiRoute("/v1/connectors/{id}", get_connector, methods=["GET"], response=schemas_cohere.ConnectorAnswer),
    ApiRoute(
        "/v1/connectors/{id}",
        update_connector,
        methods=["PATCH"],
        body=ConnectorIn,
        response=schemas_cohere.ConnectorAnswer,
    ),
    ApiRoute("/v1/connectors/{id}", delete_connector, methods=["DELETE"], response=schemas_cohere.ConnectorDeleted),
    ApiRoute(
        "/v1/connectors/{id}/search",
        search_connector,
        methods=["POST"],
        body=schemas_cohere.SearchRequest,
        response=schemas_cohere.SearchAnswer,
    ),
]
