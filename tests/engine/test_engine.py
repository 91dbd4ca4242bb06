"""The engine driven through httpx.MockTransport: rendering, request shape, reply handling."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from proxy.engine.call import Engine
from proxy.engine.results import CallContext
from tests.helpers import compiled_connection as connection


def capture(*responses: httpx.Response) -> tuple[Engine, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return Engine(httpx.MockTransport(handler)), seen


async def test_template_context_offers_every_documented_name() -> None:
    template = (
        '{"i": "{{ input.q }}", "c": "{{ context.k }}", "s": "{{ session_id }}", "g": "{{ galtea_session_id }}",'
        ' "tc": "{{ test_case_id }}", "t": "{{ test_id }}", "ir": "{{ inference_result_id }}",'
        ' "d": "{{ dataset_id }}", "tr": "{{ trace_id }}", "m": "{{ plan }}", "n": {{ past_turns | length }}}'
    )
    engine, seen = capture(httpx.Response(200, json={"reply": "ok"}))
    ctx = CallContext(
        input={"q": "Q"},
        context={"k": "K"},
        session_id="S",
        galtea_session_id="G",
        test_case_id="TC",
        test_id="T",
        inference_result_id="IR",
        metadata={"plan": "gold"},
        past_turns=[{"input": "a", "output": "b"}],
    )
    await engine.call(connection(inputTemplate=template), ctx)
    assert json.loads(seen[0].content) == {
        "i": "Q",
        "c": "K",
        "s": "S",
        "g": "G",
        "tc": "TC",
        "t": "T",
        "ir": "IR",
        "d": "IR",
        "tr": "IR",
        "m": "gold",
        "n": 1,
    }


async def test_url_is_rendered_with_escaped_session_id() -> None:
    engine, seen = capture(httpx.Response(200, json={"reply": "ok"}))
    await engine.call(
        connection(url="https://up.test/threads/{{ session_id }}/m"), CallContext(input={}, session_id="a b/c")
    )
    assert str(seen[0].url) == "https://up.test/threads/a%20b%2Fc/m"


async def test_get_sends_no_body() -> None:
    engine, seen = capture(httpx.Response(200, json={"reply": "ok"}))
    await engine.call(connection(httpMethod="GET"), CallContext(input={"m": "x"}))
    assert seen[0].method == "GET" and seen[0].content == b""


async def test_a_body_that_renders_to_invalid_json_fails_with_the_parse_error_and_text() -> None:
    engine, seen = capture(httpx.Response(200, json={"reply": "ok"}))
    result = await engine.call(
        connection(inputTemplate='{"m": {{ input.m }}}'), CallContext(input={"m": "plain words"})
    )
    assert not seen and result.error is not None
    assert result.error.startswith("the rendered body is not valid JSON (Expecting value at line 1 column 7)")
    assert result.error.endswith('{"m": plain words}')


async def test_non_json_content_type_skips_the_json_check() -> None:
    engine, seen = capture(httpx.Response(200, json={"reply": "ok"}))
    conn = connection(inputTemplate="q={{ input.m }}", headers={"Content-Type": "text/plain"})
    result = await engine.call(conn, CallContext(input={"m": "x"}))
    assert result.ok and seen[0].content == b"q=x"


async def test_body_over_the_cap_fails_cleanly() -> None:
    engine = Engine(httpx.MockTransport(lambda r: httpx.Response(200, content=b"x" * 2048)), max_body_bytes=1024)
    result = await engine.call(connection(), CallContext(input={"m": "x"}))
    assert result.error == "the upstream body is larger than the 1024 byte cap"


async def test_end_rule_with_body_match_completes_on_2xx() -> None:
    rules = [{"statusCode": 200, "bodyMatch": {"path": "$.status", "equals": "closed"}}]
    engine, _ = capture(httpx.Response(200, json={"status": "closed"}))
    result = await engine.call(connection(conversationEndRules=rules), CallContext(input={"m": "x"}))
    assert result.ok and result.ended_by_rule == 0
    engine, _ = capture(httpx.Response(200, json={"status": "open", "reply": "r"}))
    result = await engine.call(connection(conversationEndRules=rules), CallContext(input={"m": "x"}))
    assert result.ended_by_rule is None and result.output == "r"


async def test_non_string_output_is_stored_as_json_text_and_optional_misses_are_reported() -> None:
    engine, _ = capture(httpx.Response(200, json={"reply": {"a": [1, 2]}}))
    result = await engine.call(
        connection(outputMapping={"output": "$.reply", "plan": "$.plan"}), CallContext(input={"m": "x"})
    )
    assert result.ok and result.output == '{"a": [1, 2]}'
    assert "plan" in result.misses and result.extraction_error is not None


async def test_exchange_masks_secret_headers() -> None:
    engine, seen = capture(httpx.Response(200, json={"reply": "ok"}))
    conn = connection(authType="BEARER", authToken="engine-tok-123", headers={"X-Key": "raw-key-456"})
    result = await engine.call(conn, CallContext(input={"m": "x"}))
    assert seen[0].headers["authorization"] == "Bearer engine-tok-123"
    exchange = json.dumps(result.to_json())
    assert "engine-tok-123" not in exchange and "raw-key-456" not in exchange


async def test_cookies_one_upstream_sets_never_reach_another_call() -> None:
    engine, seen = capture(
        httpx.Response(200, json={"reply": "ok"}, headers={"Set-Cookie": "sid=session-a; Path=/"}),
        httpx.Response(200, json={"reply": "ok"}),
    )
    await engine.call(connection(), CallContext(input={"m": "session a"}))
    await engine.call(connection(), CallContext(input={"m": "session b"}))
    assert len(seen) == 2 and "cookie" not in seen[1].headers


async def test_requests_carry_the_usual_client_headers_unless_the_connection_sets_them() -> None:
    engine, seen = capture(httpx.Response(200, json={"reply": "ok"}))
    await engine.call(connection(), CallContext(input={"m": "x"}))
    await engine.call(connection(headers={"User-Agent": "my-agent/1"}), CallContext(input={"m": "x"}))
    assert seen[0].headers["user-agent"].startswith("python-httpx/") and seen[0].headers["accept"] == "*/*"
    assert seen[1].headers.get_list("user-agent") == ["my-agent/1"]


async def test_a_url_rendered_without_a_host_fails_without_calling_or_retrying() -> None:
    engine, seen = capture(httpx.Response(200, json={"reply": "ok"}))
    conn = connection(url="https://{{ context.host }}/chat")
    assert (await engine.call(conn, CallContext(input={"m": "x"}, context={"host": "up.test"}))).ok
    result = await engine.call(conn, CallContext(input={"m": "x"}, context={"host": ""}))
    assert len(seen) == 1 and not result.attempts
    assert result.error == (
        "the rendered URL is not usable (only http:// and https:// URLs with a host can be called): https:///chat"
    )


async def test_reply_text_is_decoded_with_the_charset_the_upstream_names_else_utf8() -> None:
    named = httpx.Response(
        200,
        content='{"reply": "café"}'.encode("latin-1"),
        headers={"Content-Type": "application/json; charset=latin-1"},
    )
    unnamed = httpx.Response(200, content='{"reply": "café"}'.encode(), headers={"Content-Type": "application/json"})
    for answer in (named, unnamed):
        engine, _ = capture(answer)
        result = await engine.call(connection(), CallContext(input={"m": "x"}))
        assert result.output == "café"


async def test_a_resolver_failure_anywhere_in_the_cause_chain_reads_as_one() -> None:
    """Live clients wrap the resolver's error in their own, explicitly or not: the engine finds it in the chain."""

    def unresolvable(request: httpx.Request) -> httpx.Response:
        try:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        except OSError as exc:
            try:
                raise RuntimeError("the client's own wrapper") from exc
            except RuntimeError:
                raise httpx.ConnectError("[Errno -2] Name or service not known", request=request)  # noqa: B904

    result = await Engine(httpx.MockTransport(unresolvable)).call(connection(), CallContext(input={"m": "x"}))
    assert result.error == "could not resolve host up.test (Name or service not known) (https://up.test/chat)"


