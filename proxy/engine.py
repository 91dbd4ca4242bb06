"""One upstream call: render → auth → rate limit → retry loop → transport → output mapping.

The engine knows nothing of Starlette or of record/replay: it sends `httpx.Request`s through one
injected httpx transport. It calls the transport itself rather than through an `httpx.AsyncClient`:
a client keeps one cookie jar for every call, and one session's cookies must never reach another
session's upstream (nor a cassette); the client's redirect and auth layers were unused besides.
A failed call is a result, not an exception, because a failed turn is data the user wants to inspect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar

import httpx

from proxy import jsonbounds
from proxy.auth import build_headers, masked_headers, new_trace_id
from proxy.connection import CompiledConnection
from proxy.mapping import (
    OUTPUT,
    RETRIEVAL_CONTEXT,
    SESSION_ID,
    TRACES,
    first_scalar_text,
    normalise_traces,
    output_text,
)
from proxy.models import ConnectionType, HttpMethod
from proxy.redaction import Redactor
from proxy.settings import ERROR_BODY_PREVIEW_CHARS, MAX_UPSTREAM_BODY_BYTES, OFF_LOOP_REPLY_BYTES
from proxy.streaming import Event, Relay, events_of, read_timed, sse_reply, stream_json
from proxy.templating import TemplateRefused, as_template_input
from proxy.transports import (
    ATTEMPT_TIMEOUT_EXTENSION,
    CASSETTE_EXTENSION,
    OUTCOME_EXTENSION,
    PER_RUN_EXTENSION,
    RECORDED_LATENCY_EXTENSION,
    REPLAYED_EXTENSION,
    AttemptTimeout,
    BodyCut,
    BodyTooLarge,
    CassetteMiss,
    read_capped,
)
from proxy.transports.client import AiohttpTransport
from proxy.transports.faults import FAULTS_EXTENSION
from proxy.transports.live import RATE_LIMIT_EXTENSION
from proxy.transports.streams import StreamTiming, is_event_stream, is_streamed

# The cassette a call goes with, as the record/replay transport handed it out: passed down unread.
CassetteRef = object

# The headers httpx.AsyncClient would add, kept so upstreams and cassettes see what they always saw.
CLIENT_HEADERS = {
    "Accept": "*/*",
    "Accept-Encoding": "gzip, deflate",
    "Connection": "keep-alive",
    "User-Agent": f"python-httpx/{httpx.__version__}",
}
E = TypeVar("E", bound=BaseException)
REQUIRED_KEYS = {ConnectionType.CONVERSATION: (OUTPUT,), ConnectionType.INITIALIZATION: (SESSION_ID,)}

log = logging.getLogger("proxy")


@dataclass(frozen=True)
class CallLabel:
    """What kind of call this is, for whoever watches calls (the flow log): `turn`, `initialization`,
    `finalization`, `testConnection`, `forward`, `connector search`, … and the session it belongs to."""

    kind: str
    session_id: str | None = None


# Told of every finished call (label, connection, result); installed by the server, never raises into a call.
CallObserver = Callable[[CallLabel, "CompiledConnection", "CallResult"], None]


@dataclass
class CallContext:
    """Everything a template, URL or header may refer to, plus where the call is recorded."""

    input: Any = None
    context: dict[str, Any] = field(default_factory=dict)
    session_id: str | None = None  # external, from INITIALIZATION
    galtea_session_id: str | None = None
    test_case_id: str | None = None
    test_id: str | None = None
    inference_result_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    metadata: dict[str, Any] = field(default_factory=dict)
    past_turns: list[dict[str, Any]] = field(default_factory=list)
    trace_id: str = field(default_factory=new_trace_id)  # W3C trace id, one per session
    cassette: CassetteRef | None = None
    label: CallLabel | None = None

    def per_run_values(self) -> dict[str, str | None]:
        """Ids that differ on every run: they never take part in cassette matching."""
        return {"galtea_session_id": self.galtea_session_id, "inference_result_id": self.inference_result_id}

    def template_vars(self) -> dict[str, Any]:
        return {
            **self.metadata,
            "input": as_template_input(self.input),
            "context": self.context,
            "session_id": self.session_id,
            "galtea_session_id": self.galtea_session_id,
            "test_case_id": self.test_case_id,
            "test_id": self.test_id,
            "inference_result_id": self.inference_result_id,
            "dataset_id": self.inference_result_id,
            "trace_id": self.inference_result_id,
            "past_turns": [{**turn, "input": as_template_input(turn.get("input"))} for turn in self.past_turns],
        }


@dataclass
class Attempt:
    number: int
    status: int | None
    latency_ms: float
    error: str | None = None
    waited_ms: float = 0.0  # backoff or rate-limit wait before this attempt
    outcome: str | None = None
    cut: CutReply | None = None  # the answer whose body broke off, as far as it came
    first_byte_ms: float | None = None  # until the response headers arrived
    nearest: dict[str, Any] | None = None  # on a cassette miss: the nearest recording and where it differs
    replayed: bool = False  # the transport played the answer back (REPLAYED_EXTENSION)

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.number,
            "status": self.status,
            "latencyMs": round(self.latency_ms, 3),
            "waitedMs": round(self.waited_ms, 3),
            "error": self.error,
            "cassette": self.outcome,
        }


@dataclass
class UpstreamReply:
    status: int
    reason: str
    headers: dict[str, str]
    text: str
    json: Any = None
    is_json: bool = False
    json_refused: str | None = None  # JSON over a bound (nesting, number length): why it was not parsed
    timing: StreamTiming | None = None  # a streamed reply's chunk timing
    events: list[Event] | None = None  # a server-sent event stream's events
    relay: Relay | None = None  # the forward route: a stream still on its way, relayed to the client
    size: int = 0  # body bytes as received

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "headers": self.headers,
            "body": self.json if self.is_json else self.text,
        }

    def stream_json(self) -> dict[str, Any] | None:
        if self.relay is not None:
            return self.relay.stream_json()
        if self.timing is None:
            return None
        return stream_json(self.timing, self.events or [])


@dataclass
class CutReply:
    reply: UpstreamReply  # the text as far as it came
    expected_bytes: int


@dataclass
class RenderedRequest:
    method: str
    url: str
    headers: dict[str, str]  # masked
    body: str | None

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "url": self.url, "headers": self.headers, "body": self.body}


@dataclass
class CallResult:
    request: RenderedRequest | None = None
    attempts: list[Attempt] = field(default_factory=list)
    reply: UpstreamReply | None = None
    extracted: dict[str, Any] = field(default_factory=dict)
    misses: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    extraction_error: str | None = None
    ended_by_rule: int | None = None  # index of the conversation end rule that matched
    time_to_first_token_ms: float | None = None  # response_mode sse: when the first piece of text arrived

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency_ms(self) -> float:
        return self.attempts[-1].latency_ms if self.attempts else 0.0

    @property
    def outcome(self) -> str | None:
        return self.attempts[-1].outcome if self.attempts else None

    @property
    def output(self) -> str | None:
        value = self.extracted.get(OUTPUT)
        return None if value is None else output_text(value)

    def to_json(self) -> dict[str, Any]:
        return {
            "request": self.request.to_json() if self.request else None,
            "attempts": [a.to_json() for a in self.attempts],
            "response": self.reply.to_json() if self.reply else None,
            "extracted": self.extracted,
            "extractionErrors": self.misses,
            "error": self.error,
            "endedByRule": self.ended_by_rule,
            "cassette": self.outcome,
            "stream": self.reply.stream_json() if self.reply else None,
        }


def http_error_text(reply: UpstreamReply) -> str:
    try:
        reason = HTTPStatus(reply.status).phrase
    except ValueError:
        reason = reply.reason or "Unknown Status"
    body = reply.text[:ERROR_BODY_PREVIEW_CHARS]
    return f"External API responded with HTTP {reply.status}: {reason} — {body}"


def _wants_json(headers: dict[str, str]) -> bool:
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    return content_type is None or "json" in content_type.lower()


class Engine:
    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        send_traceparent: bool = True,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_body_bytes: int = MAX_UPSTREAM_BODY_BYTES,
        redactor: Redactor | None = None,
    ) -> None:
        self.transport = transport if transport is not None else AiohttpTransport()
        self.redactor = redactor if redactor is not None else Redactor()  # without one, nothing is secret
        self.send_traceparent = send_traceparent
        self.sleep = sleep
        self.max_body_bytes = max_body_bytes
        self.observer: CallObserver | None = None

    def _observe(self, label: CallLabel, conn: CompiledConnection, result: CallResult) -> None:
        if self.observer is None:
            return
        try:
            self.observer(label, conn, result)
        except Exception as exc:  # watching a call must never fail it
            log.error("a call observer failed: %s", self.redactor.redact(f"{type(exc).__name__}: {exc}"))

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def call(self, conn: CompiledConnection, ctx: CallContext) -> CallResult:
        """Render the connection's request for this context, send it with retries, map the reply."""
        result = CallResult()
        try:
            await self._call(conn, ctx, result)
        except Exception as exc:  # a session must never be left half-done by an exception: fail the call
            _internal_failure(result, exc, self.redactor)
        self._observe(ctx.label or CallLabel(conn.spec.type.value.lower()), conn, result)
        return result

    async def _call(self, conn: CompiledConnection, ctx: CallContext, result: CallResult) -> None:
        try:
            request = self._build_request(conn, ctx, result)
        except TemplateRefused as exc:
            result.error = self.redactor.redact(str(exc))
            return
        if request is None:
            return
        await self._send(conn, request, result)
        if result.ok and result.ended_by_rule is None:
            reply = result.reply
            await _off_loop_if_large(len(reply.text) if reply else 0, self._map, conn, result)

    def render(self, conn: CompiledConnection, ctx: CallContext) -> CallResult:
        """The request a call would send, without sending it (`proxy check --dry-run`)."""
        result = CallResult()
        try:
            self._build_request(conn, ctx, result)
        except TemplateRefused as exc:
            result.error = self.redactor.redact(str(exc))
        return result

    async def forward(
        self,
        conn: CompiledConnection,
        method: str,
        url: str,
        client_headers: dict[str, str],
        body: bytes,
        handle: CassetteRef | None,
        label: CallLabel | None = None,
    ) -> CallResult:
        """The raw reverse proxy: the client's request as it is, plus the connection's auth and custom
        headers, retries, rate limit and record/replay. No templating, no output mapping."""
        result = await self._forward(conn, method, url, client_headers, body, handle)
        self._observe(label or CallLabel("forward"), conn, result)
        return result

    async def _forward(
        self,
        conn: CompiledConnection,
        method: str,
        url: str,
        client_headers: dict[str, str],
        body: bytes,
        handle: CassetteRef | None,
    ) -> CallResult:
        result = CallResult()
        inference_id = uuid.uuid4().hex
        headers = {**client_headers}
        added = build_headers(
            conn.credentials,
            conn.spec.headers or {},
            session_id=None,
            inference_id=inference_id,
            trace_id=new_trace_id(),
            send_traceparent=self.send_traceparent and conn.spec.traceparent,
        )
        if any(k.lower() in ("authorization", "x-api-key") for k in added):
            headers = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "x-api-key")}
        headers.update(added)
        result.request = RenderedRequest(
            method, self.redactor.redact(url), masked_headers(headers), _text_preview(body, self.redactor)
        )
        try:
            request = build_request(method, url, headers, body, conn.spec.timeout, self._extensions(conn, handle))
        except (httpx.InvalidURL, ValueError) as exc:
            result.error = self.redactor.redact(f"the forwarded URL is not usable ({exc}): {url}")
            return result
        try:
            await self._send(conn, request, result, end_rules=False, relay=True)
        except Exception as exc:
            _internal_failure(result, exc, self.redactor)
        return result

    @staticmethod
    def _extensions(
        conn: CompiledConnection, handle: CassetteRef | None, per_run: dict[str, str | None] | None = None
    ) -> dict[str, Any]:
        limit = (conn.id, conn.spec.rate_limit) if conn.spec.rate_limit else None
        return {
            CASSETTE_EXTENSION: handle,
            RATE_LIMIT_EXTENSION: limit,
            PER_RUN_EXTENSION: per_run or {},
            FAULTS_EXTENSION: (conn.id, conn.spec.faults),
        }

    async def _send(
        self,
        conn: CompiledConnection,
        request: httpx.Request,
        result: CallResult,
        end_rules: bool = True,
        relay: bool = False,
    ) -> None:
        """The retry loop: retryable statuses, timeouts and connection errors, backoff or Retry-After.
        With `relay`, a streamed reply that will not be retried is handed on as it arrives (`reply.relay`):
        once its bytes go to a client, it is never retried."""
        policy = conn.retry_policy
        backoff_ms = 0.0
        relayed = policy.retryable_statuses if relay else None
        for number in range(1, policy.max_calls + 1):
            attempt, reply, retryable = await self._attempt(number, request, conn.spec.timeout, relayed)
            attempt.waited_ms += backoff_ms
            result.attempts.append(attempt)
            if reply is not None:
                result.reply = reply
                rule = None
                if end_rules and conn.end_rules:
                    rule = await _off_loop_if_large(len(reply.text), self._matching_end_rule, conn, reply)
                if rule is not None:
                    result.ended_by_rule = rule
                    result.error = None
                    return
                retryable = reply.status in policy.retryable_statuses
                # The forward route passes any final answer through; only a turn treats non-2xx as failure.
                if 200 <= reply.status < 300 or (not end_rules and not retryable):
                    result.error = None
                    return
                result.error = self.redactor.redact(http_error_text(reply))
            else:
                result.error = attempt.error
            if not retryable or number == policy.max_calls:
                return
            retry_after = reply.headers.get("retry-after") if reply else None
            backoff_ms = policy.delay_ms(number, reply.status if reply else None, retry_after)
            # A replayed attempt is followed by a replayed one: the recording has no wait to repeat.
            if not attempt.replayed:
                await self.sleep(backoff_ms / 1000)

    def _build_request(self, conn: CompiledConnection, ctx: CallContext, result: CallResult) -> httpx.Request | None:
        """The request to send, or None with `result.error` saying why it cannot be sent."""
        spec = conn.spec
        variables = ctx.template_vars()
        url = conn.url_template.render(variables)
        body: str | None = None
        if conn.body_template is not None and spec.http_method is not HttpMethod.GET:
            body = conn.body_template.render(variables)
        headers = build_headers(
            conn.credentials,
            spec.headers or {},
            session_id=ctx.session_id,
            inference_id=ctx.inference_result_id,
            trace_id=ctx.trace_id,
            send_traceparent=self.send_traceparent and spec.traceparent,
        )
        if body is not None and _wants_json(headers):
            try:
                jsonbounds.loads(body)
            except jsonbounds.JsonRefused as exc:
                result.error = self.redactor.redact(f"the rendered body is refused: {exc}")
            except json.JSONDecodeError as exc:
                result.error = self.redactor.redact(
                    f"the rendered body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): {body}"
                )
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
        redact = self.redactor.redact
        result.request = RenderedRequest(
            spec.http_method.value, redact(url), masked_headers(headers), redact(body or "") or None
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
                self._extensions(conn, ctx.cassette, ctx.per_run_values()),
            )
        except (httpx.InvalidURL, ValueError) as exc:
            result.error = self.redactor.redact(f"the rendered URL is not usable ({exc}): {url}")
            return None

    async def _attempt(
        self, number: int, request: httpx.Request, timeout_s: float, relay_unless: Any = None
    ) -> tuple[Attempt, UpstreamReply | None, bool]:
        """One call; returns the attempt, the reply (if any) and whether a failure without reply may retry.
        With `relay_unless` (statuses to read whole), a streamed reply is returned unread, to be relayed."""
        started = time.perf_counter()
        timing: StreamTiming | None = StreamTiming()
        # The timeout covers the whole attempt, body included: a trickling body must not hang a turn. It starts
        # when the request is sent: a transport's wait before that (the rate limit) is reported apart.
        timeout = AttemptTimeout(timeout_s)
        request.extensions[ATTEMPT_TIMEOUT_EXTENSION] = timeout
        try:
            async with timeout:
                response = await self.transport.handle_async_request(request)
                first_byte_ms = (time.perf_counter() - started) * 1000 - timeout.waited_ms
                assert timing is not None
                timing.head()
                streamed = is_streamed(response)
                if streamed and relay_unless is not None and response.status_code not in relay_unless:
                    attempt, reply = self._relayed(number, started, timeout, response, timing)
                    return attempt, reply, False
                try:
                    if streamed:
                        raw, timing = await read_timed(response, self.max_body_bytes, timing)
                    else:
                        raw, timing = await read_capped(response, self.max_body_bytes), None
                finally:
                    await response.aclose()
        except TimeoutError:
            return self._failed(number, started, timeout, f"timed out after {timeout_s:g}s"), None, True
        except CassetteMiss as exc:
            attempt = self._failed(number, started, timeout, f"cassette miss: {exc}")
            attempt.outcome = "miss"
            attempt.nearest = exc.nearest
            return attempt, None, False
        except BodyTooLarge:
            message = f"the upstream body is larger than the {self.max_body_bytes} byte cap"
            return self._failed(number, started, timeout, message), None, False
        except BodyCut as exc:
            attempt = self._failed(number, started, timeout, f"{_transport_failure(exc, request.url)} ({request.url})")
            head = httpx.Response(exc.status, headers=exc.headers)
            attempt.outcome = exc.outcome
            attempt.cut = CutReply(_reply(head, exc.received, self.redactor), exc.expected)
            return attempt, None, True
        except httpx.TransportError as exc:
            # A request refused before sending (a control character in a header) fails the same way every time.
            retryable = not isinstance(exc, httpx.LocalProtocolError)
            message = f"{_transport_failure(exc, request.url)} ({request.url})"
            return self._failed(number, started, timeout, message), None, retryable
        latency = (time.perf_counter() - started) * 1000 - timeout.waited_ms
        outcome = response.extensions.get(OUTCOME_EXTENSION, "live")
        recorded_latency = response.extensions.get(RECORDED_LATENCY_EXTENSION)
        if recorded_latency is not None:
            latency = float(recorded_latency)  # in replay, the latency the recording measured
        if timing is not None and timing.latency_ms is not None and recorded_latency is None and outcome != "live":
            latency = timing.latency_ms  # a stream recorded just now: the latency its recording keeps
        reply = await _off_loop_if_large(len(raw), _reply, response, raw, self.redactor)
        if timing is not None:
            reply.timing = timing
            if is_event_stream(reply.headers):
                reply.events = events_of(reply.text.encode(), timing)
        attempt = Attempt(number, reply.status, latency, outcome=outcome, waited_ms=timeout.waited_ms)
        attempt.replayed = bool(response.extensions.get(REPLAYED_EXTENSION))
        attempt.first_byte_ms = None if recorded_latency is not None else first_byte_ms
        return attempt, reply, False

    def _relayed(
        self, number: int, started: float, timeout: AttemptTimeout, response: httpx.Response, timing: StreamTiming
    ) -> tuple[Attempt, UpstreamReply]:
        """A streamed reply handed on unread: its head now, its body as the client reads it."""
        latency = (time.perf_counter() - started) * 1000 - timeout.waited_ms
        recorded_latency = response.extensions.get(RECORDED_LATENCY_EXTENSION)
        if recorded_latency is not None:
            latency = float(recorded_latency)
        headers = {k.lower(): self.redactor.redact(v) for k, v in response.headers.items()}
        reply = UpstreamReply(response.status_code, response.reason_phrase, headers, "")
        deadline = timeout.deadline() or asyncio.get_running_loop().time() + timeout.timeout_s
        reply.relay = Relay(response, self.redactor, self.max_body_bytes, deadline, timing)
        outcome = response.extensions.get(OUTCOME_EXTENSION, "live")
        attempt = Attempt(number, reply.status, latency, outcome=outcome, waited_ms=timeout.waited_ms)
        attempt.replayed = bool(response.extensions.get(REPLAYED_EXTENSION))
        attempt.first_byte_ms = None if recorded_latency is not None else latency
        return attempt, reply

    def _failed(self, number: int, started: float, timeout: AttemptTimeout, message: str) -> Attempt:
        latency = (time.perf_counter() - started) * 1000 - timeout.waited_ms
        return Attempt(number, None, latency, error=self.redactor.redact(message), waited_ms=timeout.waited_ms)

    def _matching_end_rule(self, conn: CompiledConnection, reply: UpstreamReply) -> int | None:
        for index, rule in enumerate(conn.end_rules):
            if rule.status_code != reply.status:
                continue
            if rule.path is None:
                return index
            if reply.is_json and first_scalar_text(rule.path, reply.json) == rule.equals:
                return index
        return None

    def _map(self, conn: CompiledConnection, result: CallResult) -> None:
        reply = result.reply
        if reply is None:
            return
        document: Any
        if conn.stream_text_path is not None:
            document = self._sse_document(conn.stream_text_path, reply, result)
            if document is None or not conn.mapping.paths:
                return
        else:
            if reply.json_refused:  # even without a mapping: a reply nobody can read back is a failed call
                result.error = f"the upstream reply is refused: {reply.json_refused}"
                return
            if not conn.mapping.paths:
                return
            if not reply.is_json:
                preview = reply.text[:ERROR_BODY_PREVIEW_CHARS]
                result.error = self.redactor.redact(
                    f"the upstream reply is not JSON, so the output mapping cannot apply: {preview}"
                )
                return
            document = reply.json
        mapped = conn.mapping.apply(document)
        result.extracted = mapped.values
        result.misses = {k: self.redactor.redact(v) for k, v in mapped.misses.items()}
        if TRACES in result.extracted:
            traces, trace_error = normalise_traces(result.extracted[TRACES])
            result.extracted[TRACES] = traces
            if trace_error:
                result.misses[TRACES] = trace_error
        if RETRIEVAL_CONTEXT in result.extracted:
            result.extracted[RETRIEVAL_CONTEXT] = output_text(result.extracted[RETRIEVAL_CONTEXT])
        if SESSION_ID in result.extracted:
            result.extracted[SESSION_ID] = output_text(result.extracted[SESSION_ID])
        required = REQUIRED_KEYS.get(conn.spec.type, ())
        failed = [key for key in required if key in result.misses]
        if result.misses:
            result.extraction_error = "; ".join(f"{k}: {v}" for k, v in result.misses.items())
        if failed:
            key = failed[0]
            result.error = f"the output mapping's required key '{key}' matched nothing: {result.misses[key]}"

    def _sse_document(self, text_path: Any, reply: UpstreamReply, result: CallResult) -> dict[str, Any] | None:
        """`response_mode: sse`: the events' text pieces joined, what the output mapping runs over."""
        if reply.events is None:
            reply.events = events_of(reply.text.encode(), reply.timing or StreamTiming())
        if not reply.events:
            preview = reply.text[:ERROR_BODY_PREVIEW_CHARS]
            result.error = self.redactor.redact(
                f"the connection reads server-sent events (responseMode sse), but the reply holds none: {preview}"
            )
            return None
        sse = sse_reply(reply.events, text_path)
        result.time_to_first_token_ms = sse.time_to_first_token_ms
        return sse.document


