"""Streamed replies above the transport: relaying one to the forward route's client as it arrives, masked;
reading one whole for a turn, timed; and the server-sent events in one (`response_mode: sse`)."""

from __future__ import annotations

import asyncio
import codecs
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from jsonpath_ng import JSONPath

from proxy.connections.jsonpath_budget import StepBudget, find_values
from proxy.engine.transports import REDACTED_EXTENSION, STREAM_EXTENSION, BodyTooLarge
from proxy.engine.transports.streams import StreamTiming, is_event_stream
from proxy.security import jsonbounds
from proxy.security.redaction import Redactor
from proxy.security.stream_masking import StreamMasker

if TYPE_CHECKING:
    from proxy.engine.stream_tap import StreamTap

DONE = "[DONE]"
_LINE = re.compile(r"([^\r\n]*)(\r\n|\r(?=[^\n])|\n)")  # a lone \r at the end may be half of a \r\n


@dataclass
class Event:
    offset_ms: float  # when the chunk that completed it arrived
    data: str
    name: str = ""  # its `event:` field; none is the default type, "message"

    def parsed(self) -> Any:
        """The event's data as JSON, or as the text it is."""
        try:
            return jsonbounds.loads(self.data)
        except ValueError:
            return self.data

    def to_json(self) -> dict[str, Any]:
        shown = {"offsetMs": self.offset_ms, "data": self.parsed()}
        return {"event": self.name, **shown} if self.name else shown


class SseParser:
    """Server-sent events as the chunks of a stream arrive: the `data:` lines of each event joined, its `event:`
    name kept; comments, `id:` and `retry:` lines read past. A `data: [DONE]` event ends the stream."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = False
        self.done_ms: float | None = None  # when `data: [DONE]` arrived: it ends the stream but is no event
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""
        self._data: list[str] = []
        self._name = ""

    def feed(self, chunk: bytes, offset_ms: float) -> None:
        if self.done:
            return
        text = self._pending + self._decoder.decode(chunk)
        pos = 0
        for match in _LINE.finditer(text):
            self._line(match.group(1), offset_ms)
            pos = match.end()
            if self.done:
                return
        self._pending = text[pos:]

    def end(self, offset_ms: float) -> None:
        """A last event without its closing blank line still counts."""
        self.feed(b"", offset_ms)
        if self._pending:
            self._line(self._pending.rstrip("\r"), offset_ms)
            self._pending = ""
        self._line("", offset_ms)

    def _line(self, line: str, offset_ms: float) -> None:
        if self.done:
            return
        if not line:
            if self._data:
                data = "\n".join(self._data)
                self._data = []
                if data.strip() == DONE:
                    self.done, self.done_ms = True, offset_ms
                else:
                    self.events.append(Event(offset_ms, data, self._name))
            self._name = ""  # a name belongs to the one event it is in, dispatched or not
            return
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._name = value

    def to_json(self) -> dict[str, Any]:
        """The events part of a stream's JSON: each event, then when `data: [DONE]` came, if it did."""
        out: dict[str, Any] = {"events": [event.to_json() for event in self.events]}
        if self.done_ms is not None:
            out["doneOffsetMs"] = self.done_ms
        return out


def parse_events(pieces: Iterable[tuple[float, bytes]], end_ms: float | None) -> SseParser:
    """A stream's events from its (offset, bytes) pieces, relayed or read whole. `end_ms`, when the stream came
    to its end: a last event without its closing blank line still counts, at that offset."""
    parser = SseParser()
    for offset, piece in pieces:
        parser.feed(piece, offset)
    if end_ms is not None:
        parser.end(end_ms)
    return parser


def events_of(body: bytes, timing: StreamTiming) -> SseParser:
    """The events of a whole (masked) body, each at the offset of the recorded chunk that completed it."""
    pieces = timing.pieces(body)
    return parse_events(pieces, pieces[-1][0] if pieces else timing.ttfb_ms)


@dataclass
class SseReply:
    """What `response_mode: sse` maps over, and when the first piece of text arrived."""

    document: dict[str, Any]
    time_to_first_token_ms: float | None


