from __future__ import annotations

import base64
import re

import pytest

from proxy.config.settings import MASK
from proxy.connections.headers import Credentials, build_headers, is_secret_header, masked_headers
from proxy.connections.spec import AuthType


def headers_for(creds: Credentials, custom: dict[str, str] | None = None, **kw: object) -> dict[str, str]:
    options: dict[str, object] = {
        "session_id": "ext-1",
        "inference_id": "inf-1",
        "w3c_trace_id": "a" * 32,
        "send_traceparent": True,
    }
    options.update(kw)
    return build_headers(creds, custom or {}, **options)  # type: ignore[arg-type]


def test_bearer_api_key_basic_and_none_default_headers() -> None:
    assert headers_for(Credentials(AuthType.BEARER, "t0k3n-xyz"))["Authorization"] == "Bearer t0k3n-xyz"
    assert headers_for(Credentials(AuthType.API_KEY, "k3y-xyz-1"))["X-API-Key"] == "k3y-xyz-1"
    basic = headers_for(Credentials(AuthType.BASIC, username="ann", password="p:w-long-pw"))["Authorization"]
    assert basic == "Basic " + base64.b64encode(b"ann:p:w-long-pw").decode()
    none = headers_for(Credentials(AuthType.NONE))
    assert "Authorization" not in none and "X-API-Key" not in none


@pytest.mark.parametrize(
    "template",
    [
        "Token {{ auth_token }}",
        "Token { auth_token }",
        "Token {{AUTH_TOKEN}}",
        "Token {Bearer_Token}",
        "Token {{ api_key }}",
    ],
)
def test_both_placeholder_syntaxes_any_case(template: str) -> None:
    headers = headers_for(Credentials(AuthType.BEARER, "t0k3n-xyz"), {"X-Auth": template})
    assert headers["X-Auth"] == "Token t0k3n-xyz"


def test_call_value_and_basic_placeholders() -> None:
    creds = Credentials(AuthType.BASIC, username="ann", password="pw-12345678")
    headers = headers_for(creds, {"X-User": "{ username }:{{ password }}", "X-Session": "{{ session_id }}/{trace_id}"})
    assert headers["X-User"] == "ann:pw-12345678"
    assert headers["X-Session"] == "ext-1/inf-1"


def test_unknown_placeholders_are_left_alone() -> None:
    assert headers_for(Credentials(AuthType.NONE), {"X": "{{ nope }}"})["X"] == "{{ nope }}"


@pytest.mark.parametrize("override", ["Authorization", "authorization", "X-API-Key", "x-api-key"])
def test_custom_authorization_or_api_key_header_replaces_the_default(override: str) -> None:
    headers = headers_for(Credentials(AuthType.BEARER, "t0k3n-xyz"), {override: "Custom {{ bearer_token }}"})
    assert headers[override] == "Custom t0k3n-xyz"
    assert [k for k in headers if k.lower() in ("authorization", "x-api-key")] == [override]


def test_inference_id_and_traceparent_are_always_sent_and_custom_traceparent_replaced() -> None:
    headers = headers_for(Credentials(AuthType.NONE), {"traceparent": "00-bogus"})
    assert headers["X-Galtea-Inference-Id"] == "inf-1"
    assert re.fullmatch(r"00-a{32}-[0-9a-f]{16}-01", headers["traceparent"])
    spans = {headers_for(Credentials(AuthType.NONE))["traceparent"].split("-")[2] for _ in range(5)}
    assert len(spans) == 5  # a new span id per call


def test_traceparent_can_be_turned_off() -> None:
    headers = headers_for(Credentials(AuthType.NONE), {"traceparent": "00-mine"}, send_traceparent=False)
    assert headers["traceparent"] == "00-mine"


def test_secret_header_classification_and_masking() -> None:
    assert is_secret_header("X-Api-Key", "abc123")
    assert is_secret_header("Authorization", "Bearer abc123")
    assert not is_secret_header("Authorization", "Bearer {{ bearer_token }}")
    assert not is_secret_header("Content-Type", "application/json")
    masked = masked_headers({"Cookie": "sid=1", "Accept": "x", "X-Token": "{ auth_token }"})
    assert masked == {"Cookie": MASK, "Accept": "x", "X-Token": "{ auth_token }"}
