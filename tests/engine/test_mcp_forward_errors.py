"""What an MCP client sees when the proxy answers a JSON-RPC request itself: a replay miss, a cassette it cannot
use, a credential left unset, an upstream that does not answer. Each is a JSON-RPC error the official SDK raises
with the proxy's reason, at the status and with the `X-Proxy-Cassette` header of any forward answer; a batch gets
one error per request, a notification the plain answer."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from proxy.config.file import Config
from tests.conftest import running_proxy
from tests.engine.test_mcp_forward import ACCEPT, VERSION, RawSession, proxy_for, rpc
from tests.mcp_server import MCP_PATH, app, mcp_connection
from tests.servers import serve_in_thread


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    with serve_in_thread(app()) as url:
        yield url


async def call_tool(url: str, name: str, arguments: dict[str, Any]) -> Any:
    async with httpx2.AsyncClient(timeout=10) as client:
        async with streamable_http_client(url, http_client=client) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            return await s.call_tool(name, arguments)


def sdk_error(call: Coroutine[Any, Any, Any]) -> MCPError:
    """The MCPError the SDK raised, out of the task groups it may come wrapped in."""
    try:
        asyncio.run(call)
    except BaseException as exc:
        found: BaseException = exc
        while isinstance(found, BaseExceptionGroup) and found.exceptions:
            found = found.exceptions[0]
        assert isinstance(found, MCPError), repr(exc)
        return found
    raise AssertionError("the call succeeded")


def test_the_sdk_raises_a_changed_tool_arguments_miss_naming_the_json_path(tmp_path: Path, mcp_url: str) -> None:
    with proxy_for(tmp_path, mcp_url, "once") as proxy:
        asyncio.run(call_tool(f"{proxy.url}/forward/tools{MCP_PATH}", "forecast", {"city": "Paris", "days": 2}))
    with proxy_for(tmp_path, mcp_url, "none") as proxy:
        error = sdk_error(call_tool(f"{proxy.url}/forward/tools{MCP_PATH}", "forecast", {"city": "Paris", "days": 5}))
    assert error.code == -32001
    assert error.message.startswith("cassette miss: ")
    assert "differing at body $.params.arguments.days: 2 recorded, 5 now" in error.message
    assert "missed MCP call: tools/call forecast" in error.message
    nearest = '{"name":"forecast","arguments":{"city":"Paris","days":2}'
    assert f"nearest recorded MCP call: tools/call forecast {nearest}" in error.message
    assert error.data == {"outcome": "miss", "differingAt": "$.params.arguments.days"}


def test_the_sdk_raises_a_missing_initialize_naming_it(tmp_path: Path, mcp_url: str) -> None:
    with proxy_for(tmp_path, mcp_url, "none") as proxy:
        error = sdk_error(call_tool(f"{proxy.url}/forward/tools{MCP_PATH}", "get_weather", {"city": "Oslo"}))
    assert error.code == -32001
    assert error.message.startswith("cassette miss: cassette connections/tools has no recording")
    assert "the cassette does not exist" in error.message and "missed MCP call: initialize" in error.message


def test_a_batch_gets_one_error_per_request_and_a_notification_the_plain_miss(tmp_path: Path, mcp_url: str) -> None:
    with proxy_for(tmp_path, mcp_url, "none") as proxy, httpx.Client(base_url=proxy.url) as client:
        path = f"/forward/tools{MCP_PATH}"
        headers = {**ACCEPT, "MCP-Protocol-Version": VERSION}
        batch = [rpc("tools/list", {}, "a"), rpc("notifications/initialized"), rpc("prompts/list", {}, 7)]
        missed = client.post(path, json=batch, headers=headers)
        notified = client.post(path, json=rpc("notifications/initialized"), headers=headers)
    assert missed.status_code == 404 and missed.headers["x-proxy-cassette"] == "miss"
    answers = missed.json()
    assert [a["id"] for a in answers] == ["a", 7]
    assert all(a["jsonrpc"] == "2.0" and a["error"]["code"] == -32001 for a in answers)
    assert "missed MCP call: tools/list, notifications/initialized, prompts/list" in answers[0]["error"]["message"]
    assert notified.status_code == 404 and notified.headers["x-proxy-cassette"] == "miss"
    assert set(notified.json()) == {"message"} and "cassette miss" in notified.json()["message"]


def test_an_unusable_cassette_answers_a_cassette_error(tmp_path: Path, mcp_url: str) -> None:
    with proxy_for(tmp_path, mcp_url, "once") as proxy, httpx.Client(base_url=proxy.url) as client:
        RawSession(client, f"/forward/tools{MCP_PATH}").start(1)
    recorded = list((tmp_path / "cassettes").rglob("tools.yaml"))
    assert recorded
    for cassette in recorded:
        cassette.write_text("interactions: [not, a, cassette\n")
    with proxy_for(tmp_path, mcp_url, "none") as proxy, httpx.Client(base_url=proxy.url) as client:
        refused = RawSession(client, f"/forward/tools{MCP_PATH}").post(rpc("tools/list", {}, 3))
    assert refused.status_code == 502 and refused.headers["x-proxy-cassette"] == "error"
    error = refused.json()["error"]
    assert refused.json()["id"] == 3 and error["code"] == -32002 and error["data"] == {"outcome": "error"}
    assert "the cassette cannot be used" in error["message"]


def test_an_upstream_that_does_not_answer_and_an_unset_credential_answer_errors(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}{MCP_PATH}"
    unset = mcp_connection(dead, name="keyed", auth_type="BEARER", auth_token="${MCP_TEST_NO_TOKEN}")
    config = Config(
        connections=[mcp_connection(dead), unset],
        unset_credentials={"connections[1].auth_token": "MCP_TEST_NO_TOKEN"},
    )
    with running_proxy(tmp_path, config, record_mode="off") as proxy:
        failed = sdk_error(call_tool(f"{proxy.url}/forward/tools{MCP_PATH}", "get_weather", {"city": "Oslo"}))
        uncredentialed = sdk_error(call_tool(f"{proxy.url}/forward/keyed{MCP_PATH}", "get_weather", {"city": "Oslo"}))
    assert failed.code == -32003 and failed.data == {"outcome": "live"}
    assert dead in failed.message
    assert uncredentialed.code == -32003
    assert "environment variable MCP_TEST_NO_TOKEN is not set" in uncredentialed.message
