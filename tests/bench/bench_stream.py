"""Streams, all in one run on this machine:
- time to first byte through the forward route against the upstream direct, p50 and p99, live (record mode
  off) and replayed;
- streams/s and chunks/s through the forward route, live and replayed, 64 concurrent streams of 50 chunks,
  and the same through mitmproxy in reverse mode with `stream_large_bodies=1` (so it streams too).
The driver is a lean raw HTTP/1.1 client (tests.bench.rawhttp explains why: httpx would take the core the
server under test needs).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from tests.bench.harness import app_process, free_port, process, serve_command, write_config

MITMDUMP = Path(__file__).resolve().parents[2] / ".venv-mitm" / "bin" / "mitmdump"
TTFB_REQUESTS = 300
CONCURRENT, CHUNKS, LOAD_SECONDS = 64, 50, 10.0
STREAM_PATH = f"/v1/stream?chunks={CHUNKS}&gap_ms=1"
BODY = b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'


async def stream_once(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str
) -> tuple[float, int]:
    """One streamed POST on a kept-alive connection: (seconds to the first body byte, chunks read)."""
    started = time.perf_counter()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n".encode()
        + BODY
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") or b"chunked" not in head.lower():
        raise RuntimeError(f"{path}: not a streamed 200: {head[:200]!r}")
    first, chunks = 0.0, 0
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return first, chunks
        await reader.readexactly(size + 2)
        if not chunks:
            first = time.perf_counter() - started
        chunks += 1


async def ttfb(base: str, path: str) -> list[float]:
    url = urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        return [(await stream_once(reader, writer, url.netloc, path))[0] * 1000 for _ in range(TTFB_REQUESTS)]
    finally:
        writer.close()


async def load(base: str, path: str) -> tuple[float, float]:
    """Streams/s and chunks/s from CONCURRENT clients streaming for LOAD_SECONDS."""
    url = urlsplit(base)
    deadline = time.perf_counter() + LOAD_SECONDS
    totals = [0, 0]

    async def client() -> None:
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        try:
            while time.perf_counter() < deadline:
                _, chunks = await stream_once(reader, writer, url.netloc, path)
                totals[0] += 1
                totals[1] += chunks
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CONCURRENT)))
    seconds = time.perf_counter() - started
    return totals[0] / seconds, totals[1] / seconds


def stream_config(folder: Path, upstream: str) -> Path:
    """A config whose connection `llm` is the streaming upstream, with a token the forward route adds and masks."""
    auth = {"auth_type": "BEARER", "auth_token": "tok-bench-Secret-4242"}
    fields = {**auth, "input_template": '{"m": "{{ input }}"}', "output_mapping": {"output": "$.text"}}
    return write_config(folder / "proxy.yaml", "llm", f"{upstream}/v1", **fields)


def pcts(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def run() -> list[str]:
    lines = []
    with app_process("streams", "/v1/stream") as upstream, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = stream_config(tmp, upstream)
        direct = asyncio.run(ttfb(upstream, STREAM_PATH))
        path = "/forward/llm" + STREAM_PATH
        args, base = serve_command(config, tmp / "live", "off")
        with process(args, f"{base}/healthz"):
            live = asyncio.run(ttfb(base, path))
            live_rate = asyncio.run(load(base, path))
        # Replay: record the stream once, then serve it from the cassette (the last recording repeats).
        args, base = serve_command(config, tmp / "replay", "once")
        with process(args, f"{base}/healthz"):
            asyncio.run(ttfb(base, path))
        args, base = serve_command(config, tmp / "replay", "none")
        with process(args, f"{base}/healthz"):
            replayed = asyncio.run(ttfb(base, path))
            replay_rate = asyncio.run(load(base, path))
        mitm_rate = None
        if MITMDUMP.exists():
            port = free_port()
            mitm_args = [str(MITMDUMP), "--mode", f"reverse:{upstream}", "-p", str(port), "-q"]
            with process([*mitm_args, "--set", "stream_large_bodies=1"], f"http://127.0.0.1:{port}/v1/stream"):
                mitm_rate = asyncio.run(load(f"http://127.0.0.1:{port}", STREAM_PATH))
    (d50, d99), (l50, l99), (r50, r99) = pcts(direct), pcts(live), pcts(replayed)
    lines += [
        f"Streams: time to first byte, {TTFB_REQUESTS} sequential streams of {CHUNKS} chunks each",
        f"  upstream direct            p50 {d50:6.2f} ms   p99 {d99:6.2f} ms",
        f"  /forward live (mode off)   p50 {l50:6.2f} ms   p99 {l99:6.2f} ms   overhead p50 {l50 - d50:+.2f} ms"
        " (target <= 2)",
        f"  /forward replayed          p50 {r50:6.2f} ms   p99 {r99:6.2f} ms",
        f"Streams: {CONCURRENT} concurrent streams of {CHUNKS} chunks, {LOAD_SECONDS:.0f} s each",
        f"  /forward live              {live_rate[0]:7.1f} streams/s {live_rate[1]:9.0f} chunks/s",
        f"  /forward replayed          {replay_rate[0]:7.1f} streams/s {replay_rate[1]:9.0f} chunks/s",
    ]
    if mitm_rate:
        lines += [
            f"  mitmproxy (streaming)      {mitm_rate[0]:7.1f} streams/s {mitm_rate[1]:9.0f} chunks/s"
            f"   live / it = {live_rate[0] / mitm_rate[0]:.2f} (target >= 3)"
        ]
    else:
        lines.append("  mitmproxy: not installed (make bench installs it into .venv-mitm)")
    return lines


if __name__ == "__main__":
    print("\n".join(run()))
