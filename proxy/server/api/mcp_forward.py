"""The forward route for a connection marked `protocol: mcp`: MCP's streamable HTTP transport, recorded and
replayed.

POST carries JSON-RPC messages: matched without their ids and progress tokens (proxy/engine/mcp.py), a replayed answer
rewritten with the current ones, and `initialize` answered with a session id of the replay's own. Play-back
positions are per session, so each session replays from the start. GET (the server's own stream) and DELETE (end
of session) are relayed live, never recorded; for a session a replay answered, or in a mode that only replays,
GET is an empty event stream held open until the client leaves or deletes the session, and DELETE answers 200.

A JSON-RPC request the proxy answers itself (a replay miss, a cassette it cannot use, no answer from the upstream)
gets a JSON-RPC error, with the status and `X-Proxy-Cassette` header any forward answer would have: an MCP client
shows its message, where it would show only the status ("Session terminated") for another body.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from weakref import WeakKeyDictionary

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.config.record_mode import RecordMode
from proxy.config.settings import MAX_MCP_REPLAY_SESSIONS
from proxy.connections.targets import ForwardTarget
from proxy.engine.call import CallResult
from proxy.engine.mcp import SESSION_HEADER, IdRewriter, McpRequest, check_headers, parse_request
from proxy.engine.results import CallLabel
from proxy.engine.transports import MATCH_BODY_EXTENSION
from proxy.engine.transports.streams import is_event_stream
from proxy.errors import InvalidField
from proxy.server.api.forward import (
    NO_REPLY,
    SAFETY_HEADERS,
    RelayedStream,
    WholeAnswer,
    _response,
    answer_headers,
    failure_status,
)

if TYPE_CHECKING:
    from proxy.server.runtime import Runtime


MAX_SHOWN_PARAMS = 500  # characters of the nearest recorded params a miss message quotes
# JSON-RPC error codes for a request the proxy answers itself, in the range the spec leaves to servers.
CASSETTE_MISS_CODE = -32001  # replay: no recording matches the request
CASSETTE_ERROR_CODE = -32002  # the cassette cannot be used (unreadable, refused)
NO_UPSTREAM_ANSWER_CODE = -32003  # unreachable, timed out, over the body cap, a credential unset, …
ERROR_CODES = {"miss": CASSETTE_MISS_CODE, "error": CASSETTE_ERROR_CODE}


class McpHeaderRefused(InvalidField):
    status_code = 400


@dataclass
class ReplaySession:
    """A session a replay handed out: whether it was deleted, which ends its GET streams."""

    ended: asyncio.Event = field(default_factory=asyncio.Event)


class SessionHandle(Protocol):
    """What this route needs of a cassette opening (the library's handle: the API imports no cassette code)."""

    name: str

    def from_the_start(self) -> SessionHandle: ...

    def for_call(self, mode: RecordMode | None) -> SessionHandle: ...


class McpSessions:
    """The server's MCP sessions: those a replay answered, and each session's own cassette handle (its
    play-back positions), the newest MAX_MCP_REPLAY_SESSIONS of each."""

    def __init__(self) -> None:
        self.replayed: OrderedDict[str, ReplaySession] = OrderedDict()
        self._handles: OrderedDict[tuple[str, str], tuple[SessionHandle, SessionHandle]] = OrderedDict()

    def start(self) -> str:
        session_id = uuid.uuid4().hex
        self.replayed[session_id] = ReplaySession()
        while len(self.replayed) > MAX_MCP_REPLAY_SESSIONS:
            _, oldest = self.replayed.popitem(last=False)
            oldest.ended.set()
        return session_id

    def handle(self, server: SessionHandle, session_id: str | None) -> SessionHandle:
        """The session's own opening of the server's cassette handle: the same cassette and mode, positions
        from the start. A new server handle (a test's own folder, another mode) starts every session afresh."""
        slot = (server.name, session_id or "")
        kept = self._handles.get(slot)
        if kept is not None and kept[0] is server:
            self._handles.move_to_end(slot)
            return kept[1]
        own = server.from_the_start()
        self._handles[slot] = (server, own)
        while len(self._handles) > MAX_MCP_REPLAY_SESSIONS:
            self._handles.popitem(last=False)
        return own


_SESSIONS: WeakKeyDictionary[Runtime, McpSessions] = WeakKeyDictionary()


def sessions_of(rt: Runtime) -> McpSessions:
    found = _SESSIONS.get(rt)
    if found is None:
        found = _SESSIONS[rt] = McpSessions()
    return found


async def mcp_forward(
    request: Request,
    rt: Runtime,
    name: str,
    target: ForwardTarget,
    url: str,
    headers: dict[str, str],
    mode: RecordMode | None,
) -> Response:
    try:
        session_id = check_headers(request.headers)
    except InvalidField as exc:
        raise McpHeaderRefused(exc.field, exc.reason) from None
    sessions = sessions_of(rt)
    server = rt.library.server_handle("connections", name, "forward", rt.library.mode_for(name))
    if request.method in ("GET", "DELETE"):
        call = server.for_call(mode)
        if session_id in sessions.replayed or (call.replays and not call.records):
            return _session_answer(request.method, sessions, session_id)
        result = await rt.engine.forward(target, request.method, url, headers, b"", None, CallLabel(request.method))
        return _response(result)
    body = await request.body()
    parsed = parse_request(body)
    handle = sessions.handle(server, session_id).for_call(mode)
    extensions = {MATCH_BODY_EXTENSION: parsed.match_body} if parsed.match_body is not None else {}
    label = CallLabel(parsed.name() or "forward")
    result = await rt.engine.forward(target, request.method, url, headers, body, handle, label, extensions)
    if result.outcome == "miss":
        _explain_miss(result, parsed)
    cut = bool(result.attempts and result.attempts[-1].cut)
    if result.reply is None and not cut and parsed.ids:
        return _json_rpc_errors(result, parsed)
    if result.outcome != "hit" or result.reply is None or cut:
        return _response(result)
    answered = sessions.start() if parsed.is_initialize else session_id
    return _replayed(result, parsed, answered)


def _explain_miss(result: CallResult, parsed: McpRequest) -> None:
    """A miss names the call as MCP does (every call goes to the same URL), then the nearest recorded one: its
    method, tool and params (without its ids)."""
    if not result.error:
        return
    missed = parsed.name()
    if missed:
        result.error = f"{result.error}; missed MCP call: {missed}"
    nearest = result.attempts[-1].nearest if result.attempts else None
    if not nearest:
        return
    recorded = parse_request(str(nearest.get("body") or "").encode())
    if not recorded.messages:
        return
    params = [m.get("params") for m in recorded.messages if "method" in m]
    shown = json.dumps(params[0] if len(params) == 1 else params, separators=(",", ":"), ensure_ascii=False)
    result.error = f"{result.error}; nearest recorded MCP call: {recorded.name()} {shown[:MAX_SHOWN_PARAMS]}"


def _json_rpc_errors(result: CallResult, parsed: McpRequest) -> Response:
    """The JSON-RPC error of each request the POST carried (a batch gets one per request), at the status and with
    the header `_response` would answer: its message the (masked) reason, its data the cassette outcome and, on a
    miss, the JSONPath where the nearest recording differs."""
    outcome = result.outcome or "live"
    data: dict[str, Any] = {"outcome": outcome}
    nearest = result.attempts[-1].nearest if result.attempts else None
    if nearest and nearest.get("path"):
        data["differingAt"] = nearest["path"]
    error = {
        "code": ERROR_CODES.get(outcome, NO_UPSTREAM_ANSWER_CODE),
        "message": result.error or NO_REPLY,
        "data": data,
    }
    answers = [{"jsonrpc": "2.0", "id": request_id, "error": error} for request_id in parsed.ids]
    body = json.dumps(answers if parsed.batch else answers[0], separators=(",", ":"), ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", **answer_headers({}, outcome)}
    return WholeAnswer(body, failure_status(outcome), headers)


def _replayed(result: CallResult, parsed: McpRequest, session_id: str | None) -> Response:
    """A recorded answer with the current request's ids and the session id this replay goes by."""
    reply = result.reply
    assert reply is not None
    headers = {k: v for k, v in answer_headers(reply.headers, "hit").items() if k.lower() != SESSION_HEADER.lower()}
    if session_id is not None:
        headers[SESSION_HEADER] = session_id
    rewriter = IdRewriter(parsed)
    if reply.relay is None:
        body = reply.text.encode()
        return WholeAnswer(rewriter.json_body(body) if body else body, reply.status, headers)
    stream = RelayedStream(reply.relay, reply.status, headers)
    if is_event_stream(reply.headers):
        stream.body_iterator = rewriter.events(stream.body_iterator)  # type: ignore[arg-type]
    return stream


def _session_answer(method: str, sessions: McpSessions, session_id: str | None) -> Response:
    if session_id is None:
        raise McpHeaderRefused(SESSION_HEADER, f"{method} is about a session: send the id initialize answered")
    session = sessions.replayed.get(session_id)
    if session is not None and session.ended.is_set():
        return WholeAnswer(b'{"message": "this MCP session was deleted"}', 404, _headers("application/json"))
    if method == "DELETE":
        if session is not None:
            session.ended.set()
        return WholeAnswer(b"", 200, _headers("application/json"))
    return SessionStream(session.ended if session is not None else asyncio.Event(), session_id)


def _headers(media: str, session_id: str | None = None) -> dict[str, str]:
    session = {SESSION_HEADER: session_id} if session_id else {}
    return {"Content-Type": media, **session, **SAFETY_HEADERS, "X-Proxy-Cassette": "hit"}


class SessionStream(Response):
    """A replayed session's GET stream: nothing to send (no server-sent message was recorded), open until the
    client hangs up or deletes the session."""

    def __init__(self, ended: asyncio.Event, session_id: str) -> None:
        self.ended = ended
        self.status_code = 200
        self.background = None
        headers = {**_headers("text/event-stream", session_id), "Cache-Control": "no-cache"}
        self.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": b"", "more_body": True})

        async def hung_up() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        waits = [asyncio.ensure_future(hung_up()), asyncio.ensure_future(self.ended.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
