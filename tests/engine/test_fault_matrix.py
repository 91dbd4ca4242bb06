"""Upstream faults fail or retry a turn exactly as configured, and the server keeps serving other sessions."""

from __future__ import annotations

import asyncio
import socketserver
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from tests.conftest import RunningProxy
from tests.helpers import FAST_RETRIES
from tests.upstream import Reply, Upstream

pytestmark = pytest.mark.e2e


class ResetMidBody(socketserver.BaseRequestHandler):
    """Promises 100 bytes, sends 9, hangs up."""

    def handle(self) -> None:
        self.request.recv(65536)
        self.request.sendall(
            b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"reply":'
        )
        self.request.close()


@pytest.fixture(scope="module")
def resetting_server() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), ResetMidBody)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def make_version(client: httpx.Client, name: str, url: str, **fields: Any) -> str:
    conn = client.post(
        "/endpointConnections",
        json={
            "name": name,
            "productId": "faults",
            "type": "CONVERSATION",
            "url": url,
            "authType": "NONE",
            "inputTemplate": '{"message": "{{ input.user_message }}"}',
            "outputMapping": {"output": "$.reply"},
            "acknowledgedInsecureHttp": True,
            **fields,
        },
    )
    assert conn.status_code == 201, conn.text
    version = client.post(
        "/versions", json={"productId": "faults", "name": name, "conversationEndpointConnectionId": conn.json()["id"]}
    )
    return str(version.json()["id"])


async def one_turn(client: httpx.AsyncClient, version: str) -> tuple[dict[str, Any], dict[str, Any], float]:
    session = (await client.post("/sessions", json={"versionId": version, "isProduction": True})).json()
    started = time.perf_counter()
    turn = (await client.post(f"/sessions/{session['id']}/turns", json={"input": {"user_message": "hi"}})).json()
    elapsed = time.perf_counter() - started
    return turn, (await client.get(f"/sessions/{session['id']}")).json(), elapsed


async def test_fault_matrix(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str, resetting_server: str
) -> None:
    http_date = formatdate(time.time() + 2, usegmt=True)
    upstream.script("/flaky", Reply(status=500), Reply(status=502), Reply(json={"reply": "recovered"}))
    upstream.script("/limited", Reply(status=429, headers={"Retry-After": "1"}), Reply(json={"reply": "after 1 s"}))
    upstream.script("/limited-date", Reply(status=503, headers={"Retry-After": http_date}), Reply(json={"reply": "ok"}))
    upstream.script("/slow", Reply(json={"reply": "too late"}, delay=3))
    upstream.script("/trickle", Reply(json={"reply": "x" * 50}, trickle=0.4, chunks=5))
    upstream.script("/html", Reply(text="<html>Bad gateway</html>"))
    upstream.script("/shape", Reply(json={"data": {"answer": "?"}}))
    upstream.script("/huge", Reply(text="x" * (10 * 1024 * 1024 + 1)))
    upstream.script("/healthy", Reply(json={"reply": "fine"}))
    cases = {
        "refused": ("http://127.0.0.1:9/chat", FAST_RETRIES),
        "reset": (f"{resetting_server}/chat", FAST_RETRIES),
        "flaky": (f"{upstream_url}/flaky", {**FAST_RETRIES, "retryMaxAttempts": 3}),
        "limited": (f"{upstream_url}/limited", {**FAST_RETRIES, "retryMaxDelayMs": 5000}),
        "limited-date": (f"{upstream_url}/limited-date", {**FAST_RETRIES, "retryMaxDelayMs": 5000}),
        "slow": (f"{upstream_url}/slow", {**FAST_RETRIES, "retryMaxAttempts": 1, "timeout": 0.5}),
        "trickle": (f"{upstream_url}/trickle", {"timeout": 1}),
        "html": (f"{upstream_url}/html", {}),
        "shape": (f"{upstream_url}/shape", {}),
        "huge": (f"{upstream_url}/huge", {}),
    }
    with httpx.Client(base_url=proxy_server.url) as client:
        versions = {name: make_version(client, name, url, **fields) for name, (url, fields) in cases.items()}
        healthy = make_version(client, "healthy", f"{upstream_url}/healthy")

    async with httpx.AsyncClient(base_url=proxy_server.url, timeout=60) as client:
        keep_going = True

        async def healthy_traffic() -> list[str]:
            outputs = []
            while keep_going or not outputs:
                turn, _, _ = await one_turn(client, healthy)
                outputs.append(turn["actualOutput"])
            return outputs

        traffic = asyncio.create_task(healthy_traffic())
        names = list(versions)
        results = dict(zip(names, await asyncio.gather(*(one_turn(client, versions[n]) for n in names)), strict=True))
        keep_going = False
        served = await traffic

    def check(name: str, status: str, attempts: list[Any], error: str | None = None) -> tuple[dict[str, Any], float]:
        turn, session, elapsed = results[name]
        assert turn["status"] == status, (name, turn)
        assert [a["status"] for a in turn["exchange"]["attempts"]] == attempts, (name, turn["exchange"]["attempts"])
        if error:
            assert error in (turn["error"] or ""), (name, turn["error"])
            assert session["status"] == "FAILED" and session["error"] == turn["error"]
        else:
            assert session["status"] == "PENDING"
        return turn, elapsed

    check("refused", "FAILED", [None, None, None], "connection refused")
    check("reset", "FAILED", [None, None, None], "the upstream closed the connection mid-reply")
    assert check("flaky", "GENERATED", [500, 502, 200])[0]["actualOutput"] == "recovered"
    limited, elapsed = check("limited", "GENERATED", [429, 200])
    assert limited["exchange"]["attempts"][1]["waitedMs"] == 1000 and elapsed >= 0.9
    dated, elapsed = check("limited-date", "GENERATED", [503, 200])
    assert 500 <= dated["exchange"]["attempts"][1]["waitedMs"] <= 2100 and elapsed >= 0.5
    check("slow", "FAILED", [None, None], "timed out after 0.5s")
    check("trickle", "FAILED", [None], "timed out after 1s")
    check("html", "FAILED", [200], "not JSON, so the output mapping cannot apply: <html>Bad gateway</html>")
    check("shape", "FAILED", [200], "required key 'output' matched nothing")
    check("huge", "FAILED", [None], "larger than the 10485760 byte cap")
    huge_cassette = await proxy_server.runtime.library.cassette("sessions/huge")
    assert huge_cassette.interactions == []  # a truncated body is never recorded
    assert served and set(served) == {"fine"}  # other sessions were served throughout
