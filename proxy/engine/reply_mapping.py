"""A reply read through its connection: the conversation end rules, and the output mapping (over the JSON
body, or over the text pieces of a server-sent event stream)."""

from __future__ import annotations

from typing import Any

from proxy.config.settings import ERROR_BODY_PREVIEW_CHARS
from proxy.connections.compiled import CompiledConnection
from proxy.connections.jsonpath_budget import JsonPathStopped, StepBudget
from proxy.connections.mapping import (
    OUTPUT,
    RETRIEVAL_CONTEXT,
    SESSION_ID,
    TRACES,
    first_scalar_text,
    normalise_traces,
    output_text,
)
from proxy.connections.spec import ConnectionType
from proxy.engine.results import CallResult, UpstreamReply
from proxy.engine.streaming import events_of, sse_reply
from proxy.engine.transports.streams import StreamTiming
from proxy.security.redaction import Redactor

REQUIRED_KEYS = {ConnectionType.CONVERSATION: (OUTPUT,), ConnectionType.INITIALIZATION: (SESSION_ID,)}


def matching_end_rule(conn: CompiledConnection, reply: UpstreamReply, budget: StepBudget) -> int | None:
    """The index of the first end rule the reply matches; `JsonPathStopped` when a rule's path spends the budget."""
    for index, rule in enumerate(conn.end_rules):
        if rule.status_code != reply.status:
            continue
        if rule.path is None:
            return index
        try:
            if reply.is_json and first_scalar_text(rule.path, reply.json, budget) == rule.equals:
                return index
        except JsonPathStopped as exc:
            match = conn.spec.conversation_end_rules[index].body_match
            source = match.path if match is not None else rule.path
            raise JsonPathStopped(f"conversation end rule {index + 1} stopped: the JSONPath {source} {exc}") from None
    return None


def map_reply(conn: CompiledConnection, result: CallResult, redactor: Redactor, budget: StepBudget) -> None:
    """The output mapping applied to the call's reply: `result.extracted`, or why it could not be. Every
    JSONPath spends from `budget`; one that spends it all fails the call, naming it."""
    try:
        _map_reply(conn, result, redactor, budget)
    except JsonPathStopped as exc:
        result.error = redactor.redact(str(exc))


def _map_reply(conn: CompiledConnection, result: CallResult, redactor: Redactor, budget: StepBudget) -> None:
    reply = result.reply
    if reply is None:
        return
    document: Any
    if conn.stream_text_path is not None:
        document = _sse_document(conn, reply, result, redactor, budget)
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
            result.error = redactor.redact(
                f"the upstream reply is not JSON, so the output mapping cannot apply: {preview}"
            )
            return
        document = reply.json
    mapped = conn.mapping.apply(document, budget)
    result.extracted = mapped.values
    result.misses = {k: redactor.redact(v) for k, v in mapped.misses.items()}
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


def _sse_document(
    conn: CompiledConnection, reply: UpstreamReply, result: CallResult, redactor: Redactor, budget: StepBudget
) -> dict[str, Any] | None:
    """`response_mode: sse`: the events' text pieces joined, what the output mapping runs over."""
    if reply.sse is None:
        reply.sse = events_of(reply.text.encode(), reply.timing or StreamTiming())
    if not reply.sse.events:
        preview = reply.text[:ERROR_BODY_PREVIEW_CHARS]
        result.error = redactor.redact(
            f"the connection reads server-sent events (responseMode sse), but the reply holds none: {preview}"
        )
        return None
    assert conn.stream_text_path is not None
    try:
        sse = sse_reply(reply.sse.events, conn.stream_text_path, budget)
    except JsonPathStopped as exc:
        source = conn.spec.stream_text_path
        raise JsonPathStopped(f"the stream text path stopped: the JSONPath {source} {exc}") from None
    result.time_to_first_token_ms = sse.time_to_first_token_ms
    return sse.document
