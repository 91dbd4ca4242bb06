"""Schemathesis against our own /openapi.json: every route, generated input, never a 5xx or a stack trace.
`make test` runs a few examples per operation; `make fuzz` sets PROXY_FUZZ_EXAMPLES for 1,000+ requests.
Part of the run sends each generated request as a web page could (a foreign Host or Origin, a body type
that needs no CORS preflight): those must all be refused with the guard's 4xx."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import response_schema_conformance

from proxy.server.api.guard import is_inspector_path
from proxy.server.api.openapi import build_spec
from proxy.server.app import all_routes
from tests.conftest import running_proxy

EXAMPLES = int(os.environ.get("PROXY_FUZZ_EXAMPLES", "8"))
ATTACK_EXAMPLES = max(2, EXAMPLES // 2)
MIN_REQUESTS = int(os.environ.get("PROXY_FUZZ_MIN_REQUESTS", "1"))
FOREIGN = [("Host", "rebind.attacker.example"), ("Origin", "https://evil.example"), ("Origin", "null")]
# What a page may post anywhere without a preflight; taken in turn so every type meets every kind of route.
SIMPLE_TYPES = itertools.cycle(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b"])


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    with running_proxy(tmp, record_mode="off") as proxy:
        yield proxy.url


# The document /openapi.json serves, built from the same route table.
schema = schemathesis.openapi.from_dict(build_spec(all_routes()))
# The guard refuses a web page's request on its headers, before any body is read, so the coverage phase's
# boundary bodies (about 2,600 cases of four requests each: a minute of `make test`) show it nothing new there;
# `make fuzz` (PROXY_FUZZ_EXAMPLES set) runs every phase.
GUARD_PHASES = {} if "PROXY_FUZZ_EXAMPLES" in os.environ else {"phases": {"coverage": {"enabled": False}}}
guard_config = SchemathesisConfig.from_dict(GUARD_PHASES)
guard_schema = schemathesis.openapi.from_dict(build_spec(all_routes()), config=guard_config)
# The live flow stream never ends by itself (a heartbeat every 15 s, for 5 minutes): read whole, each of its
# generated cases held the run for as long. It has its own test below, which reads it only as far as its start.
ENDLESS = "/flows/events"


@schema.exclude(path=ENDLESS).parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_no_stack_trace(case: schemathesis.Case, server_url: str) -> None:
    assert_answered_well(case, case.call(base_url=server_url, timeout=30))


@schema.include(path=ENDLESS).parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_endless_flow_stream_starts_or_refuses_without_a_server_error(
    case: schemathesis.Case, server_url: str
) -> None:
    """The stream's generated cases, each read until the server said it is connected (or whole when refused)."""
    sent = case.as_transport_kwargs(base_url=server_url)
    with (
        httpx.Client(timeout=5) as client,
        client.stream(sent["method"], sent["url"], params=sent.get("params"), headers=sent["headers"]) as streamed,
    ):
        received = b""
        for chunk in streamed.iter_bytes():
            received += chunk
            if streamed.status_code == 200 and b": connected" in received:
                break
    if streamed.status_code == 200:
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert received.startswith(b"retry: 2000\n: connected\n\n"), received[:200]
    read = httpx.Response(streamed.status_code, headers=streamed.headers, content=received, request=streamed.request)
    read.elapsed = streamed.elapsed  # closed: the time to the part read
    assert_answered_well(case, read)


def assert_answered_well(case: schemathesis.Case, response: requests.Response | httpx.Response) -> None:
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:500]}"
    )
    assert "Traceback" not in response.text and 'File "' not in response.text
    # Every JSON answer, error or not, has the shape the document gives it.
    case.validate_response(response, checks=[response_schema_conformance])


@guard_schema.parametrize()
@settings(max_examples=ATTACK_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_what_a_web_page_sends_gets_only_the_guards_4xx(case: schemathesis.Case, server_url: str) -> None:
    sent = case.as_transport_kwargs(base_url=server_url)
    payload = sent.get("json", sent.get("data"))
    body = json.dumps(payload, default=str).encode() if payload is not None else b""
    where = f"{case.method} {case.formatted_path}"
    with httpx.Client(timeout=30) as client:

        def send(headers: dict[str, str]) -> httpx.Response:
            response = client.request(
                sent["method"],
                sent["url"],
                params=sent.get("params"),
                headers={**sent["headers"], **headers},
                content=body,
            )
            return response

        for name, value in FOREIGN:
            response = send({name: value})
            assert response.status_code == 403, (
                f"{where} with {name}: {value}: {response.status_code} {response.text[:300]}"
            )
        if case.method.upper() in ("POST", "PUT", "PATCH"):
            media = next(SIMPLE_TYPES)
            response = send({"Content-Type": media, "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Site": "same-origin"})
            form_without_token = is_inspector_path(case.path) and media == "application/x-www-form-urlencoded"
            expected = 403 if form_without_token else 415
            assert response.status_code == expected, f"{where} as {media}: {response.status_code} {response.text[:300]}"


def test_fuzz_volume(server_url: str) -> None:
    """`make fuzz` requires at least PROXY_FUZZ_MIN_REQUESTS generated requests: this test draws that many cases
    across every operation (the endless stream aside), sends them and counts what was answered, on its own (it
    counted what the tests above had sent in this process: 0 when run alone, part of them under pytest-xdist)."""
    answered: list[int] = []

    @given(case=schema.exclude(path=ENDLESS).as_strategy())
    @settings(max_examples=MIN_REQUESTS, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def send(case: schemathesis.Case) -> None:
        response = case.call(base_url=server_url, timeout=30)
        assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code}"
        answered.append(response.status_code)

    send()
    print(f"\nschemathesis sent {len(answered)} requests; status codes seen: {sorted(set(answered))}")
    assert len(answered) >= MIN_REQUESTS
