"""The flow log in the inspector: `GET /flows` (filtered list, live through server-sent events at
`GET /flows/events`), `GET /flows/{id}` (one call, its curl command, its near miss) and HAR exports."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse

from proxy.config.settings import FLOW_EVENTS_HEARTBEAT_S, FLOW_EVENTS_MAX_S, FLOWS_PAGE_SIZE, MASK
from proxy.errors import BadRequest, NotFound
from proxy.flows.export import HAR_SCHEMA, curl_command, curl_variables, har, per_run_headers
from proxy.flows.log import OUTCOMES, STATUS_CLASSES, FlowFilter
from proxy.flows.timing import attempt_latency, flow_latency
from proxy.server.api.common import query_int, runtime
from proxy.server.api.inspector import PAGE_HEADERS, page
from proxy.server.api.openapi import HTML, ApiRoute

EVENTS_SCHEMA = {
    "type": "string",
    "description": "text/event-stream: a `flow` event per new flow (its summary, JSON), heartbeat comments",
}
SUMMARY_TEXT = ("url", "method", "kind", "error", "connection")


def _view(request: Request) -> FlowFilter:
    try:
        return FlowFilter.from_query(request.query_params)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


async def flows_page(request: Request) -> HTMLResponse:
    """Inspector: every upstream call, newest first, filtered by the query parameters."""
    rt = runtime(request)
    view = _view(request)
    query = urlencode(view.query())
    return page(
        request,
        "flows.html",
        flows=await rt.flows.recent(view),
        view=view,
        query=query,
        connections=await rt.flows.connections(),
        outcomes=OUTCOMES,
        status_classes=STATUS_CLASSES,
        limit=FLOWS_PAGE_SIZE,
    )


def _matches(view: FlowFilter, summary: dict[str, Any]) -> bool:
    """The list's filter, on a new flow's summary (free text looks at the summary's text only)."""
    if view.connection and summary["connection"] != view.connection:
        return False
    if view.session and summary["session_id"] != view.session:
        return False
    if view.outcome and summary["outcome"] != view.outcome:
        return False
    status = summary["status"]
    if view.status == "none" and status is not None:
        return False
    if view.status and view.status != "none" and (status is None or status // 100 != int(view.status[0])):
        return False
    text = " ".join(str(summary.get(k) or "") for k in SUMMARY_TEXT).lower()
    return not view.q or view.q.lower() in text


async def flow_events(request: Request) -> StreamingResponse:
    """Server-sent events: one `flow` event per new flow matching the filters, a heartbeat when idle."""
    rt = runtime(request)
    view = _view(request)
    queue = rt.flows.subscribe()

    async def stream() -> AsyncIterator[bytes]:
        ends = time.monotonic() + FLOW_EVENTS_MAX_S
        try:
            yield b"retry: 2000\n: connected\n\n"
            while (left := ends - time.monotonic()) > 0:
                try:
                    summary = await asyncio.wait_for(queue.get(), min(FLOW_EVENTS_HEARTBEAT_S, left))
                except TimeoutError:
                    yield b": heartbeat\n\n"
                    continue
                if summary is None:
                    return
                if _matches(view, summary):
                    data = json.dumps(summary, ensure_ascii=False)
                    yield f"id: {summary['id']}\nevent: flow\ndata: {data}\n\n".encode()
        finally:
            rt.flows.unsubscribe(queue)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


async def _flow(request: Request) -> dict[str, Any]:
    given = request.path_params["id"]
    flow = await runtime(request).flows.get(int(given)) if given.isdigit() else None
    if flow is None:
        raise NotFound(f"flow {request.path_params['id']} not found (the log keeps the newest ones only)")
    return flow


def mapping_rows(flow: dict[str, Any]) -> list[dict[str, Any]]:
    """Each output-mapping key: its JSONPath, and what it extracted or why nothing (a forwarded call: none)."""
    data = flow["data"]
    if is_forwarded(flow):
        return []
    exchange = data["exchange"]
    extracted, misses = exchange.get("extracted") or {}, exchange.get("extractionErrors") or {}
    rows = []
    for key, path in (data.get("mapping") or {}).items():
        row: dict[str, Any] = {"key": key, "path": path}
        if key in extracted:
            row["value"] = extracted[key]
        elif key in misses:
            row["why"] = f"matched nothing: {misses[key]}"
        elif exchange.get("response") is None:
            row["why"] = "not run: the call got no reply"
        else:
            row["why"] = "not run: " + (exchange.get("error") or "the reply ended the conversation")
        rows.append(row)
    return rows


# What the forward route did with the cassette, by the flow's outcome.
FORWARD_OUTCOMES = {
    "hit": "replayed: a recording in the cassette matched the request",
    "recorded": "sent upstream and recorded in the cassette",
    "miss": "no recording in the cassette matched the request (nothing sent upstream)",
    "live": "sent upstream, not recorded",
    "injected": "answered by a fault rule (nothing sent upstream)",
    "error": "the cassette could not be used",
}


def is_forwarded(flow: dict[str, Any]) -> bool:
    """A call of the forward route (flows logged before `forward` was kept in the data: by their kind)."""
    return bool(flow["data"].get("forward")) or flow.get("kind") == "forward"


def forward_rows(flow: dict[str, Any]) -> list[tuple[str, str]]:
    """What the forward route did: the recording it matched (or not), the headers it added, those it masked."""
    if not is_forwarded(flow):
        return []
    exchange = flow["data"]["exchange"]
    injected = (flow["data"].get("forward") or {}).get("injected")
    masked = {
        side: [name for name, value in ((exchange.get(side) or {}).get("headers") or {}).items() if MASK in str(value)]
        for side in ("request", "response")
    }
    rows = [("Recording", FORWARD_OUTCOMES.get(flow.get("outcome") or "", "not sent"))]
    if injected is not None:
        rows.append(("Headers added", ", ".join(injected) or "none: sent with the client's headers only"))
    rows.append(
        ("Masked in the log", "; ".join(f"{side}: {', '.join(names) or 'none'}" for side, names in masked.items()))
    )
    return rows


async def flow_page(request: Request) -> HTMLResponse:
    """Inspector: one upstream call, its attempts, reply, mapping, near miss and exports (`per_run=1`: the curl
    command with the call's per-run ids too)."""
    per_run = query_int(request, "per_run", maximum=1) == 1
    flow = await _flow(request)
    curl = curl_command(flow, per_run)
    nearest = flow["data"].get("nearest")
    now_body = (flow["data"]["exchange"].get("request") or {}).get("body")
    return page(
        request,
        "flow.html",
        flow=flow,
        latency=flow_latency(flow),
        attempt_latency=attempt_latency,
        exchange=flow["data"]["exchange"],
        stream=flow["data"]["exchange"].get("stream"),
        mapping=mapping_rows(flow),
        forwarded=forward_rows(flow),
        nearest=nearest,
        now_body=now_body,
        curl=curl,
        curl_variables=curl_variables(curl),
        per_run=per_run,
        per_run_headers=per_run_headers(flow),
    )


def _har_response(document: dict[str, Any], filename: str) -> JSONResponse:
    headers = {**PAGE_HEADERS, "Content-Disposition": f'attachment; filename="{filename}"'}
    return JSONResponse(document, headers=headers)


async def flows_har(request: Request) -> JSONResponse:
    """HAR 1.2 of the flows the same filters as `GET /flows` select (newest first)."""
    flows = await runtime(request).flows.recent(_view(request), full=True)
    return _har_response(har(flows), "flows.har")


async def flow_har(request: Request) -> JSONResponse:
    """HAR 1.2 of one flow."""
    flow = await _flow(request)
    return _har_response(har([flow]), f"flow-{flow['id']}.har")


ROUTES = [
    ApiRoute("/flows", flows_page, methods=["GET"], response=HTML, media="text/html"),
    ApiRoute("/flows/events", flow_events, methods=["GET"], response=EVENTS_SCHEMA, media="text/event-stream"),
    ApiRoute("/flows.har", flows_har, methods=["GET"], response=HAR_SCHEMA),
    ApiRoute("/flows/{id}.har", flow_har, methods=["GET"], response=HAR_SCHEMA),
    ApiRoute("/flows/{id}", flow_page, methods=["GET"], response=HTML, media="text/html"),
]
