"""The transport seam: every upstream call goes through one httpx transport that is live, recording
or replaying per cassette. Nothing above it branches on the mode or imports cassette code: what a caller
passes down and reads back are the extensions and exceptions named here (the cassettes package builds the
record/replay transport on them; the server stacks the layers). Imports from connections and below."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import httpx

from proxy.errors import CallFailure

ATTEMPT_TIMEOUT_EXTENSION = "proxy.attempt_timeout"  # request: the caller's AttemptTimeout, if it times attempts
CASSETTE_EXTENSION = "proxy.cassette"  # request: an opaque cassette handle, or None for plain live calls
PER_RUN_EXTENSION = "proxy.per_run"  # request: {name: value} of ids that differ every run (never matched)
# request: the body as matched and recorded, when it differs from the one sent (an MCP message without its ids)
MATCH_BODY_EXTENSION = "proxy.match_body"
OUTCOME_EXTENSION = "proxy.outcome"  # response: hit | recorded | live | injected
RECORDED_LATENCY_EXTENSION = "proxy.recorded_latency_ms"  # response: the latency a recording measured
REPLAYED_EXTENSION = "proxy.replayed"  # response: True when played back, so no wait before a retry is real
# response: a replay paced at the recorded timing: the speed its delays were divided by (absent: played at once)
REPLAY_PACE_EXTENSION = "proxy.replay_pace"
# request: the JSON document the body holds, as the caller parsed it (read only), so no transport parses it again
PARSED_BODY_EXTENSION = "proxy.parsed_body"
RATE_LIMIT_EXTENSION = "proxy.rate_limit"  # request: (connection id, calls per minute), paced by live.py
FAULTS_EXTENSION = "proxy.faults"  # request: (connection id, the connection's own fault rules)
STREAM_EXTENSION = "proxy.stream"  # response: its StreamTiming, when a recording or a replay has one
REDACTED_EXTENSION = "proxy.redacted"  # response: its body's secrets are masked already (a replay)
# response: a dict kept with a recorded answer, the same on every replay of it, where a caller may keep what it
# worked out from the (unchanging) body, so that it is not worked out again
REPLY_MEMO_EXTENSION = "proxy.reply_memo"
# Hop-by-hop and encoding headers describe the wire, not the content a cassette stores (bodies are stored decoded).
WIRE_HEADERS = frozenset({"content-encoding", "transfer-encoding", "content-length", "connection", "keep-alive"})


class CassetteMiss(CallFailure):
    """No recording answers this request and the mode forbids calling live. `nearest` describes the
    closest recording (method, uri, body, difference, path: the differing body JSONPath), if any."""

    def __init__(self, message: str, nearest: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.nearest = nearest


class CassetteRefused(CassetteMiss):
    """The cassette file cannot be used (unreadable, not a cassette, or refused: over a cap, a YAML alias): every
    call through it fails with why, naming the file, and the way out; nothing is recorded into it. Its outcome
    is `error`: nothing was replayed, nor called live."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"{reason}; the cassette cannot be used: check it with `proxy cassettes verify`, then delete it or "
            "re-record it (record mode all)"
        )


class CredentialUnset(CallFailure):
    """A live call would carry a credential whose environment variable is not set (a replay-only config)."""

    def __init__(self, variable: str) -> None:
        super().__init__(
            f"environment variable {variable} is not set, and this call would take it to the upstream live: set "
            f"{variable} to call live (a replay with record mode none needs no credential)"
        )
        self.variable = variable


class BodyCut(httpx.ReadError, CallFailure):
    """A body that broke off: the answer's head and the `received` bytes (of `expected`), so a caller that
    passes bodies on (the forward route) can pass on as much and hang up, as the upstream did. `outcome`
    is what the answer's OUTCOME_EXTENSION would have read."""

    def __init__(
        self,
        message: str,
        status: int,
        headers: list[tuple[str, str]],
        received: bytes,
        expected: int,
        outcome: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers
        self.received = received
        self.expected = expected
        self.outcome = outcome


class BodyTooLarge(CallFailure):
    """An upstream body over the cap: the call fails cleanly, and nothing is recorded."""


async def read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    """The decoded body, refused past `max_bytes` rather than truncated."""
    try:
        content = response.content  # a replayed answer is in memory already
    except httpx.ResponseNotRead:
        pass
    else:
        if len(content) > max_bytes:
            raise BodyTooLarge
        return content
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class AttemptTimeout:
    """The caller's timeout for one attempt, which starts when the request is sent. A transport that must
    wait first (for a rate-limit slot) waits inside `waiting_to_send`: the clock stops for the wait, starts
    again in full when it ends, and the wait is reported apart from the attempt's latency."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.waited_ms = 0.0
        self._timeout: asyncio.Timeout | None = None

    async def __aenter__(self) -> AttemptTimeout:
        self._timeout = asyncio.timeout(self.timeout_s)
        await self._timeout.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._timeout is not None
        await self._timeout.__aexit__(exc_type, exc, tb)

    def deadline(self) -> float | None:
        """When the attempt runs out, in the event loop's time (a stream relayed on must end by then)."""
        return self._timeout.when() if self._timeout is not None else None

    @contextmanager
    def paused(self) -> Iterator[None]:
        self._reschedule(None)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.waited_ms += (time.perf_counter() - started) * 1000
            self._reschedule(asyncio.get_running_loop().time() + self.timeout_s)

    def _reschedule(self, when: float | None) -> None:
        # One that has already fired stays fired: its cancellation is on its way.
        if self._timeout is not None and not self._timeout.expired():
            self._timeout.reschedule(when)


@contextmanager
def waiting_to_send(request: httpx.Request) -> Iterator[None]:
    """Wrap a wait a transport makes before it sends `request`: it is no part of the attempt's timeout."""
    timeout: AttemptTimeout | None = request.extensions.get(ATTEMPT_TIMEOUT_EXTENSION)
    if timeout is None:
        yield
        return
    with timeout.paused():
        yield


def waited_ms(request: httpx.Request) -> float:
    """How long the transports waited before sending `request` in the current attempt."""
    timeout: AttemptTimeout | None = request.extensions.get(ATTEMPT_TIMEOUT_EXTENSION)
    return timeout.waited_ms if timeout is not None else 0.0
