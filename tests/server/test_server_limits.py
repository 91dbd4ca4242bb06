"""Limits before authentication, tried as an attacker would against a real server on loopback, over raw sockets:
huge and numerous request headers, slowloris connections, more connections than the cap, live flow viewers that
pile up or read nothing. The server is `proxy serve` in a subprocess where its memory is measured, else the app
in a thread served by the same protocol, with small limits to keep each test short."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import json
import select
import socket
import statistics
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httptools
import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from proxy.config.file import load_config
from proxy.config.settings import DEFAULT_MAX_FLOW_VIEWERS, DEFAULT_MAX_HEADERS, Settings
from proxy.errors import ConfigError
from proxy.server.app import create_app
from proxy.server.limits import HttpLimits, LimitedHttpProtocol
from proxy.server.runtime import Runtime
from tests.conftest import RunningProxy, chat_connection
from tests.helpers import post
from tests.servers import proxy_serving, serve_in_thread
from tests.upstream import Upstream

pytestmark = pytest.mark.e2e
API_KEY = "server-limits-key-1234"
CAP_SETTING = "settings.max_connections"
WEBSOCKET_UPGRADE = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
WEBSOCKET_UPGRADE += b"Sec-WebSocket-Version: 13\r\n"
TCP_ESTABLISHED = 1  # tcpi_state, the first byte of Linux's struct tcp_info


@contextlib.contextmanager
def limited_proxy(tmp_path: Path, **settings: Any) -> Iterator[RunningProxy]:
    """The app in a thread, served by the protocol `proxy serve` uses, with `settings`' limits."""
    values = Settings(data_dir=tmp_path / "data", cassettes_dir=tmp_path / "cassettes", allow_http=True, **settings)
    runtime = Runtime(values)
    protocol = LimitedHttpProtocol.with_limits(HttpLimits.from_settings(values))
    with serve_in_thread(create_app(runtime), http=protocol) as url:
        yield RunningProxy(url, runtime, values.data_dir)


def connect(url: str, timeout_s: float = 5) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout_s)


def head(url: str, path: str = "/healthz", headers: int = 0) -> bytes:
    """A GET of `path` with `headers` small extra headers beside Host (no API key)."""
    extra = "".join(f"X-Pad-{n}: {n}\r\n" for n in range(headers))
    return f"GET {path} HTTP/1.1\r\nHost: {url.removeprefix('http://')}\r\n{extra}\r\n".encode()


def answer(sock: socket.socket, deadline_s: float = 5) -> bytes:
    """Everything the server sends until it closes (or resets) the connection, or the deadline passes."""
    sock.settimeout(deadline_s)
    received = b""
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def one_answer(sock: socket.socket) -> bytes:
    """One answer with a Content-Length, on a connection that stays open."""
    received = b""
    while b"\r\n\r\n" not in received or len(received) < body_end(received):
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {received!r}"
        received += chunk
    return received


def body_end(received: bytes) -> int:
    """Where the answer whose head `received` starts with ends (its head must be whole)."""
    head_part = received.partition(b"\r\n\r\n")[0]
    lines = head_part.lower().split(b"\r\n")
    length = next(int(line.partition(b":")[2]) for line in lines if line.startswith(b"content-length:"))
    return len(head_part) + 4 + length


def message_of(reply: bytes) -> str:
    return str(json.loads(reply.partition(b"\r\n\r\n")[2])["message"])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def tcp_state(sock: socket.socket) -> int:
    return struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[:1])[0]


# -- request headers ----------------------------------------------------------------------------


