"""How `proxy serve` writes answers: a response's head goes out with its body, a streamed head at once, and a
forward answer's `Date` and `Server` are the upstream's alone."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from proxy.server.listener import OneWriteHttpProtocol, _HeadWithBody
from tests.raw_http import header_values, raw_server, read_request
from tests.servers import proxy_serving, serve_in_thread

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


UPSTREAM_DATE = b"Tue, 01 Jan 2030 00:00:00 GMT"


async def upstream_with_date_and_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An upstream naming its own `Date` and `Server`: a JSON answer, or a chunked event stream on `/sse`."""
    while True:
        head, _ = await read_request(reader)
        own = b"HTTP/1.1 200 OK\r\nDate: " + UPSTREAM_DATE + b"\r\nServer: upstream-9\r\n"
        if b" /sse " in head.split(b"\r\n")[0]:
            event = b'data: {"reply": "hi"}\n\n'
            chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event)
            writer.write(own + b"Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
        else:
            body = b'{"reply": "hi"}'
            writer.write(own + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()


async def raw_get(base: str, path: str) -> bytes:
    """`GET path` of `base`, read off the socket to its end: the head exactly as the server wrote it."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def test_a_forward_answer_carries_the_upstreams_date_and_server_once_and_none_of_ours(tmp_path: Path) -> None:
    """Attack on the answer's framing: uvicorn put its own `date` and `server: uvicorn` before the upstream's, so a
    forward answer carried two `Date` headers and (joined by a client) `server: uvicorn, uvicorn`. Live, recorded
    and replayed, whole and streamed, the answer must carry the upstream's `Date` and `Server` alone; the server's
    own routes one `date` of their own and no `server`."""
    async with raw_server(upstream_with_date_and_server) as (_, upstream_url):
        (tmp_path / "proxy.yaml").write_text(
            "settings: {allow_http: true}\n"
            "connections:\n"
            f"  - {{name: fwd, product_id: p, type: CONVERSATION, url: '{upstream_url}/chat', auth_type: NONE,\n"
            '      input_template: \'{"message": "{{ input.user_message }}"}\', output_mapping: {output: $.reply}}\n'
        )
        args = ["--config", str(tmp_path / "proxy.yaml"), "--data-dir", str(tmp_path / "data")]
        args += ["--cassettes", str(tmp_path / "cassettes"), "--record-mode", "new_episodes"]
        with proxy_serving(*args) as served:
            answers = {
                f"{path} {turn}": await raw_get(served.url, f"/forward/fwd/{path}")
                for turn in ("recorded", "hit")
                for path in ("chat", "sse")
            }
            own = await raw_get(served.url, "/healthz")
    for name, answer in answers.items():
        head = answer.partition(b"\r\n\r\n")[0]
        assert head.startswith(b"HTTP/1.1 200 "), (name, head)
        assert b'"reply"' in answer, (name, answer)
        streamed, outcome = name.startswith("sse"), name.split()[1]
        assert header_values(head, b"x-proxy-cassette") == [outcome.encode()], (name, head)
        assert (b"text/event-stream" in head) is streamed, (name, head)
        assert header_values(head, b"date") == [UPSTREAM_DATE], (name, head)
        assert header_values(head, b"server") == [b"upstream-9"], (name, head)
    own_head = own.partition(b"\r\n\r\n")[0]
    assert own_head.startswith(b"HTTP/1.1 200 ")
    (date,) = header_values(own_head, b"date")
    assert abs(parsedate_to_datetime(date.decode()).timestamp() - time.time()) < 60
    assert header_values(own_head, b"server") == []
