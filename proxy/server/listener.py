"""The listening socket of `proxy serve`, bound before uvicorn starts, and how answers leave it.

Binding first turns a port in use into one clear line (instead of uvicorn's log and a traceback),
and the server's URL is announced only once uvicorn accepts connections on it. uvicorn writes an
answer's head and its body in two socket sends; `OneWriteHttpProtocol` sends them as one (a replayed
turn spent about a tenth of its CPU on the second send). uvicorn also puts its own `date` and `server: uvicorn` in
front of every answer's headers, so a forward answer carried two of each (the upstream's and ours): the server runs
without them, and `Dated` adds a `date` to the answers that have none.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import time
from collections.abc import Callable
from email.utils import formatdate
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# uvicorn's own headers off: `Dated` dates the answers that carry no `date`, and no answer says `server: uvicorn`.
NO_DEFAULT_HEADERS = {"server_header": False, "date_header": False}

BACKLOG = 2048  # uvicorn's default

REASONS = {
    errno.EADDRINUSE: "the port is in use (another server listens there; choose a free one with --port)",
    errno.EACCES: "permission denied (ports below 1024 need privileges; choose another with --port)",
    errno.EADDRNOTAVAIL: "the address is not one of this machine's (check --host)",
}


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` and listening; OSError (or socket.gaierror) when it cannot be."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


# Set by the Makefile's `make run`, whose port is chosen with `make run PORT=…`, not with --port.
MAKE_RUN_ENV = "PROXY_MAKE_RUN"


def why_not(exc: OSError | OverflowError, port: int | None = None) -> str:
    """Why `listen` failed, in words that say what to do; run from `make run`, a port in use names `make run PORT=`
    with the next port (the one after, each time it is in use too)."""
    if not isinstance(exc, OSError):
        return str(exc)  # a port outside 0-65535 (from the config file)
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if exc.errno == errno.EADDRINUSE and port is not None and os.environ.get(MAKE_RUN_ENV):
        return f"port {port} is in use: run make run PORT={port + 1 if port < 65535 else port - 1}"
    return REASONS.get(exc.errno or 0, exc.strerror or str(exc))


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class AnnouncingServer(uvicorn.Server):
    """A uvicorn server that calls `announce` once its start-up is complete and it accepts connections, and
    notes the signal that stopped it in `stopped_by`."""

    def __init__(self, config: uvicorn.Config, announce: Callable[[], None]) -> None:
        super().__init__(config)
        self.announce = announce
        self.stopped_by: signal.Signals | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """uvicorn's handling (a first signal shuts down gracefully, a second Ctrl-C at once), without noting the
        signal for uvicorn to raise again once shut down (since 0.29): that ends the process by the signal (exit
        -15), or for SIGINT as click's `Aborted!` with exit 1, where the server stopped as it was asked to."""
        if self.stopped_by is None:
            self.stopped_by = signal.Signals(sig)
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.announce()


class _HeadWithBody:
    """A transport that holds a response head until the body's first write, or the next turn of the event
    loop at the latest (a streamed answer's head is never held back waiting for its first piece)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        elif data.startswith(b"HTTP/1.1 ") and data.endswith(b"\r\n\r\n"):
            self._head = data
            asyncio.get_running_loop().call_soon(self._release)
            return
        self._transport.write(data)

    def _release(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self._release()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing each response's head together with its body."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_HeadWithBody(transport))  # type: ignore[arg-type]


class Dated:
    """ASGI middleware: an answer without a `date` header gets one (HTTP's origin servers send it); one that has its
    own (a forward answer with the upstream's) keeps it alone. No `server` header is added: an answer names the
    upstream's server or none."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._second = -1
        self._date = b""

    def _now(self) -> bytes:
        second = int(time.time())
        if second != self._second:  # formatted once a second, as uvicorn does
            self._second, self._date = second, formatdate(second, usegmt=True).encode()
        return self._date

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def dated_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"date" for name, _ in headers):
                    message = {**message, "headers": [(b"date", self._now()), *headers]}
            await send(message)

        await self.app(scope, receive, dated_send)
