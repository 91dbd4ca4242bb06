"""Galtea-compatible routes for versions."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from proxy.connections.versions import VersionCreate
from proxy.server.api.common import (
    created_between,
    ids_or_404,
    json_response,
    matches_any,
    paginate_sorted,
    query_list,
    read_json_object,
    runtime,
)
from proxy.server.api.openapi import ApiRoute
from proxy.server.api.schemas import Version


async def create_version(request: Request) -> JSONResponse:
    version = await runtime(request).versions.create(await read_json_object(request))
    return json_response(version.to_api(), 201)


async def list_versions(request: Request) -> JSONResponse:
    versions = runtime(request).versions.all()
    ids = ids_or_404(request, versions, lambda v: v.id, "Version")
    products, names = query_list(request, "productIds"), query_list(request, "names")
    found = [
        v
        for v in versions
        if matches_any(v.id, ids)
        and matches_any(v.product_id, products)
        and matches_any(v.name, names)
        and created_between(request, v.created_at)
    ]
    return json_response([v.to_api() for v in paginate_sorted(request, found, lambda v: v.created_at)])


async def get_version(request: Request) -> JSONResponse:
    return json_response(runtime(request).versions.get(request.path_params["id"]).to_api())


ROUTES = [
    ApiRoute("/versions", create_version, methods=["POST"], body=VersionCreate, response=Version, status=201),
    ApiRoute("/versions", list_versions, methods=["GET"], response=list[Version]),
    ApiRoute("/versions/{id}", get_version, methods=["GET"], response=Version),
]