async def _off_loop_if_large(size: int, func: Callable[..., Any], *args: Any) -> Any:
    """Parsing and mapping a large reply (JSONPath `$..x` over megabytes takes seconds) runs in a
    worker thread so the event loop keeps serving; a small one costs less than the hand-off."""
    if size > OFF_LOOP_REPLY_BYTES:
        return await asyncio.to_thread(func, *args)
    return func(*args)


def _internal_failure(result: CallResult, exc: Exception, redactor: Redactor) -> None:
    message = redactor.redact(f"{type(exc).__name__}: {exc}")
    log.error("a call failed inside the proxy: %s", message)
    result.error = f"the call failed inside the proxy ({message}); the server log has the details"


_parsed_urls: dict[str, httpx.URL] = {}
PARSED_URLS_KEPT = 1024


def parsed_url(url: str) -> httpx.URL:
    """Most turns of a connection call the same URL: parse each once (httpx's parser is pure Python)."""
    parsed = _parsed_urls.get(url)
    if parsed is None:
        if len(_parsed_urls) >= PARSED_URLS_KEPT:
            _parsed_urls.clear()
        parsed = _parsed_urls[url] = httpx.URL(url)
    return parsed


def build_request(
    method: str, url: str, headers: dict[str, str], content: bytes | None, timeout_s: float, extensions: dict[str, Any]
) -> httpx.Request:
    present = {name.lower() for name in headers}
    merged = [(name, value) for name, value in CLIENT_HEADERS.items() if name.lower() not in present]
    merged += headers.items()
    request = httpx.Request(
        method,
        parsed_url(url),
        headers=merged,
        content=content,
        extensions={**extensions, "timeout": httpx.Timeout(timeout_s).as_dict()},
    )
    if request.url.scheme not in ("http", "https") or not request.url.host:
        raise ValueError("only http:// and https:// URLs with a host can be called")
    return request


