"""Galtea-compatible routes for inference results (turns), listed and read from the database."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from proxy.errors import NotFound
from proxy.server.api.common import query_list, read_json_object, runtime
from proxy.server.api.listing import filter_by, json_array_response, json_text_response, list_query
from proxy.server.api.openapi import ApiRoute
from proxy.server.api.schemas import InferenceResult
from proxy.sessions.requests import InferenceResultCreate


async def list_inference_results(request: Request) -> Response:
    sessions = runtime(request).sessions
    missing = await sessions.missing_turns(query_list(request, "ids"))
    if missing:  # `ids[]` is an entity lookup, as in Galtea: an unknown id answers 404
        raise NotFound(f"Inference result {', '.join(missing)} not found")
    query = list_query(request, default_desc=False)  # conversation order unless a sort is asked for
    filter_by(request, query, {"ids": "id", "sessionIds": "session_id"})
    return json_array_response(await sessions.list_turn_answers(query))


async def get_inference_result(request: Request) -> Response:
    return json_text_response(await runtime(request).sessions.turn_answer(request.path_params["id"]))


async def create_inference_result(request: Request) -> Response:
    done = await runtime(request).sessions.log_turn(await read_json_object(request))
    return json_text_response(done.answer, 201)


ROUTES = [
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
