"""Denial of service, tried as an attacker would, against a real server and the real upstream test server:
template bombs, deeply nested or huge-number JSON in requests and replies, a JSONPath over megabytes."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.config.settings import JSON_MAX_DEPTH, JSONPATH_BASE_STEPS, JSONPATH_STEPS_PER_CHAR
from proxy.storage.store import DB_FILE_NAME
from proxy.templating.environment import CompiledTemplate
from tests.conftest import csrf_token, running_proxy
from tests.helpers import post
from tests.upstream import Reply, Upstream

pytestmark = pytest.mark.e2e

CHAT_TEMPLATE = '{"m": "{{ input.user_message }}"}'
DEEP = '{"deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
LONG_NUMBER = '{"n": ' + "7" * 5000 + "}"
DEEP_REASON = f"JSON nested deeper than {JSON_MAX_DEPTH} levels"
NUMBER_REASON = "a JSON number with more than 4300 digits"


def connection(base: str, name: str, kind: str = "CONVERSATION", **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": name,
        "productId": "p",
        "type": kind,
        "url": f"{base}/{name}",
        "authType": "NONE",
        "acknowledgedInsecureHttp": True,
    }
    if kind == "CONVERSATION":
        data.update(inputTemplate=CHAT_TEMPLATE, outputMapping={"output": "$.reply"})
    else:
        data.update(inputTemplate='{"session": "{{ galtea_session_id }}"}')
    data.update(fields)
    return data


def session_with_finalization(client: httpx.Client, base: str, **chat: Any) -> tuple[str, str]:
    """A version whose CONVERSATION calls `{base}/chat` and FINALIZATION `{base}/final`; returns
    (session id, conversation connection id)."""
    conv = post(client, "/endpointConnections", connection(base, "chat", **chat))
    final = post(client, "/endpointConnections", connection(base, "final", "FINALIZATION"))
    version = post(
        client,
        "/versions",
        {
            "productId": "p",
            "name": "v1",
            "conversationEndpointConnectionId": conv["id"],
            "finalizationEndpointConnectionId": final["id"],
        },
    )
    session = post(client, "/sessions", {"versionId": version["id"], "isProduction": True})
    return session["id"], conv["id"]


def assert_failed_and_finalized(
    client: httpx.Client, upstream: Upstream, session_id: str, turn: dict[str, Any], error: str
) -> None:
    assert turn["status"] == "FAILED" and turn["error"].startswith(error), turn["error"]
    session = client.get(f"/sessions/{session_id}").json()
    assert session["status"] == "FAILED" and session["error"] == turn["error"]
    (finalization,) = upstream.requests_to("/final")
    assert finalization.json == {"session": session_id}
    # Finishing the failed session later answers, and FINALIZATION ran exactly once.
    finished = client.patch(f"/sessions/{session_id}/finish", json={"stoppingReason": "done"})
    assert finished.status_code == 200 and finished.json()["status"] == "FAILED"
    assert len(upstream.requests_to("/final")) == 1


# -- templates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "fields", "reason"),
    [
        (
            "inputTemplate",
            {"inputTemplate": '{"m": "{{ input.user_message }}", "x": {{ (7**3000000) % 10 }}}'},
            "template refused: `**` would make a number of about 2,535,294 digits (the limit is 4,300)",
        ),
        (
            "inputTemplate",
            {"inputTemplate": '{"m": "{{ input.user_message }}", "x": {{ 7**77777 }}}'},
            "template refused: `**` would make a number of about 65,729 digits (the limit is 4,300)",
        ),
        (
            "url",
            {"url": "http://127.0.0.1:9/chat/{{ 7**77777 }}"},
            "template refused: `**` would make a number of about 65,729 digits (the limit is 4,300)",
        ),
    ],
)
def test_a_template_whose_constants_are_huge_is_refused_at_create_quickly(
    api: httpx.Client, upstream_url: str, field: str, fields: dict[str, Any], reason: str
) -> None:
    started = time.perf_counter()
    response = api.post("/endpointConnections", json=connection(upstream_url, "chat", **fields))
    assert time.perf_counter() - started < 1
    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": field, "reason": reason}]
    assert api.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("template", "error"),
    [
        (
            '{% macro f(n) %}{{ f(n) }}{% endmacro %}{"m": "{{ input.user_message }}{{ f(1) }}"}',
            "template stopped: calls nest deeper than 64 levels (a macro that calls itself without end?)",
        ),
        (
            '{"m": "{{ input.user_message }}{% for i in range(100000) %}{% for j in range(100000) %}'
            '{% endfor %}{% endfor %}"}',
            "template stopped: the template took longer than 0.5s to render",
        ),
        (
            '{"m": "{{ input.user_message ** 99999 }}"}',
            "template failed to render: unsupported operand",
        ),
    ],
)
def test_a_turn_whose_render_passes_its_budget_fails_and_finalization_runs(
    api: httpx.Client, upstream: Upstream, upstream_url: str, template: str, error: str
) -> None:
    session_id, _ = session_with_finalization(api, upstream_url, inputTemplate=template)
    started = time.perf_counter()
    turn = post(api, f"/sessions/{session_id}/turns", {"input": {"user_message": "hi"}})
    assert time.perf_counter() - started < 3
    assert not upstream.requests_to("/chat")
    assert_failed_and_finalized(api, upstream, session_id, turn, error)


def test_a_number_bomb_found_only_at_render_fails_the_turn(
    api: httpx.Client, upstream: Upstream, upstream_url: str
) -> None:
    session_id, _ = session_with_finalization(api, upstream_url, inputTemplate='{"m": {{ input.n ** input.e }}}')
    turn = post(api, f"/sessions/{session_id}/turns", {"input": {"n": 7, "e": 77777}})
    assert_failed_and_finalized(api, upstream, session_id, turn, "template stopped: `**` would make a number")


def test_a_stored_bomb_template_from_an_older_data_dir_loads_without_running(
    tmp_path: Path, upstream: Upstream, upstream_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url, timeout=60) as client:
        session_id, conn_id = session_with_finalization(client, upstream_url)
    bomb = '{"m": "{{ input.user_message }}", "x": {{ (7**9000000) % 10 }}}'
    with sqlite3.connect(tmp_path / "data" / DB_FILE_NAME) as db:  # as a server without the bounds saved it
        (spec,) = db.execute("select data from connections where id = ?", (conn_id,)).fetchone()
        spec = json.dumps({**json.loads(spec), "input_template": bomb})
        db.execute("update connections set data = ? where id = ?", (spec, conn_id))
    caplog.set_level(logging.WARNING, logger="proxy")
    started = time.perf_counter()
    with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url, timeout=60) as client:
        assert time.perf_counter() - started < 3  # folding this constant took many seconds, at every start
        assert client.get(f"/endpointConnections/{conn_id}").json()["inputTemplate"] == bomb
        turn = post(client, f"/sessions/{session_id}/turns", {"input": {"user_message": "hi"}})
        assert_failed_and_finalized(client, upstream, session_id, turn, "template stopped: `**` would make a number")
    assert any(
        f"stored connection chat ({conn_id}): inputTemplate (input_template): template refused" in r.getMessage()
        for r in caplog.records
    )


TITLE_BOMB = '{"m": "{{ input.user_message }}", "n": {{ ((input.user_message[:1] ~ "-") * 4900000) | title | length }}}'


def test_six_concurrent_title_bombs_fail_fast_without_stalling_healthz(
    api: httpx.Client, upstream: Upstream, upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: `title` over a 9.8 MB string the template built with `*` took 2-7 s a render (one call the
    render's clock never saw), on the event loop; six at once held /healthz for many seconds."""
    renders: list[float] = []
    render = CompiledTemplate.render

    def timed(template: CompiledTemplate, context: Any) -> str:  # the real render, the bomb's timed
        started = time.perf_counter()
        try:
            return render(template, context)
        finally:
            if template.source == TITLE_BOMB:
                renders.append(time.perf_counter() - started)

    monkeypatch.setattr(CompiledTemplate, "render", timed)
    conv = post(api, "/endpointConnections", connection(upstream_url, "chat", inputTemplate=TITLE_BOMB))
    final = post(api, "/endpointConnections", connection(upstream_url, "final", "FINALIZATION"))
    version = {"productId": "p", "conversationEndpointConnectionId": conv["id"],
               "finalizationEndpointConnectionId": final["id"]}  # fmt: skip
    version_id = post(api, "/versions", version)["id"]
    sessions = [post(api, "/sessions", {"versionId": version_id, "isProduction": True})["id"] for _ in range(6)]
    turns: dict[str, dict[str, Any]] = {}

    def turn(session_id: str) -> None:
        with httpx.Client(base_url=str(api.base_url), timeout=120) as client:
            turns[session_id] = post(client, f"/sessions/{session_id}/turns", {"input": {"user_message": "hi"}})

    renders.clear()
    with healthz_polls(str(api.base_url)) as polls:
        threads = [threading.Thread(target=turn, args=(session_id,)) for session_id in sessions]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert max(polls) < 0.5, f"slowest /healthz {max(polls):.2f}s while renders took {sorted(renders)}"
    assert len(renders) == 6 and max(renders) < 0.5, f"renders took {sorted(renders)}"
    error = "template stopped: the `title` filter would walk over 9,800,000 items (the limit is 100,000)"
    assert [turns[s]["status"] for s in sessions] == ["FAILED"] * 6
    assert [turns[s]["error"] for s in sessions] == [error] * 6
    assert not upstream.requests_to("/chat") and len(upstream.requests_to("/final")) == 6


