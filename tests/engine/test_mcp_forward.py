"""The forward route's MCP support at the HTTP level: what a replay rewrites (JSON-RPC ids in JSON and in each
server-sent event, progress tokens, the session id), GET and DELETE of a replayed session, notifications, a miss
that names the differing JSONPath, the flow log's names, and the guard in front of it all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.config.file import Config
from tests.conftest import RunningProxy, running_proxy
from tests.helpers import wait_flows
from tests.mcp_server import MCP_PATH, app, mcp_connection, session_results
from tests.servers import serve_in_thread

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
VERSION = "2025-06-18"


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    with serve_in_thread(app()) as url:
        yield url


@contextlib.contextmanager
def proxy_for(tmp_path: Path, url: str, mode: str, **settings: Any) -> Iterator[RunningProxy]:
    config = Config(connections=[mcp_connection(url)])
    with running_proxy(
        tmp_path / mode, config, cassettes_dir=tmp_path / "cassettes", record_mode=mode, **settings
    ) as p:
        yield p


def rpc(method: str, params: dict[str, Any] | None = None, id: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    if id is not None:
        message["id"] = id
    return message


def events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


class RawSession:
    """MCP over plain HTTP: each message's id chosen by the test."""

    def __init__(self, client: httpx.Client, path: str) -> None:
        self.client, self.path, self.session = client, path, None

    def post(self, message: dict[str, Any]) -> httpx.Response:
        headers = {**ACCEPT, "MCP-Protocol-Version": VERSION}
        if self.session:
            headers["Mcp-Session-Id"] = self.session
        answer = self.client.post(self.path, json=message, headers=headers)
        self.session = answer.headers.get("mcp-session-id", self.session)
        return answer

    def start(self, id: Any) -> httpx.Response:
        init = {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
        answer = self.post(rpc("initialize", init, id))
        assert self.post(rpc("notifications/initialized")).status_code == 202
        return answer

    def conversation(self, first_id: int) -> list[httpx.Response]:
        """initialize, a progress-streaming tool call, a plain one: each with ids from `first_id`."""
        forecast = {
            "name": "forecast",
            "arguments": {"city": "Paris", "days": 2},
            "_meta": {"progressToken": f"p{first_id}"},
        }
        return [
            self.start(first_id),
            self.post(rpc("tools/call", forecast, first_id + 1)),
            self.post(rpc("tools/call", {"name": "get_weather", "arguments": {"city": "Oslo"}}, first_id + 2)),
        ]


def test_a_replay_answers_with_the_ids_and_progress_token_the_client_sent_now(tmp_path: Path, mcp_url: str) -> None:
    with proxy_for(tmp_path, mcp_url, "once") as proxy, httpx.Client(base_url=proxy.url) as client:
        live = RawSession(client, f"/forward/tools{MCP_PATH}").conversation(1)
    assert [r.headers["x-proxy-cassette"] for r in live] == ["recorded"] * 3
    with proxy_for(tmp_path, mcp_url, "none") as proxy, httpx.Client(base_url=proxy.url) as client:
        session = RawSession(client, f"/forward/tools{MCP_PATH}")
        init, forecast, weather = session.conversation(70)
    assert [r.headers["x-proxy-cassette"] for r in (init, forecast, weather)] == ["hit"] * 3
    assert events(init.text)[0]["id"] == 70
    # The replay's own session id, not the recorded one: sessions replayed side by side stay apart.
    assert init.headers["mcp-session-id"] != live[0].headers["mcp-session-id"]
    assert weather.headers["mcp-session-id"] == init.headers["mcp-session-id"]
    streamed = events(forecast.text)
    assert [e["params"]["progressToken"] for e in streamed[:-1]] == ["p70", "p70"]
    assert streamed[-1]["id"] == 71 and "2 days" in streamed[-1]["result"]["content"][0]["text"]
    assert events(weather.text)[-1]["id"] == 72
    assert events(weather.text)[-1]["result"] == events(live[2].text)[-1]["result"]


def test_matching_ignores_the_id_and_repeats_replay_in_order_per_session(tmp_path: Path, mcp_url: str) -> None:
    call = {"name": "get_weather", "arguments": {"city": "Oslo"}}
    with proxy_for(tmp_path, mcp_url, "once") as proxy, httpx.Client(base_url=proxy.url) as client:
        session = RawSession(client, f"/forward/tools{MCP_PATH}")
        session.start(1)
        session.post(rpc("tools/call", call, 2))
        session.post(rpc("tools/call", {**call, "arguments": {"city": "Paris"}}, 3))
        session.post(rpc("tools/call", call, 4))
    with proxy_for(tmp_path, mcp_url, "none") as proxy, httpx.Client(base_url=proxy.url) as client:
        for _ in range(2):  # each session replays from its start
            session = RawSession(client, f"/forward/tools{MCP_PATH}")
            session.start("a")
            texts = [events(session.post(rpc("tools/call", call, n)).text)[-1] for n in ("x", "y")]
            assert [t["id"] for t in texts] == ["x", "y"]
            assert all("Oslo" in t["result"]["content"][0]["text"] for t in texts)


def test_notification_202_get_stream_and_delete_of_a_replayed_session(tmp_path: Path, mcp_url: str) -> None:
    with proxy_for(tmp_path, mcp_url, "once") as proxy, httpx.Client(base_url=proxy.url) as client:
        RawSession(client, f"/forward/tools{MCP_PATH}").start(1)
    with proxy_for(tmp_path, mcp_url, "none") as proxy:
        path = f"{proxy.url}/forward/tools{MCP_PATH}"
        with httpx.Client() as client:
            session = RawSession(client, path)
            session.start(1)  # its notification answered 202 from the cassette
            assert session.session

        async def stream_then_delete() -> tuple[int, str, float]:
            headers = {**ACCEPT, "Mcp-Session-Id": session.session or ""}
            async with httpx.AsyncClient(timeout=5) as client:
                async with client.stream("GET", path, headers=headers) as stream:
                    assert stream.headers["content-type"].startswith("text/event-stream")
                    reading = asyncio.ensure_future(stream.aread())
                    await asyncio.sleep(0.3)
                    open_after = not reading.done()  # an empty stream, still open
                    deleted = await client.delete(path, headers=headers)
                    body = await asyncio.wait_for(reading, 5)  # the DELETE ends it
                    again = await client.get(path, headers=headers)
                    return deleted.status_code, body.decode(), open_after and again.status_code == 404

        status, body, open_until_deleted = asyncio.run(stream_then_delete())
    assert status == 200 and body == "" and open_until_deleted


def test_a_changed_tool_argument_misses_naming_the_nearest_call_and_the_json_path(tmp_path: Path, mcp_url: str) -> None:
    with proxy_for(tmp_path, mcp_url, "once") as proxy, httpx.Client(base_url=proxy.url) as client:
        session = RawSession(client, f"/forward/tools{MCP_PATH}")
        session.start(1)
        session.post(rpc("tools/call", {"name": "get_weather", "arguments": {"city": "Oslo"}}, 2))
    with proxy_for(tmp_path, mcp_url, "none") as proxy, httpx.Client(base_url=proxy.url) as client:
        session = RawSession(client, f"/forward/tools{MCP_PATH}")
        session.start(1)
        missed = session.post(rpc("tools/call", {"name": "get_weather", "arguments": {"city": "Rome"}}, 2))
    assert missed.status_code == 404 and missed.headers["x-proxy-cassette"] == "miss"
    assert missed.headers["content-type"] == "application/json"
    answer = missed.json()
    assert answer["id"] == 2 and answer["error"]["code"] == -32001
    assert answer["error"]["data"] == {"outcome": "miss", "differingAt": "$.params.arguments.city"}
    message = answer["error"]["message"]
    assert '$.params.arguments.city: "Oslo" recorded, "Rome" now' in message
    nearest = 'nearest recorded MCP call: tools/call get_weather {"name":"get_weather","arguments":{"city":"Oslo"}}'
    assert nearest in message


def test_the_flow_log_names_mcp_calls_by_method_and_tool(tmp_path: Path, mcp_url: str) -> None:
    with proxy_for(tmp_path, mcp_url, "once") as proxy, httpx.Client(base_url=proxy.url) as client:
        session = RawSession(client, f"/forward/tools{MCP_PATH}")
        session.start(1)
        session.post(rpc("tools/call", {"name": "get_weather", "arguments": {"city": "Oslo"}}, 2))
        session.post(rpc("resources/read", {"uri": "weather://cities"}, 3))
        kinds = [e["comment"] for e in wait_flows(client, 4, connection="tools")]
    assert any("tools/call get_weather" in k for k in kinds)
    assert any("resources/read weather://cities" in k for k in kinds)
    assert any("initialize" in k for k in kinds)


def test_the_sdk_replays_a_whole_session_in_this_process(tmp_path: Path, mcp_url: str) -> None:
    with proxy_for(tmp_path, mcp_url, "once") as proxy:
        recorded = asyncio.run(session_results(f"{proxy.url}/forward/tools{MCP_PATH}"))
    with proxy_for(tmp_path, mcp_url, "none") as proxy:
        assert asyncio.run(session_results(f"{proxy.url}/forward/tools{MCP_PATH}")) == recorded


# -- the guard -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "DELETE", "POST"])
def test_a_cross_origin_page_cannot_open_the_stream_delete_a_session_or_post(
    tmp_path: Path, mcp_url: str, method: str
) -> None:
    with proxy_for(tmp_path, mcp_url, "none") as proxy, httpx.Client(base_url=proxy.url) as client:
        headers = {**ACCEPT, "Mcp-Session-Id": "abc", "Origin": "https://evil.example"}
        refused = client.request(method, f"/forward/tools{MCP_PATH}", headers=headers, content=b"{}")
    assert refused.status_code == 403


def test_a_listed_page_reads_the_session_id_and_an_unlisted_one_cannot_preflight(tmp_path: Path, mcp_url: str) -> None:
    page = "http://localhost:3000"
    with (
        proxy_for(tmp_path, mcp_url, "once", cors_origins=(page,)) as proxy,
        httpx.Client(base_url=proxy.url) as client,
    ):
        path = f"/forward/tools{MCP_PATH}"
        session = RawSession(client, path)
        client.headers["Origin"] = page
        started = session.start(1)
        assert started.headers["access-control-allow-origin"] == page
        assert "Mcp-Session-Id" in started.headers["access-control-expose-headers"]
        preflight = {"Access-Control-Request-Method": "DELETE", "Access-Control-Request-Headers": "mcp-session-id"}
        assert client.options(path, headers=preflight).status_code == 204
        refused = client.options(path, headers={**preflight, "Origin": "https://evil.example"})
        assert refused.status_code == 403


@pytest.mark.parametrize(
    "header,value,field",
    [
        ("Mcp-Session-Id", "a" * 257, "Mcp-Session-Id"),
        ("Mcp-Session-Id", "has space", "Mcp-Session-Id"),
        ("Mcp-Session-Id", "tab\tin", "Mcp-Session-Id"),
        ("MCP-Protocol-Version", "latest", "MCP-Protocol-Version"),
    ],
)
def test_a_bad_session_id_or_protocol_version_is_refused_with_400(
    tmp_path: Path, mcp_url: str, header: str, value: str, field: str
) -> None:
    with proxy_for(tmp_path, mcp_url, "none") as proxy, httpx.Client(base_url=proxy.url) as client:
        for method in ("GET", "POST", "DELETE"):
            answer = client.request(
                method, f"/forward/tools{MCP_PATH}", headers={**ACCEPT, header: value}, content=b"{}"
            )
            assert answer.status_code == 400, method
            assert field in answer.json()["message"]


def test_a_session_id_with_cr_lf_never_reaches_the_route(tmp_path: Path, mcp_url: str) -> None:
    with proxy_for(tmp_path, mcp_url, "none") as proxy:
        host, port = proxy.url.removeprefix("http://").split(":")
        raw = (
            f"GET /forward/tools{MCP_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nMcp-Session-Id: a\rInjected: 1\r\n\r\n"
        ).encode()
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(raw)
            status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 4"), status_line
