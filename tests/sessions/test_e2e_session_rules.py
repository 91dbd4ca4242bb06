"""Galtea's session rules to the letter: the galtea SDK (where it has the call) and httpx against a real proxy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from galtea import Galtea
from galtea.domain.models.session import Session as SdkSession

from proxy.config.file import Config
from proxy.config.settings import Settings
from proxy.errors import ConfigError
from proxy.server.runtime import Runtime
from tests.conftest import chat_connection
from tests.helpers import conversation_version, post, thread_connections, thread_version
from tests.upstream import Threads, Upstream

pytestmark = pytest.mark.e2e


def chat_version(api: httpx.Client, upstream_url: str, product: str = "p") -> str:
    template = '{"m": "{{ input.user_message }}", "ctx": {{ context }}}'
    return conversation_version(api, f"{upstream_url}/chat", productId=product, inputTemplate=template)


def refused(response: httpx.Response, status: int, field: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["errors"][0]["field"] == field, body
    return str(body["message"])


def test_status_on_create_is_validated_and_honoured(api: httpx.Client, upstream: Upstream, upstream_url: str) -> None:
    Threads(upstream)
    version = thread_version(api, upstream_url)
    message = refused(
        api.post("/sessions", json={"versionId": version, "testCaseId": "t", "status": "RUNNING"}), 422, "status"
    )
    assert "'RUNNING'" in message and all(s in message for s in ("PENDING", "COMPLETED", "FAILED"))
    assert post(api, "/sessions", {"versionId": version, "testCaseId": "t"})["status"] == "PENDING"

    for given, stored in (("completed", "COMPLETED"), ("Failed", "FAILED")):
        session = post(api, "/sessions", {"versionId": version, "testCaseId": f"t-{stored}", "status": given})
        assert session["status"] == stored and api.get(f"/sessions/{session['id']}").json()["status"] == stored
        # A finished session logs the turns a client ran itself, but runs none.
        logged = post(api, "/inferenceResults", {"sessionId": session["id"], "input": "hi", "actualOutput": "hello"})
        assert logged["index"] == 0 and logged["actualOutput"] == "hello"
        turn = api.post(f"/sessions/{session['id']}/turns", json={"input": {"user_message": "hi"}})
        assert turn.status_code == 409 and stored in turn.json()["message"]
        # It was never driven here, so finishing it calls no lifecycle connection either.
        assert api.patch(f"/sessions/{session['id']}/finish", json={}).json()["status"] == stored
    assert upstream.received == []


def test_production_rules_through_the_sdk(
    galtea: Galtea, api: httpx.Client, upstream: Upstream, upstream_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    version = chat_version(api, upstream_url)
    with pytest.raises(requests.HTTPError):
        galtea.sessions.create(version_id=version, test_case_id="tc-1", is_production=True)
    assert "testCaseId (test_case_id): is refused on a production session" in capsys.readouterr().out
    with pytest.raises(requests.HTTPError):
        galtea.sessions.create(version_id=version, test_case_id="tc-1", context="the test case has its own")
    assert "context: is refused when testCaseId is set" in capsys.readouterr().out

    dev = galtea.sessions.create(version_id=version, test_case_id="tc-1")
    assert dev.is_production is False and dev.is_monitoring() is False and dev.context is None
    prod = galtea.sessions.create(version_id=version, is_production=True, context="user is on the gold plan")
    assert prod.is_production is True and prod.test_case_id is None
    # Plain text is stored as Galtea stores it, and the SDK unwraps it again.
    assert prod.context == "user is on the gold plan"
    assert prod.context_data == {"value": "user is on the gold plan"}
    assert galtea.sessions.get(prod.id).context_data == {"value": "user is on the gold plan"}
    # Templates see the stored object.
    turn = post(api, f"/sessions/{prod.id}/turns", {"input": {"user_message": "hi"}})
    assert upstream.requests_to("/chat")[-1].json == {"m": "hi", "ctx": {"value": "user is on the gold plan"}}
    assert turn["status"] == "GENERATED"
    assert galtea.sessions.update(prod.id, context="now silver").context_data == {"value": "now silver"}
    with pytest.raises(requests.HTTPError):
        galtea.sessions.update(prod.id, status="RUNNING")
    assert "status: 'RUNNING' is not one of 'PENDING', 'COMPLETED' or 'FAILED'" in capsys.readouterr().out


def test_responses_carry_every_field_the_sdk_reads(galtea: Galtea, api: httpx.Client, upstream_url: str) -> None:
    version = chat_version(api, upstream_url)
    created = post(api, "/sessions", {"versionId": version, "testCaseId": "tc-1", "customId": "mine"})
    # context_data is the SDK's own copy of `context`, never sent by the API.
    read_by_sdk = {info.alias or name for name, info in SdkSession.model_fields.items() if name != "context_data"}
    for answer in (created, api.get(f"/sessions/{created['id']}").json(), api.get("/sessions").json()[0]):
        assert read_by_sdk <= set(answer), read_by_sdk - set(answer)
        assert answer["userId"] is None and answer["isSeed"] is False and answer["recordingUri"] is None
    listed = galtea.sessions.list(version_id=version)
    assert [(s.id, s.user_id, s.custom_id, s.version_id) for s in listed] == [(created["id"], None, "mine", version)]


def test_snake_case_input_on_every_route(api: httpx.Client, upstream_url: str) -> None:
    conn = post(
        api,
        "/endpointConnections",
        {
            "name": "snake",
            "product_id": "snake-prod",
            "type": "CONVERSATION",
            "url": f"{upstream_url}/chat",
            "auth_type": "NONE",
            "input_template": '{"m": "{{ input.user_message }}"}',
            "output_mapping": {"output": "$.reply"},
            "acknowledged_insecure_http": True,
        },
    )
    assert conn["productId"] == "snake-prod"
    patched = api.patch(f"/endpointConnections/{conn['id']}", json={"retry_enabled": True, "retry_max_attempts": 1})
    assert (patched.json()["retryEnabled"], patched.json()["retryMaxAttempts"]) == (True, 1)
    tested = api.post(
        "/endpointConnections/testConnection",
        json={"id": conn["id"], "output_mapping": {"output": "$.path"}, "input": {"user_message": "x"}},
    ).json()
    assert tested["success"] and tested["extractedOutput"] == {"output": "/chat"}
    version = post(
        api,
        "/versions",
        {"product_id": "snake-prod", "name": "v-snake", "conversation_endpoint_connection_id": conn["id"]},
    )
    assert version["conversationEndpointConnectionId"] == conn["id"] and version["productId"] == "snake-prod"
    session = post(api, "/sessions", {"version_id": version["id"], "test_case_id": "tc-snake", "custom_id": "c-1"})
    assert (session["versionId"], session["testCaseId"], session["customId"]) == (version["id"], "tc-snake", "c-1")
    prod = post(api, "/sessions", {"product_id": "snake-prod", "is_production": True})
    assert prod["isProduction"] is True and prod["versionId"] == version["id"]
    updated = api.patch(f"/sessions/{session['id']}", json={"custom_id": "c-2", "stopping_reason": "later"}).json()
    assert (updated["customId"], updated["stoppingReason"]) == ("c-2", "later")
    logged = post(
        api,
        "/inferenceResults",
        {"session_id": session["id"], "actual_output": "typed", "retrieval_context": "docs", "input_tokens": 3},
    )
    assert (logged["sessionId"], logged["actualOutput"], logged["retrievalContext"]) == (session["id"], "typed", "docs")
    assert logged["inputTokens"] == 3
    finished = api.patch(f"/sessions/{prod['id']}/finish", json={"stopping_reason": "user left"}).json()
    assert (finished["status"], finished["stoppingReason"]) == ("COMPLETED", "user left")


def test_external_session_id_is_what_templates_see_whatever_the_custom_id(
    api: httpx.Client, upstream: Upstream, upstream_url: str
) -> None:
    Threads(upstream)
    ids = thread_connections(api, upstream_url)
    api.patch(f"/endpointConnections/{ids['conv']}", json={"headers": {"X-Thread": "{{ session_id }}"}})
    version = post(
        api,
        "/versions",
        {
            "productId": "prod",
            "conversationEndpointConnectionId": ids["conv"],
            "initializationEndpointConnectionId": ids["init"],
            "finalizationEndpointConnectionId": ids["fin"],
        },
    )["id"]
    runs: dict[str, dict[str, Any]] = {}
    for label, body in (("given", {"customId": "my-own-id"}), ("none", {})):
        session = post(api, "/sessions", {"versionId": version, "testCaseId": f"tc-{label}", **body})
        post(api, f"/sessions/{session['id']}/turns", {"input": {"user_message": "hello"}})
        runs[label] = api.patch(f"/sessions/{session['id']}/finish", json={}).json()
    # The id the INITIALIZATION mapped is the session's externalSessionId either way, and becomes its customId
    # only when it had none.
    assert (runs["given"]["externalSessionId"], runs["given"]["customId"]) == ("th_1", "my-own-id")
    assert (runs["none"]["externalSessionId"], runs["none"]["customId"]) == ("th_2", "th_2")
    # In URLs and headers, {{ session_id }} is the external id, never the caller's customId.
    assert [(r.method, r.path) for r in upstream.received] == [
        ("POST", "/threads"),
        ("POST", "/threads/th_1/messages"),
        ("DELETE", "/threads/th_1"),
        ("POST", "/threads"),
        ("POST", "/threads/th_2/messages"),
        ("DELETE", "/threads/th_2"),
    ]
    assert [r.headers["x-thread"] for r in upstream.received if r.path.endswith("/messages")] == ["th_1", "th_2"]


async def test_a_version_without_conversation_is_refused_when_created(
    galtea: Galtea, api: httpx.Client, upstream_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init = post(
        api,
        "/endpointConnections",
        {
            "name": "init-only",
            "productId": "p",
            "type": "INITIALIZATION",
            "url": f"{upstream_url}/threads",
            "authType": "NONE",
            "outputMapping": {"session_id": "$.id"},
            "acknowledgedInsecureHttp": True,
        },
    )
    message = refused(
        api.post("/versions", json={"productId": "p", "initializationEndpointConnectionId": init["id"]}),
        422,
        "conversationEndpointConnectionId",
    )
    assert "a version runs its turns through a CONVERSATION connection" in message
    assert api.get("/versions").json() == []
    assert galtea.versions.create(product_id="p", name="sdk-v") is None  # the SDK prints the refusal
    assert "conversationEndpointConnectionId" in capsys.readouterr().out

    config = Config(
        connections=[{**chat_connection(upstream_url), "auth_type": "NONE", "auth_token": None}],
        versions=[{"name": "v1", "product_id": "prod-1"}],
    )
    runtime = Runtime(Settings(data_dir=tmp_path / "cfg", cassettes_dir=tmp_path / "cas", allow_http=True), config)
    try:
        with pytest.raises(ConfigError, match=r"config versions\[0\] \(v1\): conversationEndpointConnectionId"):
            await runtime.start()
    finally:
        await runtime.close()