# -- JSON bounds in requests -------------------------------------------------------------------


def json_routes(client: httpx.Client, base: str) -> list[str]:
    session_id, _ = session_with_finalization(client, base)
    return ["/endpointConnections", "/sessions", f"/sessions/{session_id}/turns", "/v1/connectors",
            "/v1/connectors/docs/search"]  # fmt: skip


@pytest.mark.parametrize(("body", "reason"), [(DEEP, DEEP_REASON), (LONG_NUMBER, NUMBER_REASON)])
def test_deep_or_huge_number_json_bodies_answer_400_on_every_json_route(
    api: httpx.Client, upstream_url: str, body: str, reason: str
) -> None:
    for route in json_routes(api, upstream_url):
        response = api.post(route, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (route, response.text)
        assert response.json() == {"message": f"request body is refused: {reason}"}, route
    assert api.get("/healthz").status_code == 200


def test_the_forward_route_passes_a_deep_body_through_as_it_is(
    api: httpx.Client, upstream: Upstream, upstream_url: str
) -> None:
    post(api, "/endpointConnections", connection(upstream_url, "chat"))
    upstream.script("/v1/echo", Reply(text=DEEP, headers={"content-type": "application/json"}))
    response = api.post("/forward/chat/v1/echo", content=DEEP, headers={"Content-Type": "application/json"})
    assert response.status_code == 200 and response.text == DEEP
    assert upstream.requests_to("/v1/echo")[0].body == DEEP.encode()


def test_nesting_up_to_the_limit_is_a_normal_turn(api: httpx.Client, upstream_url: str) -> None:
    session_id, _ = session_with_finalization(api, upstream_url)
    extra: Any = "leaf"
    for _ in range(JSON_MAX_DEPTH - 3):  # the body, `input` and the innermost list take the other three
        extra = [extra]
    body = json.dumps({"input": {"user_message": "hi", "extra": [extra]}})
    turn = api.post(f"/sessions/{session_id}/turns", content=body, headers={"Content-Type": "application/json"})
    assert turn.status_code == 201 and turn.json()["status"] == "GENERATED", turn.text
    assert turn.json()["input"]["extra"] == [extra]


# -- JSON bounds in upstream replies -----------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ('{"reply": ' + "[" * 100_000 + "]" * 100_000 + "}", DEEP_REASON),
        ('{"reply": ' + "7" * 5000 + "}", NUMBER_REASON),
    ],
)
def test_an_upstream_reply_over_a_json_bound_fails_the_turn_and_finalization_runs(
    api: httpx.Client, upstream: Upstream, upstream_url: str, reply: str, reason: str
) -> None:
    session_id, _ = session_with_finalization(api, upstream_url)
    upstream.script("/chat", Reply(text=reply, headers={"content-type": "application/json"}))
    turn = post(api, f"/sessions/{session_id}/turns", {"input": {"user_message": "hi"}})
    assert len(upstream.requests_to("/chat")) == 1
    assert turn["exchange"]["response"]["body"] == reply  # the reply is kept, as text
    assert_failed_and_finalized(api, upstream, session_id, turn, f"the upstream reply is refused: {reason}")


