"""A call's request: a connection's templates rendered for a context, its headers, the `httpx.Request`.

What does not change between calls is worked out once per connection (a URL without placeholders, the fixed
headers); the rendered JSON body is parsed once, here, and handed to the transports with the request."""

from __future__ import annotations

import functools
import json
from typing import Any

import httpx

from proxy.connections.compiled import CompiledConnection
from proxy.connections.headers import masked_headers
from proxy.connections.spec import HttpMethod
from proxy.engine.replies import masked_text
from proxy.engine.results import CallContext, CallResult, RenderedRequest
from proxy.engine.transports import PARSED_BODY_EXTENSION
from proxy.security import jsonbounds
from proxy.security.head_masking import with_masked_names
from proxy.security.redaction import Redactor
from proxy.templating.environment import undefined_rendered

# The headers httpx.AsyncClient would add, kept so upstreams and cassettes see what they always saw.
CLIENT_HEADERS = {
    "Accept": "*/*",
    "Accept-Encoding": "gzip, deflate",
    "Connection": "keep-alive",
    "User-Agent": f"python-httpx/{httpx.__version__}",
}
_CLIENT_NAMES = frozenset(name.lower() for name in CLIENT_HEADERS)


def render_request(
    conn: CompiledConnection,
    ctx: CallContext,
    result: CallResult,
    redactor: Redactor,
    send_traceparent: bool,
    extensions: dict[str, Any],
) -> httpx.Request | None:
    """The request to send, or None with `result.error` saying why it cannot be sent; `result.request` is
    the request as it may be shown (masked)."""
    if not ctx.warn_undefined:
        url, body = _rendered(conn, ctx, None)
    else:
        variables = ctx.template_vars()
        with undefined_rendered(variables) as warnings:
            url, body = _rendered(conn, ctx, variables)
        result.warnings = [redactor.redact(warning) for warning in warnings]
    spec = conn.spec
    plan = conn.target.header_plan(send_traceparent and spec.traceparent)
    headers = plan.build(session_id=ctx.session_id, inference_id=ctx.inference_result_id, w3c_trace_id=ctx.w3c_trace_id)
    if body is not None and wants_json(headers):
        try:
            extensions[PARSED_BODY_EXTENSION] = jsonbounds.loads(body)
        except jsonbounds.JsonRefused as exc:
            result.error = redactor.redact(f"the rendered body is refused: {exc}")
        except json.JSONDecodeError as exc:
            result.error = redactor.redact(
                f"the rendered body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): {body}"
            )
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
    redact = redactor.redact
    result.request = RenderedRequest(
        spec.http_method.value,
        redact(url),
        with_masked_names(masked_headers(headers), redactor),
        redact(body or "") or None,
    )
    if result.error:
        return None
    try:
        return build_request(
            spec.http_method.value,
            url,
            headers,
            body.encode() if body is not None else None,
            spec.timeout,
            extensions,
        )
    except (httpx.InvalidURL, ValueError) as exc:
        result.error = redactor.redact(f"the rendered URL is not usable ({exc}): {url}")
        return None


def _rendered(conn: CompiledConnection, ctx: CallContext, variables: dict[str, Any] | None) -> tuple[str, str | None]:
    """The URL and body (None for a GET or no template), each template rendered only if it has placeholders."""
    url = conn.url_template.constant
    if url is None:
        variables = variables if variables is not None else ctx.template_vars()
        url = conn.url_template.render(variables)
    body: str | None = None
    if conn.body_template is not None and conn.spec.http_method is not HttpMethod.GET:
        body = conn.body_template.constant
        if body is None:
            body = conn.body_template.render(variables if variables is not None else ctx.template_vars())
    return url, body


def wants_json(headers: dict[str, str]) -> bool:
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    return content_type is None or "json" in content_type.lower()


def text_preview(body: bytes, redactor: Redactor) -> str | None:
    if not body:
        return None
    return masked_text(body, "utf-8", redactor)


@functools.lru_cache(maxsize=1024)
def parsed_url(url: str) -> httpx.URL:
    """Most turns of a connection call the same URL: parse each once (httpx's parser is pure Python)."""
    return httpx.URL(url)


@functools.lru_cache(maxsize=64)
def _timeout(timeout_s: float) -> dict[str, float | None]:
    return httpx.Timeout(timeout_s).as_dict()


def build_request(
    method: str, url: str, headers: dict[str, str], content: bytes | None, timeout_s: float, extensions: dict[str, Any]
) -> httpx.Request:
    present = {name.lower() for name in headers} & _CLIENT_NAMES
    merged = [(name, value) for name, value in CLIENT_HEADERS.items() if name.lower() not in present]
    merged += headers.items()
    extensions["timeout"] = _timeout(timeout_s)
    request = httpx.Request(method, parsed_url(url), headers=merged, content=content, extensions=extensions)
    if request.url.scheme not in ("http", "https") or not request.url.host:
        raise ValueError("only http:// and https:// URLs with a host can be called")
    return request
