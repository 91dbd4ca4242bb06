"""`X-Proxy-Record-Mode` sets the record mode for one forward call, turn or testConnection: checked, never
forwarded, and passing the request guard like any other header."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningProxy, chat_connection, running_proxy
from tests.helpers import chat_config, post, run_session, version_id
from tests.upstream import Upstream

pytestmark = pytest.mark.e2e
HEADER = "X-Proxy-Record-Mode"
APP = "http://localhost:3000"  # a web app the user allows with --cors-origin


@pytest.fixture
def proxy(tmp_path: Path, upstream: Upstream, upstream_url: str) -> Iterator[RunningProxy]:
    # The server's default mode is `once`: a call on a new cassette records.
    with running_proxy(tmp_path, chat_config(upstream_url), cors_origins=(APP,)) as running:
        yield running


@pytest.fixture
def client(proxy: RunningProxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.url) as c:
        yield c


def turn(client: httpx.Client, session_id: str, message: str, **headers: str) -> httpx.Response:
    return client.post(f"/sessions/{session_id}/turns", json={"input": {"user_message": message}}, headers=headers)


def test_a_turn_with_mode_none_misses_where_the_server_would_record(
    client: httpx.Client, upstream: Upstream, proxy: RunningProxy
) -> None:
    session = post(client, "/sessions", {"versionId": version_id(client), "testCaseId": "tc-header"})
    refused = turn(client, session["id"], "hello", **{HEADER: "none"})
    assert refused.status_code == 201
    assert refused.json()["status"] == "FAILED"
    assert "cassette sessions/tc-header has no recording" in refused.json()["error"]
    assert upstream.requests_to("/chat") == []
    # The header held for that call alone: the session's own mode (`once`, new cassette) records the next one.
    session = post(client, "/sessions", {"versionId": version_id(client), "testCaseId": "tc-other"})
    recorded = turn(client, session["id"], "hello")
    assert recorded.json()["status"] == "GENERATED" and recorded.json()["exchange"]["cassette"] == "recorded"


def test_a_turn_with_mode_all_calls_live_on_a_replaying_session(client: httpx.Client, upstream: Upstream) -> None:
    run_session(client, ["hello"], testCaseId="tc-live")  # records
    session = post(client, "/sessions", {"versionId": version_id(client), "testCaseId": "tc-live"})
    replayed = turn(client, session["id"], "hello")
    assert replayed.json()["exchange"]["cassette"] == "hit"
    upstream.received.clear()
    live = turn(client, session["id"], "hello", **{HEADER: "all"})
    assert live.json()["exchange"]["cassette"] == "recorded"
    [received] = upstream.requests_to("/chat")
    assert not any(name.startswith("x-proxy") for name in received.headers)


@pytest.mark.parametrize("value", ["sometimes", "true", "yes", ""])
def test_a_bad_value_is_422_naming_the_header(client: httpx.Client, upstream: Upstream, value: str) -> None:
    """A bad value names the header as it is written: not mangled as a camelCase field
    (`header _x-_proxy-_record-_mode`)."""
    session = post(client, "/sessions", {"versionId": version_id(client), "testCaseId": "tc-bad"})
    answers = [
        turn(client, session["id"], "hello", **{HEADER: value}),
        client.post("/forward/chat/v1/chat", json={"q": 1}, headers={HEADER: value}),
        client.post("/endpointConnections/testConnection", json={"id": "chat"}, headers={HEADER: value}),
    ]
    for answer in answers:
        assert answer.status_code == 422, answer.text
        message = answer.json()["message"]
        valid = "none, once, new_episodes, all, off"
        assert message == f"header {HEADER}: {value!r} is not a valid record mode; valid modes are: {valid}"
        assert answer.json()["errors"][0]["field"] == f"header {HEADER}"
    assert upstream.received == []


def test_forward_takes_the_mode_per_call_and_never_forwards_the_header(
    client: httpx.Client, upstream: Upstream
) -> None:
    recorded = client.post("/forward/chat/v1/chat", json={"q": 1})
    assert recorded.headers["X-Proxy-Cassette"] == "recorded"
    missed = client.post("/forward/chat/v1/chat", json={"q": 2}, headers={HEADER: "none"})
    assert missed.status_code == 404 and missed.headers["X-Proxy-Cassette"] == "miss"
    assert "has no recording for POST" in missed.json()["message"]
    live = client.post("/forward/chat/v1/chat", json={"q": 1}, headers={HEADER: "off"})
    assert live.status_code == 200 and live.headers["X-Proxy-Cassette"] == "live"
    new = client.post("/forward/chat/v1/chat", json={"q": 3}, headers={HEADER: "new_episodes"})
    assert new.headers["X-Proxy-Cassette"] == "recorded"
    assert len(upstream.requests_to("/v1/chat")) == 3  # q=1 recorded, q=1 live, q=3 recorded; never the miss
    assert all(HEADER.lower() not in r.headers for r in upstream.received)
    # Without the header the forward route keeps its server-long opening (`once` on a new cassette: records).
    assert client.post("/forward/chat/v1/chat", json={"q": 2}).headers["X-Proxy-Cassette"] == "recorded"


def test_test_connection_takes_the_mode(client: httpx.Client, upstream: Upstream, upstream_url: str) -> None:
    data = chat_connection(upstream_url, name="fresh")
    missed = client.post("/endpointConnections/testConnection", json=data, headers={HEADER: "none"})
    assert missed.status_code == 200 and missed.json()["success"] is False
    assert "cassette connections/fresh has no recording" in missed.json()["error"]
    assert upstream.received == []
    answered = client.post("/endpointConnections/testConnection", json=data, headers={HEADER: "off"})
    assert answered.json()["success"] is True and answered.json()["exchange"]["cassette"] == "live"
    assert all(HEADER.lower() not in r.headers for r in upstream.received)


# The guard: the header is a non-simple one, so a page needs a preflight, which only allowed origins pass.


def test_a_foreign_page_cannot_force_a_re_record(client: httpx.Client, upstream: Upstream) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-proxy-record-mode"}
    refused = client.options("/forward/chat/v1/chat", headers={**preflight, "Origin": "https://evil.example"})
    assert refused.status_code == 403
    sent = client.post(
        "/forward/chat/v1/chat", json={"q": 1}, headers={HEADER: "all", "Origin": "https://evil.example"}
    )
    assert sent.status_code == 403 and upstream.received == []
    allowed = client.options("/forward/chat/v1/chat", headers={**preflight, "Origin": APP})
    assert allowed.status_code == 204 and allowed.headers["access-control-allow-headers"] == "x-proxy-record-mode"
    answered = client.post("/forward/chat/v1/chat", json={"q": 1}, headers={HEADER: "off", "Origin": APP})
    assert answered.status_code == 200 and answered.headers["X-Proxy-Cassette"] == "live"
    assert answered.headers["access-control-expose-headers"] == "X-Proxy-Cassette, Mcp-Session-Id"


def test_in_once_a_cassette_one_route_started_recording_records_the_other_route_too(
    client: httpx.Client, upstream: Upstream, proxy: RunningProxy
) -> None:
    """The forward route and testConnection share `connections/chat.yaml`. On an empty folder in `once`, the first
    route to touch it starts recording; the second used to find it existing and miss. The cassette is the unit."""
    forwarded = client.post("/forward/chat/chat", json={"message": "from the forward route"})
    assert forwarded.status_code == 200 and forwarded.headers["x-proxy-cassette"] == "recorded"
    conn_id = client.get("/endpointConnections", params={"names[]": "chat"}).json()[0]["id"]
    tested = client.post("/endpointConnections/testConnection", json={"id": conn_id})
    assert tested.status_code == 200 and tested.json()["success"], tested.text
    assert tested.json()["exchange"]["cassette"] == "recorded"
    assert len(upstream.requests_to("/chat")) == 2


def test_a_miss_in_once_names_the_real_cause_and_the_mode_that_records(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    """A cassette that existed when the server opened it replays only in `once`: the miss says so and names
    new_episodes, instead of advising the mode already in use."""
    with running_proxy(tmp_path, chat_config(upstream_url)) as first, httpx.Client(base_url=first.url) as c:
        assert c.post("/forward/chat/chat", json={"message": "recorded"}).status_code == 200
    with running_proxy(tmp_path, chat_config(upstream_url)) as second, httpx.Client(base_url=second.url) as c:
        missed = c.post("/forward/chat/chat", json={"message": "new"})
    assert missed.headers["x-proxy-cassette"] == "miss"
    assert missed.json()["message"].endswith(
        "record mode once only replays a cassette that already existed when this server first opened it; "
        "record mode new_episodes adds new calls to it, all records it afresh"
    )