# -- JSONPath over a large reply ---------------------------------------------------------------


def test_healthz_keeps_answering_while_a_huge_reply_is_mapped(
    api: httpx.Client, upstream: Upstream, upstream_url: str
) -> None:
    document = {"a": "top", "items": [{"a": i, "b": "x" * 60, "c": {"d": [i, i + 1]}} for i in range(64_000)]}
    body = json.dumps(document)
    assert 6_000_000 < len(body) < 8_000_000
    upstream.script("/chat", Reply(text=body, headers={"content-type": "application/json"}))
    session_id, _ = session_with_finalization(api, upstream_url, outputMapping={"output": "$..a"})
    started = time.perf_counter()
    with healthz_polls(str(api.base_url), every_s=0.02) as polls:
        turn = post(api, f"/sessions/{session_id}/turns", {"input": {"user_message": "hi"}})
        took = time.perf_counter() - started
    assert turn["status"] == "GENERATED" and turn["actualOutput"] == "top", turn["error"]
    assert max(polls) < 1, f"slowest /healthz {max(polls):.2f}s while the turn ran {took:.1f}s"
    assert took > 1 and len(polls) > 10  # the mapping took long enough for /healthz to be asked meanwhile


# -- JSONPath budget ---------------------------------------------------------------------------


def nested_reply(depth: int) -> str:
    """A small reply nested `depth` levels: `{"k": 149, "n": {"k": 148, "n": ... "leaf"}}`."""
    document: Any = "leaf"
    for level in range(depth):
        document = {"k": level, "n": document}
    return json.dumps(document)


