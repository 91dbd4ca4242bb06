"""Galtea-compatible routes for sessions and their turns; lists are filtered, sorted and paged in SQL."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.errors import NotFound
from proxy.server.api.common import json_response, query_list, read_json_object, record_mode_header, runtime
from proxy.server.api.listing import filter_by, json_text_response, list_query
from proxy.server.api.openapi import ApiRoute
from proxy.server.api.schemas import Deleted, Session, TurnResult
from proxy.sessions.requests import SessionCreate, SessionFinish, SessionUpdate, TurnRequest

# query parameter → column
SESSION_FILTERS = {
    "ids": "id",
    "versionIds": "version_id",
    "testCaseIds": "test_case_id",
    "testIds": "test_id",
    "customIds": "custom_id",
    "productIds": "product_id",
}


async def create_session(request: Request) -> JSONResponse:
    session = await runtime(request).sessions.create(await read_json_object(request))
    return json_response(session.to_api(), 201)


async def list_sessions(request: Request) -> JSONResponse:
    sessions = runtime(request).sessions
    missing = await sessions.missing(query_list(request, "ids"))
    if missing:  # `ids[]` is an entity lookup, as in Galtea: an unknown id answers 404
        raise NotFound(f"Session {', '.join(missing)} not found")
    query = list_query(request)
    filter_by(request, query, SESSION_FILTERS)
    query.any_of("status", [s.upper() for s in query_list(request, "statuses")])  # statuses are stored upper case
    return json_response(await sessions.list_api(query))


async def get_session(request: Request) -> JSONResponse:
    return json_response((await runtime(request).sessions.get(request.path_params["id"])).to_api())


async def update_session(request: Request) -> JSONResponse:
    session = await runtime(request).sessions.update(request.path_params["id"], await read_json_object(request))
    return json_response(session.to_api())


async def delete_session(request: Request) -> JSONResponse:
    await runtime(request).sessions.delete(request.path_params["id"])
    return json_response({"id": request.path_params["id"], "deleted": True})


async def finish_session(request: Request) -> JSONResponse:
    session = await runtime(request).sessions.finish(request.path_params["id"], await read_json_object(request))
    return json_response(session.to_api())


async def run_turn(request: Request) -> Response:
    body = await read_json_object(request)
    done = await runtime(request).sessions.run_turn(request.path_params["id"], body, record_mode_header(request))
    return json_text_response(done.route_answer(), 201)


ROUTES = [
    ApiRoute("/sessions", create_session, methods=["POST"], body=SessionCreate, response=Session, status=201),
    ApiRoute("/sessions", list_sessions, methods=["GET"], response=list[Session]),
    ApiRoute("/sessions/{id}", get_session, methods=["GET"], response=Session),
    ApiRoute("/sessions/{id}", update_session, methods=["PATCH"], body=SessionUpdate, response=Session),
    ApiRoute("/sessions/{id}", delete_session, methods=["DELETE"], response=Deleted),
    ApiRoute("/sessions/{id}/finish", finish_session, methods=["PATCH"], body=SessionFinish, response=Session),
    ApiRoute("/sessions/{id}/turns", run_turn, methods=["POST"], body=TurnRequest, response=TurnResult, status=201),
]
