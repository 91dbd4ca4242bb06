"""End to end: the official galtea SDK against a real proxy server and a real upstream test server."""

from __future__ import annotations

import base64
import json
import re

import httpx
import pytest
from galtea import Galtea

from tests.conftest import TEST_PASSWORD, TEST_TOKEN, RunningProxy, chat_connection
from tests.upstream import Reply, Upstream

pytestmark = pytest.mark.e2e


def create_chat(galtea: Galtea, upstream_url: str, **overrides: object):  # type: ignore[no-untyped-def]
    fields: dict[str, object] = {
        "name": "chat",
        "product_id": "prod-1",
        "url": f"{upstream_url}/chat",
        "type": "CONVERSATION",
        "auth_type": "BEARER",
        "auth_token": TEST_TOKEN,
        "input_template": '{"message": "{{ input.user_message }}", "ctx": {{ context }}}',
        "output_mapping": {"output": "$.reply", "retrieval_context": "$.docs"},
        "acknowledged_insecure_http": True,
    }
    fields.update(overrides)
    created = galtea.endpoint_connections.create(**fields)  # type: ignore[arg-type]
    assert created is not None, "create returned None (the SDK swallows the API error)"
    return created


def test_sdk_crud_round_trip(galtea: Galtea, upstream_url: str) -> None:
    created = create_chat(galtea, upstream_url, headers={"X-Tenant": "acme"})
    assert created.auth_token is None and created.has_auth_token is True
    assert galtea.endpoint_connections.get(created.id).name == "chat"
    assert galtea.endpoint_connections.get_by_name("chat", "prod-1").id == created.id
    assert [c.id for c in galtea.endpoint_connections.list(product_ids=["prod-1"])] == [created.id]
    assert galtea.endpoint_connections.list(product_ids=["other"]) == []
    updated = galtea.endpoint_connections.update(created.id, timeout=30, retry_enabled=True)
    assert updated.timeout == 30 and updated.retry_enabled is True and updated.has_auth_token is True
    galtea.endpoint_connections.delete(created.id)
    with pytest.raises(Exception, match="not found"):
        galtea.endpoint_connections.get(created.id)


def test_sdk_test_sends_the_exact_request_and_extracts(galtea: Galtea, upstream: Upstream, upstream_url: str) -> None:
    created = create_chat(galtea, upstream_url, headers={"X-Tenant": "acme", "X-Sig": "sig {{ bearer_token }}"})
    upstream.script("/chat", Reply(json={"reply": "hello there", "docs": ["d1", "d2"]}))
    result = galtea.endpoint_connections.test(id=created.id)
    assert result.success and result.status_code == 200
    assert result.extracted_output == {"output": "hello there", "retrieval_context": '["d1", "d2"]'}
    (received,) = upstream.requests_to("/chat")
    assert received.method == "POST" and received.query == ""
    assert received.headers["authorization"] == f"Bearer {TEST_TOKEN}"
    assert received.headers["x-tenant"] == "acme"
    assert received.headers["x-sig"] == f"sig {TEST_TOKEN}"
    assert received.headers["content-type"] == "application/json"
    assert re.fullmatch(r"[0-9a-f]{32}", received.headers["x-galtea-inference-id"])
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", received.headers["traceparent"])
    assert received.json == {"message": "Hello! This is a test message.", "ctx": {}}


def test_sdk_test_with_overrides_and_without_id(galtea: Galtea, upstream: Upstream, upstream_url: str) -> None:
    created = create_chat(galtea, upstream_url)
    upstream.script("/other", Reply(json={"answer": {"text": "hi"}}))
    result = galtea.endpoint_connections.test(
        id=created.id, url=f"{upstream_url}/other", output_mapping={"output": "$.answer.text"}
    )
    assert result.success and result.extracted_output == {"output": "hi"}
    unsaved = galtea.endpoint_connections.test(
        url=f"{upstream_url}/other",
        http_method="POST",
        auth_type="BASIC",
        username="ann",
        password=TEST_PASSWORD,
        input_template='{"q": "{{ input.user_message }}"}',
        output_mapping={"output": "$.answer.text"},
        type="CONVERSATION",
        acknowledged_insecure_http=True,
    )
    assert unsaved.success, unsaved.error
    last = upstream.requests_to("/other")[-1]
    assert last.headers["authorization"] == "Basic " + base64.b64encode(f"ann:{TEST_PASSWORD}".encode()).decode()


@pytest.mark.parametrize(
    ("auth", "expected_header", "expected_value"),
    [
        ({"auth_type": "API_KEY", "auth_token": TEST_TOKEN}, "x-api-key", TEST_TOKEN),
        ({"auth_type": "NONE", "auth_token": None}, "authorization", None),
        (
            {"auth_type": "API_KEY", "auth_token": TEST_TOKEN, "headers": {"Authorization": "Token { API_KEY }"}},
            "authorization",
            f"Token {TEST_TOKEN}",
        ),
    ],
)
def test_each_auth_type_reaches_the_upstream(
    galtea: Galtea,
    upstream: Upstream,
    upstream_url: str,
    auth: dict[str, object],
    expected_header: str,
    expected_value: str | None,
) -> None:
    created = create_chat(galtea, upstream_url, **auth)
    upstream.script("/chat", Reply(json={"reply": "ok"}))
    assert galtea.endpoint_connections.test(id=created.id).success
    received = upstream.requests_to("/chat")[-1]
    assert received.headers.get(expected_header) == expected_value
    if "headers" in auth:
        assert "x-api-key" not in received.headers  # the custom Authorization replaced the default


