"""The live upstream client as an attacker's server sees it: whatever the upstream sends, or a rendered header
holds, the client keeps its memory bounded, its connections in step and its requests framed as sent.

These are behaviour tests of the live transport, driven as the engine drives it (through `Engine`, or
the transport's `handle_async_request`), against raw loopback servers that answer byte for byte.
Any correct httpx transport passes them: `live_transport` is the one place that names the client.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import socket
import ssl
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL

from proxy.connections.compiled import CompiledConnection
from proxy.engine.call import Engine
from proxy.engine.results import CallContext
from proxy.engine.transports.client import AiohttpTransport, is_loopback_host
from tests.helpers import compiled_connection
from tests.raw_http import Handler, answering, header_values, ok, raw_server, read_request

MB = 1024 * 1024


def live_transport(keepalive_timeout: float | None = None) -> httpx.AsyncBaseTransport:
    """The live client under test."""
    if keepalive_timeout is None:
        return AiohttpTransport()
    return AiohttpTransport(keepalive_timeout=keepalive_timeout)


async def send(
    transport: httpx.AsyncBaseTransport, url: str, content: bytes = b'{"q": 1}', headers: Any = None
) -> httpx.Response:
    request = httpx.Request(
        "POST", url, content=content, headers=headers, extensions={"timeout": httpx.Timeout(5).as_dict()}
    )
    response = await transport.handle_async_request(request)
    try:
        await response.aread()
    finally:
        await response.aclose()
    return response


def connection(url: str, **fields: Any) -> CompiledConnection:
    return compiled_connection(allow_http=True, **{"url": url, "timeout": 5, **fields})


async def no_sleep(seconds: float) -> None:
    pass


# -- bodies are capped as they arrive ---------------------------------------------------------------


async def assert_fails_at_a_1_mb_cap(upstream: Handler, holding_less_than: int) -> None:
    """A turn against `upstream` fails on the body cap, and the memory it took at its peak stays bounded."""
    engine = Engine(live_transport(), max_body_bytes=MB)
    async with raw_server(upstream) as (_, url):
        tracemalloc.start()
        try:
            result = await engine.call(connection(f"{url}/chat"), CallContext(input={"m": "hi"}))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await engine.aclose()
    assert result.error == f"the upstream body is larger than the {MB} byte cap"
    assert peak < holding_less_than, f"{peak / MB:.1f} MB held for a 1 MB cap"


ENDLESS_HEADS = {
    "one huge declared chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffff\r\n",
    "a huge Content-Length": b"HTTP/1.1 200 OK\r\nContent-Length: 1099511627775\r\n\r\n",
    "read until close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
}


@pytest.mark.parametrize("head", ENDLESS_HEADS.values(), ids=ENDLESS_HEADS.keys())
async def test_a_body_over_the_cap_fails_as_it_arrives_and_is_never_held_whole(head: bytes) -> None:
    piece = b"x" * (64 * 1024)

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(head)
        for _ in range(16 * MB // len(piece)):  # 16 times the cap, then it waits for the client to give up
            writer.write(piece)
            await writer.drain()
        await reader.read()

    await assert_fails_at_a_1_mb_cap(endless, holding_less_than=6 * MB)


async def test_a_compressed_body_that_inflates_past_the_cap_fails_before_it_is_inflated_whole() -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip
    zeros = bytes(MB)
    packed = b"".join(packer.compress(zeros) for _ in range(64)) + packer.flush()  # 64 MB in ~64 KB

    async def bomb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed))
        writer.write(packed)
        await writer.drain()
        await reader.read()

    await assert_fails_at_a_1_mb_cap(bomb, holding_less_than=16 * MB)


# -- a connection out of step is never reused ------------------------------------------------------

TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("hang_up", [True, False], ids=["408 then close", "408 left waiting"])
async def test_an_answer_sent_unasked_to_an_idle_connection_is_never_taken_for_the_next_reply(hang_up: bool) -> None:
    connections = 0

    async def times_out_idle_connections(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        number = connections
        await read_request(reader)
        writer.write(ok(b"answer %d" % number))
        await writer.drain()
        if number == 1:
            await asyncio.sleep(0.05)  # idle now: the server gives up on it, as servers do
            writer.write(TIMEOUT_408)
            await writer.drain()
            if hang_up:
                return
        await reader.read()

    transport = live_transport()
    async with raw_server(times_out_idle_connections) as (server, url):
        assert (await send(transport, url)).content == b"answer 1"
        await asyncio.sleep(0.2)
        second = await send(transport, url)
        await transport.aclose()
    assert (second.status_code, second.content) == (200, b"answer 2")
    assert server.connections == 2


async def test_bytes_past_the_end_of_an_answer_are_never_read_as_the_next_answer() -> None:
    connections = 0

    async def says_too_much(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        extra = ok(b"stale") if connections == 1 else b""  # an answer to a request nobody sent yet
        writer.write(ok(b"answer %d" % connections) + extra)
        await writer.drain()
        await reader.read()

    transport = live_transport()
    async with raw_server(says_too_much) as (server, url):
        assert (await send(transport, url)).content == b"answer 1"
        second = await send(transport, url)
        await transport.aclose()
    assert second.content == b"answer 2" and server.connections == 2


async def test_a_connection_whose_answer_was_not_read_to_its_end_is_never_reused() -> None:
    connections = 0

    async def long_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        number = connections
        while True:
            await read_request(reader)
            writer.write(ok(b"answer %d " % number + b"." * 200_000))
            await writer.drain()

    transport = live_transport()
    async with raw_server(long_answers) as (server, url):
        request = httpx.Request("GET", url, extensions={"timeout": httpx.Timeout(5).as_dict()})
        abandoned = await transport.handle_async_request(request)
        await abandoned.aclose()  # the body is left unread
        second = await send(transport, url)
        await transport.aclose()
    assert second.content.startswith(b"answer 2 ") and server.connections == 2


async def test_an_idle_connection_expires_instead_of_being_reused_forever() -> None:
    ended: list[int] = []
    connections = 0

    async def keeps_connections_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        number = connections
        try:
            while True:
                await read_request(reader)
                writer.write(ok(b"answer %d" % number))
                await writer.drain()
        except asyncio.IncompleteReadError:
            ended.append(number)  # the client closed it

    transport = live_transport(keepalive_timeout=0.2)
    async with raw_server(keeps_connections_open) as (server, url):
        assert (await send(transport, url)).content == b"answer 1"
        assert (await send(transport, url)).content == b"answer 1"  # within the expiry: kept alive
        await asyncio.sleep(0.5)
        third = await send(transport, url)
        await asyncio.sleep(0.05)
        await transport.aclose()
    assert third.content == b"answer 2" and server.connections == 2
    assert ended[:1] == [1]  # the expired one was closed, not left open


# -- chunk sizes are hex digits, nothing else -------------------------------------------------------


def chunked_answer(size: bytes, data: bytes = b"0123456789abcdef") -> bytes:
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%s\r\n%s\r\n0\r\n\r\n" % (size, data)


@pytest.mark.parametrize("size", [b"0x10", b"1_0", b"+10", b"-0", b" 10", b"1 0", b"10\x00"])
async def test_a_chunk_size_that_is_not_plain_hex_is_a_protocol_error(size: bytes) -> None:
    async with raw_server(lambda reader, writer: answer_once(reader, writer, chunked_answer(size))) as (_, url):
        transport = live_transport()
        with pytest.raises(httpx.RemoteProtocolError):
            await send(transport, url)
        await transport.aclose()


@pytest.mark.parametrize("size", [b"10", b"0010", b"10;name=value", b'10 ;name="quoted;value"'])
async def test_hex_chunk_sizes_with_extensions_are_read(size: bytes) -> None:
    async with raw_server(lambda reader, writer: answer_once(reader, writer, chunked_answer(size))) as (_, url):
        transport = live_transport()
        assert (await send(transport, url)).content == b"0123456789abcdef"
        await transport.aclose()


async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: bytes) -> None:
    await read_request(reader)
    writer.write(answer)
    await writer.drain()
    await reader.read()


# -- requests go out framed as sent, with nothing a header could inject -----------------------------


@pytest.mark.parametrize(
    "framing",
    [{"Content-Length": "0"}, {"Content-Length": "4"}, {"Transfer-Encoding": "chunked"}],
    ids=["Content-Length: 0", "Content-Length: 4", "Transfer-Encoding: chunked"],
)
async def test_a_callers_framing_header_never_frames_the_body(framing: dict[str, str]) -> None:
    seen: asyncio.Queue[tuple[bytes, bytes, bytes]] = asyncio.Queue()

    async def records(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await read_request(reader)
        writer.write(ok(b'{"reply": "ok"}'))
        await writer.drain()
        try:  # a smuggled body would arrive here as the start of a second request
            after = await asyncio.wait_for(reader.read(1000), 0.3)
        except TimeoutError:
            after = b""
        await seen.put((head, body, after))
        await reader.read()

    engine = Engine(live_transport())
    async with raw_server(records) as (_, url):
        result = await engine.call(connection(f"{url}/chat", headers=framing), CallContext(input={"m": "hi"}))
        head, body, after = await asyncio.wait_for(seen.get(), 5)
        await engine.aclose()
    assert result.ok and result.output == "ok"
    assert body == b'{"m": "hi"}' and after == b""
    lengths, encodings = header_values(head, b"content-length"), header_values(head, b"transfer-encoding")
    assert len(lengths) + len(encodings) == 1, head  # one framing, the body's own
    assert lengths in ([b"%d" % len(body)], [])


CONTROL_CHARACTERS = ["\x00", "\x0b", "\x1f", "\x7f", "\r", "\n", "\r\n"]


@pytest.mark.parametrize("char", CONTROL_CHARACTERS, ids=[repr(c) for c in CONTROL_CHARACTERS])
async def test_a_rendered_header_with_a_control_character_fails_the_call_unsent_and_unretried(char: str) -> None:
    async def answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_once(reader, writer, ok(b'{"reply": "ok"}'))

    conn_fields = {"headers": {"X-Session": "sess {{ session_id }}"}, "retryEnabled": True, "retryMaxAttempts": 3}
    engine = Engine(live_transport(), sleep=no_sleep)
    async with raw_server(answers) as (server, url):
        ctx = CallContext(input={"m": "hi"}, session_id=f"abc{char}X-Injected: 1")
        result = await engine.call(connection(f"{url}/chat", **conn_fields), ctx)
        await engine.aclose()
    assert server.connections == 0  # nothing was sent
    assert result.error is not None and "X-Session" in result.error and "abc" not in result.error
    assert len(result.attempts) == 1  # the same request would fail the same way: no retry


@pytest.mark.parametrize(
    ("name", "value"),
    [
        *[(b"X-Note", b"a%cb" % char) for char in (0, 0x0B, 0x1B, 0x7F)],
        *[(name, b"v") for name in (b"X-No\x00te", b"X-Note\r\nX-Injected", b"X Note", b"X-Note:")],
    ],
)
async def test_a_header_name_or_value_with_a_control_character_is_refused_before_sending(
    name: bytes, value: bytes
) -> None:
    async with raw_server(lambda reader, writer: answer_once(reader, writer, ok())) as (server, url):
        transport = live_transport()
        with pytest.raises(httpx.LocalProtocolError):
            await send(transport, url, headers=[(name, value)])
        await transport.aclose()
    assert server.connections == 0


async def test_tab_and_non_ascii_bytes_in_a_header_value_are_sent_as_they_are() -> None:
    heads: list[bytes] = []

    async def records(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append((await read_request(reader))[0])
        writer.write(ok())
        await writer.drain()
        await reader.read()

    async with raw_server(records) as (_, url):
        transport = live_transport()
        assert (await send(transport, url, headers=[(b"X-Note", b"a\tb caf\xc3\xa9")])).status_code == 200
        await transport.aclose()
    assert header_values(heads[0], b"x-note") == [b"a\tb caf\xc3\xa9"]


async def test_a_streamed_request_body_arrives_whole_and_framed() -> None:
    heads: list[tuple[bytes, bytes]] = []

    async def records(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await read_request(reader))
        writer.write(ok())
        await writer.drain()
        await reader.read()

    async def parts() -> Any:
        for part in (b'{"a": ', b"1}"):
            yield part

    async with raw_server(records) as (_, url):
        transport = live_transport()
        request = httpx.Request("POST", url, content=parts(), extensions={"timeout": httpx.Timeout(5).as_dict()})
        response = await transport.handle_async_request(request)
        await response.aread()
        await response.aclose()
        await transport.aclose()
    assert response.status_code == 200
    head, body = heads[0]
    assert body == b'{"a": 1}'
    assert len(header_values(head, b"content-length")) + len(header_values(head, b"transfer-encoding")) == 1


# -- the HTTP an upstream speaks, spoken back -------------------------------------------------------


async def test_keep_alive_reuses_one_connection_for_sequential_requests() -> None:
    async with raw_server(answering(ok(b"one"), ok(b"two"), ok(b"three"))) as (server, url):
        transport = live_transport()
        bodies = [(await send(transport, f"{url}/chat")).content for _ in range(3)]
        await transport.aclose()
    assert bodies == [b"one", b"two", b"three"] and server.connections == 1


async def test_the_request_arrives_as_sent_with_no_header_of_the_clients_own() -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(ok())

    async with raw_server(handler) as (_, url):
        transport = live_transport()
        await send(transport, f"{url}/chat/a%20b?x=1&y=2", headers={"X-Custom": "v"})
        await transport.aclose()
    head, body = seen[0]
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /chat/a%20b?x=1&y=2 HTTP/1.1"
    assert "x-custom: v" in [line.lower() for line in lines] and f"Host: {url[7:]}" in lines
    names = {line.split(":")[0].lower() for line in lines[1:] if line}
    assert names == {"host", "x-custom", "content-length"}, head  # no User-Agent, Accept or Content-Type added
    assert body == b'{"q": 1}'


async def test_chunked_gzip_deflate_and_read_to_close_bodies_are_decoded_as_httpx_would() -> None:
    document = b'{"reply": "unzipped"}'
    chunks = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    packed = gzip.compress(document)
    zipped = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(packed), packed)
    deflated = zlib.compress(document)
    flate = b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: %d\r\n\r\n%s" % (len(deflated), deflated)
    to_close = b"HTTP/1.0 200 OK\r\n\r\nuntil the end"
    async with raw_server(answering(chunked, zipped, flate)) as (server, url):
        transport = live_transport()
        assert (await send(transport, url)).content == b"hello world"
        gzipped = await send(transport, url)
        assert gzipped.json() == {"reply": "unzipped"} and gzipped.headers["content-encoding"] == "gzip"
        assert (await send(transport, url)).json() == {"reply": "unzipped"}
        assert server.connections == 1
    async with raw_server(answering(to_close, close_after=True)) as (_, url):
        assert (await send(transport, url)).content == b"until the end"
        await transport.aclose()


async def test_interim_answers_are_skipped_and_bodiless_answers_end_at_the_head() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final")
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"
    async with raw_server(answering(interim, no_content, head_answer, ok(b"after"))) as (server, url):
        transport = live_transport()
        assert (await send(transport, url)).content == b"final"
        assert (await send(transport, url)).status_code == 204
        head = httpx.Request("HEAD", url, extensions={"timeout": httpx.Timeout(5).as_dict()})
        response = await transport.handle_async_request(head)
        assert await response.aread() == b""
        await response.aclose()
        assert (await send(transport, url)).content == b"after"  # the connection stayed in step
        await transport.aclose()
    assert server.connections == 1


async def test_a_redirect_is_answered_not_followed() -> None:
    moved = b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n"
    async with raw_server(answering(moved)) as (server, url):
        transport = live_transport()
        response = await send(transport, f"{url}/chat")
        await transport.aclose()
    assert (response.status_code, response.headers["location"]) == (302, "/elsewhere")
    assert server.connections == 1


async def test_a_cookie_an_upstream_sets_is_never_sent_back() -> None:
    heads: list[bytes] = []

    async def sets_a_cookie(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            heads.append((await read_request(reader))[0])
            writer.write(ok(extra=b"Set-Cookie: sid=session-a; Path=/\r\n"))
            await writer.drain()

    async with raw_server(sets_a_cookie) as (_, url):
        named = url.replace("127.0.0.1", "localhost")  # a cookie jar keeps no cookie an IP address sets
        transport = live_transport()
        await send(transport, f"{named}/chat")
        await send(transport, f"{named}/chat")
        await transport.aclose()
    assert len(heads) == 2 and header_values(heads[1], b"cookie") == []


async def test_an_idle_connection_the_server_closed_is_replaced_without_an_error() -> None:
    async with raw_server(answering(ok(b"first"), close_after=True)) as (server, url):
        transport = live_transport()
        assert (await send(transport, url)).content == b"first"
        await asyncio.sleep(0.05)  # the server has closed the kept-alive connection by now
        assert (await send(transport, url)).content == b"first"
        await transport.aclose()
    assert server.connections == 2


async def answer_once_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(ok(b"answered"))
    await read_request(reader)  # the next request arrives as the server gives up on the connection


async def test_a_get_racing_the_servers_keep_alive_close_is_sent_again_on_a_new_connection() -> None:
    async with raw_server(answer_once_then_hang_up) as (server, url):
        transport = live_transport()
        for _ in range(2):
            request = httpx.Request("GET", url, extensions={"timeout": httpx.Timeout(5).as_dict()})
            response = await transport.handle_async_request(request)
            assert await response.aread() == b"answered"
            await response.aclose()
        await transport.aclose()
    assert server.connections == 2


async def test_a_post_racing_the_servers_keep_alive_close_is_left_to_the_retry_policy() -> None:
    """The server may have acted on a POST it read before hanging up: the client never re-sends one on its own
    (RFC 9112 9.3.1), and the engine's retry policy decides."""
    async with raw_server(answer_once_then_hang_up) as (server, url):
        transport = live_transport()
        assert (await send(transport, url)).content == b"answered"
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await send(transport, url)
        await transport.aclose()
    assert server.connections == 1


