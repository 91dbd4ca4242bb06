"""Sessions, turns (inference results) and lifecycle calls: the records a conversation leaves, as the API
shows them and as their rows store them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

from proxy.connections.headers import new_w3c_trace_id
from proxy.sessions.requests import SessionStatus

PENDING, COMPLETED, FAILED = SessionStatus.PENDING.value, SessionStatus.COMPLETED.value, SessionStatus.FAILED.value
GENERATED, SKIPPED = "GENERATED", "SKIPPED"  # turn statuses besides FAILED
DEFAULT_STOPPING_REASON = "COMPLETED"

_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode  # as JSONResponse


def encode(value: Any) -> str:
    """JSON as the API answers it (the text of Starlette's `JSONResponse`), so a stored row can be the answer.
    orjson writes the same text ~8x faster (13 µs → 1.7 µs for a turn's answer); what it refuses (an integer
    over 64 bits, a key that is not text, a lone surrogate) goes the standard library's way."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return _encode(value)


@dataclass
class Session:
    id: str
    version_id: str
    product_id: str
    created_at: str
    cassette_key: str  # fixed at creation: test case id, else customId, else connection name
    trace_id: str = field(default_factory=new_w3c_trace_id)  # W3C's, for `traceparent` (its column keeps this name)
    custom_id: str | None = None
    external_session_id: str | None = None
    test_case_id: str | None = None
    test_id: str | None = None
    run_id: str | None = None
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    status: str = PENDING
    stopping_reason: str | None = None
    error: str | None = None
    is_production: bool = False
    initialized: bool = False
    finalized: bool = False
    deleted: bool = False

    @classmethod
    def from_json(cls, data: str) -> Session:
        session = cls(**json.loads(data))
        session.context = context_object(session.context)  # stored before contexts were objects
        return session

    def to_json(self) -> str:
        """The row's document: every field, read on the caller's side (no deep copy: `asdict` cost 16% of a
        replay run), so the writer thread never reads an object the event loop may be changing."""
        return encode({f: getattr(self, f) for f in SESSION_FIELDS})

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "versionId": self.version_id,
            "productId": self.product_id,
            "customId": self.custom_id,
            "externalSessionId": self.external_session_id,
            "testCaseId": self.test_case_id,
            "testId": self.test_id,
            "runId": self.run_id,
            "userId": None,  # no Galtea user launches a session here
            "context": context_object(self.context),
            "metadata": self.metadata,
            "status": self.status,
            "stoppingReason": self.stopping_reason,
            "error": self.error,
            "isProduction": self.is_production,
            "isSeed": False,
            "recordingUri": None,
            "createdAt": self.created_at,
            "deletedAt": None,
        }


SESSION_FIELDS = tuple(f.name for f in fields(Session))


@dataclass
class Turn:
    """An inference result: one CONVERSATION call, or a turn the client logged itself."""

    id: str
    session_id: str
    index: int
    created_at: str
    input: Any = None
    actual_output: str | None = None
    retrieval_context: str | None = None
    traces: list[dict[str, Any]] = field(default_factory=list)
    latency: float | None = None
    time_to_first_token_ms: float | None = None  # a streamed reply (responseMode sse): its first piece of text
    status: str = GENERATED
    error: str | None = None
    exchange: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_api(self) -> dict[str, Any]:
        return {
            **self.extra,
            "id": self.id,
            "sessionId": self.session_id,
            "index": self.index,
            "input": self.input,
            "actualOutput": self.actual_output,
            "retrievalContext": self.retrieval_context,
            "traces": self.traces,
            "latency": self.latency,
            "timeToFirstTokenMs": self.time_to_first_token_ms
            if self.time_to_first_token_ms is not None
            else self.extra.get("timeToFirstTokenMs"),
            "status": self.status,
            "error": self.error,
            "exchange": self.exchange,
            "createdAt": self.created_at,
        }

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Turn:
        """A turn back from its answer (the row stores the answer: one encoding serves both)."""
        known: dict[str, Any] = {key: data.get(key) for key in _TURN_API_KEYS}
        return cls(
            id=known["id"],
            session_id=known["sessionId"],
            index=known["index"],
            created_at=known["createdAt"],
            input=known["input"],
            actual_output=known["actualOutput"],
            retrieval_context=known["retrievalContext"],
            traces=known["traces"] or [],
            latency=known["latency"],
            time_to_first_token_ms=known["timeToFirstTokenMs"],
            status=known["status"],
            error=known["error"],
            exchange=known["exchange"],
            extra={key: value for key, value in data.items() if key not in _TURN_API_KEYS},
        )


_TURN_API_KEYS = frozenset(Turn("", "", 0, "").to_api())


@dataclass
class LifecycleCall:
    """An INITIALIZATION or FINALIZATION call, kept so the inspector can show it."""

    id: str
    session_id: str
    phase: str
    created_at: str
    exchange: dict[str, Any]


def context_object(context: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """A session's context as Galtea stores it: an object, plain text as `{"value": "<text>"}`."""
    return {"value": context} if isinstance(context, str) else context
