"""What one client may make the server hold before any route, and so before authentication, runs.

uvicorn's httptools protocol keeps a request's line and headers whole in memory with no bound (the parser hands
a header over only once it is complete, so a 1 GB header cannot be stopped there), waits for them forever, never
closes a connection that sends nothing, and waits forever on a client that reads nothing of its answer.
`LimitedHttpProtocol` keeps uvicorn's protocol and adds, per connection:
- a request head's bytes are counted before the parser sees them, and its headers as they are parsed: past either
  limit the request is answered 431 and the connection closed; the app never sees it;
- a request head not complete in time (from the connection's opening for its first request, from a request's
  first byte for the next ones) is answered 408 and the connection closed; a connection that sent nothing is closed;
- a connection opened beyond the cap is answered 503 and closed at once, before anything of it is read;
- a client that takes none of its answer for the send timeout is disconnected, so no task waits on it for ever.
`server_config` gives `proxy serve` and the pytest plugin's server this protocol with the settings' limits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn

from proxy.config.settings import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADERS,
    DEFAULT_SEND_TIMEOUT_S,
    MIN_BODY_BYTES_PER_S,
    Settings,
)
from proxy.server.listener import NO_DEFAULT_HEADERS, Dated, OneWriteHttpProtocol

log = logging.getLogger("proxy")
REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}
WARN_EVERY_S = 60.0  # a flood of refusals logs one line a minute for each status, not one per connection
_last_warned: dict[int, float] = {}


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_headers: int = DEFAULT_MAX_HEADERS
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            settings.max_header_bytes,
            settings.max_headers,
            settings.header_timeout,
            settings.max_connections,
            settings.send_timeout,
        )


def server_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """The uvicorn config of every server the project runs (`options`: more of uvicorn's)."""
    http = LimitedHttpProtocol.with_limits(HttpLimits.from_settings(settings))
    return uvicorn.Config(Dated(app), http=http, **{**NO_DEFAULT_HEADERS, **options})


class LimitedHttpProtocol(OneWriteHttpProtocol):
    """uvicorn's httptools protocol, holding each connection to `limits` (see the module's docstring)."""

    limits: ClassVar[HttpLimits] = HttpLimits()

    @classmethod
    def with_limits(cls, limits: HttpLimits) -> type[LimitedHttpProtocol]:
        # uvicorn makes a protocol per connection from a class it is given, with its own arguments only.
        return type(cls.__name__, (cls,), {"limits": limits})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_room = self.limits.max_header_bytes  # bytes the request head being read may still take
        self._headers_left = self.limits.max_headers
        self._head_since: float | None = None  # since when a request head is awaited (None: a body, or idle)
        self._in_body = False
        # While a body arrives: when it must have gone on. Each byte buys 1/MIN_BODY_BYTES_PER_S s, never more than
        # the timeout ahead, so a body dribbled a byte at a time runs out as a slow head does.
        self._body_due: float | None = None
        self._refused = False  # a limit answered: nothing more of this connection is read or run
        self._head_timer: asyncio.TimerHandle | None = None  # one per connection, not one per request
        self._send_timer: asyncio.TimerHandle | None = None
        self._unsent = 0  # bytes waiting to be sent when the send timer was set

    # -- the connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:  # this one is counted too
            cap = self.limits.max_connections
            self._refuse(503, f"too many connections: the server takes {cap} at once (settings.max_connections)")
            return
        self._head_since = self.loop.time()  # the first request's head is due from the opening on
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._check_head)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_body:  # the app reads a body under its own limits, at a rate this connection keeps up
            if self._body_due is not None:
                now = self.loop.time()
                self._body_due = min(
                    self._body_due + len(data) / MIN_BODY_BYTES_PER_S, now + self.limits.header_timeout_s
                )
            super().data_received(data)
        elif len(data) <= self._head_room:
            self._head_room -= len(data)
            super().data_received(data)
        else:
            self._past_head_room(data)

    def _past_head_room(self, data: bytes) -> None:
        """Parse what the head may still take; unless the head ends in it, the request is refused."""
        piece, rest = data[: self._head_room], data[self._head_room :]
        self._head_room = 0
        if piece:
            super().data_received(piece)
        if self._refused or self.transport.is_closing() or self.transport.get_protocol() is not self:
            return  # answered (a 400), or upgraded
        if not self._in_body and self._head_room == 0:  # the head goes on past the limit
            most = self.limits.max_header_bytes
            self._refuse(431, f"request headers too large: over {most} bytes (settings.max_header_bytes)")
        else:  # the head ended: the rest is its body, or the next request
            self.data_received(rest)

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._headers_left = self.limits.max_headers
        if self._head_since is None:
            self._head_since = self.loop.time()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers_left -= 1
        if self._headers_left >= 0:
            super().on_header(name, value)
        elif not self._refused:
            self._refuse(431, f"too many request headers: over {self.limits.max_headers} (settings.max_headers)")

    def on_headers_complete(self) -> None:
        self._in_body, self._head_since = True, None
        self._body_due = self.loop.time() + self.limits.header_timeout_s
        if not self._refused:  # the parser goes on to the end of what it was given: nothing of it runs
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body, self._head_room, self._body_due = False, self.limits.max_header_bytes, None
        if not self._refused:
            super().on_message_complete()

    # -- writing -------------------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._unsent = self.transport.get_write_buffer_size()
            self._send_timer = self.loop.call_later(self.limits.send_timeout_s, self._send_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    # -- limits --------------------------------------------------------------------------------

    def _answering(self) -> bool:
        """Whether an answer to an earlier request of this connection is still being written."""
        return self.cycle is not None and not self.cycle.response_complete

    def _check_head(self) -> None:
        """Refuse a request head awaited for longer than the timeout; else look again when it would be."""
        self._head_timer = None
        if self.transport.get_protocol() is not self:  # upgraded (a WebSocket): no longer this protocol's
            return
        timeout, since, now = self.limits.header_timeout_s, self._head_since, self.loop.time()
        if self._body_due is not None and now >= self._body_due:
            self._body_too_slow()
            return
        if since is None or self._answering():  # no head awaited, or a pipelined one waits on the server
            due = now + timeout if self._body_due is None else min(now + timeout, self._body_due)
        elif now - since < timeout:
            due = since + timeout
        elif self._head_room < self.limits.max_header_bytes:
            self._refuse(408, f"request headers not complete within {timeout:g} s (settings.header_timeout)")
            return
        else:  # nothing asked: closed as an idle kept-alive connection is
            self._stop_timers()
            self.transport.close()
            return
        self._head_timer = self.loop.call_at(due, self._check_head)

    def _body_too_slow(self) -> None:
        """A body that stopped, or comes slower than MIN_BODY_BYTES_PER_S: 408 and closed. When the app has answered
        already (a 401 before the body was read, say), the connection is just closed: nothing more of it is read."""
        rate = f"{MIN_BODY_BYTES_PER_S} bytes/s after {self.limits.header_timeout_s:g} s (settings.header_timeout)"
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            self._refused = True
            self._stop_timers()
            self.transport.close()
            _warn(408, f"closed a connection whose request body came slower than {rate}, after its answer")
            return
        if cycle is not None:  # the app waits on the body: what it may still answer goes nowhere, this 408 goes
            cycle.disconnected = True
        self._refuse(408, f"request body too slow: less than {rate}", over_the_app=True)

    def _send_timed_out(self) -> None:
        self._send_timer = None
        unsent = self.transport.get_write_buffer_size()
        if unsent < self._unsent:  # the client took some: it gets another period
            self._unsent = unsent
            self._send_timer = self.loop.call_later(self.limits.send_timeout_s, self._send_timed_out)
            return
        timeout = self.limits.send_timeout_s
        _warn(0, f"disconnected a client that took none of its answer for {timeout:g} s (settings.send_timeout)")
        sock = self.transport.get_extra_info("socket")
        if sock is not None:  # a reset, so the system drops the unsent bytes too instead of keeping them to send
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def _stop_timers(self) -> None:
        for timer in (self._head_timer, self._send_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._send_timer = None

    def _refuse(self, status: int, message: str, over_the_app: bool = False) -> None:
        """Answer `status` with a JSON message (unless an answer is under way, or `over_the_app`, one that has not
        begun) and close the connection."""
        self._refused = True
        self._stop_timers()
        if over_the_app or not self._answering():
            body = json.dumps({"message": message}).encode()
            head = (
                f"HTTP/1.1 {status} {REASONS[status]}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            self.transport.write(head.encode() + body)
        self.transport.close()
        _warn(status, f"refused a connection with {status}: {message}")


def _warn(kind: int, message: str) -> None:
    now = time.monotonic()
    if now - _last_warned.get(kind, -WARN_EVERY_S) >= WARN_EVERY_S:
        _last_warned[kind] = now
        log.warning("%s (more like it are not logged for %g s)", message, WARN_EVERY_S)
