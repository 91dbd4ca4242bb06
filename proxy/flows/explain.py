"""What happened on one call, as text: the explanation `proxy check` prints and the inspector shows.

Written for the moment a mapping does not work: the request as sent (secrets masked), every attempt,
the raw reply, and for each output-mapping key either the value it extracted or why it extracted nothing.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.connections.compiled import CompiledConnection
from proxy.engine.reply_mapping import REQUIRED_KEYS
from proxy.engine.results import CallResult
from proxy.security import jsonbounds

WIDTH = 100
SHOWN_EVENTS = 50  # of a stream; the rest are counted


def _pretty(body: Any) -> list[str]:
    if body is None:
        return ["(no body)"]
    if isinstance(body, str):
        try:
            body = jsonbounds.loads(body)
        except ValueError:
            return body.splitlines() or [""]
    return json.dumps(body, indent=2, ensure_ascii=False).splitlines()


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = json.dumps(text, ensure_ascii=False) if isinstance(value, str) else text
    return text if len(text) <= WIDTH else text[: WIDTH - 1] + "…"


def _stream(stream: dict[str, Any], first_token_ms: float | None) -> list[str]:
    first_token = f", first token at {first_token_ms:.1f} ms" if first_token_ms is not None else ""
    events = stream["events"]
    lines = [
        f"Stream  first byte at {stream['timeToFirstByteMs']:.1f} ms, {len(stream['chunks'])} chunks, "
        f"{len(events)} events{first_token}"
    ]
    lines += [f"  {event['offsetMs']:>9.1f} ms  {_short(event['data'])}" for event in events[:SHOWN_EVENTS]]
    if len(events) > SHOWN_EVENTS:
        lines.append(f"  … {len(events) - SHOWN_EVENTS} more events")
    return lines


def explain(conn: CompiledConnection, result: CallResult, sent: bool = True) -> list[str]:
    spec = conn.spec
    lines = [f"Connection {conn.name} ({spec.type.value}, {spec.auth_type.value} auth)  id {conn.id}", ""]
    request = result.request
    if request is None:
        lines += ["Request could not be rendered:", f"  {result.error}"]
        return lines
    lines.append(f"Request  {request.method} {request.url}")
    lines += [f"  {name}: {value}" for name, value in request.headers.items()]
    lines.append("Body")
    lines += [f"  {line}" for line in _pretty(request.body)]
    lines += [f"Warning: {warning}" for warning in result.warnings]
    if not sent:
        if result.error:
            lines += ["", f"Not sendable: {result.error}"]
        else:
            lines += ["", "Dry run: nothing was sent."]
        return lines
    lines += ["", "Attempts"]
    for attempt in result.attempts:
        waited = f", waited {attempt.waited_ms:.0f} ms before" if attempt.waited_ms else ""
        status = attempt.status if attempt.status is not None else "no reply"
        outcome = f" [{attempt.outcome}]" if attempt.outcome else ""
        error = f" — {attempt.error}" if attempt.error else ""
        lines.append(f"  #{attempt.number}  {status}  {attempt.latency_ms:.1f} ms{waited}{outcome}{error}")
    if not result.attempts:
        lines.append("  (none)")
    reply = result.reply
    if reply is not None:
        lines += ["", f"Response  HTTP {reply.status} {reply.reason}  ({result.latency_ms:.1f} ms)"]
        lines += [f"  {line}" for line in _pretty(reply.json if reply.is_json else reply.text)]
        stream = reply.stream_json()
        if stream is not None:
            lines += ["", *_stream(stream, result.time_to_first_token_ms)]
    lines += ["", "Output mapping"]
    required = REQUIRED_KEYS.get(spec.type, ())
    if not conn.mapping.source:
        lines.append("  (no output mapping)")
    for key, path in conn.mapping.source.items():
        mark = "required" if key in required else "optional"
        if key in result.extracted:
            lines.append(f"  ✓ {key:<18} {path:<32} → {_short(result.extracted[key])}")
        elif key in result.misses:
            why = result.misses[key].removeprefix(f"{path}: ")
            lines.append(f"  ✗ {key:<18} {path:<32} matched nothing ({mark}): {why}")
        else:
            lines.append(f"  - {key:<18} {path:<32} not applied (the call failed)")
    if result.ended_by_rule is not None:
        lines += ["", f"Conversation end rule {result.ended_by_rule + 1} matched: the session would complete."]
    lines += ["", "Result: OK" if result.ok else f"Result: FAILED — {result.error}"]
    return lines
