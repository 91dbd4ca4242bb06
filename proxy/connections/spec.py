"""Endpoint connection fields, defaults and validation rules, as Galtea documents them.

Pydantic checks shapes and ranges; `check_connection` applies the cross-field rules. Every
failure becomes `InvalidField` (422) naming the field and the reason. camelCase and snake_case
are both accepted; enum values are case-insensitive.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, NoReturn, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from proxy.config.known_keys import check_model_keys
from proxy.config.settings import (
    DEFAULT_RETRY_INITIAL_DELAY_MS,
    DEFAULT_RETRY_MAX_ATTEMPTS,
    DEFAULT_RETRY_MAX_DELAY_MS,
    DEFAULT_RETRYABLE_STATUS_CODES,
    DEFAULT_STREAM_TEXT_PATH,
    DEFAULT_TIMEOUT_S,
    MAX_CONVERSATION_END_RULES,
    MAX_FAULT_RULES,
    MAX_RETRY_DELAY_MS,
    MAX_RETRY_MAX_ATTEMPTS,
    MAX_TIMEOUT_S,
)
from proxy.connections.fault_rules import FaultRule
from proxy.errors import InvalidField, camel_to_snake
from proxy.security.url_secrets import masked_url


class CaseInsensitiveEnum(StrEnum):
    """A str Enum that accepts any case and lists the valid values when it refuses one."""

    @classmethod
    def _missing_(cls, value: object) -> CaseInsensitiveEnum | None:
        if isinstance(value, str):
            for member in cls:
                if member.value == value.upper():
                    return member
        return None

    @classmethod
    def parse(cls, value: object, field: str) -> Any:
        try:
            return cls(value)  # type: ignore[arg-type]
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise InvalidField(field, f"{value!r} is not one of {valid}") from None


class ConnectionType(CaseInsensitiveEnum):
    INITIALIZATION = "INITIALIZATION"
    CONVERSATION = "CONVERSATION"
    FINALIZATION = "FINALIZATION"


class HttpMethod(CaseInsensitiveEnum):
    GET = "GET"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"


class AuthType(CaseInsensitiveEnum):
    NONE = "NONE"
    BEARER = "BEARER"
    API_KEY = "API_KEY"
    BASIC = "BASIC"


class LowercaseEnum(CaseInsensitiveEnum):
    """Values written in lower case (`json`, `mcp`), accepted in any."""

    @classmethod
    def _missing_(cls, value: object) -> LowercaseEnum | None:
        return next((m for m in cls if isinstance(value, str) and m.value == value.lower()), None)


class Protocol(LowercaseEnum):
    """What the forward route speaks to the connection: plain HTTP, or MCP's streamable HTTP transport (JSON-RPC
    ids and session ids rewritten on replay, see proxy/engine/mcp.py)."""

    HTTP = "http"
    MCP = "mcp"


class BackoffStrategy(CaseInsensitiveEnum):
    FIXED = "FIXED"
    LINEAR = "LINEAR"
    EXPONENTIAL = "EXPONENTIAL"


class ResponseMode(LowercaseEnum):
    """How a reply is read: one JSON document, or server-sent events whose text pieces are joined."""

    JSON = "json"
    SSE = "sse"


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class BodyMatch(ApiModel):
    path: str
    equals: str

    @field_validator("equals", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return str(value).lower()
        return str(value) if isinstance(value, int | float) else value


class EndRule(ApiModel):
    status_code: int = Field(ge=100, le=599)
    body_match: BodyMatch | None = None


class ConnectionSpec(ApiModel):
    """Every stored field of an endpoint connection, with the spec's defaults."""

    name: str = Field(min_length=1, max_length=200)
    product_id: str = Field(min_length=1, max_length=200)
    url: str = Field(min_length=1, max_length=4000)
    type: ConnectionType
    http_method: HttpMethod = HttpMethod.POST
    auth_type: AuthType = AuthType.BEARER
    auth_token: str | None = None
    username: str | None = None
    password: str | None = None
    headers: dict[str, str] | None = None
    input_template: str | None = None
    output_mapping: dict[str, str] | None = None
    timeout: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, le=MAX_TIMEOUT_S)
    rate_limit: int | None = Field(default=None, ge=1)
    retry_enabled: bool = False
    retry_max_attempts: int = Field(default=DEFAULT_RETRY_MAX_ATTEMPTS, ge=0, le=MAX_RETRY_MAX_ATTEMPTS)
    retry_initial_delay_ms: int = Field(default=DEFAULT_RETRY_INITIAL_DELAY_MS, ge=0, le=MAX_RETRY_DELAY_MS)
    retry_backoff_strategy: BackoffStrategy = BackoffStrategy.EXPONENTIAL
    retry_max_delay_ms: int = Field(default=DEFAULT_RETRY_MAX_DELAY_MS, ge=0, le=MAX_RETRY_DELAY_MS)
    retryable_status_codes: list[int] = Field(default_factory=lambda: list(DEFAULT_RETRYABLE_STATUS_CODES))
    acknowledged_insecure_http: bool = False
    traceparent: bool = True  # off: no traceparent is generated, and a custom one is sent as written
    conversation_end_rules: list[EndRule] = Field(default_factory=list, max_length=MAX_CONVERSATION_END_RULES)
    faults: list[FaultRule] = Field(default_factory=list, max_length=MAX_FAULT_RULES)
    response_mode: ResponseMode = ResponseMode.JSON
    stream_text_path: str = Field(default=DEFAULT_STREAM_TEXT_PATH, min_length=1, max_length=1000)
    protocol: Protocol = Protocol.HTTP

    @field_validator("retryable_status_codes")
    @classmethod
    def _status_codes(cls, codes: list[int]) -> list[int]:
        for code in codes:
            if not 100 <= code <= 599:
                raise ValueError(f"{code} is not an HTTP status code (100-599)")
        return codes


