"""List queries the database answers: the SDK's filters, order and page read from a request, and the rows'
stored JSON sent as they are."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.requests import Request
from starlette.responses import Response

from proxy.server.api.common import created_bounds, page_bounds, query_list, sort_descending
from proxy.sessions.tables import ListQuery


def list_query(request: Request, default_desc: bool = True) -> ListQuery:
    """Order (`sort[]=createdAt&sort[]=asc|desc`), page (`offset`, `limit`) and creation window."""
    offset, limit = page_bounds(request)
    query = ListQuery(descending=sort_descending(request, default_desc), offset=offset, limit=limit)
    start, end = created_bounds(request)
    query.at_least("created_at", start)
    query.at_most("created_at", end)
    return query


def filter_by(request: Request, query: ListQuery, params: dict[str, str]) -> None:
    """`names[]=…` filters: query parameter → column."""
    for param, column in params.items():
        query.any_of(column, query_list(request, param))


def json_text_response(text: str, status_code: int = 200) -> Response:
    """An answer already encoded as the API encodes it (a stored row)."""
    return Response(text, status_code=status_code, media_type="application/json")


def json_array_response(items: Iterable[str]) -> Response:
    return json_text_response(f"[{','.join(items)}]")
