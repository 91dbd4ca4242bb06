"""/openapi.json describes what every route takes and answers, and every answer matches what it describes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter
from starlette.routing import Match

from proxy.server.api.openapi import ApiRoute
from proxy.server.app import all_routes
from tests.conftest import TEST_TOKEN, RunningProxy, chat_connection
from tests.helpers import post, thread_version
from tests.upstream import Reply, Threads, Upstream

pytestmark = pytest.mark.e2e
BODY_METHODS = {"post", "put", "patch"}


def test_every_route_describes_its_body_and_its_answer(proxy_server: RunningProxy) -> None:
    spec = httpx.get(f"{proxy_server.url}/openapi.json").json()
    components = spec["components"]["schemas"]

    def resolved(schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        return components[ref.rsplit("/", 1)[1]] if ref else schema

    operations = [(path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items()]
    assert len(operations) == sum(len((r.methods or set()) - {"HEAD"}) for r in all_routes())
    for path, method, operation in operations:
        where = f"{method.upper()} {path}"
        (ok,) = [status for status in operation["responses"] if status.startswith("2")]
        (answer,) = operation["responses"][ok]["content"].values()
        assert resolved(answer["schema"]), f"{where}: no response schema"
        if method in BODY_METHODS:
            (body,) = operation["requestBody"]["content"].values()
            assert resolved(body["schema"]).get("properties") or resolved(body["schema"]).get("type"), where
    session_create = components["SessionCreate"]["properties"]
    assert {"versionId", "testCaseId", "isProduction", "status", "context"} <= set(session_create)
    assert components["SessionStatus"]["enum"] == ["PENDING", "COMPLETED", "FAILED"]
    assert "userId" in components["Session"]["properties"]
    assert {"id", "name", "description", "organizationId", "createdAt"} <= set(components["Product"]["required"])


class AnswerChecker:
    """An httpx response hook: each JSON answer is validated against the model its route declares."""

    def __init__(self) -> None:
        self.routes = [r for r in all_routes() if isinstance(r, ApiRoute)]
        self.checked: set[tuple[str, str]] = set()

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        request = response.request
        scope = {"type": "http", "path": request.url.path, "method": request.method}
        route = next(r for r in self.routes if r.matches(scope)[0] is Match.FULL)
        where = f"{request.method} {request.url.path}"
        if response.status_code >= 400:
            assert isinstance(response.json()["message"], str), where
            return
        assert response.status_code == route.status, f"{where}: {response.status_code}, documented {route.status}"
        if route.media == "application/json":
            if isinstance(route.response, dict):  # a plain JSON schema (the OpenAPI document itself)
                assert set(route.response["required"]) <= set(response.json()), where
            else:
                TypeAdapter(route.response).validate_python(response.json())
            self.checked.add((request.method, route.path))


def flows_newest(api: httpx.Client) -> int:
    entries = api.get("/flows.har").json()["log"]["entries"]
    assert entries, "the calls above are in the flow log"
    return int(entries[0]["_flowId"])


@pytest.fixture
def checked(proxy_server: RunningProxy) -> Iterator[tuple[httpx.Client, AnswerChecker]]:
    checker = AnswerChecker()
    with httpx.Client(base_url=proxy_server.url, timeout=30, event_hooks={"response": [checker]}) as client:
        yield client, checker


def test_every_answer_matches_its_schema(
    checked: tuple[httpx.Client, AnswerChecker], upstream: Upstream, upstream_url: str
) -> None:
    api, checker = checked
    Threads(upstream)
    upstream.script("/search", Reply(json={"results": [{"text": "refunds take 5 days"}]}))
    version = thread_version(api, upstream_url)
    api.get("/healthz")
    api.get("/openapi.json")
    api.get("/minimum-sdk-version")
    chat = post(api, "/endpointConnections", chat_connection(upstream_url, headers={"X-Key": TEST_TOKEN}))
    api.get("/endpointConnections")
    api.get(f"/endpointConnections/{chat['id']}")
    api.patch(f"/endpointConnections/{chat['id']}", json={"timeout": 30})
    api.post("/endpointConnections/testConnection", json={"id": chat["id"]})
    api.put(f"/_proxy/faults/{chat['id']}", json={"faults": [{"status": 503, "times": 1, "match": {"path": "/x"}}]})
    api.get(f"/_proxy/faults/{chat['id']}")
    api.get(f"/_proxy/faults/{chat['id']}", headers={"X-Proxy-Test-Id": "T"})
    api.delete(f"/_proxy/faults/{chat['id']}")
    api.get("/versions")
    api.get(f"/versions/{version}")
    session = post(api, "/sessions", {"versionId": version, "testCaseId": "tc-1", "metadata": {"k": 1}})
    turn = post(api, f"/sessions/{session['id']}/turns", {"input": {"user_message": "hi"}})
    logged = post(api, "/inferenceResults", {"sessionId": session["id"], "input": "x", "inputTokens": 4})
    api.get("/inferenceResults")
    api.get(f"/inferenceResults/{turn['id']}")
    api.get(f"/inferenceResults/{logged['id']}")
    api.get("/sessions")
    api.get(f"/sessions/{session['id']}")
    api.patch(f"/sessions/{session['id']}", json={"metadata": {"k": 2}})
    api.patch(f"/sessions/{session['id']}/finish", json={"stoppingReason": "done"})
    api.get("/products")
    api.get("/products/prod")
    api.post(
        "/v1/connectors",
        json={"name": "kb", "url": f"{upstream_url}/search", "service_auth": {"type": "bearer", "token": TEST_TOKEN}},
    )
    api.get("/v1/connectors")
    api.get("/v1/connectors/kb")
    api.patch("/v1/connectors/kb", json={"description": "the knowledge base"})
    api.post("/v1/connectors/kb/search", json={"query": "refunds"})
    api.delete("/v1/connectors/kb")
    api.delete(f"/sessions/{session['id']}")
    api.delete(f"/endpointConnections/{chat['id']}")
    api.get("/sessions/nope")  # errors are {"message": ...}
    api.get("/flows.har", params={"connection": "conv"})
    api.get(f"/flows/{flows_newest(api)}.har")

    json_routes = {(m, r.path) for r in checker.routes if r.media == "application/json" for m in r.methods or ()}
    assert json_routes - {(m, p) for m, p in json_routes if m == "HEAD"} == checker.checked
