"""How `proxy serve` writes answers: a response's head goes out with its body, a streamed head at once."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from proxy.listener import OneWriteHttpProtocol, _HeadWithBody
from tests.servers import serve_in_thread

FIRST_PIECE_AFTER_S = 0.5


class Sent:
    """The socket side of a transport: what was written, one entry per write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


async def test_a_head_goes_out_with_its_body_and_alone_by_the_next_loop_turn() -> None:
    sent = Sent()
    transport = _HeadWithBody(sent)  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"{}")
    assert sent.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]  # one send, not two
    transport.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    assert len(sent.writes) == 1  # held for the body
    await asyncio.sleep(0)
    assert sent.writes[-1] == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"  # no longer than a loop turn
    transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    transport.close()
    assert sent.writes[-1] == b"HTTP/1.1 204 No Content\r\n\r\n" and sent.closed  # closing sends what is held
    assert transport.get_write_buffer_size() == 0  # the rest is the socket's transport


async def small(request: Request) -> JSONResponse:
    return JSONResponse({"reply": "hi"})


async def slow_stream(request: Request) -> StreamingResponse:
    async def pieces() -> AsyncIterator[bytes]:
        await asyncio.sleep(FIRST_PIECE_AFTER_S)
        yield b"data: first\n\n"

    return StreamingResponse(pieces(), media_type="text/event-stream")


def test_a_served_answer_arrives_whole_and_a_streamed_head_before_its_first_piece() -> None:
    app = Starlette(routes=[Route("/small", small), Route("/stream", slow_stream)])
    with serve_in_thread(app, http=OneWriteHttpProtocol) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\nGET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while b'{"reply":"hi"}' not in received:
                received += conn.recv(65536)
            assert received.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 14\r\n" in received
            asked = time.monotonic()
            while b"text/event-stream" not in received:
                received += conn.recv(65536)
            assert time.monotonic() - asked < FIRST_PIECE_AFTER_S / 2  # the head did not wait for the piece
            assert b"first" not in received
            while b"data: first" not in received:
                received += conn.recv(65536)
