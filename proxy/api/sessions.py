"""Galtea-compatible routes for versions, sessions, turns and inference results."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from proxy.api.common import (
    created_between,
    ids_or_404,
    json_response,
    matches_any,
    paginate_sorted,
    query_list,
    read_json_object,
    record_mode_header,
)
from proxy.api.galtea import runtime
from proxy.api.openapi import ApiRoute
from proxy.schemas import (
    Deleted,
    InferenceResult,
    InferenceResultCreate,
    Session,
    SessionCreate,
    SessionFinish,
    SessionUpdate,
    TurnRequest,
    TurnResult,
    Version,
    VersionCreate,
)

# -- versions ----------------------------------------------------------------------------------


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


# -- sessions ----------------------------------------------------------------------------------


async def create_session(request: Request) -> JSONResponse:
    session = await runtime(request).sessions.create(await read_json_object(request))
    return json_response(session.to_api(), 201)


async def list_sessions(request: Request) -> JSONResponse:
    sessions = runtime(request).sessions.all()
    ids = ids_or_404(request, sessions, lambda s: s.id, "Session")
    filters: dict[str, list[str]] = {
        name: query_list(request, name)
        for name in ("versionIds", "testCaseIds", "testIds", "customIds", "statuses", "productIds")
    }
    found = [
        s
        for s in sessions
        if matches_any(s.id, ids)
        and matches_any(s.version_id, filters["versionIds"])
        and matches_any(s.test_case_id, filters["testCaseIds"])
        and matches_any(s.test_id, filters["testIds"])
        and matches_any(s.custom_id, filters["customIds"])
        and matches_any(s.status, filters["statuses"], case_insensitive=True)
        and matches_any(s.product_id, filters["productIds"])
        and created_between(request, s.created_at)
    ]
    return json_response([s.to_api() for s in paginate_sorted(request, found, lambda s: s.created_at)])


async def get_session(request: Request) -> JSONResponse:
    return json_response(runtime(request).sessions.get(request.path_params["id"]).to_api())


async def update_session(request: Request) -> JSONResponse:
    session = await runtime(request).sessions.update(request.path_params["id"], await read_json_object(request))
    return json_response(session.to_api())


async def delete_session(request: Request) -> JSONResponse:
    await runtime(request).sessions.delete(request.path_params["id"])
    return json_response({"id": request.path_params["id"], "deleted": True})


async def finish_session(request: Request) -> JSONResponse:
    session = await runtime(request).sessions.finish(request.path_params["id"], await read_json_object(request))
    return json_response(session.to_api())


async def run_turn(request: Request) -> JSONResponse:
    body = await read_json_object(request)
    sessions = runtime(request).sessions
    turn = await sessions.run_turn(request.path_params["id"], body, record_mode_header(request))
    session = sessions.get(turn.session_id)
    return json_response(
        {**turn.to_api(), "sessionStatus": session.status, "stoppingReason": session.stopping_reason}, 201
    )


# -- inference results -------------------------------------------------------------------------


async def list_inference_results(request: Request) -> JSONResponse:
    turns = runtime(request).sessions.all_turns()
    ids = ids_or_404(request, turns, lambda t: t.id, "Inference result")
    session_ids = query_list(request, "sessionIds")
    found = [
        t
        for t in turns
        if matches_any(t.id, ids) and matches_any(t.session_id, session_ids) and created_between(request, t.created_at)
    ]
    # Turns read in conversation order unless a sort is asked for.
    page = paginate_sorted(request, found, lambda t: (t.created_at, t.index), default_desc=False)  # type: ignore[arg-type,return-value]
    return json_response([t.to_api() for t in page])


async def get_inference_result(request: Request) -> JSONResponse:
    return json_response(runtime(request).sessions.turn(request.path_params["id"]).to_api())


async def create_inference_result(request: Request) -> JSONResponse:
    turn = await runtime(request).sessions.log_turn(await read_json_object(request))
    return json_response(turn.to_api(), 201)


ROUTES = [
    ApiRoute("/versions", create_version, methods=["POST"], body=VersionCreate, response=Version, status=201),
    ApiRoute("/versions", list_versions, methods=["GET"], response=list[Version]),
    ApiRoute("/versions/{id}", get_version, methods=["GET"], response=Version),
    ApiRoute("/sessions", create_session, methods=["POST"], body=SessionCreate, response=Session, status=201),
    ApiRoute("/sessions", list_sessions, methods=["GET"], response=list[Session]),
    ApiRoute("/sessions/{id}", get_session, methods=["GET"], response=Session),
    ApiRoute("/sessions/{id}", update_session, methods=["PATCH"], body=SessionUpdate, response=Session),
    ApiRoute("/sessions/{id}", delete_session, methods=["DELETE"], response=Deleted),
    ApiRoute("/sessions/{id}/finish", finish_session, methods=["PATCH"], body=SessionFinish, response=Session),
    ApiRoute("/sessions/{id}/turns", run_turn, methods=["POST"], body=TurnRequest, response=TurnResult, status=201),
    ApiRoute("/inferenceResults", list_inference_results, methods=["GET"], response=list[InferenceResult]),
    ApiRoute(
        "/inferenceResults",
        create_inference_result,
        methods=["POST"],
        body=InferenceResultCreate,
        response=InferenceResult,
        status=201,
    ),
    ApiRoute("/inferenceResults/{id}", get_inference_result, methods=["GET"], response=InferenceResult),
]
