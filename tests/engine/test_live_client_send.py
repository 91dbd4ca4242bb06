"""The live client sends a request the moment the engine hands it over: requests that arrive together each
leave at once, none waits for the others to be handled (a stream's time to first byte waited that long)."""

from __future__ import annotations

import asyncio
import socket
import threading

import httpx

from proxy.engine.transports.client import AiohttpTransport
from tests.raw_http import raw_server, read_request

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
BODY = b'{"q": "a body, as a forwarded POST has"}'


class BodyWatcher:
    """A loopback server in a thread of its own, so it reads what the client sent while the client's event loop is
    busy: `arrived` is set once a request with BODY has come in whole. Each request gets ANSWER."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1/stream"
        self.arrived = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            seen = b""
            while data := conn.recv(65536):
                seen += data
                while b"\r\n\r\n" in seen and seen.partition(b"\r\n\r\n")[2].startswith(BODY):
                    seen = seen.partition(b"\r\n\r\n")[2][len(BODY) :]
                    self.arrived.set()
                    conn.sendall(ANSWER)

    def close(self) -> None:
        self.listener.close()


def request(url: str) -> httpx.Request:
    return httpx.Request("POST", url, content=BODY, extensions={"timeout": httpx.Timeout(5).as_dict()})


async def test_a_request_is_on_the_wire_before_the_requests_queued_behind_it_run() -> None:
    watcher = BodyWatcher()
    transport = AiohttpTransport()
    try:
        first = await transport.handle_async_request(request(watcher.url))  # a kept-alive connection to reuse
        await first.aread()
        await first.aclose()
        watcher.arrived.clear()
        seen_while_queued: list[bool] = []

        def queued_behind_it() -> None:
            # The next request handled on this loop, as the next of many streams started at once: it runs (and
            # blocks the loop here) before any callback the request scheduled for later.
            seen_while_queued.append(watcher.arrived.wait(1))

        sending = asyncio.ensure_future(transport.handle_async_request(request(watcher.url)))
        asyncio.get_running_loop().call_soon(queued_behind_it)
        response = await sending
        await response.aread()
        await response.aclose()
        assert response.content == b"ok"
        assert seen_while_queued == [True]
    finally:
        await transport.aclose()
        watcher.close()


async def test_a_body_larger_than_the_socket_takes_at_once_arrives_whole() -> None:
    """A body the socket cannot take in one write: its writer waits for the socket to drain, and the rest of it
    is sent from there."""
    body = bytes(range(256)) * (16 * 1024)  # 4 MB
    received: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, got = await read_request(reader)
        received.append(got)
        writer.write(ANSWER)
        await writer.drain()

    transport = AiohttpTransport()
    async with raw_server(handler) as (_, url):
        try:
            response = await transport.handle_async_request(
                httpx.Request("POST", f"{url}/up", content=body, extensions={"timeout": httpx.Timeout(5).as_dict()})
            )
            await response.aread()
            await response.aclose()
        finally:
            await transport.aclose()
    assert response.content == b"ok"
    assert received == [body]