def test_a_20_mb_header_without_the_api_key_is_cut_off_at_the_limit_and_grows_no_memory(tmp_path: Path) -> None:
    """The attack: one endless header sent to an authenticated route without the key (1 GB grew the server by
    1 GB before its 401). The server stops reading at 64 KB, answers 431 (or resets), and holds nothing."""
    data = ["--data-dir", str(tmp_path / "data"), "--cassettes", str(tmp_path / "cassettes"), "--api-key", API_KEY]
    with proxy_serving(*data) as served:
        process, url, port = served.process, served.url, served.port
        assert httpx.get(f"{url}/healthz").status_code == 200
        before = rss_bytes(process.pid)
        sent, piece, total = 0, b"a" * 65536, 20 * 1024 * 1024
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)  # what we sent is what the server took
            sock.settimeout(5)
            sock.connect(("127.0.0.1", port))
            try:
                sock.sendall(f"GET /sessions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Pad: ".encode())
                while sent < total:
                    sock.sendall(piece)
                    sent += len(piece)
            except OSError:  # the server closed the connection: what it had not read is refused
                pass
            reply = answer(sock)
        grown = rss_bytes(process.pid) - before
        assert sent < 1024 * 1024, f"the server read {sent} bytes of headers"  # 64 KB, and socket buffers
        assert reply == b"" or reply.startswith(b"HTTP/1.1 431 "), reply[:200]  # never the 401 of the app
        assert grown < 10 * 1024 * 1024, f"the server grew by {grown / 2**20:.1f} MB"
        assert httpx.get(f"{url}/healthz").status_code == 200


def test_a_header_block_over_the_limit_is_answered_431_naming_the_limit(tmp_path: Path) -> None:
    """The attack: a 100 KB header sent whole, without the key. The answer is 431, before authentication."""
    with limited_proxy(tmp_path, api_key=API_KEY) as proxy, connect(proxy.url) as sock:
        request = head(proxy.url, "/sessions").replace(b"\r\n\r\n", b"\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n")
        sock.sendall(request)
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), reply[:200]
    assert message_of(reply) == "request headers too large: over 65536 bytes (settings.max_header_bytes)"


def test_101_headers_are_answered_431_before_authentication_and_100_reach_the_app(tmp_path: Path) -> None:
    """The attack: 100,000 headers were accepted; here 101 (Host and 100 more) without the key get 431, not the
    app's 401. 100 headers are the limit: without the key they get the app's 401, with it the route's 200."""
    assert DEFAULT_MAX_HEADERS == 100
    with limited_proxy(tmp_path, api_key=API_KEY) as proxy:
        with connect(proxy.url) as sock:
            sock.sendall(head(proxy.url, "/sessions", headers=100))
            reply = answer(sock)
        assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
        assert message_of(reply) == "too many request headers: over 100 (settings.max_headers)"
        with connect(proxy.url) as sock:
            sock.sendall(head(proxy.url, "/sessions", headers=99))
            assert one_answer(sock).startswith(b"HTTP/1.1 401 ")
            with_key = head(proxy.url, "/sessions", headers=98)
            sock.sendall(with_key.replace(b"\r\n\r\n", f"\r\nAuthorization: Bearer {API_KEY}\r\n\r\n".encode()))
            assert one_answer(sock).startswith(b"HTTP/1.1 200 ")  # the same connection: kept alive


def test_many_headers_in_pieces_are_counted_across_reads(tmp_path: Path) -> None:
    """The attack: the head split into small sends, so no single read holds the whole of it."""
    with limited_proxy(tmp_path, max_header_bytes=2048, max_headers=10) as proxy, connect(proxy.url) as sock:
        request = head(proxy.url, headers=200)
        for start in range(0, len(request), 100):
            with contextlib.suppress(OSError):
                sock.sendall(request[start : start + 100])
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert "settings.max_headers" in message_of(reply)  # 11 headers come before 2,048 bytes