async def test_a_server_closing_without_answering_a_new_connection_is_a_protocol_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with raw_server(hang_up) as (server, url):
        transport = live_transport()
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await send(transport, url)
        await transport.aclose()
    assert server.connections == 1


async def test_broken_answers_raise_the_httpx_error_httpcore_would() -> None:
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    garbage = b"SMTP ready\r\n\r\n"
    transport = live_transport()
    async with raw_server(answering(short, close_after=True)) as (_, url):
        with pytest.raises(httpx.RemoteProtocolError, match="cut or malformed"):
            await send(transport, url)
    async with raw_server(answering(garbage, close_after=True)) as (_, url):
        with pytest.raises(httpx.RemoteProtocolError, match="malformed"):
            await send(transport, url)
    with pytest.raises(httpx.ConnectError):
        await send(transport, "http://127.0.0.1:9/chat")
    with pytest.raises(httpx.UnsupportedProtocol):
        await send(transport, "ftp://127.0.0.1/chat")
    await transport.aclose()


async def test_a_failed_answer_gives_its_connection_slot_back() -> None:
    conflicting = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
    async with raw_server(answering(conflicting, close_after=True)) as (_, url):
        transport = AiohttpTransport(max_connections_per_origin=1)
        for _ in range(2):  # with the slot kept, the second request would wait forever
            with pytest.raises(httpx.RemoteProtocolError):
                await asyncio.wait_for(send(transport, url), 2)
        await transport.aclose()


