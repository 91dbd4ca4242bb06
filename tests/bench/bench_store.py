"""The store at size: start-up and list latency with 1,000,000 turns, and memory and CPU over a long replay.

The big data dir is written straight into the session tables with sqlite3 (bulk insert of the layout the
server uses, not through the API: that would take hours); the replay goes over HTTP to a `proxy serve`.
`BENCH_STORE_TURNS` (default 200,000) and `BENCH_STORE_SESSIONS` (default 100,000) make quicker runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import httpx
import sqlite_utils

from proxy.config.settings import Settings
from proxy.server.runtime import Runtime
from proxy.sessions import tables
from tests.bench.bench_load import cpu_seconds, load_config
from tests.bench.harness import free_port, process, record_sessions, serve_command, upstream_process
from tests.bench.rawhttp import RawConnection

TURNS_PER_SESSION = 10
BIG_SESSIONS = int(os.environ.get("BENCH_STORE_SESSIONS", "100000"))
REPLAY_TURNS = int(os.environ.get("BENCH_STORE_TURNS", "200000"))
REPLAY_CLIENTS = 8
REPLAY_TURNS_PER_SESSION = 5
LIST_REQUESTS = 300


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def build_big_data_dir(data_dir: Path, sessions: int) -> float:
    """`sessions` sessions of TURNS_PER_SESSION turns each, in the server's layout; returns seconds taken."""
    started = time.perf_counter()
    data_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(data_dir / "proxy.db")
    conn.execute("PRAGMA journal_mode=WAL")
    tables.migrate(sqlite_utils.Database(conn))
    exchange = {"request": {"method": "POST", "url": "http://127.0.0.1/chat", "body": '{"message": "x"}'}}
    base = time.time() - sessions
    with conn:
        for first in range(0, sessions, 10_000):
            session_rows, turn_rows = [], []
            for n in range(first, min(first + 10_000, sessions)):
                sid = f"ses_{n:020d}"
                created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base + n)) + ".000Z"
                doc = {"id": sid, "version_id": "ver_1", "product_id": "p", "created_at": created}
                doc |= {"cassette_key": f"tc-{n}", "test_case_id": f"tc-{n}", "status": "COMPLETED"}
                session_rows.append(
                    (sid, "ver_1", "p", f"tc-{n}", None, None, None, None, "COMPLETED", created, 0, json.dumps(doc))
                )
                for index in range(TURNS_PER_SESSION):
                    answer = {"id": f"{n:016x}{index:016x}", "sessionId": sid, "index": index}
                    answer |= {"input": {"user_message": f"case {n} turn {index}"}, "actualOutput": "a reply " * 8}
                    answer |= {"status": "GENERATED", "exchange": exchange, "createdAt": created}
                    turn_rows.append((answer["id"], sid, index, "GENERATED", created, json.dumps(answer)))
            tables.put(conn, tables.Rows(sessions=session_rows, turns=turn_rows))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