def test_a_large_body_and_a_pipelined_request_in_the_same_write_are_not_taken_for_headers(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    """Not an attack: a 300 KB body sent with its head in one write, and a second request right behind it, go
    past the head limit (2 KB here) in one read; both are answered, and the body reaches the upstream whole."""
    with forwarding(tmp_path, upstream_url, max_header_bytes=2048) as (proxy, _), connect(proxy.url) as sock:
        body = json.dumps({"text": "b" * 300_000}).encode()
        post_head = head(proxy.url, "/forward/other/chat").replace(b"GET ", b"POST ", 1)
        post_head = post_head.replace(b"\r\n\r\n", f"\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        sock.sendall(post_head + body + head(proxy.url))
        received = read_until(sock, b'{"status":"ok"}')  # the second answer's body
    first, second = received[: body_end(received)], received[body_end(received) :]
    assert first.startswith(b"HTTP/1.1 200 ") and second.startswith(b"HTTP/1.1 200 "), (first[:200], second[:200])
    assert upstream.received[-1].body == body


# -- slow and idle connections ------------------------------------------------------------------


def test_a_slowloris_connection_is_answered_408_and_closed_after_the_header_timeout(tmp_path: Path) -> None:
    """The attack: a partial header line, then a byte every 0.2 s (such a connection stayed open after 35 s)."""
    with limited_proxy(tmp_path, header_timeout=1.0) as proxy, connect(proxy.url) as sock:
        opened = time.monotonic()
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {proxy.url.removeprefix('http://')}\r\nX-Slow: ".encode())
        closed_after = None
        while closed_after is None and time.monotonic() - opened < 4:
            try:
                sock.sendall(b"z")
            except OSError:
                closed_after = time.monotonic() - opened
                break
            if select.select([sock], [], [], 0.2)[0]:  # the server answered, or closed
                closed_after = time.monotonic() - opened
        assert closed_after is not None, "the dribbling connection is still open after 4 s"
        assert 0.9 < closed_after < 2.5
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), reply[:200]
    assert message_of(reply) == "request headers not complete within 1 s (settings.header_timeout)"


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(tmp_path: Path) -> None:
    """The attack: connections opened and left silent, each holding a place. Closed without an answer."""
    with limited_proxy(tmp_path, header_timeout=1.0) as proxy, connect(proxy.url) as sock:
        opened = time.monotonic()
        assert answer(sock, deadline_s=4) == b""
        assert 0.9 < time.monotonic() - opened < 2.5


def test_a_client_within_the_header_timeout_is_served(tmp_path: Path) -> None:
    """Not an attack: a slow but legitimate head, sent within the timeout, is answered."""
    with limited_proxy(tmp_path, header_timeout=1.0) as proxy, connect(proxy.url) as sock:
        request = head(proxy.url)
        for start in range(0, len(request), 8):
            sock.sendall(request[start : start + 8])
            time.sleep(0.05)
        assert one_answer(sock).startswith(b"HTTP/1.1 200 ")


def test_websocket_upgrades_leave_nothing_behind(tmp_path: Path) -> None:
    """The attack: WebSocket upgrade requests, each handing its connection to uvicorn's WebSocket protocol (which
    refuses it: the app has no WebSocket route). The HTTP protocol left behind must not keep its header timer,
    and so itself, alive for ever."""
    values = Settings(data_dir=tmp_path / "data", cassettes_dir=tmp_path / "cassettes", header_timeout=0.2)
    protocol = LimitedHttpProtocol.with_limits(HttpLimits.from_settings(values))
    with serve_in_thread(create_app(Runtime(values)), http=protocol) as url:
        upgrade = head(url, "/ws").replace(b"\r\n\r\n", b"\r\n" + WEBSOCKET_UPGRADE + b"\r\n")
        for _ in range(3):
            with connect(url) as sock:
                sock.sendall(upgrade)
                assert answer(sock).startswith(b"HTTP/1.1 403 ")
        deadline = time.monotonic() + 3
        while (alive := alive_protocols(protocol)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert alive == 0, f"{alive} upgraded connections' protocols still alive"


def alive_protocols(kind: type) -> int:
    gc.collect()
    return sum(type(o) is kind for o in gc.get_objects())


def test_connections_over_the_cap_are_answered_503_at_once_and_room_frees_up(tmp_path: Path) -> None:
    """The attack: 3,000 held connections were all kept. With a cap of 8, 8 idle connections are held, the next
    ones are answered 503 and closed at once, and closing two lets a new client in."""
    with limited_proxy(tmp_path, max_connections=8) as proxy:
        held = [connect(proxy.url) for _ in range(8)]
        try:
            for _ in range(3):
                with connect(proxy.url) as extra:
                    reply = answer(extra, deadline_s=2)
                    assert reply.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), reply[:200]
                    assert message_of(reply) == f"too many connections: the server takes 8 at once ({CAP_SETTING})"
            held[0].sendall(head(proxy.url))  # a held connection is served as usual
            assert one_answer(held[0]).startswith(b"HTTP/1.1 200 ")
            for sock in held[:2]:
                sock.close()
            deadline = time.monotonic() + 3
            while (status := fresh_healthz(proxy.url)) != 200 and time.monotonic() < deadline:
                time.sleep(0.05)  # the server sees the two closes soon after they are sent
            assert status == 200
        finally:
            for sock in held:
                sock.close()


def fresh_healthz(url: str) -> int:
    """The status of `GET /healthz` on a new connection (0 when it is closed first)."""
    with connect(url) as sock:
        sock.sendall(head(url))
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n\r\n" not in received and (chunk := sock.recv(65536)):
                received += chunk
    return int(received[9:12]) if received.startswith(b"HTTP/1.1 ") else 0


# -- live flow viewers --------------------------------------------------------------------------


def open_viewer(url: str, receive_buffer: int | None = None) -> socket.socket:
    """A `GET /flows/events` stream, once the server has said it is connected. With `receive_buffer`, the
    system's buffers on both ends are small (small segments keep the server's send buffer from growing), so a
    viewer that reads nothing stalls the server's writes after a few flows instead of megabytes of them."""
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.settimeout(5)
    host, port = url.removeprefix("http://").split(":")
    sock.connect((host, int(port)))
    sock.sendall(head(url, "/flows/events"))
    received = b""
    while b": connected" not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    return sock


def read_until(sock: socket.socket, marker: bytes, deadline_s: float = 5) -> bytes:
    sock.settimeout(deadline_s)
    received = b""
    while marker not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


@contextlib.contextmanager
def forwarding(tmp_path: Path, upstream_url: str, **settings: Any) -> Iterator[tuple[RunningProxy, httpx.Client]]:
    """A server with `settings` (the default viewer cap) and a forward connection `other` to the upstream."""
    with limited_proxy(tmp_path, **settings) as proxy, httpx.Client(base_url=proxy.url, timeout=30) as client:
        post(client, "/endpointConnections", chat_connection(upstream_url, name="other", authType="NONE"))
        yield proxy, client


def test_a_33rd_live_viewer_ends_the_oldest_stream(tmp_path: Path, upstream_url: str) -> None:
    """The attack: 3,000 idle `/flows/events` streams made every flow cost each of them. With the cap of 32,
    opening 40 ends the first 8 (oldest first); the 32 left each get the next flow."""
    with forwarding(tmp_path, upstream_url) as (proxy, client):
        assert DEFAULT_MAX_FLOW_VIEWERS == 32
        viewers = [open_viewer(proxy.url) for _ in range(40)]
        try:
            assert proxy.runtime.flows.viewers == 32
            for sock in viewers[:8]:
                assert read_until(sock, b"0\r\n\r\n").endswith(b"0\r\n\r\n")  # the chunked stream's end
            assert client.post("/forward/other/chat", json={"n": 1}).status_code == 200
            for sock in viewers[8:]:
                assert b"event: flow" in read_until(sock, b"event: flow")
        finally:
            for sock in viewers:
                sock.close()


def test_viewers_that_read_nothing_are_disconnected_without_slowing_anyone(tmp_path: Path, upstream_url: str) -> None:
    """The attack: 31 viewers that never read (small receive buffers) beside one that does, while flows are made.
    The stalled ones are disconnected once they took nothing for the send timeout (0.5 s here), and no longer
    published to: they stayed connected forever, each holding a task. The reader gets every flow, and /healthz
    stays fast."""
    with forwarding(tmp_path, upstream_url, send_timeout=0.5, record_mode="off") as (proxy, client):
        reader = open_viewer(proxy.url)
        stalled = [open_viewer(proxy.url, receive_buffer=1024) for _ in range(31)]
        received = bytearray()
        reading = threading.Event()
        reading.set()

        def read() -> None:
            reader.settimeout(0.1)
            while reading.is_set():
                with contextlib.suppress(TimeoutError):
                    received.extend(reader.recv(65536))

        thread = threading.Thread(target=read)
        thread.start()
        forward_s: list[float] = []
        health_s: list[float] = []
        path = "/forward/other/chat/" + "p" * 60_000  # each flow's event is 60 KB: stalled buffers fill in a few
        try:
            with httpx.Client(base_url=proxy.url, timeout=30) as health:
                while proxy.runtime.flows.viewers > 1 and len(forward_s) < 200:
                    started = time.perf_counter()
                    assert client.post(path, json={"n": len(forward_s)}).status_code == 200
                    forward_s.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    assert health.get("/healthz").status_code == 200
                    health_s.append(time.perf_counter() - started)
            flows = len(forward_s)
            assert proxy.runtime.flows.viewers == 1, f"{flows} flows and the stalled viewers are still published to"
            deadline = time.monotonic() + 3
            while any(tcp_state(s) == TCP_ESTABLISHED for s in stalled) and time.monotonic() < deadline:
                time.sleep(0.05)
            still_open = sum(tcp_state(s) == TCP_ESTABLISHED for s in stalled)
            assert still_open == 0, f"{still_open} stalled viewers still connected"
            deadline = time.monotonic() + 5
            while bytes(received).count(b"event: flow") < flows and time.monotonic() < deadline:
                time.sleep(0.05)
            assert bytes(received).count(b"event: flow") == flows  # the reader missed none
            # Loose bounds, on the median (the machine is shared): a 60 KB forward call takes ~40 ms alone.
            assert statistics.median(health_s) < 0.1 and statistics.median(forward_s) < 0.25, (health_s, forward_s)
        finally:
            reading.clear()
            thread.join()
            for sock in [reader, *stalled]:
                sock.close()


# -- the same limits everywhere -------------------------------------------------------------------


def test_the_pytest_plugin_server_refuses_101_headers_too(request: pytest.FixtureRequest) -> None:
    """The attack of 101 headers, against the server the pytest plugin runs in a user's test session."""
    from proxy.pytest_plugin.hooks import _PluginState
    from proxy.pytest_plugin.server import _running

    with _running(request.config, _PluginState()) as server:
        with connect(server.url) as sock:
            sock.sendall(head(server.url, headers=100))
            assert answer(sock).startswith(b"HTTP/1.1 431 ")
        assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_the_limits_come_from_the_config_file_and_a_bad_one_is_named(tmp_path: Path) -> None:
    from proxy.cli.options import build_settings

    path = tmp_path / "proxy.yaml"
    path.write_text("settings:\n  max_headers: 20\n  header_timeout: 2.5\n  max_flow_viewers: '4'\n")
    settings = build_settings(load_config(path))
    assert (settings.max_headers, settings.header_timeout, settings.max_flow_viewers) == (20, 2.5, 4)
    assert HttpLimits.from_settings(settings).max_headers == 20
    assert Runtime(settings.__class__(data_dir=tmp_path / "d", max_flow_viewers=4)).flows.max_viewers == 4
    for line, reason in [
        ("max_headers: 0", "settings.max_headers: 0 is not a positive whole number of headers"),
        ("max_connections: 1.5", "settings.max_connections: 1.5 is not a positive whole number of connections"),
        ("header_timeout: -1", "settings.header_timeout: -1 is not a positive number of seconds"),
        ("send_timeout: .inf", "settings.send_timeout: inf is not a positive number of seconds"),
        ("max_header_bytes: true", "settings.max_header_bytes: True is not a positive whole number of bytes"),
    ]:
        path.write_text(f"settings:\n  {line}\n")
        with pytest.raises(ConfigError) as refused:
            load_config(path)
        assert refused.value.message == f"config {reason}"


class Transport:
    """The socket side of a transport, for uvicorn's protocol alone: what was written."""

    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Recorder:
    """A parser protocol that notes each header as httptools hands it over."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_the_uvicorn_internals_the_limits_rely_on_are_there() -> None:
    """uvicorn is not pinned and `LimitedHttpProtocol` overrides parts of its httptools protocol and reads some of
    its state: this fails loudly when one of them changes, instead of a limit silently no longer applying."""
    callbacks = {
        "connection_made": ["self", "transport"],
        "connection_lost": ["self", "exc"],
        "data_received": ["self", "data"],
        "on_message_begin": ["self"],
        "on_header": ["self", "name", "value"],
        "on_headers_complete": ["self"],
        "on_body": ["self", "body"],
        "on_message_complete": ["self"],
        "pause_writing": ["self"],
        "resume_writing": ["self"],
    }
    for name, parameters in callbacks.items():
        assert list(inspect.signature(getattr(HttpToolsProtocol, name)).parameters) == parameters, name
        assert name in vars(LimitedHttpProtocol), name
    config = uvicorn.Config(ok_app, lifespan="off")
    state = ServerState()
    protocol = HttpToolsProtocol(config, state, {})  # uvicorn's own
    # The state read: the server's open connections, the loop, and the answer in progress.
    assert protocol.connections is state.connections and protocol.loop is asyncio.get_running_loop()
    assert protocol.cycle is None
    transport = Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    assert state.connections == {protocol} and protocol.transport is transport
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert protocol.cycle is not None and not protocol.cycle.response_complete
    cycle = protocol.cycle
    assert cycle.response_started is False and cycle.disconnected is False  # a slow body's 408 reads and sets them
    await asyncio.wait_for(asyncio.gather(*state.tasks), 5)
    assert protocol.cycle.response_complete and transport.written.endswith(b"\r\n\r\nok")
    assert cycle.response_started is True
    # httptools hands a header over only once it is whole: why a head's bytes are counted before it parses them.
    recorder = Recorder()
    parser = httptools.HttpRequestParser(recorder)
    parser.feed_data(b"GET / HTTP/1.1\r\nX-Long: " + b"v" * 1000)
    assert recorder.headers == []
    parser.feed_data(b"v\r\n\r\n")
    assert recorder.headers == [(b"X-Long", b"v" * 1001)]


def dribble_body(sock: socket.socket, seconds: float) -> float | None:
    """A byte of body every 0.1 s; how long until the server answered or closed (None: still open)."""
    opened = time.monotonic()
    while time.monotonic() - opened < seconds:
        try:
            sock.sendall(b"z")
        except OSError:
            return time.monotonic() - opened
        if select.select([sock], [], [], 0.1)[0]:
            return time.monotonic() - opened
    return None


def test_a_body_dribbled_a_byte_at_a_time_is_answered_408_and_closed(tmp_path: Path) -> None:
    """The attack: whole headers announcing a 10 MB body, then a byte every 0.1 s. The header timeout stopped at the
    headers' end, so such connections held every slot for as long as they liked."""
    with limited_proxy(tmp_path, header_timeout=1.0) as proxy, connect(proxy.url) as sock:
        host = proxy.url.removeprefix("http://")
        sock.sendall(
            f"POST /endpointConnections HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            "Content-Length: 10000000\r\n\r\n".encode()
        )
        closed_after = dribble_body(sock, 4)
        assert closed_after is not None and 0.9 < closed_after < 2.5, closed_after
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), reply[:200]
    assert message_of(reply) == "request body too slow: less than 1024 bytes/s after 1 s (settings.header_timeout)"


