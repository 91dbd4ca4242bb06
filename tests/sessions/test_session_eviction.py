"""A session pushed out of the in-memory cache and then used again answers as one that never left it:
its cassette opening (recording or replaying, and where its replay stands) is the one it started with."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.conftest import chat_connection, running_proxy
from tests.helpers import post
from tests.upstream import Reply, Upstream


def _version(api: httpx.Client, upstream_url: str) -> str:
    conn = post(api, "/endpointConnections", chat_connection(upstream_url))
    return str(post(api, "/versions", {"productId": "prod-1", "conversationEndpointConnectionId": conn["id"]})["id"])


def _turn(api: httpx.Client, session_id: str, message: str) -> dict:
    return post(api, f"/sessions/{session_id}/turns", {"input": {"user_message": message}})


def _evict(api: httpx.Client, version: str, cache: object, session_id: str) -> None:
    """Push `session_id` out of a cache of size 1 with another session."""
    post(api, "/sessions", {"versionId": version, "testCaseId": "other"})
    assert session_id not in cache  # type: ignore[operator]


def test_a_recording_session_evicted_mid_conversation_keeps_recording(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    with running_proxy(tmp_path) as server, httpx.Client(base_url=server.url, timeout=30) as api:
        server.runtime.sessions.cache.size = 1
        version = _version(api, upstream_url)
        session = post(api, "/sessions", {"versionId": version, "testCaseId": "tc-rec"})["id"]
        assert _turn(api, session, "first")["status"] == "GENERATED"
        _evict(api, version, server.runtime.sessions.cache, session)
        # Its cassette now holds the first turn: a fresh look would take it for one to replay, and miss.
        second = _turn(api, session, "second")
        assert second["status"] == "GENERATED", second["error"]
        assert second["index"] == 1
        assert len(upstream.requests_to("/chat")) == 2


def test_a_replaying_session_evicted_mid_conversation_goes_on_from_where_it_was(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    upstream.script("/chat", Reply(json={"reply": "one"}), Reply(json={"reply": "two"}), Reply(json={"reply": "3"}))
    with running_proxy(tmp_path) as server, httpx.Client(base_url=server.url, timeout=30) as api:
        version = _version(api, upstream_url)
        recording = post(api, "/sessions", {"versionId": version, "testCaseId": "tc-same"})["id"]
        assert [_turn(api, recording, "hi")["actualOutput"] for _ in range(2)] == ["one", "two"]
        api.patch(f"/sessions/{recording}/finish", json={})
        server.runtime.sessions.cache.size = 1
        replaying = post(api, "/sessions", {"versionId": version, "testCaseId": "tc-same"})["id"]
        assert _turn(api, replaying, "hi")["actualOutput"] == "one"
        _evict(api, version, server.runtime.sessions.cache, replaying)
        again = _turn(api, replaying, "hi")
        assert (again["actualOutput"], again["index"]) == ("two", 1)
        assert len(upstream.requests_to("/chat")) == 2  # both turns replayed


async def test_concurrent_turns_and_finishes_of_an_evicted_session_count_and_finalize_once(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    upstream.script("/slow", Reply(json={"reply": "ok"}, delay=0.05))
    with running_proxy(tmp_path, record_mode="off") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as api:
            made = [
                (await api.post("/endpointConnections", json=chat_connection(upstream_url, **fields))).json()["id"]
                for fields in ({"url": f"{upstream_url}/slow"}, {"name": "fin", "type": "FINALIZATION"})
            ]
            body = {"productId": "prod-1", "conversationEndpointConnectionId": made[0]}
            version = (await api.post("/versions", json={**body, "finalizationEndpointConnectionId": made[1]})).json()
            session = (await api.post("/sessions", json={"versionId": version["id"], "testCaseId": "c"})).json()["id"]
            server.runtime.sessions.cache.size = 1
            await api.post("/sessions", json={"versionId": version["id"], "testCaseId": "other"})
            assert session not in server.runtime.sessions.cache
            turns = await asyncio.gather(
                *(api.post(f"/sessions/{session}/turns", json={"input": {"user_message": f"m{n}"}}) for n in range(4))
            )
            assert sorted(t.json()["index"] for t in turns) == [0, 1, 2, 3]
            assert {t.json()["status"] for t in turns} == {"GENERATED"}
            await api.post("/sessions", json={"versionId": version["id"], "testCaseId": "another"})
            assert session not in server.runtime.sessions.cache
            finishes = await asyncio.gather(*(api.patch(f"/sessions/{session}/finish", json={}) for _ in range(3)))
            assert {f.json()["status"] for f in finishes} == {"COMPLETED"}
            assert len(upstream.requests_to("/chat")) == 1  # FINALIZATION went to /chat once
            listed = (await api.get("/inferenceResults", params={"sessionIds[]": session})).json()
            assert [t["index"] for t in listed] == [0, 1, 2, 3]
