"""Per-call engine overhead: render, auth headers, output mapping, and a whole engine.call
through httpx.MockTransport (no network), in microseconds."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx

from proxy.connections.compiled import compile_connection, connection_secrets
from proxy.connections.headers import build_headers
from proxy.connections.spec import parse_spec
from proxy.engine.call import Engine
from proxy.engine.results import CallContext
from proxy.security.redaction import Redactor

TEMPLATE = (
    '{"model": "m", "messages": [{% for t in past_turns %}{"role": "user", "content": "{{ t.input }}"},'
    ' {"role": "assistant", "content": "{{ t.output }}"}, {% endfor %}'
    '{"role": "user", "content": "{{ input.user_message }}"}], "user": "{{ context.user }}"}'
)
REPLY = {"choices": [{"message": {"content": "hello"}}], "docs": ["a", "b"], "session": {"id": "s1"}}


def per_call_us(fn: Callable[[], object], n: int = 20000) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


def run() -> list[str]:
    spec = parse_spec(
        {
            "name": "b",
            "productId": "p",
            "url": "https://up.test/chat",
            "type": "CONVERSATION",
            "authType": "BEARER",
            "authToken": "bench-token-1",
            "headers": {"X-Tenant": "t", "X-Sig": "{{ api_key }}"},
            "inputTemplate": TEMPLATE,
            "outputMapping": {"output": "$.choices[0].message.content", "retrieval_context": "$.docs", "plan": "$.x"},
        }
    )
    conn = compile_connection("ec_b", spec, "2026-01-01T00:00:00Z", allow_http=False)
    ctx = CallContext(
        input={"user_message": 'say "hi"'},
        context={"user": "u"},
        past_turns=[{"input": "a", "output": "b"}, {"input": "c", "output": "d"}],
    )
    variables = ctx.template_vars()
    assert conn.body_template is not None
    body_template = conn.body_template
    render = per_call_us(lambda: body_template.render(variables))
    headers = per_call_us(
        lambda: build_headers(
            conn.credentials,
            spec.headers or {},
            session_id="s",
            inference_id="i",
            w3c_trace_id="t" * 32,
            send_traceparent=True,
        )
    )
    mapping = per_call_us(lambda: conn.mapping.apply(REPLY))

    redactor = Redactor()  # as the server's: it knows the connection's token, so every reply is masked
    redactor.register("bench", connection_secrets(spec))
    answer = "Here is a longer answer about the thing you asked, with some detail. " * 30  # ~2 KB
    plain, escaped = json.dumps({"content": answer}), json.dumps({"content": answer.replace("the", "thé")})
    mask_plain = per_call_us(lambda: redactor.redact(plain))
    mask_escaped = per_call_us(lambda: redactor.redact(escaped))

    async def engine_calls(n: int) -> float:
        engine = Engine(httpx.MockTransport(lambda r: httpx.Response(200, json=REPLY)), redactor=redactor)
        await engine.call(conn, ctx)
        started = time.perf_counter()
        for _ in range(n):
            await engine.call(conn, ctx)
        await engine.aclose()
        return (time.perf_counter() - started) / n * 1e6

    whole = asyncio.run(engine_calls(3000))
    return [
        "Engine overhead per call (µs, one process, no network)",
        f"  render body template (2 past turns)          {render:8.1f}",
        f"  build auth + custom headers + traceparent    {headers:8.1f}",
        f"  apply output mapping (3 JSONPaths)           {mapping:8.1f}",
        f"  mask a 2 KB reply                            {mask_plain:8.1f}",
        f"  mask a 2 KB reply with \\u00e9 escapes        {mask_escaped:8.1f}",
        f"  whole engine.call via httpx.MockTransport    {whole:8.1f}",
    ]
