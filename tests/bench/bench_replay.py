"""Replay throughput against cassettes of 100, 10,000 and 100,000 interactions (hash lookup: flat),
cassette load time, vcrpy's own replay of the same cassettes (a scan per request), and the forward route
replaying over HTTP against a bare Starlette endpoint (needs wrk).

`python -m tests.bench.bench_replay` prints, from one run, engine.call µs per replayed call, replay at
100,000 interactions against 100, and the forward route in replay against the bare endpoint."""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path

import httpx
import vcr

from proxy.cassettes.cassette import Cassette, load_interactions, make_interaction
from proxy.cassettes.files import write_cassette
from proxy.cassettes.library import CassetteLibrary
from proxy.cassettes.matching import MatchRules
from proxy.cassettes.parse_cache import ParseCache
from proxy.cassettes.record_replay import RecordReplayTransport
from proxy.config.record_mode import RecordMode
from proxy.connections.compiled import compile_connection
from proxy.connections.spec import parse_spec
from proxy.engine.call import Engine
from proxy.engine.results import CallContext
from proxy.engine.transports.live import PacedTransport
from proxy.security.redaction import Redactor
from proxy.security.vault import Vault, load_fernet
from proxy.storage.store import Store

URL = "https://upstream.bench/chat"
SIZES = (100, 10_000, 100_000)
CALLS = 3000


class NoNetwork(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("benchmark replays only", request=request)


def make_cassette(path: Path, size: int, cache: ParseCache) -> None:
    cassette = Cassette("bench", path, MatchRules())
    for i in range(size):
        cassette.add(
            make_interaction(
                "POST",
                URL,
                f'{{"message": "msg-{i}"}}'.encode(),
                {"content-type": "application/json"},
                200,
                "OK",
                [("content-type", "application/json")],
                f'{{"reply": "answer {i}"}}'.encode(),
                {"id": str(i), "latency_ms": 12.0},
            )
        )
    write_cassette(path, cassette.serialize(), cassette.interactions, cache)


async def replay_rate(root: Path, store: Store, cache: ParseCache, key: str, size: int) -> tuple[float, float]:
    """(load seconds, replayed calls per second) through the real engine and transport stack."""
    library = CassetteLibrary(root, store, default_mode=RecordMode.NONE, cache=cache)
    redactor = Redactor()
    engine = Engine(RecordReplayTransport(PacedTransport(NoNetwork()), library, redactor), redactor=redactor)
    spec = parse_spec(
        {
            "name": "bench",
            "productId": "p",
            "url": URL,
            "type": "CONVERSATION",
            "authType": "NONE",
            "inputTemplate": '{"message": "{{ input.m }}"}',
            "outputMapping": {"output": "$.reply"},
        }
    )
    conn = compile_connection("ec_bench", spec, "2026-01-01T00:00:00Z", allow_http=False)
    handle = library.open("sessions", key, RecordMode.NONE, repeat_last=True)
    started = time.perf_counter()
    await library.cassette(handle.name)
    load_s = time.perf_counter() - started
    picks = [random.Random(size).randrange(size) for _ in range(CALLS)]
    started = time.perf_counter()
    for i in picks:
        result = await engine.call(conn, CallContext(input={"m": f"msg-{i}"}, cassette=handle))
        assert result.output == f"answer {i}", result.error
    rate = CALLS / (time.perf_counter() - started)
    await engine.aclose()
    return load_s, rate


def vcrpy_ms_per_request(path: Path, size: int, requests: int) -> float:
    # Matched on the body as we do; repeats allowed, since the picks may repeat.
    cassette = vcr.use_cassette(
        str(path), record_mode="none", match_on=["method", "uri", "body"], allow_playback_repeats=True
    )
    with cassette, httpx.Client() as client:
        started = time.perf_counter()
        for n in range(requests):
            i = (n * 7919) % size
            assert client.post(URL, content=f'{{"message": "msg-{i}"}}').status_code == 200
        return (time.perf_counter() - started) / requests * 1000


def run() -> list[str]:
    lines = [f"Replay through the engine ({CALLS} calls, random requests, hash lookup)"]
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cassettes"
        store = Store(Path(tmp) / "data", Vault(load_fernet(Path(tmp) / "data")))
        cache = ParseCache.in_data_dir(Path(tmp) / "data")
        for size in SIZES:
            path = root / "sessions" / f"bench-{size}.yaml"
            make_cassette(path, size, cache)
            cold = ""
            if size == 10_000:  # the YAML parse a fresh data dir pays once per cassette
                started = time.perf_counter()
                load_interactions(path)
                cold = f", {time.perf_counter() - started:.2f} s parsing the YAML (no cache)"
            load_s, rate = asyncio.run(replay_rate(root, store, cache, f"bench-{size}", size))
            rates[size] = rate
            lines.append(
                f"  {size:>7} interactions: {rate:8.0f} calls/s = {1e6 / rate:6.1f} µs per engine.call"
                f"   load {load_s:5.2f} s{cold}"
            )
        lines.append(f"  ratio {SIZES[-1]} / {SIZES[0]}: {rates[SIZES[-1]] / rates[SIZES[0]]:.2f}  (must stay >= 0.9)")
        lines.append("vcrpy's own replay of the same cassettes (vcr.use_cassette, record_mode='none', httpx.Client)")
        for size, requests in ((100, 200), (10_000, 3)):
            ms = vcrpy_ms_per_request(root / "sessions" / f"bench-{size}.yaml", size, requests)
            ours = 1000 / rates[size]
            lines.append(
                f"  {size:>7} interactions: {ms:9.2f} ms/request   (ours {ours:.3f} ms, {ms / ours:,.0f}x faster)"
            )
        lines.append("  100000 interactions: not run (a scan of 100,000 per request; minutes per request)")
        store.close()
    return lines


def forward_lines() -> list[str]:
    """The forward route in replay over HTTP, against the bare endpoint, in this same run."""
    from tests.bench.bench_load import BODY, forward_replay, load_config, wrk
    from tests.bench.harness import upstream_process

    with upstream_process() as upstream, tempfile.TemporaryDirectory() as folder_name:
        folder = Path(folder_name)
        bare = wrk(f"{upstream}/chat", BODY)
        return forward_replay(upstream, load_config(folder, upstream), folder, BODY, bare)


if __name__ == "__main__":  # this benchmark plus the forward route in replay
    print("\n".join(run() + forward_lines()))
