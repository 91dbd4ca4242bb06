"""What the API routes share: the runtime they work through, request parsing and list queries."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse

from proxy.config.record_mode import RECORD_MODE_HEADER, RecordMode, call_mode
from proxy.errors import BadRequest, InvalidField, NotFound
from proxy.security import jsonbounds
from proxy.server.runtime import Runtime

T = TypeVar("T")


def runtime(request: Request) -> Runtime:
    """The server's runtime, which every route works through."""
    rt: Runtime = request.app.state.runtime
    return rt


async def read_json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = jsonbounds.loads(raw)
    except jsonbounds.JsonRefused as exc:
        raise BadRequest(f"request body is refused: {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def record_mode_header(request: Request) -> RecordMode | None:
    """The record mode this one call asks for (422 naming the header for a bad value)."""
    return call_mode(request.headers.get(RECORD_MODE_HEADER))


def json_response(data: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status_code)


def query_list(request: Request, name: str) -> list[str]:
    """`names[]=a&names[]=b` (the SDK's form) or `names=a`."""
    return request.query_params.getlist(f"{name}[]") or request.query_params.getlist(name)


def ids_or_404(request: Request, items: Sequence[T], item_id: Callable[[T], str], kind: str) -> list[str]:
    """`ids[]` is an entity lookup, as in Galtea: an unknown id answers 404 rather than an empty list."""
    wanted = query_list(request, "ids")
    known = {item_id(i) for i in items}
    missing = [i for i in wanted if i not in known]
    if missing:
        raise NotFound(f"{kind} {', '.join(missing)} not found")
    return wanted


SQL_INT_MAX = 2**63 - 1  # the largest integer SQLite takes (lists page in SQL)


def query_int(request: Request, name: str, minimum: int = 0, maximum: int = SQL_INT_MAX) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidField(name, f"must be an integer, got {raw!r}") from None
    if value < minimum:
        raise InvalidField(name, f"must be at least {minimum}")
    if value > maximum:
        raise InvalidField(name, f"must be at most {maximum}")
    return value


def paginate_sorted(
    request: Request, items: Iterable[T], created_at: Callable[[T], str], default_desc: bool = True
) -> list[T]:
    """Sort by createdAt (`sort[]=createdAt&sort[]=asc|desc`), then apply offset and limit."""
    ordered = sorted(items, key=created_at, reverse=sort_descending(request, default_desc))
    offset, limit = page_bounds(request)
    return ordered[offset : offset + limit if limit is not None else None]


def sort_descending(request: Request, default_desc: bool = True) -> bool:
    """Whether `sort[]=createdAt&sort[]=asc|desc` asks for newest first."""
    sort = query_list(request, "sort")
    if len(sort) >= 2 and sort[0] == "createdAt":
        if sort[1].lower() not in ("asc", "desc"):
            raise InvalidField("sort", f"order must be asc or desc, got {sort[1]!r}")
        return sort[1].lower() == "desc"
    return default_desc


def page_bounds(request: Request) -> tuple[int, int | None]:
    """`offset` and `limit` (none: to the end)."""
    return query_int(request, "offset") or 0, query_int(request, "limit", minimum=1)


def created_bounds(request: Request) -> tuple[str | None, str | None]:
    """`fromCreatedAt` and `toCreatedAt`, comparable as text with stored times."""
    start = request.query_params.get("fromCreatedAt")
    end = request.query_params.get("toCreatedAt")
    return (_cmp_iso(start) if start else None), (_cmp_iso(end) if end else None)


def created_between(request: Request, value: str) -> bool:
    start, end = created_bounds(request)
    return (not start or _cmp_iso(value) >= start) and (not end or _cmp_iso(value) <= end)


def _cmp_iso(value: str) -> str:
    # ISO strings in UTC compare as text once their zone suffixes agree.
    return value.replace("+00:00", "Z")


def matches_any(value: str | None, allowed: Sequence[str], case_insensitive: bool = False) -> bool:
    if not allowed:
        return True
    if value is None:
        return False
    if case_insensitive:
        return value.upper() in {a.upper() for a in allowed}
    return value in allowed