@contextlib.contextmanager
def healthz_polls(base_url: str, every_s: float = 0.01) -> Iterator[list[float]]:
    """How long each `GET /healthz` took, polled from another thread every `every_s` for as long as the block
    runs."""
    polls: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=base_url, timeout=60) as poller:
            while not done.is_set():
                started = time.perf_counter()
                assert poller.get("/healthz").status_code == 200
                polls.append(time.perf_counter() - started)
                done.wait(every_s)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        yield polls
    finally:
        done.set()
        thread.join()


CUBIC = "$..*..*..*"  # every `..` walks the subtree under each match of what comes before: depth cubed
DEEP_REPLY = nested_reply(150)  # 2.4 KB; `$..*..*..*` makes 1.1 million matches over it
STOPPED_BY_BUDGET = (
    f"passed the budget of {JSONPATH_BASE_STEPS + JSONPATH_STEPS_PER_CHAR * len(DEEP_REPLY):,} steps "
    f"for a reply of {len(DEEP_REPLY):,} characters"
)


@pytest.mark.parametrize(
    ("fields", "content_type", "reply", "error"),
    [
        (
            {"outputMapping": {"output": CUBIC}},
            "application/json",
            DEEP_REPLY,
            f"output mapping 'output' stopped: the JSONPath {CUBIC} {STOPPED_BY_BUDGET}",
        ),
        (
            {"conversationEndRules": [{"statusCode": 200, "bodyMatch": {"path": CUBIC, "equals": "x"}}]},
            "application/json",
            DEEP_REPLY,
            f"conversation end rule 1 stopped: the JSONPath {CUBIC} {STOPPED_BY_BUDGET}",
        ),
        (
            {"responseMode": "sse", "streamTextPath": CUBIC, "outputMapping": {"output": "$.text"}},
            "text/event-stream",
            f"data: {DEEP_REPLY}\n\n",
            f"the stream text path stopped: the JSONPath {CUBIC} passed the budget of "
            f"{JSONPATH_BASE_STEPS + JSONPATH_STEPS_PER_CHAR * (len(DEEP_REPLY) + 8):,} steps "
            f"for a reply of {len(DEEP_REPLY) + 8:,} characters",
        ),
    ],
    ids=["output-mapping", "end-rule", "sse-text-path"],
)
def test_a_cubic_jsonpath_over_a_deep_reply_fails_the_turn_without_stalling_healthz(
    api: httpx.Client, upstream: Upstream, upstream_url: str, fields: dict[str, Any], content_type: str, reply: str,
    error: str,
) -> None:  # fmt: skip
    """The attack: a 2.4 KB reply nested 150 levels read with `$..*..*..*` (as output mapping, end rule or stream
    text path) held the event loop, and so /healthz and every other session, for 12-17 s."""
    upstream.script("/chat", Reply(text=reply, headers={"content-type": content_type}))
    session_id, _ = session_with_finalization(api, upstream_url, **fields)
    with healthz_polls(str(api.base_url)) as polls:
        started = time.perf_counter()
        turn = post(api, f"/sessions/{session_id}/turns", {"input": {"user_message": "hi"}})
        took = time.perf_counter() - started
    assert took < 3, f"the turn took {took:.1f}s"
    assert max(polls) < 1, f"slowest /healthz {max(polls):.2f}s while the turn ran {took:.1f}s"
    assert len(upstream.requests_to("/chat")) == 1
    assert_failed_and_finalized(api, upstream, session_id, turn, error)
    assert turn["error"] == error


