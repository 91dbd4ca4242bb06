"""Record against a real upstream, replay offline on a fresh server: the heart of the product."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import vcr
import yaml

from tests.conftest import TEST_TOKEN, NoNetwork, RunningProxy, running_proxy
from tests.helpers import chat_config, post, run_session, thread_connections
from tests.servers import serve_in_thread
from tests.upstream import Reply, Threads, Upstream, serve_upstream

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_upstream() -> Iterator[tuple[Upstream, str]]:
    with serve_upstream() as served:
        yield served


def test_record_then_replay_offline_with_identical_outputs(tmp_path: Path) -> None:
    upstream = Upstream()
    with serve_in_thread(upstream.app) as url:
        cassettes = tmp_path / "cassettes"
        with running_proxy(tmp_path / "a", chat_config(url), cassettes_dir=cassettes) as proxy:
            with httpx.Client(base_url=proxy.url) as client:
                recorded = run_session(client, ["hello", "and then?"], testCaseId="tc-1")
    # The upstream is stopped now; the replaying server also has no network at all.
    assert [t["exchange"]["cassette"] for t in recorded] == ["recorded", "recorded"]
    assert (cassettes / "sessions" / "tc-1.yaml").exists()

    offline = NoNetwork()
    with running_proxy(tmp_path / "b", chat_config(url), offline, cassettes_dir=cassettes, record_mode="none") as proxy:
        with httpx.Client(base_url=proxy.url) as client:
            replayed = run_session(client, ["hello", "and then?"], testCaseId="tc-1")
            changed = run_session(client, ["hello", "and now?"], testCaseId="tc-1")
    assert offline.calls == 0
    assert [t["actualOutput"] for t in replayed] == [t["actualOutput"] for t in recorded]
    assert [t["exchange"]["cassette"] for t in replayed] == ["hit", "hit"]
    assert [t["latency"] for t in replayed] == [t["latency"] for t in recorded]  # the recorded latency
    assert changed[0]["status"] == "GENERATED" and changed[1]["status"] == "FAILED"
    error = changed[1]["error"]
    assert error.startswith(f"cassette miss: cassette sessions/tc-1 has no recording for POST {url}/chat")
    assert 'differing at body $.message: "and then?" recorded, "and now?" now' in error


def test_plain_vcrpy_replays_a_cassette_we_wrote(tmp_path: Path, upstream: Upstream, upstream_url: str) -> None:
    upstream.script("/chat", Reply(json={"reply": "from the real upstream"}))
    with running_proxy(tmp_path, chat_config(upstream_url)) as proxy, httpx.Client(base_url=proxy.url) as client:
        run_session(client, ["hello"], testCaseId="tc-vcr")
    path = tmp_path / "cassettes" / "sessions" / "tc-vcr.yaml"
    upstream.script("/chat", Reply(status=500, json={"reply": "the live upstream changed"}))
    with vcr.use_cassette(str(path), record_mode="none"):
        response = httpx.post(f"{upstream_url}/chat", json={"message": "hello", "history": 0})
    assert response.status_code == 200 and response.json() == {"reply": "from the real upstream"}


async def test_twenty_concurrent_sessions_with_identical_initialization_replay_their_own(
    tmp_path: Path, own_upstream: tuple[Upstream, str]
) -> None:
    upstream, url = own_upstream
    Threads(upstream)
    cassettes = tmp_path / "cassettes"

    async def converse(client: httpx.AsyncClient, version: str, n: int) -> list[str]:
        session = (await client.post("/sessions", json={"versionId": version, "testCaseId": f"tc-{n}"})).json()
        outputs = []
        for turn in range(2):
            body = {"input": {"user_message": f"case {n} turn {turn}"}}
            answer = (await client.post(f"/sessions/{session['id']}/turns", json=body)).json()
            assert "actualOutput" in answer, (answer, (await client.get(f"/sessions/{session['id']}")).json()["error"])
            outputs.append(answer["actualOutput"])
        await client.patch(f"/sessions/{session['id']}/finish", json={})
        return outputs

    async def run_all(proxy: RunningProxy) -> list[list[str]]:
        with httpx.Client(base_url=proxy.url) as client:
            ids = thread_connections(client, url)
            version = post(
                client,
                "/versions",
                {
                    "productId": "prod",
                    "name": "threads",
                    "conversationEndpointConnectionId": ids["conv"],
                    "initializationEndpointConnectionId": ids["init"],
                    "finalizationEndpointConnectionId": ids["fin"],
                },
            )["id"]
        async with httpx.AsyncClient(base_url=proxy.url, timeout=60) as client:
            return list(await asyncio.gather(*(converse(client, version, n) for n in range(20))))

    with running_proxy(tmp_path / "a", cassettes_dir=cassettes) as proxy:
        recorded = await run_all(proxy)
    assert all(upstream.requests_to("/threads")[i].body == b"{}" for i in range(20))  # identical INITIALIZATION
    assert len({outputs[0].split("#")[0] for outputs in recorded}) == 20
    offline = NoNetwork()
    with running_proxy(tmp_path / "b", transport=offline, cassettes_dir=cassettes, record_mode="none") as proxy:
        replayed = await run_all(proxy)
    assert replayed == recorded and offline.calls == 0


def test_identical_requests_replay_in_recorded_order_and_each_session_starts_over(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    upstream.script("/chat", Reply(json={"reply": "first"}), Reply(json={"reply": "second"}))
    config = chat_config(upstream_url, input_template='{"message": "{{ input.user_message }}"}')
    with running_proxy(tmp_path, config) as proxy, httpx.Client(base_url=proxy.url) as client:
        recorded = run_session(client, ["same", "same"], testCaseId="tc-same")
    assert [t["actualOutput"] for t in recorded] == ["first", "second"]
    with running_proxy(tmp_path, config, NoNetwork(), record_mode="none") as proxy:
        with httpx.Client(base_url=proxy.url) as client:
            for _ in range(2):  # a new session of the test case replays from the start, every time
                assert [t["actualOutput"] for t in run_session(client, ["same", "same"], testCaseId="tc-same")] == [
                    "first",
                    "second",
                ]
            third = run_session(client, ["same", "same", "same"], testCaseId="tc-same")[2]
    assert third["status"] == "FAILED" and "every recording of it was already played" in third["error"]


def test_recorded_retries_replay_in_order_without_sleeping(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    upstream.script("/chat", Reply(status=503), Reply(status=500), Reply(json={"reply": "finally"}))
    retries = {"retry_enabled": True, "retry_initial_delay_ms": 300, "retry_backoff_strategy": "FIXED"}
    started = time.perf_counter()
    with (
        running_proxy(tmp_path, chat_config(upstream_url, **retries)) as proxy,
        httpx.Client(base_url=proxy.url) as client,
    ):
        (recorded,) = run_session(client, ["x"], testCaseId="tc-retry")
    assert time.perf_counter() - started >= 0.6
    assert [a["status"] for a in recorded["exchange"]["attempts"]] == [503, 500, 200]
    started = time.perf_counter()
    limited = chat_config(upstream_url, **retries, rate_limit=1)  # one call a minute: replays must not wait for it
    with running_proxy(tmp_path, limited, NoNetwork(), record_mode="none") as proxy:
        with httpx.Client(base_url=proxy.url) as client:
            replays = [run_session(client, ["x"], testCaseId="tc-retry")[0] for _ in range(3)]
    assert time.perf_counter() - started < 5
    for replay in replays:
        assert [(a["status"], a["cassette"]) for a in replay["exchange"]["attempts"]] == [
            (503, "hit"),
            (500, "hit"),
            (200, "hit"),
        ]
        assert replay["actualOutput"] == "finally"


def test_replay_latency_recorded_sleeps_the_recorded_time(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    upstream.script("/chat", Reply(json={"reply": "slow"}, delay=0.4))
    with running_proxy(tmp_path, chat_config(upstream_url)) as proxy, httpx.Client(base_url=proxy.url) as client:
        (recorded,) = run_session(client, ["x"], testCaseId="tc-slow")
    assert recorded["latency"] >= 400
    for mode, minimum, maximum in (("none", 0.0, 0.3), ("recorded", 0.4, 5.0)):
        with running_proxy(
            tmp_path, chat_config(upstream_url), NoNetwork(), record_mode="none", replay_latency=mode
        ) as proxy:
            with httpx.Client(base_url=proxy.url) as client:
                started = time.perf_counter()
                (replayed,) = run_session(client, ["x"], testCaseId="tc-slow")
                elapsed = time.perf_counter() - started
        assert minimum <= elapsed <= maximum and replayed["latency"] == recorded["latency"]


def test_record_modes(tmp_path: Path, upstream: Upstream, upstream_url: str) -> None:
    config = chat_config(upstream_url, input_template='{"message": "{{ input.user_message }}"}')

    def session(mode: str, messages: list[str], key: str = "tc-m") -> list[dict[str, Any]]:
        with running_proxy(tmp_path, config, record_mode=mode) as proxy, httpx.Client(base_url=proxy.url) as client:
            return run_session(client, messages, testCaseId=key)

    def calls() -> int:
        return len(upstream.requests_to("/chat"))

    path = tmp_path / "cassettes" / "sessions" / "tc-m.yaml"
    missing = session("none", ["a"])[0]
    assert missing["status"] == "FAILED" and "does not exist" in missing["error"] and calls() == 0
    session("once", ["a", "a"])  # a new cassette records every call, identical ones too
    assert calls() == 2 and len(yaml.safe_load(path.read_text())["interactions"]) == 2
    replayed = session("once", ["a", "a"])  # an existing one replays only
    assert calls() == 2 and [t["exchange"]["cassette"] for t in replayed] == ["hit", "hit"]
    assert session("once", ["zzz"])[0]["status"] == "FAILED" and calls() == 2
    episodes = session("new_episodes", ["a", "b"])
    assert [t["exchange"]["cassette"] for t in episodes] == ["hit", "recorded"] and calls() == 3
    assert len(yaml.safe_load(path.read_text())["interactions"]) == 3
    rerecorded = session("all", ["c"])
    assert rerecorded[0]["exchange"]["cassette"] == "recorded" and calls() == 4
    assert [i["request"]["body"] for i in yaml.safe_load(path.read_text())["interactions"]] == ['{"message": "c"}']
    off = session("off", ["d"], key="tc-off")
    assert off[0]["exchange"]["cassette"] == "live" and calls() == 5
    assert not (tmp_path / "cassettes" / "sessions" / "tc-off.yaml").exists()


def test_per_connection_record_mode_from_the_config(tmp_path: Path, upstream: Upstream, upstream_url: str) -> None:
    config = chat_config(upstream_url, record_mode="off")
    with running_proxy(tmp_path, config, record_mode="none") as proxy, httpx.Client(base_url=proxy.url) as client:
        (turn,) = run_session(client, ["x"], testCaseId="tc-cfg")
    assert turn["status"] == "GENERATED" and turn["exchange"]["cassette"] == "live"


def test_no_secret_in_cassettes_journal_or_logs(
    tmp_path: Path, upstream: Upstream, upstream_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    upstream.handle(
        "/chat",
        lambda r: Reply(
            json={"reply": f"you sent {r.headers['authorization']}", "key": r.headers.get("x-key")},
            headers={"x-echo": r.headers["authorization"]},
        ),
    )
    config = chat_config(upstream_url, headers={"X-Key": "hdr-secret-0001"})
    with running_proxy(tmp_path, config) as proxy, httpx.Client(base_url=proxy.url) as client:
        (turn,) = run_session(client, ["x"], testCaseId="tc-secret")
    assert turn["actualOutput"] == "you sent Bearer ••••••••"
    files = [*(tmp_path / "cassettes").rglob("*"), *(tmp_path / "data").iterdir()]
    for secret in (TEST_TOKEN, "hdr-secret-0001"):
        assert secret not in caplog.text
        for path in files:
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    interaction = yaml.safe_load((tmp_path / "cassettes/sessions/tc-secret.yaml").read_text())["interactions"][0]
    assert interaction["request"]["headers"]["authorization"] == ["••••••••"]


def test_forward_route_records_replays_repeats_and_misses(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    upstream.script("/v1/echo", Reply(json={"n": 1}), Reply(json={"n": 2}))
    config = chat_config(upstream_url)
    with running_proxy(tmp_path, config) as proxy, httpx.Client(base_url=proxy.url) as client:
        first = client.post("/forward/chat/v1/echo?x=1", json={"q": "a"}, headers={"X-Client": "c"})
        second = client.post("/forward/chat/v1/echo?x=1", json={"q": "a"})
    assert (first.json(), second.json()) == ({"n": 1}, {"n": 2})
    assert first.headers["x-proxy-cassette"] == "recorded"
    arrived = upstream.requests_to("/v1/echo")[0]
    assert arrived.query == "x=1" and arrived.headers["authorization"] == f"Bearer {TEST_TOKEN}"
    assert arrived.headers["x-client"] == "c" and arrived.json == {"q": "a"}
    with running_proxy(tmp_path, config, NoNetwork(), record_mode="none") as proxy:
        with httpx.Client(base_url=proxy.url) as client:
            answers = [client.post("/forward/chat/v1/echo?x=1", json={"q": "a"}) for _ in range(3)]
            miss = client.post("/forward/chat/v1/echo?x=1", json={"q": "b"})
    assert [a.json()["n"] for a in answers] == [1, 2, 2]  # once used up, the last answer repeats
    assert {a.headers["x-proxy-cassette"] for a in answers} == {"hit"}
    assert miss.status_code == 404 and miss.headers["x-proxy-cassette"] == "miss"
    assert 'body $.q: "a" recorded, "b" now' in miss.json()["message"]


def test_bundled_demo_cassettes_replay_with_record_mode_none(tmp_path: Path) -> None:
    import json

    from proxy.cli.options import read_config

    root = Path(__file__).resolve().parents[2]
    config = read_config(root / "examples" / "demo.yaml")
    cassettes = tmp_path / "cassettes"
    import shutil

    shutil.copytree(root / "cassettes", cassettes)
    with running_proxy(tmp_path, config, NoNetwork(), cassettes_dir=cassettes, record_mode="none") as proxy:
        with httpx.Client(base_url=proxy.url) as client:
            version = client.get("/versions", params={"names[]": "demo-v1"}).json()[0]["id"]
            for line in (root / "examples" / "dataset.jsonl").read_text().splitlines():
                case = json.loads(line)
                session = post(client, "/sessions", {"versionId": version, "testCaseId": case["id"]})
                for turn in case.get("turns") or [case["input"]]:
                    answer = post(client, f"/sessions/{session['id']}/turns", {"input": turn})
                    assert answer["exchange"]["cassette"] == "hit", answer["error"]
                    assert answer["actualOutput"] == f"You said: {turn['user_message']}"


def test_configured_extra_redactions_are_scrubbed_from_cassettes_and_answers(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    upstream.handle("/chat", lambda r: Reply(json={"reply": "customer ssn-123-45-6789 on file", "id": "acct-99881"}))
    config = chat_config(upstream_url)
    config.settings["redact_values"] = ["ssn-123-45-6789", "acct-99881"]
    with running_proxy(tmp_path, config) as proxy, httpx.Client(base_url=proxy.url) as client:
        (turn,) = run_session(client, ["x"], testCaseId="tc-pii")
    assert turn["actualOutput"] == "customer •••••••• on file"
    recorded = (tmp_path / "cassettes" / "sessions" / "tc-pii.yaml").read_text()
    assert "ssn-123-45-6789" not in recorded and "acct-99881" not in recorded


@pytest.mark.parametrize("keys", [("tc 1", "tc_1-8985c2fa"), ("Case", "case")], ids=["unsafe vs hash-shaped", "case"])
def test_session_keys_that_could_share_a_file_record_and_replay_their_own_answers(
    tmp_path: Path, upstream: Upstream, upstream_url: str, keys: tuple[str, str]
) -> None:
    # `tc 1` once became tc_1-8985c2fa.yaml, the name the second key has as it is; `Case` and `case` are one
    # file on a case-insensitive file system. Both sessions send the same request.
    upstream.script("/chat", *(Reply(json={"reply": f"answer for {key}"}) for key in keys))
    cassettes = tmp_path / "cassettes"
    with running_proxy(tmp_path / "a", chat_config(upstream_url), cassettes_dir=cassettes) as proxy:
        with httpx.Client(base_url=proxy.url) as client:
            recorded = [run_session(client, ["hello"], testCaseId=key)[0] for key in keys]
    assert [(t["exchange"]["cassette"], t["actualOutput"]) for t in recorded] == [
        ("recorded", f"answer for {key}") for key in keys
    ]
    files = [path.name for path in (cassettes / "sessions").glob("*.yaml")]
    assert len({name.casefold() for name in files}) == len(files) == 2

    offline = NoNetwork()
    with running_proxy(tmp_path / "b", chat_config(upstream_url), offline, cassettes_dir=cassettes) as proxy:
        with httpx.Client(base_url=proxy.url) as client:
            replayed = [run_session(client, ["hello"], testCaseId=key)[0] for key in reversed(keys)]
    assert offline.calls == 0
    assert [(t["exchange"]["cassette"], t["actualOutput"]) for t in replayed] == [
        ("hit", f"answer for {key}") for key in reversed(keys)
    ]


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda text: text.replace("code: 200", "code: abc"), "interaction 0 is malformed (status code 'abc'"),
        (lambda text: text[: len(text) // 2] + "\n  - [", "is not valid YAML"),
    ],
    ids=["bad-status", "cut-short"],
)
def test_a_corrupted_cassette_in_replay_is_an_error_naming_file_reason_and_fix(
    tmp_path: Path, upstream: Upstream, upstream_url: str, corrupt: Any, reason: str
) -> None:
    """A hand-edited or cut-short cassette crashed the replay ("the call failed inside the proxy", a 500 on the
    forward route) or answered `X-Proxy-Cassette: live` though nothing went live. Now: outcome `error`, the
    file, the reason and the way out; nothing reaches the upstream; record mode all records it afresh."""
    with running_proxy(tmp_path, chat_config(upstream_url)) as proxy, httpx.Client(base_url=proxy.url) as client:
        run_session(client, ["hello"], testCaseId="tc-corrupt")
        assert client.post("/forward/chat/v1/chat", json={"q": 1}).status_code == 200
    cassettes = tmp_path / "cassettes"
    for name in ("sessions/tc-corrupt", "connections/chat"):
        path = cassettes / f"{name}.yaml"
        path.write_text(corrupt(path.read_text()))
    upstream.clear()
    fix = "the cassette cannot be used: check it with `proxy cassettes verify`, then delete it or re-record it"
    config = chat_config(upstream_url)
    with running_proxy(tmp_path, config, record_mode="none") as proxy, httpx.Client(base_url=proxy.url) as client:
        forwarded = client.post("/forward/chat/v1/chat", json={"q": 1})
        assert forwarded.status_code == 502 and forwarded.headers["x-proxy-cassette"] == "error"
        message = forwarded.json()["message"]
        assert message.startswith(f"cassette error: cassette {cassettes / 'connections/chat.yaml'}")
        assert reason in message and fix in message
        [answer] = run_session(client, ["hello"], testCaseId="tc-corrupt")
        assert answer["status"] == "FAILED" and answer["exchange"]["cassette"] == "error"
        assert answer["error"].startswith(f"cassette error: cassette {cassettes / 'sessions/tc-corrupt.yaml'}")
        assert reason in answer["error"] and fix in answer["error"]
        assert client.get("/flows", params={"outcome": "error"}).status_code == 200  # a filter the inspector offers
    assert upstream.received == []
    with running_proxy(tmp_path, config, record_mode="all") as proxy, httpx.Client(base_url=proxy.url) as client:
        rerecorded = client.post("/forward/chat/v1/chat", json={"q": 1})
        assert rerecorded.status_code == 200 and rerecorded.headers["x-proxy-cassette"] == "recorded"
