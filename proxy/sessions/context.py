"""What a session's call sees: the call context its templates, URL and headers are rendered with."""

from __future__ import annotations

from typing import Any

from proxy.config.record_mode import RecordMode
from proxy.engine.results import CallContext, CallLabel
from proxy.security import jsonbounds
from proxy.sessions.cache import Active


def call_context(
    active: Active,
    inference_id: str,
    turn_input: Any,
    turn_context: dict[str, Any] | None,
    kind: str,
    mode: RecordMode | None = None,
) -> CallContext:
    session = active.session
    context = template_context(session.context)
    if turn_context:
        context = {**context, **turn_context}
    assert active.handle is not None, "the session's cassette is opened when it enters the cache"
    return CallContext(
        input=turn_input,
        context=context,
        session_id=session.external_session_id or session.custom_id,
        galtea_session_id=session.id,
        test_case_id=session.test_case_id,
        test_id=session.test_id,
        inference_result_id=inference_id,
        metadata=dict(session.metadata),
        past_turns=list(active.past),
        w3c_trace_id=session.trace_id,
        cassette=active.handle.for_call(mode),
        label=CallLabel(kind, session.id),
    )


def template_context(context: dict[str, Any] | None) -> dict[str, Any]:
    """What templates see as `context`: the stored object; when its `value` text holds a JSON object, that
    object's fields too (`context.<field>`), beside `context.value`."""
    if not context:
        return {}
    text = context.get("value")
    if isinstance(text, str):
        try:
            parsed = jsonbounds.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return {**parsed, **context}
    return dict(context)
