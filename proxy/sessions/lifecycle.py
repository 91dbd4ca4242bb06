"""How a call's result moves a session and its turn along: a turn's outcome, an end rule that completes the
session, a failure that fails it, and the mapped keys that become the session's external id and metadata."""

from __future__ import annotations

from proxy.connections.mapping import OUTPUT, RETRIEVAL_CONTEXT, SESSION_ID, SPECIAL_KEYS, TRACES, output_text
from proxy.engine.results import CallResult
from proxy.sessions.entities import COMPLETED, FAILED, GENERATED, SKIPPED, Session, Turn


def apply_turn_result(session: Session, turn: Turn, result: CallResult) -> None:
    turn.exchange = result.to_json()
    turn.latency = round(result.latency_ms, 3)
    turn.time_to_first_token_ms = result.time_to_first_token_ms
    extracted = result.extracted
    if result.ended_by_rule is not None:
        # The endpoint ended the conversation: the session completes with the turns so far.
        turn.status = SKIPPED
        status = result.reply.status if result.reply else "?"
        session.status = COMPLETED
        session.stopping_reason = (
            f"Conversation ended by the endpoint (end rule {result.ended_by_rule + 1}: HTTP {status})"
        )
        return
    if not result.ok:
        turn.status, turn.error = FAILED, result.error
        session.status, session.error = FAILED, result.error
        return
    turn.status = GENERATED
    turn.actual_output = result.output
    if RETRIEVAL_CONTEXT in extracted:
        turn.retrieval_context = output_text(extracted[RETRIEVAL_CONTEXT])
    turn.traces = list(extracted.get(TRACES) or [])
    absorb_mapped_keys(session, result)


def absorb_mapped_keys(session: Session, result: CallResult) -> None:
    """`session_id` becomes the external id (and the customId when there is none); any key that is
    not special becomes session metadata for later templates and URLs."""
    extracted = result.extracted
    if SESSION_ID in extracted and extracted[SESSION_ID] is not None:
        session.external_session_id = output_text(extracted[SESSION_ID])
        if not session.custom_id:
            session.custom_id = session.external_session_id
    for key, value in extracted.items():
        if key not in SPECIAL_KEYS and key != OUTPUT:
            session.metadata[key] = value
