"""MCP: a `tools/call` replayed through the forward route against the same call answered by the fastmcp server
directly, p50 and p99 of sequential calls on one kept-alive connection each (the added latency of a replay hit;
target under 1 ms). The driver is a lean raw HTTP/1.1 client, as in bench_stream."""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from tests.bench.harness import process, serve_command, write_config
from tests.mcp_server import MCP_PATH, mcp_server_process

CALLS = 500
VERSION = "2025-06-18"
INITIALIZE = {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}


class Connection:
    """One kept-alive HTTP/1.1 connection speaking MCP: each POST's answer read whole (length or chunks)."""

    def __init__(self, base: str, path: str) -> None:
        self.url, self.path = urlsplit(base), path
        self.session: str | None = None

    async def __aenter__(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.url.hostname, self.url.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def post(self, message: dict[str, object]) -> bytes:
        body = json.dumps(message).encode()
        session = f"Mcp-Session-Id: {self.session}\r\nMCP-Protocol-Version: {VERSION}\r\n" if self.session else ""
        self.writer.write(
            f"POST {self.path} HTTP/1.1\r\nHost: {self.url.netloc}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json, text/event-stream\r\n{session}Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        if not head.startswith("HTTP/1.1 2"):
            raise RuntimeError(f"{self.path}: {head.splitlines()[0]}")
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head.splitlines()[1:])}
        self.session = fields.get("mcp-session-id", self.session)
        if "content-length" in fields:
            return await self.reader.readexactly(int(fields["content-length"]))
        parts = []
        while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await self.reader.readexactly(size + 2))
        await self.reader.readuntil(b"\r\n")
        return b"".join(part[:-2] for part in parts)


async def call_latencies(base: str, path: str, calls: int) -> list[float]:
    """Milliseconds of each of `calls` sequential tools/call in one session (after initialize)."""
    async with Connection(base, path) as conn:
        await conn.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INITIALIZE})
        await conn.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        latencies = []
        for number in range(1, calls + 1):
            started = time.perf_counter()
            answer = await conn.post({"jsonrpc": "2.0", "id": number, "method": "tools/call", "params": CALL})
            latencies.append((time.perf_counter() - started) * 1000)
            if f'"id":{number},'.encode() not in answer:
                raise RuntimeError(f"call {number} answered another id: {answer[:200]!r}")
        return latencies


def pcts(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def run() -> list[str]:
    with mcp_server_process() as server, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = write_config(tmp / "proxy.yaml", "tools", server, auth_type="NONE", protocol="mcp")
        direct = asyncio.run(call_latencies(server, MCP_PATH, CALLS))
        path = "/forward/tools" + MCP_PATH
        args, base = serve_command(config, tmp / "mcp", "once")
        with process(args, f"{base}/healthz"):
            asyncio.run(call_latencies(base, path, 1))
        args, base = serve_command(config, tmp / "mcp", "none")
        with process(args, f"{base}/healthz"):
            replayed = asyncio.run(call_latencies(base, path, CALLS))
    (d50, d99), (r50, r99) = pcts(direct), pcts(replayed)
    return [
        f"MCP: {CALLS} sequential tools/call get_weather, one session",
        f"  fastmcp direct             p50 {d50:6.2f} ms   p99 {d99:6.2f} ms",
        f"  /forward replayed          p50 {r50:6.2f} ms   p99 {r99:6.2f} ms   added p50 {r50 - d50:+.2f} ms"
        " (target < 1)",
    ]


if __name__ == "__main__":
    print("\n".join(run()))
