"""Drift for an MCP cassette: its interactions re-sent in order within fresh live sessions (each recorded
`initialize` opens one, and one is opened first if the cassette starts without it), each request with a fresh
JSON-RPC id and the live session's id; answers compared by the shape of their JSON-RPC messages, whether they came
as JSON or as server-sent events. What drifted is re-recorded with its request as recorded, so replays still match.
Each live session is ended with a `DELETE` once its calls are done (or one failed), so drift leaves none open.
"""

from __future__ import annotations

import asyncio
import json
from copy import deepcopy
from typing import TYPE_CHECKING, Any

import httpx

from proxy.cassettes.cassette import Interaction
from proxy.cassettes.json_shapes import json_or_none, shape_differences
from proxy.engine.mcp import ID_PLACEHOLDER, PROGRESS_PLACEHOLDER, SESSION_HEADER, parse_request
from proxy.engine.streaming import parse_events
from proxy.engine.transports.streams import is_event_stream

if TYPE_CHECKING:
    from proxy.cli.drift import Checked
    from proxy.server.runtime import Runtime

# What opens a live session when a cassette's first call is not `initialize` (a recording started mid-session).
OPENING = {
    "jsonrpc": "2.0",
    "id": ID_PLACEHOLDER,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "proxy-drift", "version": "1"},
    },
}

# What a body-less `DELETE` ending a session leaves out of the requests its calls were sent as.
ENDING_WITHOUT = frozenset({"content-type", SESSION_HEADER.lower()})


def is_mcp_cassette(interactions: list[Interaction]) -> bool:
    """Recorded through an MCP connection: its requests carry the id placeholder the recording put in."""
    for interaction in interactions:
        parsed = parse_request(_bytes(interaction.request.get("body")))
        if any(message.get("id") == ID_PLACEHOLDER for message in parsed.messages):
            return True
    return False


async def check_mcp_cassette(runtime: Runtime, name: str, interactions: list[Interaction]) -> list[Checked]:
    from proxy.cli.drift import check_interaction

    session = _Session()
    tap = _SessionTap(runtime.engine.transport)
    runtime.engine.transport = tap  # the live session id, which the recorded answer holds masked only
    try:
        checked = []
        for index, interaction in enumerate(interactions):
            opening = "initialize" in parse_request(_bytes(interaction.request.get("body"))).methods
            if opening:
                await _end(runtime, name, session, tap.inner)  # the calls of the session before are done
                tap.session_id = None
            if not opening and session.id is None:
                await check_interaction(runtime, name, -1, session.request(_opening(interaction)))
                session.id = tap.session_id
            sent = await check_interaction(runtime, name, index, session.request(interaction))
            if opening:
                session.id = tap.session_id
            if sent.live is not None:
                found = message_differences(interaction, sent.live)
                sent.differences = [d for d in sent.differences if d.path == "status"] + found
                # The request stays as recorded (what replays match); the answer is the live one.
                sent.live = Interaction(interaction.request, sent.live.response, sent.live.proxy)
            checked.append(sent)
        return checked
    finally:
        try:
            await _end(runtime, name, session, tap.inner)
        finally:
            runtime.engine.transport = tap.inner


async def _end(runtime: Runtime, name: str, session: _Session, transport: httpx.AsyncBaseTransport) -> None:
    """`DELETE` the live session, if one is open, at the URL its calls went to. Best effort: a server may refuse
    it (`405`, as the MCP spec allows) or be gone, and neither is the cassette's drift."""
    from proxy.cli.drift import fresh_ids, owner_for, resend_request

    sent, session_id = session.sent, session.id
    session.sent, session.id = None, None
    if sent is None or session_id is None:
        return
    uri = fresh_ids(str(sent.request["uri"]))
    owner = owner_for(runtime, name, uri)
    if isinstance(owner, str):
        return
    kept = {k: v for k, v in sent.request["headers"].items() if k.lower() not in ENDING_WITHOUT}
    request = {**sent.request, "method": "DELETE", "body": "", "headers": {**kept, SESSION_HEADER: [session_id]}}
    ending = resend_request(owner.target, Interaction(request, sent.response, {}), uri)
    try:
        async with asyncio.timeout(owner.target.timeout_s):
            response = await transport.handle_async_request(ending)
            await response.aclose()
    except (TimeoutError, httpx.HTTPError, ValueError):
        return  # the session expires on the server's side instead


class _SessionTap(httpx.AsyncBaseTransport):
    """The transport drift sends through, noting the session id each live answer carries."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.session_id: str | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.session_id = response.headers.get(SESSION_HEADER)
        return response


def _opening(before: Interaction) -> Interaction:
    """An `initialize` sent as the recorded request `before` is (its URL and headers)."""
    return Interaction({**deepcopy(before.request), "body": json.dumps(OPENING)}, before.response, {})


class _Session:
    """The live session the calls go in, the last request sent in it, and the next JSON-RPC id."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.sent: Interaction | None = None
        self.next_id = 0

    def request(self, interaction: Interaction) -> Interaction:
        """The recorded request with a fresh id (and progress token), in this live session."""
        self.next_id += 1
        request = deepcopy(interaction.request)
        body = _bytes(request.get("body")).decode("utf-8", "surrogateescape")
        for placeholder in (ID_PLACEHOLDER, PROGRESS_PLACEHOLDER):
            body = body.replace(json.dumps(placeholder), str(self.next_id))
        request["body"] = body
        headers = {k: v for k, v in request["headers"].items() if k.lower() != SESSION_HEADER.lower()}
        request["headers"] = {**headers, SESSION_HEADER: [self.id]} if self.id else headers
        self.sent = Interaction(request, interaction.response, interaction.proxy)
        return self.sent


def message_differences(recorded: Interaction, live: Interaction) -> list[Any]:
    """The shape differences of the JSON-RPC messages two answers carry (JSON or server-sent events)."""
    return shape_differences(_messages(recorded.response), _messages(live.response))


def _messages(response: dict[str, Any]) -> list[Any]:
    body = _bytes(response["body"].get("string"))
    headers = {k.lower(): (v[0] if isinstance(v, list) and v else str(v)) for k, v in response["headers"].items()}
    if is_event_stream(headers):  # the parser every stream goes through (multi-line `data:` fields, `\r\n`)
        found = [event.parsed() for event in parse_events([(0.0, body)], 0.0).events]
        return [item for item in found if not isinstance(item, str)]
    _, document = json_or_none(body)
    return [] if document is None else document if isinstance(document, list) else [document]


def _bytes(body: Any) -> bytes:
    if body is None:
        return b""
    return body.encode() if isinstance(body, str) else bytes(body)
