"""One upstream call: render → auth → rate limit → retry loop → transport → output mapping.

The engine knows nothing of Starlette or of record/replay: it sends `httpx.Request`s through one
injected httpx transport. It calls the transport itself rather than through an `httpx.AsyncClient`:
a client keeps one cookie jar for every call, and one session's cookies must never reach another
session's upstream (nor a cassette); the client's redirect and auth layers were unused besides.
A failed call is a result, not an exception, because a failed turn is data the user wants to inspect.

Its parts: the result types (`proxy.engine.results`), the request (`proxy.engine.request`), the reply
(`proxy.engine.replies`), the reply read through the connection (`proxy.engine.reply_mapping`); here, the retry loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from proxy.config.settings import DEFAULT_FLOW_BODY_MAX_BYTES, MAX_UPSTREAM_BODY_BYTES
from proxy.connections.compiled import CompiledConnection
from proxy.connections.headers import AUTH_OVERRIDE_HEADERS, masked_headers, new_w3c_trace_id
from proxy.connections.jsonpath_budget import JsonPathStopped
from proxy.connections.targets import CallSubject, ForwardTarget
from proxy.engine.replies import decode_reply, off_loop_if_large, read_reply, transport_failure
from proxy.engine.reply_mapping import map_reply, matching_end_rule
from proxy.engine.request import build_request, render_request, text_preview
from proxy.engine.results import (
    Attempt,
    CallContext,
    CallLabel,
    CallResult,
    CassetteRef,
    CutReply,
    RenderedRequest,
    UpstreamReply,
    http_error_text,
    new_call_id,
)
from proxy.engine.stream_tap import StreamTap
from proxy.engine.streaming import Relay, events_of, read_timed
from proxy.engine.transports import (
    ATTEMPT_TIMEOUT_EXTENSION,
    CASSETTE_EXTENSION,
    FAULTS_EXTENSION,
    OUTCOME_EXTENSION,
    PER_RUN_EXTENSION,
    RATE_LIMIT_EXTENSION,
    RECORDED_LATENCY_EXTENSION,
    REPLAY_PACE_EXTENSION,
    REPLAYED_EXTENSION,
    AttemptTimeout,
    BodyCut,
    BodyTooLarge,
    CassetteMiss,
    CassetteRefused,
    CredentialUnset,
    read_capped,
)
from proxy.engine.transports.client import AiohttpTransport
from proxy.engine.transports.streams import StreamTiming, is_event_stream, is_streamed
from proxy.security.head_masking import masked_head, with_masked_names
from proxy.security.redaction import Redactor
from proxy.templating.environment import TemplateRefused

# Told of every finished call (label, what it was for, result); installed by the server, never raises into a call.
CallObserver = Callable[[CallLabel, CallSubject, CallResult], None]

log = logging.getLogger("proxy")


class Engine:
    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        send_traceparent: bool = True,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_body_bytes: int = MAX_UPSTREAM_BODY_BYTES,
        redactor: Redactor | None = None,
        flow_body_max_bytes: int = DEFAULT_FLOW_BODY_MAX_BYTES,
    ) -> None:
        self.transport = transport if transport is not None else AiohttpTransport()
        self.redactor = redactor if redactor is not None else Redactor()  # without one, nothing is secret
        self.send_traceparent = send_traceparent
        self.sleep = sleep
        self.max_body_bytes = max_body_bytes
        self.flow_body_max_bytes = flow_body_max_bytes  # of a relayed stream, what its flow keeps
        self.observer: CallObserver | None = None

    def _observe(self, label: CallLabel, subject: CallSubject, result: CallResult) -> None:
        if self.observer is None:
            return
        try:
            self.observer(label, subject, result)
        except Exception as exc:  # watching a call must never fail it
            log.error("a call observer failed: %s", self.redactor.redact(f"{type(exc).__name__}: {exc}"), exc_info=exc)

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def call(self, conn: CompiledConnection, ctx: CallContext) -> CallResult:
        """Render the connection's request for this context, send it with retries, map the reply."""
        result = CallResult()
        try:
            await self._call(conn, ctx, result)
        except Exception as exc:  # a session must never be left half-done by an exception: fail the call
            _internal_failure(result, exc, self.redactor)
        self._observe(ctx.label or CallLabel(conn.spec.type.value.lower()), conn.subject, result)
        return result

    async def _call(self, conn: CompiledConnection, ctx: CallContext, result: CallResult) -> None:
        try:
            request = self._build_request(conn, ctx, result)
        except TemplateRefused as exc:
            result.error = self.redactor.redact(str(exc))
            return
        if request is None:
            return
        await self._send(conn.target, request, result, conn)
        if result.ok and result.ended_by_rule is None:
            reply = result.reply
            await read_reply(len(reply.text) if reply else 0, map_reply, conn, result, self.redactor)

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
        target: ForwardTarget,
        method: str,
        url: str,
        client_headers: dict[str, str],
        body: bytes,
        handle: CassetteRef | None,
        label: CallLabel | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> CallResult:
        """The raw reverse proxy: the client's request as it is, plus the connection's auth and custom
        headers, retries, rate limit and record/replay. No templating, no output mapping. `extensions`: more
        for the transport (the body an MCP message is matched by)."""
        result = CallResult()
        headers = {**client_headers}
        plan = target.header_plan(self.send_traceparent and target.traceparent)
        added = (
            plan.build(session_id=None, inference_id=new_call_id(), w3c_trace_id=new_w3c_trace_id())
            if target.adds
            else {}
        )
        if any(k.lower() in AUTH_OVERRIDE_HEADERS for k in added):
            headers = {k: v for k, v in headers.items() if k.lower() not in AUTH_OVERRIDE_HEADERS}
        headers.update(added)
        result.injected_headers = list(added)
        try:
            more = {**self._extensions(target, handle), **(extensions or {})}
            request = build_request(method, url, headers, body, target.timeout_s, more)
        except (httpx.InvalidURL, ValueError) as exc:
            result.error = self.redactor.redact(f"the forwarded URL is not usable ({exc}): {url}")
        else:
            try:
                await self._send(target, request, result, relay=True)
            except Exception as exc:
                _internal_failure(result, exc, self.redactor)
            if result.reply is not None and result.reply.relay is not None:
                result.reply.relay.tap.text_path = target.stream_text_path
        # Masked for the exchange once the request is on its way: requests that arrive together leave sooner.
        result.request = RenderedRequest(
            method,
            self.redactor.redact(url),
            with_masked_names(masked_headers(headers), self.redactor),
            text_preview(body, self.redactor),
        )
        self._observe(label or CallLabel("forward"), target.subject, result)
        return result

    @staticmethod
    def _extensions(
        target: ForwardTarget, handle: CassetteRef | None, per_run: dict[str, str | None] | None = None
    ) -> dict[str, Any]:
        limit = (target.id, target.rate_limit) if target.rate_limit else None
        return {
            CASSETTE_EXTENSION: handle,
            RATE_LIMIT_EXTENSION: limit,
            PER_RUN_EXTENSION: per_run or {},
            FAULTS_EXTENSION: (target.id, target.faults),
        }

    async def _send(
        self,
        target: ForwardTarget,
        request: httpx.Request,
        result: CallResult,
        conn: CompiledConnection | None = None,
        relay: bool = False,
    ) -> None:
        """The retry loop: retryable statuses, timeouts and connection errors, backoff or Retry-After.
        A turn (`conn` given) reads its reply through the connection's end rules and fails on non-2xx; the raw
        forward route passes any final answer through. With `relay`, a streamed reply that will not be retried
        is handed on as it arrives (`reply.relay`): once its bytes go to a client, it is never retried."""
        policy = target.retry_policy
        end_rules = conn is not None
        backoff_ms = 0.0
        relayed = policy.retryable_statuses if relay else None
        for number in range(1, policy.max_calls + 1):
            attempt, reply, retryable = await self._attempt(number, request, target.timeout_s, relayed)
            attempt.waited_ms += backoff_ms
            result.attempts.append(attempt)
            if reply is not None:
                result.reply = reply
                rule = None
                if conn is not None and conn.end_rules:
                    try:
                        rule = await read_reply(len(reply.text), matching_end_rule, conn, reply)
                    except JsonPathStopped as exc:  # an end rule too costly to read fails the call
                        result.error = self.redactor.redact(str(exc))
                        return
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
        extensions = self._extensions(conn.target, ctx.cassette, ctx.per_run_values())
        return render_request(conn, ctx, result, self.redactor, self.send_traceparent, extensions)

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
        except CassetteRefused as exc:
            attempt = self._failed(number, started, timeout, f"cassette error: {exc}")
            attempt.outcome = "error"
            return attempt, None, False
        except CassetteMiss as exc:
            attempt = self._failed(number, started, timeout, f"cassette miss: {exc}")
            attempt.outcome = "miss"
            attempt.nearest = exc.nearest
            return attempt, None, False
        except CredentialUnset as exc:  # a replay-only config about to go live: the user's to fix, never retried
            return self._failed(number, started, timeout, str(exc)), None, False
        except BodyTooLarge:
            message = f"the upstream body is larger than the {self.max_body_bytes} byte cap"
            return self._failed(number, started, timeout, message), None, False
        except BodyCut as exc:
            attempt = self._failed(number, started, timeout, f"{transport_failure(exc, request.url)} ({request.url})")
            head = httpx.Response(exc.status, headers=exc.headers)
            attempt.outcome = exc.outcome
            attempt.cut = CutReply(decode_reply(head, exc.received, self.redactor), exc.expected)
            return attempt, None, True
        except httpx.TransportError as exc:
            # A request refused before sending (a control character in a header) fails the same way every time.
            retryable = not isinstance(exc, httpx.LocalProtocolError)
            message = f"{transport_failure(exc, request.url)} ({request.url})"
            return self._failed(number, started, timeout, message), None, retryable
        latency = (time.perf_counter() - started) * 1000 - timeout.waited_ms
        outcome = response.extensions.get(OUTCOME_EXTENSION, "live")
        recorded_latency = response.extensions.get(RECORDED_LATENCY_EXTENSION)
        if recorded_latency is not None:
            latency = float(recorded_latency)  # in replay, the latency the recording measured
        if timing is not None and timing.latency_ms is not None and recorded_latency is None and outcome != "live":
            latency = timing.latency_ms  # a stream recorded just now: the latency its recording keeps
        reply = await off_loop_if_large(len(raw), decode_reply, response, raw, self.redactor)
        if timing is not None:
            reply.timing = timing
            if is_event_stream(reply.headers):
                reply.sse = events_of(reply.text.encode(), timing)
        attempt = Attempt(number, reply.status, latency, outcome=outcome, waited_ms=timeout.waited_ms)
        attempt.replayed = bool(response.extensions.get(REPLAYED_EXTENSION))
        attempt.replay_pace = response.extensions.get(REPLAY_PACE_EXTENSION)
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
        reason, headers = masked_head(response, self.redactor)
        reply = UpstreamReply(response.status_code, reason, headers, "")
        deadline = timeout.deadline() or asyncio.get_running_loop().time() + timeout.timeout_s
        tap = StreamTap(self.flow_body_max_bytes)
        reply.relay = Relay(response, self.redactor, self.max_body_bytes, deadline, timing, tap)
        outcome = response.extensions.get(OUTCOME_EXTENSION, "live")
        attempt = Attempt(number, reply.status, latency, outcome=outcome, waited_ms=timeout.waited_ms)
        attempt.replayed = bool(response.extensions.get(REPLAYED_EXTENSION))
        attempt.replay_pace = response.extensions.get(REPLAY_PACE_EXTENSION)
        attempt.first_byte_ms = None if recorded_latency is not None else latency
        return attempt, reply

    def _failed(self, number: int, started: float, timeout: AttemptTimeout, message: str) -> Attempt:
        latency = (time.perf_counter() - started) * 1000 - timeout.waited_ms
        return Attempt(number, None, latency, error=self.redactor.redact(message), waited_ms=timeout.waited_ms)


def _internal_failure(result: CallResult, exc: Exception, redactor: Redactor) -> None:
    message = redactor.redact(f"{type(exc).__name__}: {exc}")
    log.error("a call failed inside the proxy: %s", message, exc_info=exc)  # the traceback, scrubbed by the log
    # `proxy run` has no server log to point to: the reason is told here, whole.
    result.error = f"the call failed inside the proxy: {message}"
