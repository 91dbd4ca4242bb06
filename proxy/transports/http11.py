"""The live end: a lean HTTP/1.1 client, as an httpx transport.

httpx's default transport (httpcore) spent ~1 ms of CPU per request here, most of it in anyio locks
and cancel scopes and in a pool that scans every connection on every request; it was most of the
forward route's cost. This is the part of HTTP/1.1 an upstream endpoint needs: keep-alive connections
per origin (a free list, popped in O(1)), Content-Length, chunked and read-to-close bodies, TLS through
httpx's own SSL context, and every failure raised as the httpx exception httpcore would have raised,
so the engine's retry rules and messages see what they always saw.

What an upstream (or whoever renders a header) may try, and what stops it:
- a huge body, one huge declared chunk, or a compressed bomb: bodies are read in bounded pieces (small
  ones when compressed), so the caller's cap applies as bytes arrive and memory never holds more than a
  piece beyond it;
- an answer sent ahead (a `408` before closing an idle connection, bytes past an answer's end): a
  connection with unread bytes or a pending end of stream is never used for another request;
- request smuggling: Content-Length comes from the body we send, never from the caller's headers, and a
  header name or value with a control character is refused before anything is sent.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_MAX_CONNECTIONS_PER_ORIGIN = 100  # httpx's own default cap; further requests wait for a free one
DEFAULT_KEEP_ALIVE_EXPIRY_S = 30.0  # an idle connection is closed after this, never reused forever
MAX_HEAD_BYTES = 64 * 1024  # status line and headers of one answer; also its trailers
READ_CHUNK_BYTES = 64 * 1024  # the most of a body held at once, whatever the upstream declares
# httpx inflates each piece whole, and deflate packs up to ~1,000:1: a compressed body is read in small
# pieces so that one piece never inflates past a few MB before the caller's cap can refuse it.
ENCODED_READ_CHUNK_BYTES = 4 * 1024
DEFAULT_PORTS = {"http": 80, "https": 443}
NO_BODY_STATUSES = frozenset({204, 304})
# Framing is ours: it follows the body we send, whatever the caller's headers say.
FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # send `Content-Length: 0` for an empty body, as httpx does
# RFC 9110 token for names and methods; a value may hold tab, visible ASCII and obs-text, no other control.
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
# RFC 9112 chunk-size: hex digits only (no `0x`, `+`, `_` or spaces inside), then extensions after `;`.
CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r\n")

Origin = tuple[str, str, int]


class NothingReceived(Exception):
    """The connection ended before the first byte of an answer."""


class Reader(asyncio.StreamReader):
    """asyncio's stream reader, able to tell whether anything arrived that nobody has read."""

    _buffer: bytearray  # asyncio's own attributes (since 3.4), not in typeshed's stub
    _eof: bool

    def unread(self) -> bool:
        """Bytes or the end of the stream are waiting: what comes next is not an answer to a new request."""
        return bool(self._buffer) or self._eof