# Fields that, sent as null, mean "use the default" rather than "store null".
NULLABLE_TO_DEFAULT = {
    "timeout",
    "retry_enabled",
    "retry_max_attempts",
    "retry_initial_delay_ms",
    "retry_backoff_strategy",
    "retry_max_delay_ms",
    "retryable_status_codes",
    "acknowledged_insecure_http",
    "traceparent",
    "conversation_end_rules",
    "faults",
    "response_mode",
    "stream_text_path",
    "protocol",
    "http_method",
    "auth_type",
}
# What the API reads back beside the stored fields: let through (and ignored) on input, so a connection
# read, changed and sent back is accepted.
READ_ONLY_FIELDS = frozenset({"id", "hasAuthToken", "has_auth_token", "hasPassword", "has_password"}) | frozenset(
    {"createdAt", "created_at", "deletedAt", "deleted_at"}
)
CREDENTIALS_BY_AUTH = {
    AuthType.NONE: (),
    AuthType.BEARER: ("auth_token",),
    AuthType.API_KEY: ("auth_token",),
    AuthType.BASIC: ("username", "password"),
}
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def field_name(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as the API's field path: the top-level name camelCase, the rest (a header
    name, a mapping key) as the input wrote it."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(str(item) if parts else to_camel(str(item)))
    return ".".join(parts) or "body"


def raise_first(exc: ValidationError) -> NoReturn:
    error = exc.errors(include_url=False)[0]
    loc = tuple(x for x in error["loc"] if not (isinstance(x, str) and x.startswith("function-")))
    # Enum errors name every valid value; pydantic's text already does.
    raise InvalidField(field_name(loc), _reason(error)) from None


# pydantic's wording for a value of the wrong JSON type, said the way the API's own checks say it.
_TYPE_REASONS = {
    "string_type": "must be a string",
    "dict_type": "must be an object",
    "list_type": "must be a list",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
}


