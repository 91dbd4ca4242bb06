"""Cohere-style connectors end to end: the official cohere SDK, a real search test server, cassettes."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cohere
import httpx
import pytest

from proxy.config.file import Config
from tests.conftest import TEST_TOKEN, NoNetwork, RunningProxy, running_proxy
from tests.upstream import Received, Reply, Upstream

pytestmark = pytest.mark.e2e
OAUTH_SECRET = "oauth-Cl1ent-Secret-77"


def search_server(upstream: Upstream, path: str = "/search") -> list[Received]:
    """Answers like a connector: checks the query, returns documents with a field to exclude."""

    def answer(request: Received) -> Reply:
        query = request.json.get("query")
        if not query:
            return Reply(status=400, json={"detail": "query required"})
        return Reply(
            json={
                "results": [
                    {"id": "d1", "title": f"About {query}", "text": "body one", "internal_score": 0.9},
                    {"id": "d2", "title": "Other", "text": "body two", "internal_score": 0.1},
                ]
            }
        )

    upstream.handle(path, answer)
    return upstream.requests_to(path)


@pytest.fixture
def co(proxy_server: RunningProxy) -> Iterator[cohere.Client]:
    client = cohere.Client(api_key="cohere-key", base_url=proxy_server.url, timeout=30)
    yield client


def test_sdk_create_list_get_update_delete(co: cohere.Client, upstream: Upstream, upstream_url: str) -> None:
    search_server(upstream)
    created = co.connectors.create(
        name="Docs Search",
        url=f"{upstream_url}/search",
        description="internal docs",
        excludes=["internal_score"],
        service_auth={"type": "bearer", "token": TEST_TOKEN},
    ).connector
    assert created.id == "docs-search" and created.auth_type == "service_auth" and created.active is True
    assert created.continue_on_failure is False and created.excludes == ["internal_score"]
    (test_query,) = upstream.requests_to("/search")
    assert test_query.headers["authorization"] == f"Bearer {TEST_TOKEN}" and test_query.json["query"]
    other = co.connectors.create(
        name="wiki",
        url=f"{upstream_url}/search",
        oauth={
            "client_id": "cid",
            "client_secret": OAUTH_SECRET,
            "authorize_url": "https://a/x",
            "token_url": "https://a/t",
        },
    ).connector
    assert other.auth_type == "oauth" and other.oauth.client_id == "cid" and other.oauth.client_secret is None
    listed = co.connectors.list()
    assert [c.id for c in listed.connectors] == ["wiki", "docs-search"] and listed.total_count == 2  # newest first
    assert [c.id for c in co.connectors.list(limit=1, offset=1).connectors] == ["docs-search"]
    assert co.connectors.get("docs-search").connector.description == "internal docs"
    updated = co.connectors.update("docs-search", active=False, continue_on_failure=True).connector
    assert (updated.active, updated.continue_on_failure) == (False, True)
    co.connectors.delete("wiki")
    with pytest.raises(cohere.NotFoundError):
        co.connectors.get("wiki")


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(status=503, json={"detail": "down"}), "answered HTTP 503"),
        (Reply(json={"documents": []}), "answered without a 'results' list"),
        (Reply(text="<html>"), "answered without a 'results' list"),
    ],
)
def test_failed_registration_raises_with_the_reason_and_leaves_nothing(
    co: cohere.Client, upstream: Upstream, upstream_url: str, reply: Reply, reason: str
) -> None:
    upstream.script("/broken", reply)
    with pytest.raises(cohere.BadRequestError) as raised:
        co.connectors.create(name="broken", url=f"{upstream_url}/broken")
    assert reason in raised.value.body["message"]
    assert len(upstream.requests_to("/broken")) == 1  # exactly one test query, never retried
    assert co.connectors.list().connectors == []


def test_unreachable_connector_and_bad_input(co: cohere.Client, proxy_server: RunningProxy) -> None:
    with pytest.raises(cohere.BadRequestError) as raised:
        co.connectors.create(name="dead", url="http://127.0.0.1:9/search")
    assert "could not be completed" in raised.value.body["message"]
    with httpx.Client(base_url=proxy_server.url) as client:
        both = client.post(
            "/v1/connectors",
            json={
                "name": "x",
                "url": "http://127.0.0.1:9/s",
                "oauth": {"client_id": "a"},
                "service_auth": {"type": "bearer", "token": "t0ken-123"},
            },
        )
        assert (
            both.status_code == 422 and "oauth" in both.json()["message"] and "service_auth" in both.json()["message"]
        )
        bad_type = client.post(
            "/v1/connectors",
            json={"name": "x", "url": "http://h/s", "service_auth": {"type": "jwt", "token": "t0ken-123"}},
        )
        assert bad_type.status_code == 422 and "serviceAuth.type" in bad_type.json()["message"]
        assert client.post("/v1/connectors", json={"url": "http://h/s"}).status_code == 422
        assert client.get("/v1/connectors?limit=500").status_code == 422
        typo = client.post("/v1/connectors", json={"name": "x", "url": "http://h/s", "exclude": ["secret"]})
        assert typo.status_code == 422 and typo.json()["message"] == "exclude: unknown field — did you mean excludes?"


def test_duplicate_name_is_a_4xx_never_409(co: cohere.Client, upstream: Upstream, upstream_url: str) -> None:
    search_server(upstream)
    co.connectors.create(name="Docs", url=f"{upstream_url}/search")
    with pytest.raises(cohere.UnprocessableEntityError) as raised:
        co.connectors.create(name="docs", url=f"{upstream_url}/search")
    assert "already exists" in raised.value.body["message"]


@pytest.mark.parametrize(
    ("auth_type", "expected"),
    [("bearer", f"Bearer {TEST_TOKEN}"), ("basic", f"Basic {TEST_TOKEN}"), ("noscheme", TEST_TOKEN)],
)
def test_search_forwards_with_service_auth_and_names_excludes_without_removing_them(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str, auth_type: str, expected: str
) -> None:
    search_server(upstream)
    with httpx.Client(base_url=proxy_server.url) as client:
        client.post(
            "/v1/connectors",
            json={
                "name": "kb",
                "url": f"{upstream_url}/search",
                "excludes": ["internal_score"],
                "service_auth": {"type": auth_type, "token": TEST_TOKEN},
            },
        ).raise_for_status()
        answer = client.post("/v1/connectors/kb/search", json={"query": "refunds"})
    assert answer.status_code == 200
    # Excluded fields remain in the document; the answer names them for the client to keep out of its prompt.
    assert answer.json()["results"][0] == {
        "id": "d1",
        "title": "About refunds",
        "text": "body one",
        "internal_score": 0.9,
    }
    assert answer.json()["excluded_fields"] == ["internal_score"]
    assert upstream.requests_to("/search")[-1].headers["authorization"] == expected
    assert answer.headers["x-proxy-cassette"] == "recorded"
    assert TEST_TOKEN not in answer.text and base64.b64encode(TEST_TOKEN.encode()).decode() not in answer.text


def test_search_failures_inactive_and_continue_on_failure(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str
) -> None:
    search_server(upstream, "/ok")
    with httpx.Client(base_url=proxy_server.url) as client:
        for name, keep_going in (("strict", False), ("lenient", True)):
            client.post(
                "/v1/connectors",
                json={
                    "name": name,
                    "url": f"{upstream_url}/ok",
                    "continue_on_failure": keep_going,
                },
            ).raise_for_status()
        upstream.handle("/ok", lambda r: Reply(status=500, json={"detail": "index offline"}))
        strict = client.post("/v1/connectors/strict/search", json={"query": "q"})
        lenient = client.post("/v1/connectors/lenient/search", json={"query": "q"})
        client.patch("/v1/connectors/lenient", json={"active": False}).raise_for_status()
        inactive = client.post("/v1/connectors/lenient/search", json={"query": "q"})
        no_query = client.post("/v1/connectors/strict/search", json={})
    assert strict.status_code == 502 and "answered HTTP 500" in strict.json()["message"]
    assert lenient.status_code == 200 and lenient.json()["results"] == [] and lenient.json()["excluded_fields"] == []
    assert "answered HTTP 500" in lenient.json()["warning"]
    assert inactive.status_code == 400 and "inactive" in inactive.json()["message"]
    assert no_query.status_code == 422 and "query" in no_query.json()["message"]


def test_connector_search_replays_offline_and_keeps_excluded_fields_recorded(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    search_server(upstream)
    config = Config(
        connectors=[
            {
                "name": "kb",
                "url": f"{upstream_url}/search",
                "excludes": ["internal_score"],
                "service_auth": {"type": "bearer", "token": TEST_TOKEN},
            }
        ]
    )
    with running_proxy(tmp_path, config) as proxy, httpx.Client(base_url=proxy.url) as client:
        live = client.post("/v1/connectors/kb/search", json={"query": "refunds"}).json()
    recorded = (tmp_path / "cassettes" / "connectors" / "kb.yaml").read_text()
    assert "internal_score" in recorded and TEST_TOKEN not in recorded
    with (
        running_proxy(tmp_path, config, NoNetwork(), record_mode="none") as proxy,
        httpx.Client(base_url=proxy.url) as client,
    ):
        replayed = client.post("/v1/connectors/kb/search", json={"query": "refunds"})
        miss = client.post("/v1/connectors/kb/search", json={"query": "something else"})
    assert replayed.json() == live and replayed.headers["x-proxy-cassette"] == "hit"
    assert miss.status_code == 404 and miss.headers["x-proxy-cassette"] == "miss"


def test_failing_config_connector_is_reported_without_stopping_the_server(
    tmp_path: Path, upstream: Upstream, upstream_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.script("/gone", Reply(status=404, json={"detail": "nope"}))
    config = Config(connectors=[{"name": "gone", "url": f"{upstream_url}/gone"}])
    with running_proxy(tmp_path, config) as proxy, httpx.Client(base_url=proxy.url) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/connectors").json() == {"connectors": [], "total_count": 0}
    assert "config connectors[0] (gone) not registered" in caplog.text and "answered HTTP 404" in caplog.text


def test_no_connector_secret_in_responses_database_or_logs(
    tmp_path: Path, upstream: Upstream, upstream_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    search_server(upstream)
    search = f"{upstream_url}/search"
    connectors = [
        {"name": "kb", "url": search, "service_auth": {"type": "bearer", "token": TEST_TOKEN}},
        {"name": "o", "url": search, "oauth": {"client_id": "c", "client_secret": OAUTH_SECRET}},
    ]
    with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url) as client:
        texts = [client.post("/v1/connectors", json=body).text for body in connectors]
        texts += [
            client.get("/v1/connectors").text,
            client.get("/v1/connectors/o").text,
            client.post("/v1/connectors/kb/search", json={"query": "x"}).text,
        ]
    files = [p for p in [*(tmp_path / "data").iterdir(), *(tmp_path / "cassettes").rglob("*")] if p.is_file()]
    for secret in (TEST_TOKEN, OAUTH_SECRET):
        assert all(secret not in t for t in texts) and secret not in caplog.text
        for path in files:
            assert secret.encode() not in path.read_bytes(), path


def test_service_auth_without_a_type_defaults_to_noscheme(
    co: cohere.Client, upstream: Upstream, upstream_url: str
) -> None:
    search_server(upstream)
    created = co.connectors.create(name="plain", url=f"{upstream_url}/search", service_auth={"token": TEST_TOKEN})
    assert created.connector.auth_type == "service_auth"
    (test_query,) = upstream.requests_to("/search")
    assert test_query.headers["authorization"] == TEST_TOKEN  # noscheme: the token as it is, no scheme word


CLIENT_ID = "cid-Plain-Marker-31337"


def database_bytes(data_dir: Path) -> bytes:
    """The SQLite files as they lie on the disk: the database, its WAL and shared memory."""
    return b"".join(path.read_bytes() for path in sorted(data_dir.glob("proxy.db*")))


def test_oauth_client_id_is_encrypted_at_rest_and_returned(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    search_server(upstream)
    oauth = {"client_id": CLIENT_ID, "client_secret": OAUTH_SECRET, "authorize_url": "https://a/x", "token_url": "t"}
    with running_proxy(tmp_path) as proxy:
        co = cohere.Client(api_key="cohere-key", base_url=proxy.url, timeout=30)
        created = co.connectors.create(name="wiki", url=f"{upstream_url}/search", oauth=oauth).connector
        assert created.oauth is not None and created.oauth.client_id == CLIENT_ID
        assert CLIENT_ID.encode() not in database_bytes(proxy.data_dir)
    with running_proxy(tmp_path) as proxy:  # read back after a restart
        co = cohere.Client(api_key="cohere-key", base_url=proxy.url, timeout=30)
        oauth_read = co.connectors.get("wiki").connector.oauth
        assert oauth_read is not None and oauth_read.client_id == CLIENT_ID and oauth_read.client_secret is None
    assert CLIENT_ID.encode() not in database_bytes(tmp_path / "data")


@pytest.mark.parametrize(
    ("auth", "field"),
    [
        ({"service_auth": {"type": "bearer", "token": "short"}}, "service_auth.token"),
        ({"oauth": {"client_id": "app", "client_secret": "short"}}, "oauth.client_secret"),
    ],
)
def test_a_connector_secret_too_short_to_mask_is_refused_naming_its_field(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str, auth: dict[str, Any], field: str
) -> None:
    search_server(upstream)
    with httpx.Client(base_url=proxy_server.url) as client:
        created = client.post("/v1/connectors", json={"name": "docs", "url": f"{upstream_url}/search", **auth})
        assert created.status_code == 422 and created.json()["errors"][0]["field"] == field, created.text
        assert upstream.requests_to("/search") == []  # refused before any test query
        ok = client.post("/v1/connectors", json={"name": "docs", "url": f"{upstream_url}/search"})
        assert ok.status_code == 200, ok.text
        patched = client.patch("/v1/connectors/docs", json=auth)
        assert patched.status_code == 422 and patched.json()["errors"][0]["field"] == field


def test_an_http_connector_acknowledged_as_the_refusal_says_is_accepted(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    """Attack on the first hour: the http:// refusal says "set acknowledgedInsecureHttp: true", and the
    connector then refused that key as unknown. Both spellings are taken, kept, and needed again for no one."""
    search_server(upstream)
    with running_proxy(tmp_path, allow_http=False) as proxy, httpx.Client(base_url=proxy.url, timeout=30) as client:
        refused = client.post("/v1/connectors", json={"name": "plain", "url": f"{upstream_url}/search"})
        assert refused.status_code == 422 and "acknowledgedInsecureHttp: true" in refused.json()["message"]
        camel = client.post(
            "/v1/connectors",
            json={"name": "plain", "url": f"{upstream_url}/search", "acknowledgedInsecureHttp": True},
        )
        assert camel.status_code == 200, camel.text
        assert camel.json()["connector"]["acknowledged_insecure_http"] is True
        snake = client.post(
            "/v1/connectors",
            json={"name": "snake", "url": f"{upstream_url}/search", "acknowledged_insecure_http": True},
        )
        assert snake.status_code == 200, snake.text
        # The stored acknowledgement covers a new http:// URL on PATCH; withdrawing it refuses one.
        moved = client.patch("/v1/connectors/plain", json={"url": f"{upstream_url}/search?v=2"})
        assert moved.status_code == 200, moved.text
        withdrawn = client.patch(
            "/v1/connectors/plain", json={"url": f"{upstream_url}/search?v=3", "acknowledgedInsecureHttp": False}
        )
        assert withdrawn.status_code == 422 and withdrawn.json()["message"].startswith("url: must be https")
    assert len(upstream.requests_to("/search")) == 3  # two registrations and the move, nothing for the refusals
