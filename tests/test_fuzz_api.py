"""Schemathesis against our own /openapi.json: every route, generated input, never a 5xx or a stack trace.
`make test` runs a few examples per operation; `make fuzz` sets PROXY_FUZZ_EXAMPLES for 1,000+ requests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import response_schema_conformance

from proxy.api.openapi import build_spec
from proxy.app import all_routes
from tests.conftest import running_proxy

EXAMPLES = int(os.environ.get("PROXY_FUZZ_EXAMPLES", "8"))
SEEN: list[int] = []


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


def test_fuzz_volume() -> None:
    """Runs after the generated cases: `make fuzz` requires at least PROXY_FUZZ_MIN_REQUESTS of them."""
    minimum = int(os.environ.get("PROXY_FUZZ_MIN_REQUESTS", "1"))
    print(f"\nschemathesis sent {len(SEEN)} requests; status codes seen: {sorted(set(SEEN))}")
    assert len(SEEN) >= minimum
