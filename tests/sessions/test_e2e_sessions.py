"""Sessions, versions and turns end to end: a real proxy, a real stateful upstream, the galtea SDK."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from galtea import Galtea

from proxy.config.file import Config
from tests.conftest import RunningProxy, chat_connection, running_proxy
from tests.helpers import conversation_version, post, thread_connections, thread_version
from tests.upstream import Received, Reply, Threads, Upstream

pytestmark = pytest.mark.e2e


def thread_session(api: httpx.Client, upstream: Upstream, upstream_url: str) -> dict[str, Any]:
    """A production session of a version whose connections run a thread on `upstream` (created, messaged,
    deleted), as the API answered its creation."""
    Threads(upstream)
    return post(api, "/sessions", {"versionId": thread_version(api, upstream_url), "isProduction": True})


def test_thread_style_lifecycle_reaches_the_upstream_in_order(
    api: httpx.Client, upstream: Upstream, upstream_url: str
) -> None:
    session = thread_session(api, upstream, upstream_url)
    first = post(api, f"/sessions/{session['id']}/turns", {"input": {"user_message": "hello"}})
    second = post(api, f"/sessions/{session['id']}/turns", {"input": {"user_message": "again"}})
    finished = api.patch(f"/sessions/{session['id']}/finish", json={"stoppingReason": "done"}).json()

    assert [(r.method, r.path) for r in upstream.received] == [
        ("POST", "/threads"),
        ("POST", "/threads/th_1/messages"),
        ("POST", "/threads/th_1/messages"),
        ("DELETE", "/threads/th_1"),
    ]
    assert upstream.received[0].json == {}
    assert upstream.received[1].json == {"message": "hello", "plan": "gold", "galtea": session["id"]}
    assert (first["index"], first["status"], first["actualOutput"]) == (0, "GENERATED", "[th_1#1] hello")
    assert (second["index"], second["actualOutput"]) == (1, "[th_1#2] again")
    assert first["retrievalContext"] == '["doc-th_1"]'
    assert first["traces"] == [{"name": "llm", "type": "GENERATION", "latencyMs": 5}]
    assert first["exchange"]["request"]["url"] == f"{upstream_url}/threads/th_1/messages"
    assert [a["status"] for a in first["exchange"]["attempts"]] == [200]
    assert finished["status"] == "COMPLETED" and finished["stoppingReason"] == "done"
    assert finished["customId"] == "th_1" and finished["metadata"] == {"plan": "gold"}
    # Every call of the session carries the same W3C trace id and its own inference id.
    trace_ids = {r.headers["traceparent"].split("-")[1] for r in upstream.received}
    assert len(trace_ids) == 1
    assert upstream.received[1].headers["x-galtea-inference-id"] == first["id"]

    again = api.patch(f"/sessions/{session['id']}/finish", json={})
    assert again.status_code == 200 and len(upstream.requests_to("/threads/th_1")) == 1  # FINALIZATION ran once


def test_failed_turn_fails_the_session_and_still_finalizes(
    api: httpx.Client, upstream: Upstream, upstream_url: str
) -> None:
    session = thread_session(api, upstream, upstream_url)
    post(api, f"/sessions/{session['id']}/turns", {"input": {"user_message": "hello"}})
    upstream.handle("/threads/th_1/messages", lambda r: Reply(status=422, json={"detail": "model not found"}))
    failed = post(api, f"/sessions/{session['id']}/turns", {"input": {"user_message": "x"}})
    expected = 'External API responded with HTTP 422: Unprocessable Entity — {"detail": "model not found"}'
    assert failed["status"] == "FAILED" and failed["error"] == expected
    stored = api.get(f"/sessions/{session['id']}").json()
    assert stored["status"] == "FAILED" and stored["error"] == expected
    assert upstream.received[-1].method == "DELETE"  # FINALIZATION ran after the failed turn
    refused = api.post(f"/sessions/{session['id']}/turns", json={"input": {"user_message": "more"}})
    assert refused.status_code == 409 and "FAILED" in refused.json()["message"]


def test_failed_initialization_fails_the_first_turn(api: httpx.Client, upstream: Upstream, upstream_url: str) -> None:
    upstream.script("/threads", Reply(status=503, text="maintenance"))
    version_id = thread_version(api, upstream_url)
    session = post(api, "/sessions", {"versionId": version_id, "isProduction": True})
    turn = post(api, f"/sessions/{session['id']}/turns", {"input": {"user_message": "hello"}})
    assert turn["status"] == "FAILED"
    assert turn["error"] == "External API responded with HTTP 503: Service Unavailable — maintenance"
    assert [r.path for r in upstream.received][:1] == ["/threads"]
    assert not upstream.requests_to("/threads//messages")


def test_end_rule_completes_the_session(api: httpx.Client, upstream: Upstream, upstream_url: str) -> None:
    conn = post(
        api,
        "/endpointConnections",
        {
            "name": "ending",
            "productId": "p",
            "type": "CONVERSATION",
            "url": f"{upstream_url}/chat",
            "authType": "NONE",
            "inputTemplate": '{"m": "{{ input.user_message }}"}',
            "outputMapping": {"output": "$.reply"},
            "acknowledgedInsecureHttp": True,
            "retryEnabled": True,
            "conversationEndRules": [
                {"statusCode": 409, "bodyMatch": {"path": "$.error.code", "equals": "conversation_ended"}}
            ],
        },
    )
    version = post(api, "/versions", {"productId": "p", "conversationEndpointConnectionId": conn["id"]})
    assert version["name"] == "v1"
    # productId resolves to the product's latest version
    session = post(api, "/sessions", {"productId": "p", "isProduction": True})
    assert session["versionId"] == version["id"]
    post(api, f"/sessions/{session['id']}/turns", {"input": {"user_message": "hi"}})
    upstream.script("/chat", Reply(status=409, json={"error": {"code": "conversation_ended"}}))
    ended = post(api, f"/sessions/{session['id']}/turns", {"input": {"user_message": "bye"}})
    assert ended["status"] == "SKIPPED" and ended["sessionStatus"] == "COMPLETED"
    stored = api.get(f"/sessions/{session['id']}").json()
    assert stored["status"] == "COMPLETED" and stored["stoppingReason"].startswith("Conversation ended by the endpoint")
    assert len(upstream.requests_to("/chat")) == 2  # the match was not retried


def test_openai_past_turns_template_from_the_docs(api: httpx.Client, upstream: Upstream, upstream_url: str) -> None:
    template = (
        '{\n  "model": "gpt-4",\n  "messages": [\n'
        '    {"role": "system", "content": "You are a helpful assistant."},\n'
        "    {% for turn in past_turns %}\n"
        '    {"role": "user", "content": "{{ turn.input }}"},\n'
        '    {"role": "assistant", "content": "{{ turn.output }}"},\n'
        "    {% endfor %}\n"
        '    {"role": "user", "content": "{{ input }}"}\n  ]\n}'
    )
    upstream.handle(
        "/v1/chat",
        lambda r: Reply(json={"choices": [{"message": {"content": f"re: {r.json['messages'][-1]['content']}"}}]}),
    )
    mapping = {"output": "$.choices[0].message.content"}
    version = conversation_version(
        api, f"{upstream_url}/v1/chat", name="openai", inputTemplate=template, outputMapping=mapping
    )
    session = post(api, "/sessions", {"versionId": version, "isProduction": True})
    for text in ("Hi", 'Say "quoted"', "Line\nbreak"):
        post(api, f"/sessions/{session['id']}/turns", {"input": {"user_message": text}})
    third = upstream.requests_to("/v1/chat")[2].json
    assert third["messages"] == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "re: Hi"},
        {"role": "user", "content": 'Say "quoted"'},
        {"role": "assistant", "content": 're: Say "quoted"'},
        {"role": "user", "content": "Line\nbreak"},
    ]


async def test_fifty_concurrent_sessions_complete_with_their_own_outputs(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str
) -> None:
    Threads(upstream)
    with httpx.Client(base_url=proxy_server.url) as sync_client:
        version_id = thread_version(sync_client, upstream_url)

    async def conversation(client: httpx.AsyncClient, n: int) -> tuple[str, list[str]]:
        body = {"versionId": version_id, "customId": f"user-{n}", "isProduction": True}
        session = (await client.post("/sessions", json=body)).json()
        outputs = []
        for turn in range(2):
            response = await client.post(
                f"/sessions/{session['id']}/turns", json={"input": {"user_message": f"s{n}t{turn}"}}
            )
            assert response.status_code == 201, response.text
            outputs.append(response.json()["actualOutput"])
        await client.patch(f"/sessions/{session['id']}/finish", json={})
        return session["id"], outputs

    async with httpx.AsyncClient(base_url=proxy_server.url, timeout=60) as client:
        results = await asyncio.gather(*(conversation(client, n) for n in range(50)))
        for n, (session_id, outputs) in enumerate(results):
            thread = outputs[0].split("#")[0].strip("[")
            assert outputs == [f"[{thread}#1] s{n}t0", f"[{thread}#2] s{n}t1"]
            stored = (await client.get(f"/sessions/{session_id}")).json()
            assert stored["status"] == "COMPLETED" and stored["customId"] == f"user-{n}"
    assert len({outputs[0].split("#")[0] for _, outputs in results}) == 50  # one thread each
    threads = {r.path.split("/")[2] for r in upstream.received if r.method == "DELETE"}
    assert len(threads) == 50


async def test_turns_of_one_session_run_in_order(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str
) -> None:
    first_arrived = threading.Event()

    def slow_first(received: Received) -> Reply:
        if received.json["m"] != "first":
            return Reply(json={"reply": received.json["m"]})
        first_arrived.set()
        return Reply(json={"reply": "first"}, delay=0.3)  # still answering when the second turn is sent

    upstream.handle("/slow", slow_first)
    with httpx.Client(base_url=proxy_server.url) as client:
        template = '{"m": "{{ input.user_message }}", "n": {{ past_turns | length }}}'
        version = conversation_version(client, f"{upstream_url}/slow", name="slow", inputTemplate=template)
        session = post(client, "/sessions", {"versionId": version, "isProduction": True})
    async with httpx.AsyncClient(base_url=proxy_server.url, timeout=30) as client:
        url = f"/sessions/{session['id']}/turns"
        first = asyncio.create_task(client.post(url, json={"input": {"user_message": "first"}}))
        assert await asyncio.to_thread(first_arrived.wait, 10)  # the first turn is upstream: only then the second
        second = await client.post(url, json={"input": {"user_message": "second"}})
        first_body = (await first).json()
    assert (first_body["index"], second.json()["index"]) == (0, 1)
    assert [r.json for r in upstream.requests_to("/slow")] == [{"m": "first", "n": 0}, {"m": "second", "n": 1}]


def test_session_rules(api: httpx.Client, upstream_url: str) -> None:
    v = conversation_version(api, f"{upstream_url}/chat")
    cases = [
        ({"versionId": v, "testCaseId": "tc", "isProduction": True}, 422, "testCaseId"),
        ({"versionId": v, "testCaseId": "tc", "context": "ctx"}, 422, "context"),
        ({"versionId": v, "isProduction": True, "runId": "run-1"}, 422, "runId"),
        ({"versionId": v, "isProduction": True, "context": 5}, 422, "context: must be a string or an object"),
        ({}, 422, "versionId"),
        ({"versionId": "nope"}, 404, "Version nope not found"),
        ({"productId": "empty"}, 404, "has no version"),
        ({"versionId": v, "isProduction": "yes"}, 422, "isProduction"),
    ]
    for body, status, text in cases:
        response = api.post("/sessions", json=body)
        assert response.status_code == status and text in response.json()["message"], (body, response.text)
    dev = post(api, "/sessions", {"versionId": v, "testCaseId": "tc-1"})
    prod = post(api, "/sessions", {"versionId": v, "isProduction": True, "context": "plain"})
    assert (dev["isProduction"], prod["isProduction"], dev["status"]) == (False, True, "PENDING")
    # Plain text is stored and read back as Galtea stores it; an object stays as it is.
    assert prod["context"] == {"value": "plain"} and api.get(f"/sessions/{prod['id']}").json()["context"] == {
        "value": "plain"
    }
    structured = post(api, "/sessions", {"versionId": v, "isProduction": True, "context": {"tier": "gold"}})
    assert structured["context"] == {"tier": "gold"}
    assert api.post(f"/sessions/{dev['id']}/turns", json={}).status_code == 422
    assert api.post(f"/sessions/{dev['id']}/turns", json={"input": 5}).status_code == 422
    listed = api.get("/sessions", params={"testCaseIds[]": "tc-1"}).json()
    assert [s["id"] for s in listed] == [dev["id"]]
    assert api.get("/sessions", params={"ids[]": "missing"}).status_code == 404
    assert api.delete(f"/sessions/{dev['id']}").status_code == 200
    assert api.get(f"/sessions/{dev['id']}").status_code == 404


def test_version_rules(api: httpx.Client, upstream_url: str) -> None:
    threads = upstream_url + "/threads/{{ session_id }}"  # a URL only an INITIALIZATION's session_id completes
    conv = post(
        api, "/endpointConnections", chat_connection(upstream_url, name="needs-init", productId="p", url=threads)
    )
    missing_init = api.post("/versions", json={"productId": "p", "conversationEndpointConnectionId": conv["id"]})
    assert missing_init.status_code == 422
    assert missing_init.json()["errors"][0]["field"] == "initializationEndpointConnectionId"
    wrong_slot = api.post("/versions", json={"productId": "p", "initializationEndpointConnectionId": conv["id"]})
    assert wrong_slot.status_code == 422 and "is CONVERSATION, not INITIALIZATION" in wrong_slot.json()["message"]
    unknown = api.post("/versions", json={"productId": "p", "conversationEndpointConnectionId": "ghost"})
    assert unknown.status_code == 422 and "no endpoint connection 'ghost'" in unknown.json()["message"]
    assert api.post("/versions", json={"name": "x"}).status_code == 422


def test_inference_results_logged_and_listed(api: httpx.Client, upstream: Upstream, upstream_url: str) -> None:
    session = thread_session(api, upstream, upstream_url)
    ran = post(api, f"/sessions/{session['id']}/turns", {"input": {"user_message": "hello"}})
    logged = post(
        api,
        "/inferenceResults",
        {
            "sessionId": session["id"],
            "input": "typed by client",
            "actualOutput": "answer",
            "latency": 12.5,
        },
    )
    assert logged["index"] == 1 and logged["exchange"] is None
    listed = api.get("/inferenceResults", params={"sessionIds[]": session["id"]}).json()
    assert [r["id"] for r in listed] == [ran["id"], logged["id"]]
    assert api.get(f"/inferenceResults/{ran['id']}").json()["actualOutput"] == "[th_1#1] hello"
    assert api.get("/inferenceResults/nope").status_code == 404
    assert api.post("/inferenceResults", json={"input": "x"}).status_code == 422
    assert api.post("/inferenceResults", json={"sessionId": session["id"], "status": "WEIRD"}).status_code == 422


def test_galtea_sdk_versions_sessions_and_traces(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str
) -> None:
    Threads(upstream)
    galtea = Galtea(api_key="k", base_url=proxy_server.url, suppress_updatable_version_message=True)
    try:
        with httpx.Client(base_url=proxy_server.url) as client:
            ids = thread_connections(client, upstream_url)
        version = galtea.versions.create(
            product_id="prod",
            name="sdk-v",
            conversation_endpoint_connection_id=ids["conv"],
            initialization_endpoint_connection_id=ids["init"],
            finalization_endpoint_connection_id=ids["fin"],
        )
        assert version is not None and galtea.versions.get(version.id).name == "sdk-v"
        session = galtea.sessions.create(version_id=version.id, test_case_id="tc-9", is_production=False)
        assert galtea.sessions.get(session.id).test_case_id == "tc-9"
        with httpx.Client(base_url=proxy_server.url) as client:
            post(client, f"/sessions/{session.id}/turns", {"input": {"user_message": "from sdk"}})
        (trace,) = galtea.traces.list(session_id=session.id)
        assert trace.actual_output == "[th_1#1] from sdk" and trace.input == "from sdk" and trace.index == 0
        assert galtea.traces.list(session_id=galtea.sessions.create(version_id=version.id, is_production=True).id) == []
        assert [s.id for s in galtea.sessions.list(version_id=version.id, test_case_id="tc-9")] == [session.id]
        finished = galtea.sessions.finish(session.id, stopping_reason="user left")
        assert finished.status == "COMPLETED" and finished.stopping_reason == "user left"
        assert finished.custom_id == "th_1"
        galtea.sessions.delete(session.id)
        with pytest.raises(Exception, match="not found"):
            galtea.sessions.get(session.id)
    finally:
        galtea.shutdown()


def test_versions_from_the_config_file_refer_to_connections_by_name(tmp_path: Path, upstream_url: str) -> None:
    config = Config(
        connections=[
            {
                "name": "cfg-chat",
                "product_id": "demo",
                "type": "CONVERSATION",
                "url": f"{upstream_url}/chat",
                "auth_type": "NONE",
                "input_template": '{"message": "{{ input.user_message }}"}',
                "output_mapping": {"output": "$.reply"},
            }
        ],
        versions=[{"name": "v1", "product_id": "demo", "conversation": "cfg-chat"}],
    )
    with running_proxy(tmp_path, config) as proxy, httpx.Client(base_url=proxy.url) as client:
        (version,) = client.get("/versions", params={"names[]": "v1"}).json()
        conn = client.get(f"/endpointConnections/{version['conversationEndpointConnectionId']}").json()
        assert conn["name"] == "cfg-chat"
        session = post(client, "/sessions", {"versionId": version["id"], "isProduction": True})
        turn = post(client, f"/sessions/{session['id']}/turns", {"input": {"user_message": "x"}})
        assert json.loads(turn["actualOutput"].removeprefix("echo ")) == {"message": "x"}
    # Restart: versions and sessions come back from SQLite.
    with running_proxy(tmp_path, config) as proxy, httpx.Client(base_url=proxy.url) as client:
        assert len(client.get("/versions").json()) == 1
        assert client.get(f"/sessions/{session['id']}").json()["id"] == session["id"]
        assert [t["id"] for t in client.get("/inferenceResults", params={"sessionIds[]": session["id"]}).json()] == [
            turn["id"]
        ]