def _transport_failure(exc: httpx.TransportError, url: httpx.URL) -> str:
    """A transport error in plain words; httpx's own text is often empty."""
    detail = str(exc) or "no detail"
    unresolved = _cause(exc, socket.gaierror)
    if unresolved is not None:
        return f"could not resolve host {url.host} ({unresolved.strerror or unresolved})"
    if isinstance(exc, httpx.ConnectError):
        return f"connection refused: {detail}"
    if isinstance(exc, httpx.ReadError | httpx.RemoteProtocolError):
        return f"the upstream closed the connection mid-reply ({type(exc).__name__}: {detail})"
    if isinstance(exc, httpx.WriteError):
        return f"the connection broke while sending the request ({detail})"
    return f"{type(exc).__name__}: {detail}"


def _cause(exc: BaseException, kind: type[E]) -> E | None:
    """The first exception of `kind` in the chain that led to `exc`: each live client wraps the resolver's
    error in its own."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _text_preview(body: bytes, redactor: Redactor) -> str | None:
    if not body:
        return None
    return _masked_text(body, "utf-8", redactor)


def _masked_text(raw: bytes, encoding: str, redactor: Redactor) -> str:
    """`raw` decoded and masked. Bytes that do not decode (UTF-16 ones, say) are masked first, before
    replacement characters could hide what they held."""
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError:
        text = redactor.redact_bytes(raw).decode(encoding, errors="replace")
    return redactor.redact(text)


def _reply(response: httpx.Response, raw: bytes, redactor: Redactor) -> UpstreamReply:
    # An upstream that echoes a credential back, in whatever encoding, must not leak it into results, logs
    # or cassettes; the JSON is parsed from the masked text, so an escaped echo is masked before it is decoded.
    # Working out the charset parses the Content-Type each time: only when one is named.
    charset_named = "charset" in response.headers.get("content-type", "").lower()
    encoding = (response.encoding or "utf-8") if charset_named else "utf-8"
    text = _masked_text(raw, encoding, redactor)
    headers = {k.lower(): redactor.redact(v) for k, v in response.headers.items()}
    reply = UpstreamReply(response.status_code, response.reason_phrase, headers, text, size=len(raw))
    try:
        reply.json = jsonbounds.loads(text) if text.strip() else None
        reply.is_json = bool(text.strip())
    except jsonbounds.JsonRefused as exc:
        reply.json_refused = str(exc)
    except ValueError:
        pass
    return reply