async def test_read_timeout_and_the_per_origin_connection_cap() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.1)
            writer.write(ok(b"slow"))

    async with raw_server(slow) as (server, url):
        transport = AiohttpTransport(max_connections_per_origin=2)
        answers = await asyncio.gather(*(send(transport, url) for _ in range(6)))
        assert [a.content for a in answers] == [b"slow"] * 6
        assert server.most_open == 2
        request = httpx.Request("POST", url, content=b"{}", extensions={"timeout": {"read": 0.02}})
        with pytest.raises(httpx.ReadTimeout):
            await transport.handle_async_request(request)
        await transport.aclose()


async def test_a_connect_that_gets_no_answer_is_a_connect_timeout() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # never accepted: once its queue is full, further connects hang
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        transport = live_transport()
        request = httpx.Request("GET", f"http://127.0.0.1:{port}/", extensions={"timeout": {"connect": 0.2}})
        with pytest.raises(httpx.ConnectTimeout):
            await asyncio.wait_for(transport.handle_async_request(request), 5)
        await transport.aclose()
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_a_body_is_handed_on_as_it_arrives_not_when_it_ends() -> None:
    first_seen = asyncio.Event()

    async def streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await first_seen.wait()  # the rest comes only once the client has handed on the first piece
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with raw_server(streams) as (_, url):
        transport = live_transport()
        request = httpx.Request("GET", url, extensions={"timeout": httpx.Timeout(5).as_dict()})
        response = await transport.handle_async_request(request)
        pieces = []
        async for piece in response.aiter_raw():
            pieces.append(piece)
            first_seen.set()
        await response.aclose()
        await transport.aclose()
    assert pieces == [b"first", b"second"]


