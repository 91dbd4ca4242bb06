"""A stored endpoint connection, compiled once: templates, JSONPaths and credentials ready to use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from jsonpath_ng import JSONPath

from proxy.config.settings import MIN_SECRET_LEN
from proxy.connections.headers import Credentials, masked_headers, secret_header_parts, unfillable_placeholder
from proxy.connections.mapping import CompiledMapping, JsonPathRefused, compile_jsonpath
from proxy.connections.retry import RetryPolicy
from proxy.connections.spec import ConnectionSpec, ResponseMode, check_connection
from proxy.connections.targets import CallSubject, ForwardTarget
from proxy.errors import InvalidField
from proxy.security.origins import Origin, fixed_origin
from proxy.security.url_secrets import FIELD_PREFIX, masked_url, query_secrets, secret_values, whole_credentials
from proxy.templating.environment import CompiledTemplate, TemplateRefused


@dataclass
class CompiledEndRule:
    status_code: int
    path: JSONPath | None
    equals: str | None


@dataclass
class CompiledConnection:
    id: str
    spec: ConnectionSpec
    created_at: str
    body_template: CompiledTemplate | None
    url_template: CompiledTemplate
    mapping: CompiledMapping
    end_rules: list[CompiledEndRule] = field(default_factory=list)
    stream_text_path: JSONPath | None = None  # response_mode sse: each event's piece of the text
    events_text_path: JSONPath | None = None  # the same path in any mode: a relayed stream's text in the flow log

    @property
    def name(self) -> str:
        return self.spec.name

    @cached_property
    def credentials(self) -> Credentials:
        s = self.spec
        return Credentials(s.auth_type, s.auth_token, s.username, s.password)

    @cached_property
    def shown_url(self) -> str:
        """Its URL as answers, pages and messages show it: query-string credentials masked."""
        return masked_url(self.spec.url)

    @cached_property
    def origin(self) -> Origin | None:
        """Where its calls go, read once (the forward route needs it on every request); None when the URL
        template decides the host."""
        return fixed_origin(self.spec.url)

    @cached_property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy.of(self.spec)

    @cached_property
    def subject(self) -> CallSubject:
        s = self.spec
        return CallSubject(self.id, s.name, s.auth_type.value, s.type.value, self.mapping.source)

    @cached_property
    def target(self) -> ForwardTarget:
        """Where and how its calls go, apart from what its templates render."""
        s = self.spec
        return ForwardTarget(
            self.id,
            self.subject,
            self.credentials,
            s.headers or {},
            s.timeout,
            self.retry_policy,
            s.rate_limit,
            s.faults,
            s.traceparent,
            whole_credentials(s.url),
            stream_text_path=self.events_text_path,
        )

    def url_uses_session_id(self) -> bool:
        return "session_id" in self.url_template.names


def compile_connection(
    conn_id: str, spec: ConnectionSpec, created_at: str, allow_http: bool, strict: bool = True
) -> CompiledConnection:
    """Validate every rule and compile; raises InvalidField naming the first bad field. `strict=False`
    loads a stored template that is over the compile-time template bounds (see CompiledTemplate), or a header
    naming a credential its auth type cannot fill (both saved before the rule)."""
    check_connection(spec, allow_http)
    unfilled = unfillable_placeholder(spec.auth_type, spec.headers or {}) if strict else None
    if unfilled is not None:
        raise InvalidField(f"headers.{unfilled[0]}", unfilled[2])
    try:
        body = CompiledTemplate(spec.input_template, strict=strict) if spec.input_template else None
    except TemplateRefused as exc:
        raise InvalidField("inputTemplate", str(exc)) from None
    try:
        url = CompiledTemplate(spec.url, url=True, strict=strict)
    except TemplateRefused as exc:
        raise InvalidField("url", str(exc)) from None
    mapping_source = spec.output_mapping or {}
    paths = {}
    for key, expression in mapping_source.items():
        try:
            paths[key] = compile_jsonpath(expression)
        except JsonPathRefused as exc:
            raise InvalidField(f"outputMapping.{key}", str(exc)) from None
    rules = []
    for index, rule in enumerate(spec.conversation_end_rules):
        path = None
        if rule.body_match:
            try:
                path = compile_jsonpath(rule.body_match.path)
            except JsonPathRefused as exc:
                raise InvalidField(f"conversationEndRules[{index}].bodyMatch.path", str(exc)) from None
        rules.append(CompiledEndRule(rule.status_code, path, rule.body_match.equals if rule.body_match else None))
    try:
        text_path = compile_jsonpath(spec.stream_text_path)
    except JsonPathRefused as exc:
        # Only `response_mode: sse` read it before the forward route did: a path stored in another mode loads.
        if strict or spec.response_mode is ResponseMode.SSE:
            raise InvalidField("streamTextPath", str(exc)) from None
        text_path = None
    mapping = CompiledMapping(mapping_source, paths)
    sse_path = text_path if spec.response_mode is ResponseMode.SSE else None
    return CompiledConnection(conn_id, spec, created_at, body, url, mapping, rules, sse_path, text_path)


def secret_fields(spec: ConnectionSpec) -> list[tuple[str, str]]:
    """Every credential a connection holds, with the API field it is given in (`url?key` for a credential in
    the URL's query string)."""
    found = [(name, value) for name, value in (("authToken", spec.auth_token), ("password", spec.password)) if value]
    for name, value in (spec.headers or {}).items():
        found += [(f"headers.{name}", part) for part in secret_header_parts(name, value)]
    return found + [(secret.field, secret.value) for secret in query_secrets(spec.url)]


def connection_secrets(spec: ConnectionSpec) -> list[str]:
    """What a redactor must know for this connection: its credentials, the Basic value made of them, and a
    percent-encoded URL credential as it reads decoded."""
    credentials = Credentials(spec.auth_type, spec.auth_token, spec.username, spec.password)
    return [value for _, value in secret_fields(spec)] + secret_values(spec.url) + credentials.secret_values()


def refuse_short_secrets(spec: ConnectionSpec, given: Callable[[str], bool] = lambda field: True) -> None:
    """A secret too short to be masked reliably in free text is refused (of the fields `given` names)."""
    for name, value in secret_fields(spec):
        if given(name):
            check_secret_length(name, value)


def check_secret_length(field: str, value: str) -> None:
    """A secret is masked wherever it is echoed only if it is long enough not to occur by chance."""
    if len(value) >= MIN_SECRET_LEN:
        return
    reason = (
        f"is {len(value)} characters long; a secret needs at least {MIN_SECRET_LEN} so that every echo of it can be "
        "masked"
    )
    if field.startswith(FIELD_PREFIX):  # a credential in the URL's query string: the field is `url`
        param = field.removeprefix(FIELD_PREFIX)
        raise InvalidField(
            "url",
            f"query parameter {param} {reason} (a value that is no secret can be written as a template, "
            f"{param}={{{{ 'the value' }}}}, and is then not masked)",
        )
    raise InvalidField(field, reason)


def public_fields(conn: CompiledConnection) -> dict[str, Any]:
    """The connection as the Galtea API reads it back: camelCase, secrets withheld, secret headers masked."""
    data = conn.spec.model_dump(by_alias=True, mode="json")
    data["authToken"] = None
    data["password"] = None
    data["headers"] = masked_headers(conn.spec.headers) if conn.spec.headers is not None else None
    data["url"] = conn.shown_url
    data.update(
        id=conn.id,
        hasAuthToken=bool(conn.spec.auth_token),
        hasPassword=bool(conn.spec.password),
        createdAt=conn.created_at,
        deletedAt=None,
    )
    return data