def test_a_connection_refused_401_before_its_body_stops_being_read_when_the_body_dribbles(tmp_path: Path) -> None:
    """The attack without the key: the 401 comes at once, but the connection stayed open reading the dribbled body
    for 25 s and more. It is closed once the body falls behind the minimum rate."""
    with limited_proxy(tmp_path, header_timeout=1.0, api_key="the-servers-own-key-123") as proxy:
        with connect(proxy.url) as sock:
            host = proxy.url.removeprefix("http://")
            sock.sendall(
                f"POST /endpointConnections HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                "Content-Length: 10000000\r\n\r\n".encode()
            )
            first = sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 401 "), first[:100]
            opened = time.monotonic()
            while time.monotonic() - opened < 4:
                try:
                    sock.sendall(b"z")
                    if select.select([sock], [], [], 0.1)[0] and sock.recv(65536) == b"":
                        break
                except OSError:
                    break
            assert time.monotonic() - opened < 2.5, "the refused connection still reads its dribbled body"


def test_a_large_body_sent_at_a_normal_pace_is_read_whole(tmp_path: Path) -> None:
    """Not an attack: 2 MB in 64 KB pieces reaches the app (and its 413-free JSON refusal) under the rate rule."""
    with limited_proxy(tmp_path, header_timeout=1.0) as proxy:
        body = b'{"name": "' + b"x" * 2_000_000 + b'"}'
        answered = httpx.post(
            f"{proxy.url}/endpointConnections", content=body, headers={"Content-Type": "application/json"}
        )
    assert answered.status_code == 422, answered.text
