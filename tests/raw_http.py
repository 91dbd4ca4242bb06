"""Raw loopback HTTP/1.1 servers for testing an upstream client: each reads requests and writes answers
byte for byte as a test scripts them, so broken and hostile answers are as easy to send as good ones."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """Counts connections and hands each to `handler`, which reads requests and writes raw answers."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open_now = 0
        self.most_open = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_now -= 1
            writer.close()


@asynccontextmanager
async def raw_server(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[RawServer, str]]:
    state = RawServer(handler)
    server = await asyncio.start_server(state.serve, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield state, f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.close()


def header_values(head: bytes, name: bytes) -> list[bytes]:
    """The values of every `name` header in a request head, in order."""
    values = []
    for line in head.split(b"\r\n")[1:]:
        key, colon, value = line.partition(b":")
        if colon and key.strip().lower() == name:
            values.append(value.strip())
    return values


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request: its head and its body, framed by Content-Length or chunked, as a server would read it."""
    head = await reader.readuntil(b"\r\n\r\n")
    if b"chunked" in b",".join(header_values(head, b"transfer-encoding")).lower():
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass
        return head, body
    lengths = header_values(head, b"content-length")
    return head, await reader.readexactly(int(lengths[0]) if lengths else 0)


def answering(*answers: bytes, close_after: bool = False) -> Handler:
    """Each request on a connection gets the next answer; the connection then stays open (or closes)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()
        if not close_after:
            await reader.read()  # until the client closes

    return handler


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)