class Connection:
    def __init__(self, reader: Reader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reused = False
        self.expiry: asyncio.TimerHandle | None = None  # set while the connection waits in the pool

    @property
    def reusable(self) -> bool:
        """Only a connection in step with the server carries another request: none the server has closed
        (or begun to), none holding bytes it sent unasked, such as a `408` before it hangs up."""
        return not self.writer.is_closing() and not self.reader.unread()

    def close(self) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
        self.writer.close()


class Http11Transport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        max_connections_per_origin: int = DEFAULT_MAX_CONNECTIONS_PER_ORIGIN,
        ssl_context: ssl.SSLContext | None = None,  # default: httpx's (certifi's CA bundle, verified)
        keep_alive_expiry: float = DEFAULT_KEEP_ALIVE_EXPIRY_S,
    ) -> None:
        self.max_connections_per_origin = max_connections_per_origin
        self.keep_alive_expiry = keep_alive_expiry
        self._idle: dict[Origin, list[Connection]] = {}
        self._slots: dict[Origin, asyncio.Semaphore] = {}
        self._ssl_context = ssl_context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{url.scheme}://'.", request=request
            )
        origin = (url.scheme, url.host, url.port or DEFAULT_PORTS[url.scheme])
        timeouts = request.extensions.get("timeout") or {}
        body = await request.aread()
        message = request_head(request, body) + body
        slot = self._slots.get(origin)
        if slot is None:
            slot = self._slots[origin] = asyncio.Semaphore(self.max_connections_per_origin)
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await slot.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no free connection to the upstream in time", request=request) from None
        try:
            conn, version, status, reason, headers = await self._exchange(origin, message, timeouts, request)
        except BaseException:
            slot.release()
            raise
        try:
            framing = body_framing(request.method, version, status, headers)
        except httpx.RemoteProtocolError as exc:
            conn.close()
            slot.release()
            exc.request = request
            raise
        return httpx.Response(
            status,
            headers=headers,
            stream=ResponseBody(self, origin, conn, slot, framing, timeouts.get("read"), request),
            extensions={"http_version": version, "reason_phrase": reason},
            request=request,
        )

    async def _exchange(
        self, origin: Origin, message: bytes, timeouts: dict[str, Any], request: httpx.Request
    ) -> tuple[Connection, bytes, int, bytes, list[tuple[bytes, bytes]]]:
        """Send the request and read the answer's head. A kept-alive connection the server closed just
        before this request is replaced once by a fresh one, as browsers and urllib3 do."""
        while True:
            conn = self._idle_connection(origin) or await self._connect(origin, timeouts, request)
            try:
                conn.writer.write(message)
                await conn.writer.drain()
                version, status, reason, headers = await read_head(conn.reader, timeouts.get("read"), request)
                return conn, version, status, reason, headers
            except NothingReceived:
                conn.close()
                if conn.reused:
                    continue
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response.", request=request
                ) from None
            except (ConnectionError, OSError) as exc:
                conn.close()
                if conn.reused:
                    continue
                raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from exc
            except BaseException:
                conn.close()
                raise

    def _idle_connection(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()  # the most recently used is the likeliest to be still open
            if conn.reusable:
                if conn.expiry is not None:
                    conn.expiry.cancel()
                conn.reused = True
                return conn
            conn.close()
        return None

    def release(self, origin: Origin, conn: Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        idle.append(conn)
        conn.expiry = asyncio.get_running_loop().call_later(self.keep_alive_expiry, self._expire, idle, conn)

    @staticmethod
    def _expire(idle: list[Connection], conn: Connection) -> None:
        if conn in idle:
            idle.remove(conn)
        conn.close()

    async def _connect(self, origin: Origin, timeouts: dict[str, Any], request: httpx.Request) -> Connection:
        scheme, host, port = origin
        tls = self._tls() if scheme == "https" else None
        loop = asyncio.get_running_loop()
        reader = Reader(limit=MAX_HEAD_BYTES, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                # asyncio.open_connection, with our reader
                transport, _ = await loop.create_connection(
                    lambda: protocol, host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out", request=request) from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        return Connection(reader, asyncio.StreamWriter(transport, protocol, reader, loop))

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:  # loading the CA bundle takes ~20 ms: only when https is used
            self._ssl_context = httpx.create_ssl_context()
        return self._ssl_context

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def request_head(request: httpx.Request, body: bytes) -> bytes:
    """The request line and headers. A rendered header must never be able to start a header (or a request)
    of its own, nor a caller's Content-Length or Transfer-Encoding frame the body as something else."""
    method = request.method.encode("ascii", "replace")
    if not TOKEN.fullmatch(method):
        raise httpx.LocalProtocolError(f"the method {request.method!r} is not an HTTP token", request=request)
    lines = [b"%s %s HTTP/1.1" % (method, request.url.raw_path)]
    framed = False
    for name, value in request.headers.raw:
        if not TOKEN.fullmatch(name):
            raise httpx.LocalProtocolError(
                f"the header name {name.decode('latin-1')!r} is not an HTTP token, so the request was not sent",
                request=request,
            )
        if not FIELD_VALUE.fullmatch(value):
            # The value may be a secret: only the name is told.
            raise httpx.LocalProtocolError(
                f"the header {name.decode('latin-1')!r} holds a line break or another control character,"
                " so the request was not sent",
                request=request,
            )
        if name.lower() in FRAMING_HEADERS:
            framed = True
            continue
        lines.append(b"%s: %s" % (name, value))
    if body or framed or request.method in BODY_METHODS:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def read_head(
    reader: asyncio.StreamReader, read_timeout: float | None, request: httpx.Request
) -> tuple[bytes, int, bytes, list[tuple[bytes, bytes]]]:
    """The status line and headers of the final answer (interim 1xx answers are skipped)."""
    while True:
        try:
            async with asyncio.timeout(read_timeout):
                raw = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            raise httpx.ReadTimeout("the upstream sent no answer in time", request=request) from None
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise NothingReceived from None
            raise httpx.RemoteProtocolError("the upstream closed the connection mid-head", request=request) from None
        except asyncio.LimitOverrunError:
            raise httpx.RemoteProtocolError(
                f"the answer's head is larger than {MAX_HEAD_BYTES} bytes", request=request
            ) from None
        except (ConnectionError, OSError) as exc:
            raise NothingReceived from exc
        status_line, *header_lines = raw[:-4].split(b"\r\n")
        version, _, rest = status_line.partition(b" ")
        code, _, reason = rest.partition(b" ")
        if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise httpx.RemoteProtocolError(f"malformed status line {status_line[:80]!r}", request=request)
        headers = []
        for line in header_lines:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise httpx.RemoteProtocolError(f"malformed header line {line[:80]!r}", request=request)
            headers.append((name, value.strip()))
        status = int(code)
        if not 100 <= status < 200 or status == 101:
            return version, status, reason, headers


def header_tokens(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [token.strip().lower() for key, value in headers if key.lower() == name for token in value.split(b",")]


@dataclass(frozen=True)
class Framing:
    """How an answer's body ends: after `length` bytes, at the last chunk, or when the connection closes
    (`length` None and not chunked); whether the connection may carry another request after it; and the
    most of the body read at once."""

    length: int | None
    chunked: bool
    reusable: bool
    piece: int = READ_CHUNK_BYTES


def body_framing(method: str, version: bytes, status: int, headers: list[tuple[bytes, bytes]]) -> Framing:
    connection = header_tokens(headers, b"connection")
    reusable = b"close" not in connection and (version == b"HTTP/1.1" or b"keep-alive" in connection)
    if method == "HEAD" or status in NO_BODY_STATUSES:
        return Framing(0, False, reusable)
    encoded = any(token not in (b"", b"identity") for token in header_tokens(headers, b"content-encoding"))
    piece = ENCODED_READ_CHUNK_BYTES if encoded else READ_CHUNK_BYTES
    if (header_tokens(headers, b"transfer-encoding") or [b""])[-1] == b"chunked":
        return Framing(None, True, reusable, piece)
    lengths = {value.strip() for key, value in headers if key.lower() == b"content-length"}
    if not lengths:
        return Framing(None, False, False, piece)
    length = next(iter(lengths))
    if len(lengths) != 1 or not length.isdigit():
        raise httpx.RemoteProtocolError(f"unusable Content-Length {sorted(lengths)}")
    return Framing(int(length), False, reusable, piece)


class ResponseBody(httpx.AsyncByteStream):
    """Streams one answer's body, then hands the connection back to the pool when it can be reused."""

    def __init__(
        self,
        transport: Http11Transport,
        origin: Origin,
        conn: Connection,
        slot: asyncio.Semaphore,
        framing: Framing,
        read_timeout: float | None,
        request: httpx.Request,
    ) -> None:
        self.transport, self.origin, self.conn, self.slot = transport, origin, conn, slot
        self.framing = framing
        self.read_timeout = read_timeout
        self.request = request
        self.complete = False
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            if self.framing.chunked:
                async for part in self._chunks():
                    yield part
            elif self.framing.length is None:
                while part := await self._read(self.conn.reader.read(self.framing.piece)):
                    yield part
            else:
                remaining = self.framing.length
                while remaining:
                    part = await self._read(self.conn.reader.read(min(remaining, self.framing.piece)))
                    if not part:
                        raise httpx.RemoteProtocolError(
                            f"the upstream closed the connection {remaining} bytes before the body's end",
                            request=self.request,
                        )
                    remaining -= len(part)
                    yield part
            self.complete = True
        except asyncio.IncompleteReadError:
            raise httpx.RemoteProtocolError(
                "the upstream closed the connection mid-body", request=self.request
            ) from None
        except (ConnectionError, OSError) as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=self.request) from exc
        except (ValueError, asyncio.LimitOverrunError):
            raise httpx.RemoteProtocolError("malformed chunked body", request=self.request) from None

    async def _chunks(self) -> AsyncIterator[bytes]:
        reader = self.conn.reader
        while True:
            size_line = CHUNK_SIZE_LINE.fullmatch(await self._read(reader.readuntil(b"\r\n")))
            if size_line is None:
                raise ValueError("malformed chunk size")
            remaining = int(size_line[1], 16)
            if remaining == 0:
                trailers = 0
                while (line := await self._read(reader.readuntil(b"\r\n"))) != b"\r\n":  # ignored
                    trailers += len(line)
                    if trailers > MAX_HEAD_BYTES:
                        raise ValueError("trailers too long")
                return
            while remaining:  # a declared size is a promise, not a reason to hold that much at once
                part = await self._read(reader.read(min(remaining, self.framing.piece)))
                if not part:
                    raise asyncio.IncompleteReadError(part, remaining)
                remaining -= len(part)
                yield part
            if await self._read(reader.readexactly(2)) != b"\r\n":
                raise ValueError("chunk not followed by CRLF")

    async def _read(self, pending: Awaitable[bytes]) -> bytes:
        try:
            async with asyncio.timeout(self.read_timeout):
                return await pending
        except TimeoutError:
            raise httpx.ReadTimeout("the upstream's body stalled", request=self.request) from None

    async def aclose(self) -> None:
        # Never awaits: it also runs while a cancelled turn unwinds.
        if self.closed:
            return
        self.closed = True
        if self.complete and self.framing.reusable and self.conn.reusable:
            self.transport.release(self.origin, self.conn)
        else:
            self.conn.close()
        self.slot.release()