def test_testconnection_with_a_cubic_jsonpath_fails_fast_and_a_linear_one_still_maps(
    api: httpx.Client, upstream: Upstream, upstream_url: str
) -> None:
    """The attack through testConnection (what `proxy check` and the inspector's test form run too): it fails
    with the budget's error; `$..k`, which visits each value once, maps the same reply."""
    upstream.script("/chat", Reply(text=DEEP_REPLY, headers={"content-type": "application/json"}))
    with healthz_polls(str(api.base_url)) as polls:
        started = time.perf_counter()
        tested = connection(upstream_url, "chat", outputMapping={"output": CUBIC})
        cubic = api.post("/endpointConnections/testConnection", json=tested).json()
        took = time.perf_counter() - started
    assert took < 3 and max(polls) < 1, (took, max(polls))
    assert cubic["success"] is False and cubic["statusCode"] == 200
    assert cubic["error"] == f"output mapping 'output' stopped: the JSONPath {CUBIC} {STOPPED_BY_BUDGET}"
    linear = api.post(
        "/endpointConnections/testConnection", json=connection(upstream_url, "chat", outputMapping={"output": "$..k"})
    ).json()
    assert linear["success"] is True and linear["extractedOutput"] == {"output": 149}, linear["error"]


def test_the_inspector_preview_of_a_cubic_mapping_stops_with_the_budget_error(
    api: httpx.Client, upstream: Upstream, upstream_url: str
) -> None:
    """The attack through the connection page's preview, which maps the last reply with an edited mapping."""
    upstream.script("/chat", Reply(text=DEEP_REPLY, headers={"content-type": "application/json"}))
    session_id, conn_id = session_with_finalization(api, upstream_url)
    post(api, f"/sessions/{session_id}/turns", {"input": {"user_message": "hi"}})  # the reply the preview maps
    page = api.get(f"/inspector/connections/{conn_id}")
    mapping = json.dumps({"output": CUBIC})
    form = {"csrf_token": csrf_token(page.text), "input_template": CHAT_TEMPLATE, "output_mapping": mapping}
    started = time.perf_counter()
    preview = api.post(f"/inspector/connections/{conn_id}/preview", data=form)
    assert time.perf_counter() - started < 3
    assert preview.status_code == 200
    expected = f"output mapping &#39;output&#39; stopped: the JSONPath {CUBIC} {STOPPED_BY_BUDGET}"
    assert expected in preview.text, preview.text


def test_recording_an_escape_dense_reply_masks_it_without_stalling_healthz(
    api: httpx.Client, upstream: Upstream, upstream_url: str
) -> None:
    """The attack: an upstream answers 2.6 MB made of doubled `\\\\u0074`-style escapes of characters the
    connection's token holds, the costliest text to mask (about a second a megabyte). Recording it masked the
    whole body on the event loop, holding `/healthz` for seconds; large bodies are masked in a worker thread."""
    token = "tok-Nested-Sup3rSecret-4242"
    body = '{"x": "' + "\\\\u0074\\\\u006f\\\\u006b-" * 120_000 + '"}'
    assert 2_500_000 < len(body) < 3_000_000
    upstream.script("/dense", Reply(text=body, headers={"content-type": "application/json"}))
    fields = {"name": "dense", "url": f"{upstream_url}/dense", "authToken": token}
    post(api, "/endpointConnections", connection(upstream_url, **fields))
    with healthz_polls(str(api.base_url)) as polls:
        started = time.perf_counter()
        answered = api.post("/forward/dense/dense", json={})
        took = time.perf_counter() - started
    assert answered.status_code == 200 and answered.headers["x-proxy-cassette"] == "recorded"
    assert max(polls) < 1, f"slowest /healthz {max(polls):.2f}s while the call took {took:.1f}s"  # 3.1 s before
