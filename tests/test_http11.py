"""The live HTTP/1.1 transport against raw loopback servers that answer byte for byte as scripted."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.transports.http11 import Http11Transport
from tests.raw_http import answering, ok, raw_server, read_request


async def get(transport: Http11Transport, url: str, method: str = "POST", **kwargs: object) -> httpx.Response:
    request = httpx.Request(method, url, content=b'{"q": 1}', **kwargs)  # type: ignore[arg-type]
    response = await transport.handle_async_request(request)
    await response.aread()
    await response.aclose()
    return response


async def test_keep_alive_reuses_one_connection_for_sequential_requests() -> None:
    async with raw_server(answering(ok(b"one"), ok(b"two"), ok(b"three"))) as (server, url):
        transport = Http11Transport()
        bodies = [(await get(transport, f"{url}/chat")).content for _ in range(3)]
        await transport.aclose()
    assert bodies == [b"one", b"two", b"three"] and server.connections == 1


async def test_the_request_arrives_as_sent() -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(ok())

    async with raw_server(handler) as (_, url):
        transport = Http11Transport()
        await get(transport, f"{url}/chat/a%20b?x=1&y=2", headers={"X-Custom": "v"})
        await transport.aclose()
    head, body = seen[0]
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /chat/a%20b?x=1&y=2 HTTP/1.1"
    assert "x-custom: v" in [line.lower() for line in lines] and f"Host: {url[7:]}" in lines
    assert body == b'{"q": 1}'


async def test_chunked_gzip_and_read_to_close_bodies() -> None:
    packed = gzip.compress(b'{"reply": "unzipped"}')
    chunks = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    zipped = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(packed), packed)
    to_close = b"HTTP/1.0 200 OK\r\n\r\nuntil the end"
    async with raw_server(answering(chunked, zipped)) as (server, url):
        transport = Http11Transport()
        assert (await get(transport, url)).content == b"hello world"
        assert (await get(transport, url)).json() == {"reply": "unzipped"}
        assert server.connections == 1
    async with raw_server(answering(to_close, close_after=True)) as (_, url):
        assert (await get(transport, url)).content == b"until the end"
        await transport.aclose()


async def test_interim_answers_are_skipped_and_bodiless_answers_end_at_the_head() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final")
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"
    async with raw_server(answering(interim, no_content, head_answer, ok(b"after"))) as (server, url):
        transport = Http11Transport()
        assert (await get(transport, url)).content == b"final"
        assert (await get(transport, url)).status_code == 204
        assert (await get(transport, url, method="HEAD")).content == b""
        assert (await get(transport, url)).content == b"after"  # the connection stayed in step
        await transport.aclose()
    assert server.connections == 1


async def test_an_idle_connection_the_server_closed_is_replaced_without_an_error() -> None:
    async with raw_server(answering(ok(b"first"), close_after=True)) as (server, url):
        transport = Http11Transport()
        assert (await get(transport, url)).content == b"first"
        await asyncio.sleep(0.05)  # the server has closed the kept-alive connection by now
        assert (await get(transport, url)).content == b"first"
        await transport.aclose()
    assert server.connections == 2


async def test_a_request_racing_the_servers_keep_alive_close_is_sent_again_on_a_new_connection() -> None:
    async def answer_once_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(b"answered"))
        await read_request(reader)  # the next request arrives as the server gives up on the connection

    async with raw_server(answer_once_then_hang_up) as (server, url):
        transport = Http11Transport()
        assert (await get(transport, url)).content == b"answered"
        assert (await get(transport, url)).content == b"answered"
        await transport.aclose()
    assert server.connections == 2


async def test_a_server_closing_without_answering_a_new_connection_is_a_protocol_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with raw_server(hang_up) as (server, url):
        transport = Http11Transport()
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await get(transport, url)
    assert server.connections == 1  # a fresh connection is not retried: the request may have been acted on


async def test_broken_answers_raise_the_httpx_error_httpcore_would() -> None:
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    garbage = b"SMTP ready\r\n\r\n"
    async with raw_server(answering(short, close_after=True)) as (_, url):
        transport = Http11Transport()
        with pytest.raises(httpx.RemoteProtocolError, match="7 bytes before the body's end"):
            await get(transport, url)
    async with raw_server(answering(garbage, close_after=True)) as (_, url):
        with pytest.raises(httpx.RemoteProtocolError, match="malformed status line"):
            await get(transport, url)
    with pytest.raises(httpx.ConnectError):
        await get(transport, "http://127.0.0.1:9/chat")
    with pytest.raises(httpx.UnsupportedProtocol):
        await get(transport, "ftp://127.0.0.1/chat")


async def test_a_failed_answer_gives_its_connection_slot_back() -> None:
    conflicting = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
    async with raw_server(answering(conflicting, close_after=True)) as (_, url):
        transport = Http11Transport(max_connections_per_origin=1)
        for _ in range(2):  # with the slot kept, the second request would wait forever
            with pytest.raises(httpx.RemoteProtocolError, match="unusable Content-Length"):
                await asyncio.wait_for(get(transport, url), 2)
        await transport.aclose()


async def test_a_header_value_with_a_line_break_is_never_sent() -> None:
    async with raw_server(answering(ok())) as (server, url):
        transport = Http11Transport()
        with pytest.raises(httpx.LocalProtocolError, match="line break"):
            await get(transport, url, headers={"X-Note": "a\r\nX-Injected: 1"})
    assert server.connections == 0


async def test_read_timeout_and_the_per_origin_connection_cap() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.1)
            writer.write(ok(b"slow"))

    async with raw_server(slow) as (server, url):
        transport = Http11Transport(max_connections_per_origin=2)
        answers = await asyncio.gather(*(get(transport, url) for _ in range(6)))
        assert [a.content for a in answers] == [b"slow"] * 6
        assert server.most_open == 2
        with pytest.raises(httpx.ReadTimeout):
            await get(transport, url, extensions={"timeout": {"read": 0.02}})
        await transport.aclose()


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
        untrusting = Http11Transport()  # the system's CA bundle, as in production
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await get(untrusting, url)
        trusting = Http11Transport(ssl_context=client_tls)
        assert (await get(trusting, url)).content == b"secure"
        assert (await get(trusting, url)).content == b"again"
        await trusting.aclose()
    assert server.connections == 1  # one kept-alive TLS connection (the refused handshake never got this far)
