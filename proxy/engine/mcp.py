"""MCP's streamable HTTP transport, as record/replay sees it: JSON-RPC messages whose ids, progress tokens and
session ids differ every run.

A request is matched and recorded without its JSON-RPC `id` and `_meta.progressToken` (each replaced by a
placeholder, so a request still reads as one and a notification as one) and without the W3C trace context an
instrumented client puts in `_meta` (new every run); a replayed answer carries the current request's id and
progress token again, in a JSON body and in each server-sent event.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from proxy.config.settings import MAX_MCP_SESSION_ID_CHARS
from proxy.errors import InvalidField
from proxy.security import jsonbounds

SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
ID_PLACEHOLDER = "<id>"
PROGRESS_PLACEHOLDER = "<progressToken>"
# A session id is visible ASCII (the spec: 0x21 to 0x7E); a protocol version a revision's date.
SESSION_ID = re.compile(r"[\x21-\x7e]+")
PROTOCOL_VERSION = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# What names a call in the flow log beside its method: the tool, prompt or resource it is about.
SUBJECT_PARAMS = ("name", "uri")
# `_meta` keys an OpenTelemetry-instrumented client (the mcp SDK, once a tracer is set up) fills anew per request:
# left out of what is matched and recorded, as the id is, or every replay with tracing on would miss.
PER_RUN_META_KEYS = frozenset({"traceparent", "tracestate", "baggage"})
SSE_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


@dataclass
class McpRequest:
    """The JSON-RPC messages a POST carries, as matched, and what a replay puts back in the answer."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    ids: list[Any] = field(default_factory=list)  # the requests' ids, in order
    progress_tokens: list[Any] = field(default_factory=list)
    match_body: bytes | None = None  # None: not JSON-RPC, matched as sent
    batch: bool = False  # the messages came as a JSON array (answered as one)

    @property
    def methods(self) -> list[str]:
        return [str(message.get("method")) for message in self.messages if "method" in message]

    @property
    def is_initialize(self) -> bool:
        return "initialize" in self.methods

    def name(self) -> str | None:
        """`tools/call get_weather`: each message's method and the tool, prompt or resource it is about."""
        names = []
        for message in self.messages:
            if "method" not in message:
                continue
            params = message.get("params")
            subject = next((params[k] for k in SUBJECT_PARAMS if isinstance(params, dict) and k in params), None)
            names.append(f"{message['method']} {subject}" if isinstance(subject, str) else str(message["method"]))
        return ", ".join(names) or None


def parse_request(body: bytes) -> McpRequest:
    """The POST body's JSON-RPC messages (one, or a batch), with their ids and progress tokens set apart."""
    try:
        document = jsonbounds.loads(body) if body else None
    except ValueError:
        return McpRequest()
    items: list[Any] = document if isinstance(document, list) else [document]
    batch = [item for item in items if isinstance(item, dict) and item.get("jsonrpc") == "2.0"]
    if not batch or len(batch) != len(items):
        return McpRequest()
    found = McpRequest(messages=batch, batch=isinstance(document, list))
    normal = []
    for message in batch:
        copy = dict(message)
        if "method" in copy and "id" in copy:
            found.ids.append(copy["id"])
            copy["id"] = ID_PLACEHOLDER
        params = copy.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if isinstance(params, dict) and isinstance(meta, dict):
            kept_meta = {key: value for key, value in meta.items() if key not in PER_RUN_META_KEYS}
            if "progressToken" in kept_meta:
                found.progress_tokens.append(kept_meta["progressToken"])
                kept_meta["progressToken"] = PROGRESS_PLACEHOLDER
            copy["params"] = {**params, "_meta": kept_meta} if kept_meta else _without(params, "_meta")
        normal.append(copy)
    kept = normal if isinstance(document, list) else normal[0]
    found.match_body = json.dumps(kept, separators=(",", ":"), ensure_ascii=False).encode()
    return found


def _without(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k != key}


def check_headers(headers: Any) -> str | None:
    """The request's MCP session id, checked: InvalidField (400) for one that is not visible ASCII or is over
    MAX_MCP_SESSION_ID_CHARS, or a protocol version that is not a revision's date."""
    session = headers.get(SESSION_HEADER)
    if session is not None and (len(session) > MAX_MCP_SESSION_ID_CHARS or not SESSION_ID.fullmatch(session)):
        why = f"at most {MAX_MCP_SESSION_ID_CHARS} visible ASCII characters (0x21-0x7E)"
        raise InvalidField(SESSION_HEADER, f"a session id is {why}")
    version = headers.get(VERSION_HEADER)
    if version is not None and not PROTOCOL_VERSION.fullmatch(version):
        raise InvalidField(VERSION_HEADER, f"{version[:40]!r} is not a protocol revision (YYYY-MM-DD)")
    return session


class IdRewriter:
    """A recorded answer's messages made the current request's: a response's id becomes the current id of the
    request in the same place (the n-th answered id gets the n-th request id), a progress notification's token
    the current token."""

    def __init__(self, request: McpRequest) -> None:
        self.ids = request.ids
        self.tokens = request.progress_tokens
        self._recorded_ids: dict[str, Any] = {}  # a recorded id (as JSON) to the current one
        self._recorded_tokens: dict[str, Any] = {}

    def message(self, message: Any) -> Any:
        if not isinstance(message, dict):
            return message
        if "method" not in message and "id" in message:
            message = {**message, "id": self._current(self._recorded_ids, self.ids, message["id"])}
        params = message.get("params")
        if message.get("method") == "notifications/progress" and isinstance(params, dict) and self.tokens:
            token = self._current(self._recorded_tokens, self.tokens, params.get("progressToken"))
            message = {**message, "params": {**params, "progressToken": token}}
        return message

    @staticmethod
    def _current(seen: dict[str, Any], now: list[Any], recorded: Any) -> Any:
        key = json.dumps(recorded)
        if key not in seen:
            seen[key] = now[len(seen)] if len(seen) < len(now) else recorded
        return seen[key]

    def json_body(self, body: bytes) -> bytes:
        """A whole `application/json` answer (one message or a batch) with the current ids."""
        try:
            document = jsonbounds.loads(body)
        except ValueError:
            return body
        rewritten = [self.message(m) for m in document] if isinstance(document, list) else self.message(document)
        return json.dumps(rewritten, separators=(",", ":"), ensure_ascii=False).encode()

    def event(self, event: bytes) -> bytes:
        """One server-sent event (without its blank line) with its data's ids current."""
        lines = event.splitlines()
        data = [line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")]
        if not data:
            return event
        try:
            message = jsonbounds.loads(b"\n".join(data))
        except ValueError:
            return event
        kept = [line for line in lines if not line.startswith(b"data:")]
        payload = json.dumps(self.message(message), separators=(",", ":"), ensure_ascii=False).encode()
        return b"\r\n".join([*kept, b"data: " + payload])

    async def events(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """An event stream's chunks with each whole event rewritten as soon as its blank line has come."""
        pending = b""
        try:
            async for chunk in chunks:
                pending += chunk
                out = []
                while (end := SSE_EVENT_END.search(pending)) is not None:
                    out.append(self.event(pending[: end.start()]) + b"\r\n\r\n")
                    pending = pending[end.end() :]
                if out:
                    yield b"".join(out)
            if pending:
                yield self.event(pending)
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
