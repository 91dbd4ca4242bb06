"""Request headers: default auth header, custom headers with placeholders, inference id, traceparent.

Placeholders in custom header values: `{{ name }}` or `{ name }`, case-insensitive. A custom
`Authorization` or `X-API-Key` header replaces the default auth header. With traceparent on (the server's
setting and the connection's field), a custom `traceparent` is replaced by ours; with it off, none is
generated and a custom one is sent as written.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from random import Random

from proxy.config.settings import MASK, MIN_SECRET_LEN
from proxy.connections.spec import AuthType

INFERENCE_ID_HEADER = "X-Galtea-Inference-Id"
TRACEPARENT_HEADER = "traceparent"
AUTH_OVERRIDE_HEADERS = frozenset({"authorization", "x-api-key"})

# `{{ x }}` first, so `{{ x }}` is not read as `{` + `{ x }` + `}`.
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}|\{\s*([A-Za-z_]+)\s*\}")
# Words that may stand beside placeholders in a header value without making it a secret.
_SCHEME_WORDS = re.compile(r"\b(bearer|basic|token|apikey|api-key|key)\b", re.IGNORECASE)
_LEADING_SCHEME_WORDS = re.compile(r"^(?:(?:bearer|basic|token|apikey|api-key|key)\b[\s:]*)+", re.IGNORECASE)
_SECRETISH_NAME = re.compile(r"auth|key|token|secret|password|cookie|signature|credential|session", re.IGNORECASE)


# The credential placeholders each auth type fills in a custom header; any other type leaves them as written.
PLACEHOLDERS_BY_AUTH: dict[AuthType, tuple[str, ...]] = {
    AuthType.NONE: (),
    AuthType.BEARER: ("auth_token", "api_key", "bearer_token"),
    AuthType.API_KEY: ("auth_token", "api_key", "bearer_token"),
    AuthType.BASIC: ("username", "password"),
}
CREDENTIAL_PLACEHOLDERS = frozenset(name for names in PLACEHOLDERS_BY_AUTH.values() for name in names)


def unfillable_placeholder(auth_type: AuthType, headers: Mapping[str, str]) -> tuple[str, str, str] | None:
    """The first custom header naming a credential placeholder `auth_type` cannot fill, which would otherwise go
    upstream as written: (header name, the placeholder as written, the reason)."""
    fills = PLACEHOLDERS_BY_AUTH[auth_type]
    for header, value in headers.items():
        for match in PLACEHOLDER.finditer(value):
            name = (match.group(1) or match.group(2)).lower()
            if name in CREDENTIAL_PLACEHOLDERS and name not in fills:
                can = f"fills only {', '.join(fills)}" if fills else "fills no credential placeholder"
                reason = (
                    f"{match.group(0)} is a credential an authType {auth_type.value} connection cannot fill "
                    f"(it {can}): it would be sent as written; change authType or the header"
                )
                return header, match.group(0), reason
    return None


@dataclass(frozen=True)
class Credentials:
    auth_type: AuthType
    auth_token: str | None = None
    username: str | None = None
    password: str | None = None

    def placeholder_values(self) -> dict[str, str]:
        values: dict[str, str] = {}
        if self.auth_type in (AuthType.BEARER, AuthType.API_KEY) and self.auth_token:
            values.update(auth_token=self.auth_token, api_key=self.auth_token, bearer_token=self.auth_token)
        if self.auth_type is AuthType.BASIC:
            values.update(username=self.username or "", password=self.password or "")
        return values

    def default_header(self) -> tuple[str, str] | None:
        if self.auth_type is AuthType.BEARER and self.auth_token:
            return "Authorization", f"Bearer {self.auth_token}"
        if self.auth_type is AuthType.API_KEY and self.auth_token:
            return "X-API-Key", self.auth_token
        if self.auth_type is AuthType.BASIC:
            raw = f"{self.username or ''}:{self.password or ''}".encode()
            return "Authorization", "Basic " + base64.b64encode(raw).decode()
        return None

    def secret_values(self) -> list[str]:
        values = [v for v in (self.auth_token, self.password) if v]
        default = self.default_header()
        if default and self.auth_type is AuthType.BASIC:
            values.append(default[1].removeprefix("Basic "))
        return values


def substitute(value: str, values: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = (match.group(1) or match.group(2)).lower()
        return values[name] if name in values else match.group(0)

    return PLACEHOLDER.sub(replace, value)


def is_secret_header(name: str, value: str) -> bool:
    """A value is secret when a credential-like header holds more than placeholders and scheme words."""
    if value == MASK:
        return True
    if not _SECRETISH_NAME.search(name):
        return False
    literal = _SCHEME_WORDS.sub("", PLACEHOLDER.sub("", value)).strip(" :")
    return bool(literal)


def secret_header_parts(name: str, value: str) -> list[str]:
    """The literal secrets a secret header value holds, less a leading scheme word (`Bearer sk-…` holds
    `sk-…`, which is what an upstream would echo). Beside placeholders, only pieces long enough to be a
    secret count: `sig-{{ api_key }}` holds no secret of its own."""
    if value == MASK or not is_secret_header(name, value):
        return []
    pieces = [
        _LEADING_SCHEME_WORDS.sub("", p.strip(" :")).strip(" :") for p in PLACEHOLDER.sub("\0", value).split("\0")
    ]
    if len(pieces) == 1:
        return [pieces[0]] if pieces[0] else []
    return [piece for piece in pieces if len(piece) >= MIN_SECRET_LEN]


def masked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: MASK if is_secret_header(name, value) else value for name, value in headers.items()}


# Trace ids are W3C's random ids, not secrets: drawn from one generator seeded from the OS, not per call from it.
_random = Random(os.urandom(16))


def new_w3c_trace_id() -> str:
    return f"{_random.getrandbits(128):032x}"


def traceparent(w3c_trace_id: str) -> str:
    return f"00-{w3c_trace_id}-{_random.getrandbits(64):016x}-01"


# Placeholders only a call can fill in; the credential ones are the connection's and filled in once. The
# `trace_id` placeholder is the turn's id (as the template variable of that name), not the W3C trace id.
PER_CALL_PLACEHOLDERS = frozenset({"session_id", "trace_id"})


@dataclass(frozen=True)
class HeaderPlan:
    """A connection's request headers worked out once: the default auth header and each custom header with
    its credential placeholders filled in; the ones naming a per-call placeholder are filled in per call."""

    headers: tuple[tuple[str, str, bool], ...]  # (name, value, has per-call placeholders)
    values: Mapping[str, str]  # the credential placeholders' values
    send_traceparent: bool

    def build(self, *, session_id: str | None, inference_id: str, w3c_trace_id: str | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        values: dict[str, str] | None = None
        for name, value, per_call in self.headers:
            if per_call:
                if values is None:
                    values = {**self.values, "session_id": session_id or "", "trace_id": inference_id}
                value = substitute(value, values)
            headers[name] = value
        headers[INFERENCE_ID_HEADER] = inference_id
        if self.send_traceparent and w3c_trace_id:
            headers[TRACEPARENT_HEADER] = traceparent(w3c_trace_id)
        return headers


def compile_headers(credentials: Credentials, custom: Mapping[str, str], send_traceparent: bool) -> HeaderPlan:
    values = credentials.placeholder_values()
    headers: list[tuple[str, str, bool]] = []
    lowered = {name.lower() for name in custom}
    default = credentials.default_header()
    if default and not (lowered & AUTH_OVERRIDE_HEADERS):
        headers.append((default[0], default[1], False))
    for name, value in custom.items():
        if name.lower() == TRACEPARENT_HEADER and send_traceparent:
            continue  # replaced by ours, per call
        names = {(m.group(1) or m.group(2)).lower() for m in PLACEHOLDER.finditer(value)}
        if names & PER_CALL_PLACEHOLDERS:
            headers.append((name, value, True))
        else:
            headers.append((name, substitute(value, values), False))
    return HeaderPlan(tuple(headers), values, send_traceparent)


def build_headers(
    credentials: Credentials,
    custom: Mapping[str, str],
    *,
    session_id: str | None,
    inference_id: str,
    w3c_trace_id: str | None,
    send_traceparent: bool,
) -> dict[str, str]:
    plan = compile_headers(credentials, custom, send_traceparent)
    return plan.build(session_id=session_id, inference_id=inference_id, w3c_trace_id=w3c_trace_id)
