"""MCP messages as record/replay sees them: what a request is matched by, and a recorded answer made the current
request's, whole or as server-sent events cut anywhere."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from proxy.engine.mcp import IdRewriter, parse_request


def test_a_request_is_matched_without_its_id_and_progress_token() -> None:
    one = parse_request(
        b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"f","_meta":{"progressToken":7}}}'
    )
    other = parse_request(
        b'{"jsonrpc": "2.0", "id": "x", "method": "tools/call", '
        b'"params": {"name": "f", "_meta": {"progressToken": "t"}}}'
    )
    assert one.match_body == other.match_body and one.ids == [7] and other.progress_tokens == ["t"]
    assert one.name() == "tools/call f"
    notification = parse_request(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    assert notification.ids == [] and b"<id>" not in (notification.match_body or b"")
    assert parse_request(b'{"not": "json-rpc"}').match_body is None
    assert parse_request(b"[1, 2]").match_body is None


def test_a_request_is_matched_without_the_trace_context_a_traced_client_adds() -> None:
    """With an OpenTelemetry tracer set up, the mcp SDK puts a new `traceparent` in every request's `_meta`: a
    replay would miss every call. Matched without it, as without the id; the rest of `_meta` still counts."""
    plain = parse_request(b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25"}}')
    traced = parse_request(
        b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
        b'"_meta":{"traceparent":"00-66ecd26b57ba657251cfd0493682e490-9507ce91a236c630-03","tracestate":"a=1"}}}'
    )
    assert traced.match_body == plain.match_body and b"traceparent" not in (traced.match_body or b"")
    progress = parse_request(
        b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"f",'
        b'"_meta":{"progressToken":9,"traceparent":"00-aa24a9ce595c144aa05af9ab5e22bcc8-9b0a610fcc9422e8-03"}}}'
    )
    assert json.loads(progress.match_body or b"")["params"]["_meta"] == {"progressToken": "<progressToken>"}
    assert progress.progress_tokens == [9]
    other_meta = parse_request(b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"f","_meta":{"x":1}}}')
    assert json.loads(other_meta.match_body or b"")["params"]["_meta"] == {"x": 1}


def test_a_batch_answer_gets_the_current_ids_in_order() -> None:
    request = parse_request(
        json.dumps([{"jsonrpc": "2.0", "id": 10, "method": "a"}, {"jsonrpc": "2.0", "id": 11, "method": "b"}]).encode()
    )
    recorded = [{"jsonrpc": "2.0", "id": 1, "result": {}}, {"jsonrpc": "2.0", "id": 2, "result": {}}]
    rewritten = json.loads(IdRewriter(request).json_body(json.dumps(recorded).encode()))
    assert [m["id"] for m in rewritten] == [10, 11]


def test_events_cut_anywhere_are_rewritten_whole() -> None:
    request = parse_request(
        b'{"jsonrpc":"2.0","id":"now","method":"tools/call","params":{"name":"f","_meta":{"progressToken":"tok"}}}'
    )
    recorded = (
        b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":3}}\n\n'
        b'event: message\r\ndata: {"jsonrpc":"2.0","id":3,"result":{"ok":true}}\r\n\r\n'
    )

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(recorded), 7):
            yield recorded[start : start + 7]

    async def read() -> bytes:
        return b"".join([piece async for piece in IdRewriter(request).events(chunks())])

    out = asyncio.run(read()).decode()
    data = [json.loads(line[5:]) for line in out.splitlines() if line.startswith("data:")]
    assert data[0]["params"]["progressToken"] == "tok" and data[1]["id"] == "now"
    assert out.count("event: message") == 2 and out.endswith("\r\n\r\n")