async def test_a_render_over_its_budget_fails_the_call_without_sending() -> None:
    engine, seen = capture(httpx.Response(200, json={"reply": "ok"}))
    result = await engine.call(connection(inputTemplate='{"m": {{ input.n ** 99999 }}}'), CallContext(input={"n": 7}))
    assert not seen and result.error is not None
    assert result.error.startswith("template stopped: `**` would make a number of about 84,509 digits")


async def test_a_rendered_body_nested_too_deep_is_refused_not_parsed() -> None:
    engine, seen = capture(httpx.Response(200, json={"reply": "ok"}))
    template = "{% for i in range(100000) %}[{% endfor %}{% for i in range(100000) %}]{% endfor %}"
    result = await engine.call(connection(inputTemplate=template + "{{ input.m }}"), CallContext(input={"m": ""}))
    assert not seen and result.error == "the rendered body is refused: JSON nested deeper than 500 levels"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"reply": ' + "[" * 100_000 + "]" * 100_000 + "}", "JSON nested deeper than 500 levels"),
        ('{"reply": ' + "7" * 5000 + "}", "a JSON number with more than 4300 digits"),
    ],
)
async def test_a_reply_over_a_json_bound_fails_the_call_with_the_bound(body: str, reason: str) -> None:
    engine, _ = capture(httpx.Response(200, content=body.encode(), headers={"Content-Type": "application/json"}))
    result = await engine.call(connection(), CallContext(input={"m": "x"}))
    assert result.error == f"the upstream reply is refused: {reason}"
    assert result.reply is not None and result.reply.to_json()["body"] == body  # kept as text for the user
    no_mapping = connection(type="FINALIZATION", outputMapping=None)
    assert (await engine.call(no_mapping, CallContext())).error == f"the upstream reply is refused: {reason}"


async def test_a_forwarded_reply_over_a_json_bound_is_passed_through_as_it_is() -> None:
    body = "[" * 100_000 + "]" * 100_000
    engine, _ = capture(httpx.Response(200, content=body.encode(), headers={"Content-Type": "application/json"}))
    result = await engine.forward(connection().target, "GET", "https://up.test/x", {}, b"", None)
    assert result.ok and result.reply is not None and result.reply.text == body


async def test_anything_the_engine_raises_becomes_the_calls_error() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("transport bug")

    engine = Engine(httpx.MockTransport(broken))
    result = await engine.call(connection(), CallContext(input={"m": "x"}))
    assert result.error == "the call failed inside the proxy: RuntimeError: transport bug"
    forwarded = await engine.forward(connection().target, "GET", "https://up.test/x", {}, b"", None)
    assert forwarded.error is not None and "RuntimeError: transport bug" in forwarded.error
