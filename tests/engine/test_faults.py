"""Faults on purpose: rules on a connection (or connector, or set at run time) answer a status, delay a
call or cut its body, above the cassette: never recorded, the same in live and replay mode."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.connections.fault_rules import FaultPlan, FaultRule
from tests.conftest import NoNetwork, RunningProxy, chat_connection, running_proxy
from tests.helpers import FAST_RETRIES, post
from tests.upstream import Reply, Upstream

pytestmark = pytest.mark.e2e
REPLY = {"reply": "the real answer, long enough to cut", "usage": {"total_tokens": 12}}
REPLY_BYTES = b'{"reply": "the real answer, long enough to cut", "usage": {"total_tokens": 12}}'


def make_version(client: httpx.Client, upstream_url: str, **fields: Any) -> tuple[str, str]:
    """The connection `chat` (with `fields`) and a version using it: (connection id, version id)."""
    conn = post(client, "/endpointConnections", chat_connection(upstream_url, **fields))
    version = post(
        client, "/versions", {"productId": "prod-1", "name": "v1", "conversationEndpointConnectionId": conn["id"]}
    )
    return conn["id"], version["id"]


def one_turn(
    client: httpx.Client, version: str, headers: dict[str, str] | None = None, **session: Any
) -> dict[str, Any]:
    created = post(client, "/sessions", {"versionId": version, "isProduction": "testCaseId" not in session, **session})
    response = client.post(
        f"/sessions/{created['id']}/turns", json={"input": {"user_message": "hi"}}, headers=headers or {}
    )
    assert response.status_code == 201, response.text
    client.patch(f"/sessions/{created['id']}/finish", json={})
    return response.json()  # type: ignore[no-any-return]


def cassette_text(proxy: RunningProxy, name: str) -> str:
    return (proxy.runtime.settings.cassettes_dir / f"{name}.yaml").read_text()


def test_a_429_with_retry_after_then_success_under_the_retry_policy(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str
) -> None:
    upstream.script("/chat", Reply(json=REPLY))
    rule = {"status": 429, "retry_after": 1, "times": 1, "body": {"error": "slow down"}}
    with httpx.Client(base_url=proxy_server.url, timeout=30) as client:
        _, version = make_version(client, upstream_url, faults=[rule], retryMaxDelayMs=5000, **FAST_RETRIES)
        started = time.perf_counter()
        turn = one_turn(client, version, testCaseId="tc-429")
        elapsed = time.perf_counter() - started
    attempts = turn["exchange"]["attempts"]
    assert turn["status"] == "GENERATED" and turn["actualOutput"] == REPLY["reply"]
    assert [a["status"] for a in attempts] == [429, 200]
    assert [a["cassette"] for a in attempts] == ["injected", "recorded"]
    assert attempts[1]["waitedMs"] == 1000 and elapsed >= 0.9  # the injected Retry-After was honoured
    assert len(upstream.requests_to("/chat")) == 1  # the injected answer never reached the upstream
    recorded = yaml.safe_load(cassette_text(proxy_server, "sessions/tc-429"))
    assert [i["response"]["status"]["code"] for i in recorded["interactions"]] == [200]
    assert "slow down" not in cassette_text(proxy_server, "sessions/tc-429")


def test_a_cut_body_reaches_a_forward_client_truncated(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str
) -> None:
    upstream.script("/chat", Reply(json=REPLY))
    with httpx.Client(base_url=proxy_server.url, timeout=30) as client:
        make_version(client, upstream_url, faults=[{"cut_after_bytes": 20, "match": {"path": "/chat"}}])
        received = b""
        with pytest.raises(httpx.RemoteProtocolError), client.stream("POST", "/forward/chat/chat", json={}) as response:
            assert response.status_code == 200
            assert response.headers["x-proxy-cassette"] == "injected"
            for chunk in response.iter_raw():
                received += chunk
        assert received == REPLY_BYTES[:20]
        # The proxy still serves: a path the rule does not match passes through whole.
        upstream.script("/other", Reply(json=REPLY))
        whole = client.post("/forward/chat/other", json={})
    assert whole.status_code == 200 and whole.content == REPLY_BYTES and whole.headers["x-proxy-cassette"] == "recorded"


def test_a_cut_body_fails_a_turn(proxy_server: RunningProxy, upstream: Upstream, upstream_url: str) -> None:
    upstream.script("/chat", Reply(json=REPLY))
    with httpx.Client(base_url=proxy_server.url, timeout=30) as client:
        _, version = make_version(client, upstream_url, faults=[{"cut_after_bytes": 5}])
        turn = one_turn(client, version, testCaseId="tc-cut")
    assert turn["status"] == "FAILED"
    assert "the upstream closed the connection mid-reply" in turn["error"]
    assert "cut after 5 of" in turn["error"]
    assert [(a["status"], a["cassette"]) for a in turn["exchange"]["attempts"]] == [(None, "injected")]
    # The real answer was recorded whole: the cut is the fault's, not the upstream's.
    recorded = yaml.safe_load(cassette_text(proxy_server, "sessions/tc-cut"))
    assert [i["response"]["body"]["string"] for i in recorded["interactions"]] == [REPLY_BYTES.decode()]


def test_a_delay_counts_in_the_latency_and_the_timeout(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str
) -> None:
    upstream.script("/chat", Reply(json=REPLY))
    with httpx.Client(base_url=proxy_server.url, timeout=30) as client:
        conn_id, _ = make_version(client, upstream_url, faults=[{"delay_ms": 600, "times": 1}])
        body = {"id": conn_id, "input": {"user_message": "hi"}}
        delayed = client.post("/endpointConnections/testConnection", json=body).json()
        after = client.post("/endpointConnections/testConnection", json=body).json()
        client.patch(f"/endpointConnections/{conn_id}", json={"faults": [{"delay_ms": 1500}], "timeout": 0.5})
        timed_out = client.post("/endpointConnections/testConnection", json=body).json()
    assert delayed["success"] and delayed["latency"] >= 600 and delayed["exchange"]["cassette"] == "injected"
    assert after["success"] and after["exchange"]["cassette"] != "injected"
    assert not timed_out["success"] and "timed out after 0.5s" in timed_out["error"]


def forward_statuses(proxy: RunningProxy, calls: int, headers: dict[str, str] | None = None) -> list[int]:
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        return [client.post("/forward/chat/chat", json={}, headers=headers or {}).status_code for _ in range(calls)]


def test_times_then_the_calls_pass(proxy_server: RunningProxy, upstream: Upstream, upstream_url: str) -> None:
    upstream.script("/chat", Reply(json=REPLY))
    rules = [{"status": 500, "times": 2}, {"status": 503, "times": 1}]
    with httpx.Client(base_url=proxy_server.url) as client:
        make_version(client, upstream_url, faults=rules)
    assert forward_statuses(proxy_server, 5) == [500, 500, 503, 200, 200]
    assert len(upstream.requests_to("/chat")) == 2  # only the calls no rule answered went upstream


def test_a_seeded_probability_repeats_across_runs(tmp_path: Path, upstream: Upstream, upstream_url: str) -> None:
    upstream.script("/chat", Reply(json=REPLY))
    rule = {"status": 503, "probability": 0.5}

    def run(name: str, seed: int) -> list[int]:
        with running_proxy(tmp_path / name, fault_seed=seed, record_mode="off") as proxy:
            with httpx.Client(base_url=proxy.url) as client:
                make_version(client, upstream_url, faults=[rule])
            return forward_statuses(proxy, 24)

    first, second, other = run("a", 7), run("b", 7), run("c", 8)
    assert first == second
    assert set(first) == {200, 503}  # a share, not all or nothing
    assert other != first  # the seed decides (24 draws alike by chance: 1 in 16 million)
    # A rule's own seed beats the setting.
    seeded = FaultRule(status=503, probability=0.5, seed=7)
    picks = [[FaultPlan([seeded], default_seed=s).pick("POST", "/") is not None for _ in range(24)] for s in (1, 2)]
    assert picks[0] == picks[1]


async def test_rules_set_with_a_test_id_apply_only_to_calls_that_carry_it(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str
) -> None:
    upstream.script("/chat", Reply(json=REPLY))
    with httpx.Client(base_url=proxy_server.url) as client:
        conn_id, version = make_version(client, upstream_url)
        put = client.put("/_proxy/faults/chat", json={"faults": [{"status": 503}]}, headers={"X-Proxy-Test-Id": "A"})
        assert put.status_code == 200 and put.json()["testId"] == "A", put.text

    async def calls(headers: dict[str, str]) -> list[tuple[int, str]]:
        async with httpx.AsyncClient(base_url=proxy_server.url, headers=headers) as client:
            seen = []
            for _ in range(10):
                response = await client.post("/forward/chat/chat", json={})
                seen.append((response.status_code, response.headers["x-proxy-cassette"]))
            return seen

    with_id, other_id, without = await asyncio.gather(
        calls({"X-Proxy-Test-Id": "A"}), calls({"X-Proxy-Test-Id": "B"}), calls({})
    )
    assert with_id == [(503, "injected")] * 10
    assert {status for status, _ in other_id + without} == {200}
    assert all("x-proxy-test-id" not in r.headers for r in upstream.received)  # never sent upstream
    # Turns and testConnection read the header from their own request.
    with httpx.Client(base_url=proxy_server.url) as client:
        failed = one_turn(client, version, headers={"X-Proxy-Test-Id": "A"})
        passed = one_turn(client, version, headers={"X-Proxy-Test-Id": "B"})
        test = client.post(
            "/endpointConnections/testConnection", json={"id": conn_id}, headers={"X-Proxy-Test-Id": "A"}
        )
    assert failed["status"] == "FAILED" and "HTTP 503" in failed["error"]
    assert passed["status"] == "GENERATED"
    assert test.json()["statusCode"] == 503


def test_faults_act_in_replay_mode_and_leave_the_cassette_alone(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    upstream.script("/chat", Reply(json=REPLY))
    cassettes = tmp_path / "cassettes"
    with running_proxy(tmp_path / "rec", cassettes_dir=cassettes) as proxy:
        with httpx.Client(base_url=proxy.url) as client:
            make_version(client, upstream_url)
            assert client.post("/forward/chat/chat", json={}).headers["x-proxy-cassette"] == "recorded"
    cassette = cassettes / "connections" / "chat.yaml"
    before = cassette.read_bytes()
    offline = NoNetwork()
    with running_proxy(tmp_path / "play", transport=offline, cassettes_dir=cassettes, record_mode="none") as proxy:
        with httpx.Client(base_url=proxy.url) as client:
            make_version(client, upstream_url)
            rules = {"faults": [{"status": 500, "times": 1}, {"cut_after_bytes": 3, "times": 1}]}
            assert client.put("/_proxy/faults/chat", json=rules).status_code == 200
            injected = client.post("/forward/chat/chat", json={})
            with pytest.raises(httpx.RemoteProtocolError), client.stream("POST", "/forward/chat/chat", json={}) as cut:
                cut.read()
            replayed = client.post("/forward/chat/chat", json={})
    assert (injected.status_code, injected.headers["x-proxy-cassette"]) == (500, "injected")
    assert cut.headers["x-proxy-cassette"] == "injected"
    assert (replayed.status_code, replayed.headers["x-proxy-cassette"], replayed.content) == (200, "hit", REPLY_BYTES)
    assert offline.calls == 0 and cassette.read_bytes() == before


def test_put_and_delete_at_run_time(proxy_server: RunningProxy, upstream: Upstream, upstream_url: str) -> None:
    upstream.script("/chat", Reply(json=REPLY))
    with httpx.Client(base_url=proxy_server.url) as client:
        conn_id, _ = make_version(client, upstream_url, faults=[{"status": 502}])
        assert client.post("/forward/chat/chat", json={}).status_code == 502  # the connection's own rule
        put = client.put(f"/_proxy/faults/{conn_id}", json={"faults": [{"status": 418, "body": "teapot"}]})
        assert put.json() == {"connection": conn_id, "testId": None, "faults": [put.json()["faults"][0]]}
        teapot = client.post("/forward/chat/chat", json={})
        assert (teapot.status_code, teapot.text) == (418, "teapot")
        assert client.put("/_proxy/faults/chat", json={"faults": []}).status_code == 200
        assert client.post("/forward/chat/chat", json={}).status_code == 200  # an empty list: no faults
        cleared = client.delete("/_proxy/faults/chat")
        assert cleared.json() == {"connection": conn_id, "testId": None, "cleared": True}
        assert client.post("/forward/chat/chat", json={}).status_code == 502  # its own rule applies again
        assert client.delete("/_proxy/faults/chat").json()["cleared"] is False
        assert client.put("/_proxy/faults/nope", json={"faults": []}).status_code == 404


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({"status": 99}, "faults[0].status"),
        ({"status": 600}, "faults[0].status"),
        ({"status": 500, "probability": 1.5}, "faults[0].probability"),
        ({"status": 500, "times": 0}, "faults[0].times"),
        ({"times": 3}, "faults[0]"),
        ({"retry_after": 5}, "faults[0]"),
        ({"staus": 500}, "faults[0].staus"),
        ({"status": 500, "match": {"methd": "GET"}}, "faults[0].match.methd"),
    ],
)
def test_bad_rules_are_422_naming_the_field(
    proxy_server: RunningProxy, upstream_url: str, rule: dict[str, Any], field: str
) -> None:
    with httpx.Client(base_url=proxy_server.url) as client:
        conn_id, _ = make_version(client, upstream_url)
        answers = [
            client.put("/_proxy/faults/chat", json={"faults": [rule]}),
            client.patch(f"/endpointConnections/{conn_id}", json={"faults": [rule]}),
            client.post("/endpointConnections", json=chat_connection(upstream_url, name="other", faults=[rule])),
        ]
    for answer in answers:
        assert answer.status_code == 422, answer.text
        assert answer.json()["errors"][0]["field"] == field, answer.text


def test_the_fault_routes_pass_the_guard(proxy_server: RunningProxy, upstream_url: str) -> None:
    with httpx.Client(base_url=proxy_server.url) as client:
        make_version(client, upstream_url)
        evil = {"Origin": "https://evil.example"}
        assert client.put("/_proxy/faults/chat", json={"faults": [{"status": 500}]}, headers=evil).status_code == 403
        assert client.delete("/_proxy/faults/chat", headers=evil).status_code == 403
        text = client.put(
            "/_proxy/faults/chat", content=b'{"faults": [{"status": 500}]}', headers={"Content-Type": "text/plain"}
        )
        assert text.status_code == 415
        assert client.post("/forward/chat/chat", json={}).status_code == 200  # nothing was set


def active(client: httpx.Client, ref: str, test_id: str | None = None) -> dict[str, Any]:
    """GET /_proxy/faults/{ref} (as test `test_id`), checked to answer 200."""
    response = client.get(f"/_proxy/faults/{ref}", headers={"X-Proxy-Test-Id": test_id} if test_id else {})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def used(listing: dict[str, Any]) -> list[tuple[int | None, int]]:
    return [(rule["status"], rule["used"]) for rule in listing["faults"]]


def test_get_lists_the_active_rules_per_test_with_what_each_has_done(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str
) -> None:
    """GET /_proxy/faults/{connection} was a 405: a test could not see which rules act on its calls, nor how many
    of their `times` the calls have used."""
    upstream.script("/chat", Reply(json=REPLY))
    with httpx.Client(base_url=proxy_server.url) as client:
        conn_id, _ = make_version(client, upstream_url, faults=[{"status": 502, "times": 1}])
        own = active(client, "chat")
        assert own == {
            "connection": conn_id,
            "testId": None,
            "source": "connection",
            "faults": [{**FaultRule(status=502, times=1).model_dump(), "used": 0}],
            "testIds": [],
        }
        assert forward_statuses(proxy_server, 2) == [502, 200]
        assert used(active(client, conn_id)) == [(502, 1)]  # by id as by name

        unscoped = {"faults": [{"status": 500, "times": 2}, {"status": 503, "times": 1}]}
        assert client.put("/_proxy/faults/chat", json=unscoped).status_code == 200
        for test_id, rule in (("A", {"status": 429, "times": 1}), ("B", {"status": 418, "delay_ms": 1})):
            put = client.put("/_proxy/faults/chat", json={"faults": [rule]}, headers={"X-Proxy-Test-Id": test_id})
            assert put.status_code == 200, put.text
        assert forward_statuses(proxy_server, 4) == [500, 500, 503, 200]
        assert forward_statuses(proxy_server, 2, {"X-Proxy-Test-Id": "A"}) == [429, 200]  # A's rule, used up

        without = active(client, "chat")
        assert (without["source"], used(without), without["testIds"]) == ("set", [(500, 2), (503, 1)], ["A", "B"])
        a, b = active(client, "chat", "A"), active(client, "chat", "B")
        assert (a["testId"], a["source"], used(a), a["testIds"]) == ("A", "test", [(429, 1)], None)
        assert (b["source"], used(b), b["faults"][0]["delay_ms"]) == ("test", [(418, 0)], 1)
        other = active(client, "chat", "C")  # no rules of its own: the unscoped ones act on its calls
        assert (other["source"], used(other)) == ("set", [(500, 2), (503, 1)])

        assert client.delete("/_proxy/faults/chat", headers={"X-Proxy-Test-Id": "A"}).json()["cleared"]
        assert active(client, "chat")["testIds"] == ["B"]
        assert client.delete("/_proxy/faults/chat").json()["cleared"]
        assert (active(client, "chat")["source"], used(active(client, "chat"))) == ("connection", [(502, 1)])
        client.patch(f"/endpointConnections/{conn_id}", json={"faults": []})
        assert active(client, "chat")["source"] == "none" and active(client, "chat")["faults"] == []


def test_get_lists_a_connectors_rules(proxy_server: RunningProxy, upstream: Upstream, upstream_url: str) -> None:
    upstream.script("/search", Reply(json={"results": []}))
    with httpx.Client(base_url=proxy_server.url) as client:
        created = client.post("/v1/connectors", json={"name": "wiki", "url": f"{upstream_url}/search"})
        assert created.status_code == 200, created.text
        assert client.patch("/v1/connectors/wiki", json={"faults": [{"status": 500}]}).status_code == 200
        assert client.post("/v1/connectors/wiki/search", json={"query": "q"}).status_code == 502
        listing = active(client, "connector:wiki")
    assert (listing["connection"], listing["source"], used(listing)) == ("connector:wiki", "connection", [(500, 1)])


@pytest.mark.parametrize("ref", ["nope", "connector:nope"])
def test_get_for_an_unknown_connection_is_404(proxy_server: RunningProxy, ref: str) -> None:
    response = httpx.get(f"{proxy_server.url}/_proxy/faults/{ref}")
    assert response.status_code == 404 and "nope" in response.json()["message"], response.text


def test_listing_faults_passes_the_guard(tmp_path: Path, upstream: Upstream, upstream_url: str) -> None:
    """Attacks on GET /_proxy/faults: a web page's fetch (foreign Origin), a DNS-rebinding Host, and, with
    --api-key, a call without the key each get no listing."""
    key = "key-F4ults-0123456789"
    rule = {"faults": [{"status": 500, "body": "planted"}]}
    with running_proxy(tmp_path / "open") as proxy, httpx.Client(base_url=proxy.url) as client:
        make_version(client, upstream_url)
        assert client.put("/_proxy/faults/chat", json=rule).status_code == 200
        for headers in ({"Origin": "https://evil.example"}, {"Host": "rebind.attacker.example"}):
            refused = client.get("/_proxy/faults/chat", headers=headers)
            assert refused.status_code == 403 and "planted" not in refused.text, headers
        assert "planted" in client.get("/_proxy/faults/chat").text
    bearer = {"Authorization": f"Bearer {key}"}
    with running_proxy(tmp_path / "keyed", api_key=key) as proxy, httpx.Client(base_url=proxy.url) as client:
        owner = httpx.Client(base_url=proxy.url, headers=bearer)
        with owner:
            make_version(owner, upstream_url)
            assert owner.put("/_proxy/faults/chat", json=rule).status_code == 200
            for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}):
                refused = client.get("/_proxy/faults/chat", headers=headers)
                assert refused.status_code == 401 and "planted" not in refused.text, headers
            assert owner.get("/_proxy/faults/chat").json()["faults"][0]["body"] == "planted"


def test_connector_faults_on_search(proxy_server: RunningProxy, upstream: Upstream, upstream_url: str) -> None:
    results = {"results": [{"id": "d1", "text": "found"}]}
    upstream.script("/search", Reply(json=results))
    with httpx.Client(base_url=proxy_server.url) as client:
        created = client.post("/v1/connectors", json={"name": "wiki", "url": f"{upstream_url}/search"})
        assert created.status_code == 200, created.text
        patched = client.patch("/v1/connectors/wiki", json={"faults": [{"status": 500, "times": 1}]})
        assert patched.json()["connector"]["faults"] == [{"status": 500, "times": 1}]
        failed = client.post("/v1/connectors/wiki/search", json={"query": "q"})
        found = client.post("/v1/connectors/wiki/search", json={"query": "q"})
        put = client.put("/_proxy/faults/connector:wiki", json={"faults": [{"delay_ms": 1, "status": 503}]})
        again = client.post("/v1/connectors/wiki/search", json={"query": "q"})
    assert failed.status_code == 502 and "answered HTTP 500" in failed.json()["message"]
    assert failed.headers["x-proxy-cassette"] == "injected"
    assert found.status_code == 200 and found.json()["results"] == results["results"]
    assert put.json()["connection"] == "connector:wiki"
    assert again.status_code == 502 and "answered HTTP 503" in again.json()["message"]


def test_the_inspector_shows_an_injected_answer(
    proxy_server: RunningProxy, upstream: Upstream, upstream_url: str
) -> None:
    with httpx.Client(base_url=proxy_server.url) as client:
        _, version = make_version(client, upstream_url, faults=[{"status": 503}])
        turn = one_turn(client, version)
        page = client.get(f"/inspector/sessions/{turn['sessionId']}").text
    assert 'class="injected"' in page and "injected fault" in page
