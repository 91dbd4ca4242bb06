"""Drift in a streamed answer (server-sent events): a live stream compared with its recording event by event.
An event differs in its name (`event:`) or in the JSON shape of its `data:` (paths as in a whole answer, e.g.
`$.choices[0].delta.content: string → array`); a stream, in how it ends (`data: [DONE]`, or its last event's
name, such as Anthropic's `message_stop`) and in its number of events, beyond a tolerance: a live model answers
in more or fewer pieces each time, so the count alone is drift only when it is far off."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from proxy.cassettes.json_shapes import Difference, shape_differences
from proxy.config.settings import DRIFT_EVENT_COUNT_RATIO, DRIFT_EVENT_COUNT_SLACK
from proxy.engine.streaming import DONE, parse_events

NO_END = "none"  # how a stream that ends on nothing named is shown


@dataclass
class StreamShape:
    names: list[str]  # each event's `event:` name ("" for none)
    payloads: list[Any]  # each event's data, parsed when it is JSON
    done: bool  # it ended with `data: [DONE]`

    @property
    def end(self) -> str:
        if self.done:
            return DONE
        return self.names[-1] if self.names and self.names[-1] else NO_END


def stream_shape(body: bytes) -> StreamShape:
    parser = parse_events([(0.0, body)], 0.0)
    events = parser.events
    return StreamShape([e.name for e in events], [e.parsed() for e in events], parser.done)


def _event_differences(old: StreamShape, at_old: int, new: StreamShape, at_new: int) -> list[Difference]:
    found = []
    if old.names[at_old] != new.names[at_new]:
        found.append(Difference("event", old.names[at_old] or "message", new.names[at_new] or "message"))
    found += shape_differences(old.payloads[at_old], new.payloads[at_new])
    return [replace(d, event=at_new) for d in found]


def first_differing_event(old: StreamShape, new: StreamShape) -> list[Difference]:
    """The differences of the first live event unlike the recorded one at its place. A stream in more or fewer
    pieces is alike at its start and at its end: events are compared from the start, and from the end, and a
    stream whose two alike runs cover all of the shorter one's events has no differing event."""
    n, m = len(old.names), len(new.names)
    shorter = min(n, m)
    first: list[Difference] = []
    alike_from_start = 0
    while alike_from_start < shorter:
        first = _event_differences(old, alike_from_start, new, alike_from_start)
        if first:
            break
        alike_from_start += 1
    else:
        return []
    alike_from_end = 0
    while alike_from_start + alike_from_end < shorter:
        if _event_differences(old, n - 1 - alike_from_end, new, m - 1 - alike_from_end):
            return first
        alike_from_end += 1
    return []


def count_is_far_off(recorded: int, live: int) -> bool:
    if (recorded == 0) != (live == 0):
        return True
    return abs(live - recorded) > max(DRIFT_EVENT_COUNT_SLACK, DRIFT_EVENT_COUNT_RATIO * recorded)


def stream_differences(recorded: bytes, live: bytes) -> list[Difference]:
    """Where the live event stream `live` differs from the recorded `recorded` (both masked)."""
    old, new = stream_shape(recorded), stream_shape(live)
    found = first_differing_event(old, new)
    if count_is_far_off(len(old.names), len(new.names)):
        found.append(Difference("events", str(len(old.names)), str(len(new.names))))
    if old.end != new.end:
        found.append(Difference("end", old.end, new.end))
    return found