def test_failures_are_explained(galtea: Galtea, upstream: Upstream, upstream_url: str) -> None:
    created = create_chat(galtea, upstream_url, timeout=1)
    upstream.script("/chat", Reply(status=422, json={"detail": "model not found"}))
    failed = galtea.endpoint_connections.test(id=created.id)
    assert not failed.success and failed.status_code == 422
    assert failed.error == 'External API responded with HTTP 422: Unprocessable Entity — {"detail": "model not found"}'

    upstream.script("/chat", Reply(text="<html>oops</html>"))
    not_json = galtea.endpoint_connections.test(id=created.id)
    assert not not_json.success and "not JSON" in (not_json.error or "") and "<html>oops" in (not_json.error or "")

    upstream.script("/chat", Reply(json={"data": {"answer": "x", "meta": 1}}))
    miss = galtea.endpoint_connections.test(id=created.id)
    assert not miss.success
    assert "'.reply' matched nothing after '$', which is an object with keys: data" in (miss.error or "")

    upstream.script("/chat", Reply(json={"reply": "late"}, delay=2.5))
    slow = galtea.endpoint_connections.test(id=created.id)
    assert not slow.success and slow.status_code == 0 and "timed out after 1s" in (slow.error or "")


# A `.invalid` name never resolves (RFC 6761). This one is also longer than a DNS name may be (253 characters),
# so the C resolver refuses it on the spot: no query leaves the machine, whatever nameserver it is configured with.
UNRESOLVABLE_HOST = ".".join(["x" * 63] * 4) + ".invalid"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:9/x", "connection refused: 127.0.0.1:9 (nothing listening) (http://127.0.0.1:9/x)"),
        (f"http://{UNRESOLVABLE_HOST}/x", f"could not resolve host {UNRESOLVABLE_HOST} ("),
    ],
    ids=["refused", "unresolvable"],
)
def test_unreachable_upstream_is_a_clean_failure_that_says_why(galtea: Galtea, url: str, reason: str) -> None:
    """Nothing listening, or a name that does not resolve: said in plain words, not in the live client's text
    (aiohttp's `Cannot connect to host 127.0.0.1:9 ssl:default [...]` for an http:// URL)."""
    created = galtea.endpoint_connections.create(
        name="dead",
        product_id="p",
        url=url,
        type="CONVERSATION",
        auth_type="NONE",
        input_template='{"m": "{{ input.user_message }}"}',
        output_mapping={"output": "$.a"},
        acknowledged_insecure_http=True,
    )
    assert created is not None
    result = galtea.endpoint_connections.test(id=created.id)
    assert not result.success and (result.error or "").startswith(reason)
    assert "ssl:default" not in (result.error or "")


def test_hostile_input_arrives_exactly(proxy_server: RunningProxy, upstream: Upstream, upstream_url: str) -> None:
    hostile = 'quote " newline \n backslash \\ unicode é🚀 {{ 7*7 }}'
    with httpx.Client(base_url=proxy_server.url) as client:
        created = client.post("/endpointConnections", json=chat_connection(upstream_url)).json()
        upstream.script("/chat", Reply(json={"reply": "ok"}))
        body = client.post(
            "/endpointConnections/testConnection", json={"id": created["id"], "input": {"user_message": hostile}}
        ).json()
    assert body["success"]
    assert json.loads(upstream.requests_to("/chat")[-1].body) == {"message": hostile}


def test_traceparent_can_be_turned_off_per_connection(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str
) -> None:
    mine = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    upstream.script("/chat", Reply(json={"reply": "ok"}))
    with httpx.Client(base_url=proxy_server.url) as client:
        own = client.post(
            "/endpointConnections", json=chat_connection(upstream_url, traceparent=False, headers={"traceparent": mine})
        ).json()
        bare = client.post("/endpointConnections", json=chat_connection(upstream_url, name="bare", traceparent=False))
        assert own["traceparent"] is False and bare.json()["traceparent"] is False
        assert client.post("/endpointConnections/testConnection", json={"id": own["id"]}).json()["success"]
        assert client.post("/endpointConnections/testConnection", json={"id": bare.json()["id"]}).json()["success"]
        back_on = client.patch(f"/endpointConnections/{own['id']}", json={"traceparent": None}).json()
        assert back_on["traceparent"] is True  # null means the default
        assert client.post("/endpointConnections/testConnection", json={"id": own["id"]}).json()["success"]
    sent_as_written, none_at_all, replaced = upstream.requests_to("/chat")
    assert sent_as_written.headers["traceparent"] == mine
    assert "traceparent" not in none_at_all.headers
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", replaced.headers["traceparent"])
    assert replaced.headers["traceparent"] != mine
