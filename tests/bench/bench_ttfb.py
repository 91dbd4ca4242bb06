"""Time to first byte of streams under load, in one run: CONCURRENT streams at once of CHUNKS chunks each, the
upstream sending its head at once and the first chunk after FIRST_MS (as a model does: head, think, tokens),
against the upstream direct, mitmproxy in reverse mode (streaming), a bare relay (uvicorn and aiohttp with nothing
else: the floor under the forward route on this machine), and the forward route live (record mode off), recording
(`all`: every stream tapped and written to its cassette) and replaying.

Every server is up for the whole run and the targets take turns round by round, so a noisy neighbour on this
shared machine weighs on all of them alike. A sample is the time from sending the request to reading the first
chunk of the body; the added latency of a target is its p50 (p90) minus the upstream's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from tests.bench.bench_stream import MITMDUMP, stream_config, stream_once
from tests.bench.harness import app_process, free_port, process, serve_command

CONCURRENT, CHUNKS, FIRST_MS, GAP_MS = 16, 20, 50, 2
ROUNDS, WARMUP_ROUNDS = 30, 2
STREAM_PATH = f"/v1/stream?chunks={CHUNKS}&gap_ms={GAP_MS}&first_ms={FIRST_MS}"
TARGET_ADDED_MS = 2.0


class Target:
    """CONCURRENT kept-alive connections to one server, and the first-byte times measured through them."""

    def __init__(self, label: str, base: str, path: str) -> None:
        self.label, self.path = label, path
        url = urlsplit(base)
        self.host, self.port, self.netloc = url.hostname or "127.0.0.1", url.port, url.netloc
        self.connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.samples: list[float] = []

    async def open(self) -> None:
        self.connections = [await asyncio.open_connection(self.host, self.port) for _ in range(CONCURRENT)]

    async def round(self, keep: bool) -> None:
        results = await asyncio.gather(
            *(stream_once(reader, writer, self.netloc, self.path) for reader, writer in self.connections)
        )
        for first, chunks in results:
            if not chunks:  # a proxy may join chunks that arrive together: at least one is due
                raise RuntimeError(f"{self.label}: an empty stream")
            if keep:
                self.samples.append(first * 1000)

    def close(self) -> None:
        for _, writer in self.connections:
            writer.close()

    def pcts(self) -> tuple[float, float]:
        ordered = sorted(self.samples)
        return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


async def measure(targets: list[Target]) -> None:
    for target in targets:
        await target.open()
    try:
        for number in range(WARMUP_ROUNDS + ROUNDS):
            for target in targets:
                await target.round(keep=number >= WARMUP_ROUNDS)
    finally:
        for target in targets:
            target.close()


def run() -> list[str]:
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(app_process("streams", "/v1/stream"))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        config = stream_config(tmp, upstream)
        forward_path = "/forward/llm" + STREAM_PATH
        targets = [Target("upstream direct", upstream, STREAM_PATH)]
        if MITMDUMP.exists():
            port = free_port()
            args = [str(MITMDUMP), "--mode", f"reverse:{upstream}", "-p", str(port), "-q"]
            stack.enter_context(
                process([*args, "--set", "stream_large_bodies=1"], f"http://127.0.0.1:{port}/v1/stream")
            )
            targets.append(Target("mitmproxy reverse, streaming", f"http://127.0.0.1:{port}", STREAM_PATH))
        relay = stack.enter_context(app_process("bare_relay", "/v1/stream", {"RELAY_TARGET": upstream}))
        targets.append(Target("bare relay (uvicorn+aiohttp)", relay, STREAM_PATH))
        for label, folder, mode in (("/forward live (off)", "live", "off"), ("/forward recording (all)", "rec", "all")):
            args, base = serve_command(config, tmp / folder, mode)
            stack.enter_context(process(args, f"{base}/healthz"))
            targets.append(Target(label, base, forward_path))
        # Replay: one stream recorded first, then served from the cassette at once (no recorded pacing).
        args, base = serve_command(config, tmp / "replay", "once")
        with process(args, f"{base}/healthz"):
            recorder = Target("record once", base, forward_path)
            asyncio.run(measure_once(recorder))
        args, base = serve_command(config, tmp / "replay", "none")
        stack.enter_context(process(args, f"{base}/healthz"))
        targets.append(Target("/forward replayed (none)", base, forward_path))
        asyncio.run(measure(targets))
    return report(targets)


async def measure_once(target: Target) -> None:
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        await stream_once(reader, writer, target.netloc, target.path)
    finally:
        writer.close()


def report(targets: list[Target]) -> list[str]:
    direct50, direct90 = targets[0].pcts()
    lines = [
        f"Streams: time to first byte, {CONCURRENT} concurrent streams of {CHUNKS} chunks, the first at {FIRST_MS} ms"
        f" ({ROUNDS} rounds, {ROUNDS * CONCURRENT} streams per target)"
    ]
    mitm_added = floor_added = None
    for target in targets:
        p50, p90 = target.pcts()
        line = f"  {target.label:<30} p50 {p50:6.2f} ms   p90 {p90:6.2f} ms"
        if target is not targets[0] and "replayed" not in target.label:
            line += f"   added p50 {p50 - direct50:+5.2f} ms   p90 {p90 - direct90:+5.2f} ms"
        if target.label.startswith("mitmproxy"):
            mitm_added = p50 - direct50
        if target.label.startswith("bare relay"):
            floor_added = p50 - direct50
        lines.append(line)
    live = next((t for t in targets if t.label.startswith("/forward live")), None)
    if live is not None:
        live50 = live.pcts()[0] - direct50
        verdict = f"  /forward live added p50 {live50:+.2f} ms: target < {TARGET_ADDED_MS:g} ms"
        if mitm_added is not None:
            verdict += f" and < mitmproxy's {mitm_added:+.2f} ms"
        if floor_added is not None:
            verdict += f" (the bare relay's floor {floor_added:+.2f} ms, so our own {live50 - floor_added:+.2f} ms)"
        met = live50 < TARGET_ADDED_MS and (mitm_added is None or live50 < mitm_added)
        lines.append(verdict + (": met" if met else ": NOT met"))
    return lines


if __name__ == "__main__":
    print("\n".join(run()))