def start_up_seconds(data_dir: Path) -> float:
    port = free_port()
    args = [sys.executable, "-m", "proxy", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    started = time.perf_counter()
    with process(args, f"http://127.0.0.1:{port}/healthz"):
        return time.perf_counter() - started


def runtime_start_seconds(data_dir: Path) -> float:
    """What the data dir costs at start-up, without the interpreter's imports: Runtime built and started."""
    started = time.perf_counter()
    runtime = Runtime(Settings(data_dir=data_dir, cassettes_dir=data_dir / "cassettes"))

    async def start_and_stop() -> float:
        await runtime.start()
        ready = time.perf_counter() - started
        await runtime.close()
        return ready

    return asyncio.run(start_and_stop())


def p99_ms(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def list_latencies(data_dir: Path, sessions: int) -> tuple[list[float], list[float]]:
    port = free_port()
    args = [sys.executable, "-m", "proxy", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    pages, turns = [], []
    rng = random.Random(7)
    with process(args, f"http://127.0.0.1:{port}/healthz"), httpx.Client(base_url=f"http://127.0.0.1:{port}") as api:
        for _ in range(LIST_REQUESTS):
            started = time.perf_counter()
            answer = api.get("/sessions", params={"limit": 20, "offset": rng.randrange(sessions)})
            pages.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200 and answer.json(), answer.text
            started = time.perf_counter()
            sid = f"ses_{rng.randrange(sessions):020d}"
            answer = api.get("/inferenceResults", params={"sessionIds[]": sid})
            turns.append((time.perf_counter() - started) * 1000)
            assert len(answer.json()) == TURNS_PER_SESSION
    return pages, turns


async def replay(base: str, version: str, total: int, pid: int) -> dict[str, float]:
    """REPLAY_CLIENTS clients creating sessions, playing turns and finishing them until `total` turns; the
    server's RSS at 1,000 turns and at the end, and its CPU per turn in between."""
    host, port = base.removeprefix("http://").split(":")
    done = 0
    marks: dict[str, float] = {}

    async def client_loop(n: int) -> None:
        nonlocal done
        async with RawConnection(host, int(port)) as client:
            while done < total:
                _, raw = await client.request("POST", "/sessions", {"versionId": version, "testCaseId": f"tc-{n}"})
                session_id = json.loads(raw)["id"]
                for turn in range(REPLAY_TURNS_PER_SESSION):
                    status, raw = await client.request(
                        "POST", f"/sessions/{session_id}/turns", {"input": {"user_message": f"case {n} turn {turn}"}}
                    )
                    assert status == 201 and json.loads(raw)["exchange"]["cassette"] == "hit", raw[:300]
                    done += 1
                    if done == 1000:
                        marks["rss_1k"], marks["cpu_1k"], marks["t_1k"] = rss_mb(pid), cpu_seconds(pid), time.time()
                await client.request("PATCH", f"/sessions/{session_id}/finish", {})

    await asyncio.gather(*(client_loop(n) for n in range(REPLAY_CLIENTS)))
    marks["rss_end"], marks["turns"] = rss_mb(pid), done
    marks["cpu_per_turn_us"] = (cpu_seconds(pid) - marks["cpu_1k"]) / (done - 1000) * 1e6
    marks["turns_per_s"] = (done - 1000) / (time.time() - marks["t_1k"])
    return marks


def run() -> list[str]:
    lines = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        empty = start_up_seconds(tmp / "empty")
        built = build_big_data_dir(tmp / "big", BIG_SESSIONS)
        turns = BIG_SESSIONS * TURNS_PER_SESSION
        size_mb = (tmp / "big" / "proxy.db").stat().st_size / 1e6
        big = start_up_seconds(tmp / "big")
        in_process = runtime_start_seconds(tmp / "big")
        pages, by_session = list_latencies(tmp / "big", BIG_SESSIONS)
        lines += [
            f"Store with {BIG_SESSIONS:,} sessions and {turns:,} turns ({size_mb:.0f} MB, bulk-inserted in"
            f" {built:.0f} s)",
            f"  start-up: Runtime built and started in-process {in_process * 1000:.0f} ms (target < 2 s);"
            f" `proxy serve` to /healthz {big:.2f} s, with an empty data dir {empty:.2f} s (imports included)",
            f"  GET /sessions?limit=20&offset=<random>: p50 {sorted(pages)[len(pages) // 2]:.1f} ms,"
            f" p99 {p99_ms(pages):.1f} ms (target < 20 ms)",
            f"  GET /inferenceResults?sessionIds[]=<random>: p50 {sorted(by_session)[len(by_session) // 2]:.1f} ms,"
            f" p99 {p99_ms(by_session):.1f} ms (target < 20 ms)",
        ]
    with upstream_process() as upstream, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = load_config(tmp, upstream)
        record_sessions(tmp, config, REPLAY_CLIENTS, REPLAY_TURNS_PER_SESSION)
        args, base = serve_command(config, tmp / "replay", "none")
        with process(args, f"{base}/healthz") as proxy_process:
            version = httpx.get(f"{base}/versions").json()[0]["id"]
            marks = asyncio.run(replay(base, version, REPLAY_TURNS, proxy_process.pid))
        lines += [
            f"Replay of {marks['turns']:,.0f} turns over HTTP ({REPLAY_CLIENTS} clients, sessions of"
            f" {REPLAY_TURNS_PER_SESSION} turns, created and finished)",
            f"  RSS after 1,000 turns {marks['rss_1k']:.0f} MB, after {marks['turns']:,.0f}: {marks['rss_end']:.0f} MB"
            f" (growth {marks['rss_end'] - marks['rss_1k']:.0f} MB; target within 50 MB)",
            f"  server CPU per turn, create and finish shares included: {marks['cpu_per_turn_us']:.0f} µs"
            f" ({marks['turns_per_s']:.0f} turns/s)",
        ]
    return lines


if __name__ == "__main__":
    print("\n".join(run()))
