"""The request guard against a real server: each test is one attack a web page could make, refused with its
status, and the server's state (connections, upstream calls) unchanged."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningProxy, chat_connection, csrf_token, running_proxy
from tests.upstream import Reply, Upstream

pytestmark = pytest.mark.e2e
API_KEY = "key-Gu4rd-0123456789"
APP = "http://localhost:3000"  # a web app the user allows with --cors-origin


@pytest.fixture
def proxy(tmp_path: Path, upstream: Upstream) -> Iterator[RunningProxy]:
    with running_proxy(tmp_path, cors_origins=(APP,), allowed_hosts=("proxy.internal",)) as running:
        yield running


@pytest.fixture
def client(proxy: RunningProxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.url) as c:
        yield c


@pytest.fixture
def chat_id(client: httpx.Client, upstream: Upstream, upstream_url: str) -> str:
    response = client.post("/endpointConnections", json=chat_connection(upstream_url))
    assert response.status_code == 201, response.text
    upstream.received.clear()
    return str(response.json()["id"])


def connection_names(client: httpx.Client) -> list[str]:
    return [c["name"] for c in client.get("/endpointConnections").json()]


# Content type


def test_a_text_plain_post_is_415_and_creates_nothing(client: httpx.Client, upstream_url: str) -> None:
    body = json.dumps(chat_connection(upstream_url))  # valid JSON, sent the way a page can without a preflight
    response = client.post("/endpointConnections", content=body, headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert "text/plain" in response.json()["message"] and "application/json" in response.json()["message"]
    assert connection_names(client) == []


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/endpointConnections", {"Content-Type": "application/x-www-form-urlencoded"}),
        ("/endpointConnections", {"Content-Type": "multipart/form-data; boundary=x"}),
        ("/endpointConnections", {}),  # a body with no type at all (a Blob without one)
        ("/endpointConnections/testConnection", {"Content-Type": "application/x-www-form-urlencoded"}),
        ("/v1/connectors", {"Content-Type": "text/plain;charset=UTF-8"}),
    ],
)
def test_form_and_untyped_posts_are_415_and_reach_nothing(
    client: httpx.Client, upstream: Upstream, upstream_url: str, path: str, headers: dict[str, str]
) -> None:
    body = json.dumps({**chat_connection(upstream_url), "url": f"{upstream_url}/search"}).encode()
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == 415, response.text
    assert connection_names(client) == [] and client.get("/v1/connectors").json()["total_count"] == 0
    assert upstream.received == []


def test_connector_search_form_post_is_415_and_not_forwarded(
    client: httpx.Client, upstream: Upstream, upstream_url: str
) -> None:
    upstream.handle("/search", lambda r: Reply(json={"results": []}))
    created = client.post("/v1/connectors", json={"name": "docs", "url": f"{upstream_url}/search"})
    assert created.status_code == 200, created.text
    upstream.received.clear()
    response = client.post("/v1/connectors/docs/search", data={"query": "secrets"})
    assert response.status_code == 415 and upstream.received == []


def test_json_types_and_body_less_calls_pass(client: httpx.Client, upstream_url: str) -> None:
    body = json.dumps(chat_connection(upstream_url))
    typed = {"Content-Type": "application/vnd.api+json; charset=utf-8"}
    created = client.post("/endpointConnections", content=body, headers=typed)
    assert created.status_code == 201, created.text
    # The galtea SDK deletes with Content-Length: 0 and no type; a body-less POST is the route's to judge (422).
    deleted = client.delete(f"/endpointConnections/{created.json()['id']}", headers={"Content-Length": "0"})
    assert deleted.status_code == 200 and connection_names(client) == []
    assert client.post("/endpointConnections").status_code == 422


def test_a_delete_with_a_form_body_is_415_and_deletes_nothing(client: httpx.Client, chat_id: str) -> None:
    response = client.request(
        "DELETE", f"/endpointConnections/{chat_id}", content=b"a=1", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415 and connection_names(client) == ["chat"]


# Host (DNS rebinding)


def test_a_rebinding_host_is_403_and_reads_nothing(client: httpx.Client, chat_id: str) -> None:
    response = client.get("/endpointConnections", headers={"Host": "rebind.attacker.example"})
    assert response.status_code == 403 and chat_id not in response.text
    message = response.json()["message"]
    assert "rebind.attacker.example" in message and "--allowed-host rebind.attacker.example" in message
    for path in ("/healthz", "/", f"/forward/{chat_id}/x", "/openapi.json"):  # every path
        assert client.get(path, headers={"Host": "rebind.attacker.example:80"}).status_code == 403, path


def test_loopback_names_and_allowed_hosts_pass(client: httpx.Client, proxy: RunningProxy) -> None:
    port = proxy.url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", "127.8.9.10", "[::1]:80", "proxy.internal"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
    for host in ("proxy.internal.attacker.example", "localhost.attacker.example", "evil@127.0.0.1", "10.1.2.3"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 403, host


def test_a_name_not_allowed_by_default(tmp_path: Path) -> None:
    with running_proxy(tmp_path) as plain, httpx.Client(base_url=plain.url) as c:
        assert c.get("/healthz", headers={"Host": "proxy.internal"}).status_code == 403


def raw_request(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_a_missing_or_repeated_host_is_403(proxy: RunningProxy) -> None:
    missing = raw_request(proxy.url, b"GET /endpointConnections HTTP/1.0\r\n\r\n")
    assert missing.startswith(b"HTTP/1.1 403") and b"Host: the header is missing" in missing
    port = proxy.url.rsplit(":", 1)[1].encode()
    twice = b"GET /endpointConnections HTTP/1.1\r\nHost: 127.0.0.1:" + port + b"\r\nHost: evil.example\r\n"
    assert raw_request(proxy.url, twice + b"Connection: close\r\n\r\n").startswith(b"HTTP/1.1 403")


# Origin and CORS


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1:1", "http://localhost:3001"])
def test_a_foreign_origin_is_403_and_changes_nothing(client: httpx.Client, upstream_url: str, origin: str) -> None:
    response = client.post("/endpointConnections", json=chat_connection(upstream_url), headers={"Origin": origin})
    assert response.status_code == 403 and f"Origin: {origin!r}" in response.json()["message"]
    assert "access-control-allow-origin" not in response.headers
    assert client.get("/endpointConnections", headers={"Origin": origin}).status_code == 403
    assert connection_names(client) == []


def test_the_servers_own_origin_passes(client: httpx.Client, proxy: RunningProxy, upstream_url: str) -> None:
    created = client.post("/endpointConnections", json=chat_connection(upstream_url), headers={"Origin": proxy.url})
    assert created.status_code == 201 and "access-control-allow-origin" not in created.headers


def test_an_allowed_origin_gets_cors_answers(client: httpx.Client, upstream_url: str) -> None:
    preflight = client.options(
        "/endpointConnections",
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )
    assert preflight.status_code == 204
    h = preflight.headers
    assert h["access-control-allow-origin"] == APP and h["vary"] == "Origin"
    assert "POST" in h["access-control-allow-methods"] and "PATCH" in h["access-control-allow-methods"]
    assert h["access-control-allow-headers"] == "content-type, authorization"
    assert int(h["access-control-max-age"]) > 0
    created = client.post("/endpointConnections", json=chat_connection(upstream_url), headers={"Origin": APP})
    assert created.status_code == 201
    assert created.headers["access-control-allow-origin"] == APP and created.headers["vary"] == "Origin"
    assert created.headers["access-control-expose-headers"] == "X-Proxy-Cassette, Mcp-Session-Id"
    # Its refusals carry the CORS headers too, so the app can read why.
    refused = client.post("/endpointConnections", content=b"{}", headers={"Origin": APP, "Content-Type": "text/plain"})
    assert refused.status_code == 415 and refused.headers["access-control-allow-origin"] == APP


def test_a_preflight_to_forward_is_answered_by_the_guard_never_upstream(
    client: httpx.Client, upstream: Upstream, chat_id: str
) -> None:
    preflight = {"Origin": APP, "Access-Control-Request-Method": "POST"}
    answer = client.options(f"/forward/{chat_id}/v1/chat", headers=preflight)
    assert answer.status_code == 204 and answer.headers["access-control-allow-origin"] == APP
    refused = client.options(f"/forward/{chat_id}/v1/chat", headers={**preflight, "Origin": "https://evil.example"})
    assert refused.status_code == 403
    assert upstream.received == []
    # Without Origin it is a client's own OPTIONS call: forwarded.
    assert client.options(f"/forward/{chat_id}/v1/chat").status_code == 200
    assert [(r.method, r.path) for r in upstream.received] == [("OPTIONS", "/v1/chat")]


def test_an_upstreams_own_cors_headers_never_reach_a_browser(
    client: httpx.Client, upstream: Upstream, proxy: RunningProxy, chat_id: str
) -> None:
    loose = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": "true"}
    upstream.script("/v1/models", Reply(json={"data": []}, headers=loose))
    listed = client.get(f"/forward/{chat_id}/v1/models", headers={"Origin": APP})
    assert listed.status_code == 200 and listed.headers.get_list("access-control-allow-origin") == [APP]
    assert "access-control-allow-credentials" not in listed.headers
    own = client.get(f"/forward/{chat_id}/v1/models", headers={"Origin": proxy.url})
    assert own.status_code == 200 and not any(k.startswith("access-control-") for k in own.headers)
    plain = client.get(f"/forward/{chat_id}/v1/models")  # a client that is no browser: still none of the upstream's
    assert plain.status_code == 200 and not any(k.startswith("access-control-") for k in plain.headers)


# Fetch metadata


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_cross_and_same_site_requests_are_403(client: httpx.Client, chat_id: str, site: str) -> None:
    headers = {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "script"}
    response = client.get("/endpointConnections", headers=headers)
    assert response.status_code == 403 and chat_id not in response.text and site in response.json()["message"]
    assert client.delete(f"/endpointConnections/{chat_id}", headers=headers).status_code == 403
    assert connection_names(client) == ["chat"]


def test_a_link_to_the_inspector_is_followed_but_not_framed(client: httpx.Client, chat_id: str) -> None:
    navigate = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    for path in ("/", f"/inspector/connections/{chat_id}"):
        response = client.get(path, headers=navigate)
        assert response.status_code == 200 and response.headers["x-frame-options"] == "DENY", path
    framed = {**navigate, "Sec-Fetch-Dest": "iframe"}
    assert client.get("/", headers=framed).status_code == 403
    for path in ("/endpointConnections", f"/forward/{chat_id}/v1/chat"):  # no exemption outside the inspector
        assert client.get(path, headers=navigate).status_code == 403, path
    posted = client.post(f"/inspector/connections/{chat_id}/test", data={}, headers=navigate)
    assert posted.status_code == 403


def test_an_allowed_origin_may_be_cross_site(client: httpx.Client) -> None:
    headers = {"Origin": APP, "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"}
    assert client.get("/endpointConnections", headers=headers).status_code == 200


# /forward


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain", "Sec-Fetch-Mode": "no-cors"},
        {"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "same-origin"},
        {"Content-Type": "multipart/form-data; boundary=b", "Origin": APP},
        {"Sec-Fetch-Dest": "empty"},  # a body with no type
    ],
)
def test_forward_refuses_what_a_browser_posts_without_preflight(
    client: httpx.Client, upstream: Upstream, chat_id: str, headers: dict[str, str]
) -> None:
    response = client.post(f"/forward/{chat_id}/v1/chat", content=b"q=1", headers=headers)
    assert response.status_code == 415 and "forward" in response.json()["message"]
    assert upstream.received == []


def test_forward_relays_any_body_of_a_non_browser_client(
    client: httpx.Client, upstream: Upstream, chat_id: str
) -> None:
    response = client.post(f"/forward/{chat_id}/v1/upload", content=b"q=1", headers={"Content-Type": "text/plain"})
    assert response.status_code == 200
    (received,) = upstream.received
    assert received.body == b"q=1" and received.headers["content-type"] == "text/plain"


# The inspector's forms: CSRF token


def test_an_inspector_form_without_the_csrf_token_is_403_and_calls_nothing(
    client: httpx.Client, upstream: Upstream, chat_id: str
) -> None:
    form = {"input": '{"user_message": "hi"}', "context": ""}
    path = f"/inspector/connections/{chat_id}/test"
    assert client.post(path, data=form).status_code == 403
    assert client.post(path, data={**form, "csrf_token": "0" * 64}).status_code == 403
    assert client.post(path, data={**form, "csrf_token": "é"}).status_code == 403
    as_text = client.post(path, content=b"input=x", headers={"Content-Type": "text/plain"})
    assert as_text.status_code == 415
    assert upstream.received == []
    token = csrf_token(client.get(f"/inspector/connections/{chat_id}").text)
    sent = client.post(path, data={**form, "csrf_token": token})
    assert sent.status_code == 200 and "Result:" in sent.text
    assert [r.path for r in upstream.received] == ["/chat"]


def test_two_servers_in_one_process_have_their_own_csrf_token(tmp_path: Path, upstream_url: str) -> None:
    with running_proxy(tmp_path / "a") as a, running_proxy(tmp_path / "b") as b:
        forms = []
        for server in (a, b):
            created = httpx.post(f"{server.url}/endpointConnections", json=chat_connection(upstream_url))
            path = f"/inspector/connections/{created.json()['id']}"
            forms.append((f"{server.url}{path}", csrf_token(httpx.get(f"{server.url}{path}").text)))
        (_, token_a), (form_b, token_b) = forms
        assert token_a != token_b
        assert httpx.post(f"{form_b}/test", data={"input": "", "csrf_token": token_a}).status_code == 403


# Login (--api-key)


@pytest.fixture
def keyed(tmp_path: Path, upstream: Upstream) -> Iterator[RunningProxy]:
    with running_proxy(tmp_path, api_key=API_KEY) as running:
        yield running


def log_in(client: httpx.Client, key: str, next_path: str = "/") -> httpx.Response:
    form = client.get(f"/inspector/login?next={next_path}")
    return client.post(
        "/inspector/login", data={"api_key": key, "next": next_path, "csrf_token": csrf_token(form.text)}
    )


def test_an_inspector_page_without_credentials_answers_the_login_form(keyed: RunningProxy) -> None:
    with httpx.Client(base_url=keyed.url) as client:
        page = client.get("/inspector/connections/abc?x=1")
        api = client.get("/endpointConnections")
    assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
    assert '<input type="password" name="api_key"' in page.text
    assert 'name="next" value="/inspector/connections/abc?x=1"' in page.text and csrf_token(page.text)
    assert api.status_code == 401 and api.headers["content-type"] == "application/json"


def test_login_sets_a_strict_http_only_cookie_and_redirects(keyed: RunningProxy) -> None:
    with httpx.Client(base_url=keyed.url) as client:
        answer = log_in(client, API_KEY, "/inspector/connections/abc")
        assert answer.status_code == 303 and answer.headers["location"] == "/inspector/connections/abc"
        cookie = answer.headers["set-cookie"]
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/"} <= flags
        name, value = cookie.split(";")[0].split("=", 1)
        assert API_KEY not in cookie and len(value) >= 32
        assert name == f"proxy_login_{keyed.url.rsplit(':', 1)[1]}"
        assert client.get("/").status_code == 200  # the cookie opens the inspector


def test_a_wrong_key_shows_the_form_again_and_sets_no_cookie(keyed: RunningProxy) -> None:
    with httpx.Client(base_url=keyed.url) as client:
        answer = log_in(client, "not-the-key")
        assert answer.status_code == 401 and "Wrong API key." in answer.text and "set-cookie" not in answer.headers
        assert client.get("/").status_code == 401
        no_token = client.post("/inspector/login", data={"api_key": API_KEY, "next": "/"})
        assert no_token.status_code == 403 and "set-cookie" not in no_token.headers


def test_the_login_cookie_does_not_open_the_json_api_or_forward(keyed: RunningProxy, upstream: Upstream) -> None:
    bearer = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=keyed.url) as client:
        assert log_in(client, API_KEY).status_code == 303 and client.cookies
        for method, path, kwargs in [
            ("GET", "/endpointConnections", {}),
            ("POST", "/endpointConnections", {"json": {"name": "x"}}),
            ("GET", "/forward/chat/v1/x", {}),
            ("GET", "/openapi.json", {}),
        ]:
            response = client.request(method, path, **kwargs)
            assert response.status_code == 401 and response.headers["content-type"] == "application/json", path
        assert client.get("/endpointConnections", headers=bearer).status_code == 200
    assert upstream.received == []


def test_the_login_cookie_opens_the_inspector_forms(keyed: RunningProxy, upstream: Upstream, upstream_url: str) -> None:
    bearer = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=keyed.url) as client:
        conn_id = client.post("/endpointConnections", json=chat_connection(upstream_url), headers=bearer).json()["id"]
        path = f"/inspector/connections/{conn_id}"
        assert client.post(f"{path}/test", data={"csrf_token": "x"}).status_code == 403  # the guard runs first
        upstream.received.clear()
        log_in(client, API_KEY)
        token = csrf_token(client.get(path).text)
        sent = client.post(f"{path}/test", data={"input": '{"user_message": "hi"}', "csrf_token": token})
        assert sent.status_code == 200 and "Result:" in sent.text and len(upstream.received) == 1
        logged_out = client.post("/inspector/logout", data={"csrf_token": token})
        assert logged_out.status_code == 303 and "max-age=0" in logged_out.headers["set-cookie"].lower()
        assert client.get(path).status_code == 401


@pytest.mark.parametrize(
    "target", ["//evil.example/x", "https://evil.example", "/\\evil.example", "/inspector/login", "/inspector/logout"]
)
def test_login_never_redirects_off_the_server_or_to_itself(keyed: RunningProxy, target: str) -> None:
    with httpx.Client(base_url=keyed.url) as client:
        assert log_in(client, API_KEY, target).headers["location"] == "/"


def test_without_an_api_key_the_login_page_sends_you_on(client: httpx.Client) -> None:
    answer = client.get("/inspector/login?next=/inspector/sessions/x")
    assert answer.status_code == 303 and answer.headers["location"] == "/inspector/sessions/x"