# -- proxies and TLS, as the environment and the system say ----------------------------------------


async def test_http_proxy_serves_a_remote_host_unless_no_proxy_excludes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    request_lines: list[bytes] = []

    async def forward_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        request_lines.append(head.split(b"\r\n")[0])
        writer.write(ok(b"via the proxy"))
        await writer.drain()
        await reader.read()

    remote = "http://upstream.test/chat"  # never resolved: the proxy is asked for it
    async with raw_server(forward_proxy) as (_, proxy_url):
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        transport = live_transport()
        assert (await send(transport, remote)).content == b"via the proxy"
        await transport.aclose()
        monkeypatch.setenv("NO_PROXY", "upstream.test")
        transport = AiohttpTransport()
        # Sending it would look the name up in DNS: the lookup that decides the route is checked instead.
        assert transport._proxy(httpx.URL(remote), URL(remote)) == (None, None)
    assert request_lines == [f"POST {remote} HTTP/1.1".encode()]  # the absolute URI a forward proxy reads


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_an_environment_proxy_never_receives_the_token_for_a_loopback_upstream(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    """HTTP_PROXY (any case) names a listener, NO_PROXY is unset: a bearer call to a plain-http loopback upstream
    goes straight to it, and the proxy gets no connection at all."""
    heads: list[bytes] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        heads.append(head)
        writer.write(ok(b"direct"))
        await writer.drain()
        await reader.read()

    async with raw_server(answering(ok(b"via the proxy"))) as (proxy, proxy_url), raw_server(upstream) as (_, url):
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        transport = live_transport()
        answer = await send(
            transport, url.replace("127.0.0.1", host) + "/chat", headers={"Authorization": "Bearer t-0k3n-99"}
        )
        await transport.aclose()
    assert answer.content == b"direct"
    assert proxy.connections == 0
    (head,) = heads
    assert head.startswith(b"POST /chat HTTP/1.1") and header_values(head, b"authorization") == [b"Bearer t-0k3n-99"]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LocalHost.", True),
        ("127.0.0.1", True),
        ("127.9.8.7", True),
        ("127.1", True),  # shorthand the resolver reads as 127.0.0.1
        ("2130706433", True),  # 127.0.0.1 as one integer
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_what_counts_as_a_loopback_upstream(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context for 127.0.0.1 and a client context that trusts it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return server, ssl.create_default_context(cafile=str(cert_file))


async def test_https_is_verified(tmp_path: Path) -> None:
    server_tls, client_tls = self_signed(tmp_path)
    async with raw_server(answering(ok(b"secure"), ok(b"again")), tls=server_tls) as (server, url):
        untrusting = live_transport()  # the system's CA store, as in production
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await send(untrusting, url)
        await untrusting.aclose()
        trusting = AiohttpTransport(ssl_context=client_tls)
        assert (await send(trusting, url)).content == b"secure"
        assert (await send(trusting, url)).content == b"again"
        await trusting.aclose()
    assert server.connections == 1  # one kept-alive TLS connection (the refused handshake never got this far)


def test_a_transport_serves_one_event_loop_after_another() -> None:
    """`proxy run` and the tests call a server's engine under `asyncio.run`: a second loop gets a session too."""

    async def call(transport: httpx.AsyncBaseTransport) -> bytes:
        async with raw_server(answering(ok(b"answered"))) as (_, url):
            return (await send(transport, url)).content

    transport = live_transport()
    assert asyncio.run(call(transport)) == b"answered"
    assert asyncio.run(call(transport)) == b"answered"
    asyncio.run(transport.aclose())