def sse_reply(events: list[Event], text_path: JSONPath, budget: StepBudget | None = None) -> SseReply:
    """The events' text pieces joined; `text_path` spends from `budget` (without one, an empty reply's)."""
    if budget is None:
        budget = StepBudget.for_size(0)
    pieces, parsed, last, first_token = [], [], None, None
    for event in events:
        data = event.parsed()
        parsed.append(data)
        if isinstance(data, dict | list):
            last = data
            found = [value for value in find_values(text_path, data, budget) if isinstance(value, str) and value]
            if found and first_token is None:
                first_token = event.offset_ms
            pieces += found
    return SseReply({"text": "".join(pieces), "events": parsed, "last": last}, first_token)


def stream_json(timing: StreamTiming, sse: SseParser | None) -> dict[str, Any]:
    """The `stream` part of an exchange read whole: as a relayed stream's (`StreamTap.summary`), its events end
    with when `data: [DONE]` came."""
    return {
        "timeToFirstByteMs": timing.ttfb_ms,
        "chunks": [[offset, int(size)] for offset, size in timing.chunks],
        **(sse or SseParser()).to_json(),
    }


async def read_timed(response: httpx.Response, max_bytes: int, timing: StreamTiming) -> tuple[bytes, StreamTiming]:
    """A streamed body read whole, each chunk timed; a recording's or a replay's own timing wins."""
    parts, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge
        timing.chunk(len(chunk))
        parts.append(chunk)
    timing.end()
    return b"".join(parts), response.extensions.get(STREAM_EXTENSION) or timing


class Relay:
    """A streamed reply on its way to the forward route's client: each chunk masked as it arrives (a secret
    split across two chunks too, see StreamMasker), the body capped, the whole stream within the attempt's
    deadline. What passes is tapped for the flow log (`tap`), which is told when the stream is over."""

    def __init__(
        self,
        response: httpx.Response,
        redactor: Redactor,
        max_bytes: int,
        deadline: float,
        timing: StreamTiming,
        tap: StreamTap,
    ) -> None:
        self.response = response
        self.masker = None if response.extensions.get(REDACTED_EXTENSION) else StreamMasker(redactor)
        self.max_bytes = max_bytes
        self.deadline = deadline
        self.timing = timing
        self.tap = tap
        self.event_stream = is_event_stream(response.headers)
        self.ended = False
        self._over_json: dict[str, Any] | None = None  # stream_json once the stream is over: it changes no more

    async def chunks(self) -> AsyncIterator[bytes]:
        upstream = self.response.aiter_bytes()
        size = 0
        try:
            while True:
                try:
                    async with asyncio.timeout_at(self.deadline):
                        chunk = await anext(upstream)
                except StopAsyncIteration:
                    break
                size += len(chunk)
                if size > self.max_bytes:
                    raise BodyTooLarge
                self.timing.chunk(len(chunk))
                out = self.masker.feed(chunk) if self.masker else chunk
                if out:
                    self.tap.saw(self.timing.chunks[-1][0], out)
                    yield out
            tail = self.masker.flush() if self.masker else b""
            if tail:
                self.tap.saw(self.timing.chunks[-1][0] if self.timing.chunks else self.timing.ttfb_ms, tail)
                yield tail
            self.ended = True
        finally:
            self.finish()
            await self.response.aclose()

    def finish(self) -> None:
        """The stream is over, whole or not (also when it never started: the client left before its body)."""
        if self.timing.latency_ms is None:
            self.timing.end()
        self.tap.finish(self.ended)

    def stream_json(self) -> dict[str, Any]:
        """The `stream` part of the exchange, as this relay saw it: its real timing, so far or to its end."""
        if self._over_json is not None:
            return self._over_json
        timing = self.timing
        out = {
            "timeToFirstByteMs": timing.ttfb_ms,
            "durationMs": timing.latency_ms,
            "chunks": [[offset, int(size)] for offset, size in timing.chunks],
        }
        shown = {**out, **self.tap.summary(self.event_stream)}
        if self.tap.over:
            self._over_json = shown
        return shown