def _reason(error: Any) -> str:
    message = str(error["msg"])
    if error["type"] == "missing" or (error["type"] in _TYPE_REASONS and error.get("input", "") is None):
        return "is required"
    if error["type"] == "enum":
        return f"{error['input']!r} is not one of {error['ctx']['expected']} (any case)"
    return _TYPE_REASONS.get(error["type"], message.removeprefix("Value error, "))


def parse_spec(data: dict[str, Any]) -> ConnectionSpec:
    check_model_keys(data, ConnectionSpec, allowed=READ_ONLY_FIELDS)
    data = {k: v for k, v in data.items() if not (v is None and camel_to_snake(k) in NULLABLE_TO_DEFAULT)}
    try:
        return ConnectionSpec.model_validate(data)
    except ValidationError as exc:
        raise_first(exc)


def normalise_keys(data: dict[str, Any]) -> dict[str, Any]:
    """camelCase or snake_case in, snake_case out (top level)."""
    return {camel_to_snake(k): v for k, v in data.items()}


def check_connection(spec: ConnectionSpec, allow_http: bool) -> None:
    """The cross-field rules of an endpoint connection that pydantic's per-field checks cannot express."""
    check_url(spec.url, spec.acknowledged_insecure_http or allow_http)
    if spec.auth_type in (AuthType.BEARER, AuthType.API_KEY) and not spec.auth_token:
        raise InvalidField("authToken", f"is required when authType is {spec.auth_type.value}")
    if spec.auth_type is AuthType.BASIC:
        for name in ("username", "password"):
            if not getattr(spec, name):
                raise InvalidField(name, "is required when authType is BASIC")
    mapping = spec.output_mapping or {}
    if spec.type is ConnectionType.CONVERSATION and spec.protocol is not Protocol.MCP:  # MCP: forward route only
        if not spec.input_template or not re.search(r"\{\{-?\s*input\b", spec.input_template):
            raise InvalidField(
                "inputTemplate", "a CONVERSATION connection needs a template with an {{ input… }} placeholder"
            )
        if "output" not in mapping:
            raise InvalidField("outputMapping.output", "a CONVERSATION connection must map 'output'")
    if spec.type is ConnectionType.INITIALIZATION and "session_id" not in mapping:
        raise InvalidField("outputMapping.session_id", "an INITIALIZATION connection must map 'session_id'")
    if spec.conversation_end_rules and spec.type is not ConnectionType.CONVERSATION:
        raise InvalidField("conversationEndRules", "only CONVERSATION connections take end rules")
    for index, rule in enumerate(spec.conversation_end_rules):
        if 200 <= rule.status_code < 300 and rule.body_match is None:
            raise InvalidField(f"conversationEndRules[{index}].bodyMatch", "a 2xx rule needs a bodyMatch")
    for name in spec.headers or {}:
        if not _HEADER_NAME.fullmatch(name):
            raise InvalidField(f"headers.{name}", "is not a valid HTTP header name")
    for name, value in (spec.headers or {}).items():
        if "\n" in value or "\r" in value:
            raise InvalidField(f"headers.{name}", "a header value cannot contain a line break")


def check_url(url: str, http_allowed: bool) -> None:
    # Placeholders are not part of the URL's shape: check what is left around them.
    shape = re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", "x", url)
    parts = urlsplit(shape)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidField("url", f"{masked_url(url)!r} is not an absolute http(s) URL")
    if parts.scheme == "http" and not http_allowed:
        raise InvalidField(
            "url",
            "must be https; set acknowledgedInsecureHttp: true or run the server with --allow-http to use http",
        )


def _blank_is_absent(value: Any) -> Any:
    return None if value == "" else value


# An id or a short text where an empty string means "not given", as in the Galtea API.
Text = Annotated[str | None, BeforeValidator(_blank_is_absent)]
RequiredText = Annotated[str, BeforeValidator(_blank_is_absent)]


class RequestModel(ApiModel):
    """A request body."""

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise_first(exc)

    def given(self) -> set[str]:
        """The fields the request named (even as null): PATCH changes only those."""
        return self.model_fields_set
