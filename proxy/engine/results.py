"""What one upstream call produced: the request as sent (masked), each attempt, the reply, what the mapping
extracted; and what a call is about (its label and the context templates read)."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from proxy.config.settings import ERROR_BODY_PREVIEW_CHARS
from proxy.connections.headers import new_w3c_trace_id
from proxy.connections.mapping import OUTPUT, output_text
from proxy.engine.streaming import Relay, SseParser, stream_json
from proxy.engine.transports.streams import StreamTiming
from proxy.templating.environment import as_template_input

# The cassette a call goes with, as the record/replay transport handed it out: passed down unread.
CassetteRef = object

# Call ids: unique per process by a counter, across processes by a random prefix (no uuid4 per call).
_ID_PREFIX = os.urandom(8).hex()
_ids = itertools.count(1)


def new_call_id() -> str:
    """A 32-hex-digit id, as a uuid4's hex is."""
    return f"{_ID_PREFIX}{next(_ids):016x}"


@dataclass(frozen=True)
class CallLabel:
    """What kind of call this is, for whoever watches calls (the flow log): `turn`, `initialization`,
    `finalization`, `testConnection`, `forward`, `connector search`, … and the session it belongs to."""

    kind: str
    session_id: str | None = None


@dataclass
class CallContext:
    """Everything a template, URL or header may refer to, plus where the call is recorded."""

    input: Any = None
    context: dict[str, Any] = field(default_factory=dict)
    session_id: str | None = None  # external, from INITIALIZATION
    galtea_session_id: str | None = None
    test_case_id: str | None = None
    test_id: str | None = None
    inference_result_id: str = field(default_factory=lambda: new_call_id())
    metadata: dict[str, Any] = field(default_factory=dict)
    past_turns: list[dict[str, Any]] = field(default_factory=list)
    w3c_trace_id: str = field(default_factory=new_w3c_trace_id)  # the `traceparent` header's, one per session
    cassette: CassetteRef | None = None
    label: CallLabel | None = None
    warn_undefined: bool = False  # a diagnostic call: undefined template variables become `CallResult.warnings`

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
            "trace_id": self.inference_result_id,  # the turn's id under another name, not the W3C trace id
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
    replayed: bool = False  # the transport played the answer back (REPLAYED_EXTENSION): latency_ms is the recorded
    replay_pace: float | None = None  # a replay paced at the recorded timing: the speed it was divided by

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.number,
            "status": self.status,
            "latencyMs": round(self.latency_ms, 3),
            "waitedMs": round(self.waited_ms, 3),
            "error": self.error,
            "cassette": self.outcome,
            "replayed": self.replayed,
            "replayPace": self.replay_pace,
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
    sse: SseParser | None = None  # a server-sent event stream, parsed: its events and its `data: [DONE]`
    relay: Relay | None = None  # the forward route: a stream still on its way, relayed to the client
    size: int = 0  # body bytes as received

    def to_json(self) -> dict[str, Any]:
        if self.relay is not None:  # a relayed stream: its body as relayed so far, up to the flow log's cap
            body: Any = self.relay.tap.body()
        else:
            body = self.json if self.is_json else self.text
        return {"status": self.status, "headers": self.headers, "body": body}

    def stream_json(self) -> dict[str, Any] | None:
        if self.relay is not None:
            return self.relay.stream_json()
        if self.timing is None:
            return None
        return stream_json(self.timing, self.sse)


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
    warnings: list[str] = field(default_factory=list)  # with CallContext.warn_undefined: what rendered empty
    # A forwarded call (no template, no mapping): the names of the headers the proxy added to the client's request.
    injected_headers: list[str] | None = None

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
