"""The live upstream client as an attacker's server sees it: whatever the upstream sends, or a rendered header
holds, the client keeps its memory bounded, its connections in step and its requests framed as sent.

These are behaviour tests of the live transport, driven as the engine drives it (through `Engine`, or
the transport's `handle_async_request`), against raw loopback servers that answer byte for byte.
Any correct httpx transport passes them: `live_transport` is the one place that names the client.
"""

from __future__ import annotations

import asyncio
import tracemalloc
import zlib
from typing import Any

import httpx
import pytest

from proxy.connection import CompiledConnection, compile_connection
from proxy.engine import CallContext, Engine
from proxy.models import parse_spec
from proxy.transports.http11 import Http11Transport
from tests.raw_http import Handler, header_values, ok, raw_server, read_request

MB = 1024 * 1024


def live_transport(keep_alive_expiry: float | None = None) -> httpx.AsyncBaseTransport:
    """The live client under test."""
    if keep_alive_expiry is None:
        return Http11Transport()
    return Http11Transport(keep_alive_expiry=keep_alive_expiry)


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
    data = {
        "name": "c",
        "productId": "p",
        "url": url,
        "type": "CONVERSATION",
        "authType": "NONE",
        "inputTemplate": '{"m": "{{ input.m }}"}',
        "outputMapping": {"output": "$.reply"},
        "timeout": 5,
        **fields,
    }
    return compile_connection("ec_1", parse_spec(data), "2026-01-01T00:00:00Z", allow_http=True)


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

    transport = live_transport(keep_alive_expiry=0.2)
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
