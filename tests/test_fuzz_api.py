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
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import response_schema_conformance

from proxy.api.guard import is_inspector_path
from proxy.api.openapi import build_spec
from proxy.app import all_routes
from tests.conftest import running_proxy

EXAMPLES = int(os.environ.get("PROXY_FUZZ_EXAMPLES", "8"))
ATTACK_EXAMPLES = max(2, EXAMPLES // 2)
SEEN: list[int] = []
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


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_no_stack_trace(case: schemathesis.Case, server_url: str) -> None:
    response = case.call(base_url=server_url, timeout=30)
    SEEN.append(response.status_code)
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:500]}"
    )
    assert "Traceback" not in response.text and 'File "' not in response.text
    # Every JSON answer, error or not, has the shape the document gives it.
    case.validate_response(response, checks=[response_schema_conformance])


@schema.parametrize()
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
            SEEN.append(response.status_code)
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


def test_fuzz_volume() -> None:
    """Runs after the generated cases: `make fuzz` requires at least PROXY_FUZZ_MIN_REQUESTS of them."""
    minimum = int(os.environ.get("PROXY_FUZZ_MIN_REQUESTS", "1"))
    print(f"\nschemathesis sent {len(SEEN)} requests; status codes seen: {sorted(set(SEEN))}")
    assert len(SEEN) >= minimum
