"""GET /products and /products/{id}: the products that endpoint connections and versions name."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from proxy.connections.products import all_products, get_product
from proxy.server.api.common import (
    created_between,
    ids_or_404,
    json_response,
    matches_any,
    paginate_sorted,
    query_list,
    runtime,
)
from proxy.server.api.openapi import ApiRoute
from proxy.server.api.schemas import Product


async def list_products(request: Request) -> JSONResponse:
    """List products (`names[]`, `ids[]`), newest first."""
    rt = runtime(request)
    products = all_products(rt.connections, rt.versions)
    ids = ids_or_404(request, products, lambda p: p.id, "Product")
    names = query_list(request, "names")
    found = [
        p
        for p in products
        if matches_any(p.id, ids) and matches_any(p.id, names) and created_between(request, p.created_at)
    ]
    return json_response([p.to_api() for p in paginate_sorted(request, found, lambda p: p.created_at)])


async def get_product_by_id(request: Request) -> JSONResponse:
    """Get a product."""
    rt = runtime(request)
    return json_response(get_product(rt.connections, rt.versions, request.path_params["id"]).to_api())


ROUTES = [
    ApiRoute("/products", list_products, methods=["GET"], response=list[Product]),
    ApiRoute("/products/{id}", get_product_by_id, methods=["GET"], response=Product),
]
