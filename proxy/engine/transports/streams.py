"""Streamed answers at the transport: which answers are streams, the timing a recording keeps of one, and
the byte streams that tap a live stream for its recording and play a recorded one back.

A recorded stream keeps its whole body in vcrpy's `response.body.string` (so plain vcrpy replays it as one
body) and, in the interaction's `proxy.stream`, the time to the answer's head and each chunk's offset from
the request and size: `{"time_to_first_byte_ms": 12.5, "chunks": [[offset_ms, bytes], ...]}`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from proxy.engine.transports import STREAM_EXTENSION, BodyTooLarge

# How long the rest of a stream is read for recording after its reader hung up before its end.
DRAIN_AFTER_READER_LEFT_S = 30.0
_DRAINS: set[asyncio.Task[None]] = set()


async def _next(source: AsyncIterator[bytes]) -> bytes | None:
    """The next chunk, None at the end (a task cannot end with StopAsyncIteration)."""
    try:
        return await anext(source)
    except StopAsyncIteration:
        return None


STREAM_MEDIA = ("text/event-stream", "ndjson", "jsonl", "json-seq")
NO_BODY_STATUSES = frozenset({204, 304})


def is_streamed(response: httpx.Response) -> bool:
    """An answer that may arrive over time: server-sent events, NDJSON, or any body without a length."""
    if STREAM_EXTENSION in response.extensions:
        return True
    headers = response.headers
    content_type = headers.get("content-type", "").lower()
    if any(media in content_type for media in STREAM_MEDIA):
        return True
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return True
    return "content-length" not in headers and response.status_code not in NO_BODY_STATUSES


def is_event_stream(headers: httpx.Headers | dict[str, str]) -> bool:
    return "text/event-stream" in (headers.get("content-type") or "").lower()


@dataclass
class StreamTiming:
    """When a streamed answer's head and each of its chunks arrived, in ms from sending the request."""

    ttfb_ms: float = 0.0
    chunks: list[list[float]] = field(default_factory=list)  # [offset_ms, bytes]
    latency_ms: float | None = None  # to the last byte; set once the stream has ended
    _started: float = field(default_factory=time.perf_counter, repr=False)

    def now_ms(self) -> float:
        return (time.perf_counter() - self._started) * 1000

    def head(self) -> None:
        self.ttfb_ms = round(self.now_ms(), 3)

    def chunk(self, size: int) -> None:
        self.chunks.append([round(self.now_ms(), 3), size])

    def end(self) -> None:
        self.latency_ms = round(self.now_ms(), 3)

    def to_cassette(self) -> dict[str, Any]:
        return {"time_to_first_byte_ms": self.ttfb_ms, "chunks": [[offset, int(size)] for offset, size in self.chunks]}

    @classmethod
    def from_cassette(cls, data: Any, latency_ms: float | None) -> StreamTiming | None:
        """The timing an interaction holds, or None (not a stream, or a section edited into nonsense)."""
        if not isinstance(data, dict) or not isinstance(data.get("chunks"), list):
            return None
        try:
            chunks = [[float(offset), int(size)] for offset, size in data["chunks"]]
            ttfb = float(data.get("time_to_first_byte_ms") or 0.0)
        except (TypeError, ValueError):
            return None
        return cls(ttfb, chunks, latency_ms)

    def pieces(self, body: bytes) -> list[tuple[float, bytes]]:
        """`body` cut as the recorded chunks were. A masked secret changes the body's length: the last chunk
        takes what is left."""
        out, pos = [], 0
        for index, (offset, size) in enumerate(self.chunks):
            end = len(body) if index == len(self.chunks) - 1 else min(len(body), pos + int(size))
            out.append((offset, body[pos:end]))
            pos = end
        if pos < len(body):
            out.append((self.chunks[-1][0] if self.chunks else self.ttfb_ms, body[pos:]))
        return out


class ReplayStream(httpx.AsyncByteStream):
    """A recorded stream played back: the same chunks, at once or at the recorded pace divided by `speed`."""

    def __init__(self, body: bytes, timing: StreamTiming, speed: float | None) -> None:
        self.body = body
        self.timing = timing
        self.speed = speed

    async def __aiter__(self) -> AsyncIterator[bytes]:
        last = self.timing.ttfb_ms
        for offset, piece in self.timing.pieces(self.body):
            if self.speed and offset > last:
                await asyncio.sleep((offset - last) / 1000 / self.speed)
                last = offset
            if piece:
                yield piece


class RecordingStream(httpx.AsyncByteStream):
    """A live stream passed on chunk by chunk as it arrives, timed; once it has ended whole, `on_end` gets the
    body and the timing to record. A stream cut off or over the cap records nothing. A reader that hangs up before
    the end (the OpenAI SDK stops at `data: [DONE]` and closes) leaves the rest to be read here, within
    DRAIN_AFTER_READER_LEFT_S, so that a stream that does end whole is recorded whatever the reader's timing."""

    def __init__(
        self,
        response: httpx.Response,
        timing: StreamTiming,
        max_bytes: int,
        on_end: Callable[[bytes, StreamTiming], Awaitable[None]],
    ) -> None:
        self.response = response
        self.timing = timing
        self.max_bytes = max_bytes
        self.on_end = on_end
        self._source: AsyncIterator[bytes] | None = None
        self._parts: list[bytes] = []
        self._size = 0
        self._settled = False  # ended, broke off, or handed to the drain: nothing more to do here
        self._reading: asyncio.Future[bytes | None] | None = None  # the read under way, if any

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self._source = self.response.aiter_bytes()
        while True:
            # Each read runs as a task of its own, shielded: a reader that hangs up cancels its request's task
            # mid-read, and the read (the stream's last bytes, often) is then the drain's to finish.
            self._reading = asyncio.ensure_future(_next(self._source))
            try:
                chunk = await asyncio.shield(self._reading)
            except asyncio.CancelledError:  # the reader went away: aclose hands the rest to the drain
                raise
            except BaseException:
                self._settled = True  # cut off or over the cap: nothing to record
                raise
            if chunk is None:
                break
            try:
                self._take(chunk)
            except BaseException:
                self._settled = True
                raise
            self._reading = None
            yield chunk
        self._settled = True
        self.timing.end()
        await self.on_end(b"".join(self._parts), self.timing)

    def _take(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self.max_bytes:
            raise BodyTooLarge
        self.timing.chunk(len(chunk))
        self._parts.append(chunk)

    async def aclose(self) -> None:
        if self._source is None or self._settled:
            await self.response.aclose()
            return
        self._settled = True
        drain = asyncio.get_running_loop().create_task(self._drain(self._source, self._reading))
        _DRAINS.add(drain)  # held until done: a task nobody holds may be collected mid-way
        drain.add_done_callback(_DRAINS.discard)

    async def _drain(self, source: AsyncIterator[bytes], reading: asyncio.Future[bytes | None] | None) -> None:
        try:
            async with asyncio.timeout(DRAIN_AFTER_READER_LEFT_S):
                while True:
                    chunk = await (reading if reading is not None else _next(source))
                    reading = None
                    if chunk is None:
                        break
                    self._take(chunk)
            self.timing.end()
            await self.on_end(b"".join(self._parts), self.timing)
        except Exception:  # cut off, over the cap or too slow: a stream not whole is not recorded
            pass
        finally:
            await self.response.aclose()
